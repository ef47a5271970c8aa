"""The one small trainer of the library: seeded, checkpointed, resumable mini-batch training of a classifier.

Adversarial training (:func:`tribute.robust.adversarial_train`), ROAR's retraining and the
label-randomisation sanity check all train through :func:`fit`; :func:`accuracy` evaluates, optionally on
perturbed (e.g. adversarial) inputs.

Training is the one place where tribute changes a model: :func:`fit` updates the parameters (and batch-norm
statistics) of the model it is given, in place, and leaves it in eval mode.  Train a copy
(``copy.deepcopy(model)``) to keep the original.  Initialising the model is the caller's business.

Reproducibility.  Each epoch's shuffling comes from a ``torch.Generator`` seeded from ``(seed, epoch)``, and
the epoch runs inside ``torch.random.fork_rng`` with the global generator seeded from ``(seed, epoch)`` too, so
that dropout masks are reproducible while the caller's global RNG state is left exactly as it was.  A
``perturb`` that takes a ``seed`` keyword gets one per batch, derived from ``(seed, epoch, batch)``.  Hence the
random state at the start of epoch e is a function of the seed and e alone: a checkpoint written after each
epoch (model, optimizer, epoch, history and the seed) suffices to resume an interrupted run, and the resumed
run ends with the same weights, bit for bit, as an uninterrupted one (on the same machine, torch version and
thread count).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as checkpoint_file
from .checkpoint import CheckpointError

Perturb = Callable[..., torch.Tensor]

OPTIMIZERS = ("sgd", "adam")
CHECKPOINT_FORMAT = 2  # 2: with a digest (tribute.checkpoint)
_CHECKPOINT_KEYS = {"format", "epochs_done", "settings", "model", "optimizer", "history"}


@dataclass
class History:
    """Per-epoch records of a training run: ``history["loss"]`` is the list of one key over the epochs.

    Every record has ``epoch`` (1-based), ``lr``, ``loss`` (mean training loss over the epoch's samples, on the
    inputs trained on, i.e. the perturbed ones when ``perturb`` is given), ``train_accuracy`` (fraction of those
    inputs classified right when their batch was trained on) and ``seconds`` (wall time of the epoch, its
    evaluation included); ``accuracy`` (clean, on ``eval_data``) when evaluation data were given; and one key
    per extra metric.
    """

    records: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        if not self.records or key not in self.records[0]:
            known = ", ".join(self.records[0]) if self.records else "none (no epoch recorded)"
            raise KeyError(f"history has no {key!r}; its keys are: {known}")
        return [r[key] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def keys(self) -> list[str]:
        return list(self.records[0]) if self.records else []

    @property
    def last(self) -> dict[str, float]:
        """The last epoch's record."""
        if not self.records:
            raise IndexError("history is empty")
        return self.records[-1]


def fit(
    model: nn.Module,
    train_data,
    *,
    epochs: int,
    lr: float | Callable[[int], float],
    optimizer: str | Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer] = "sgd",
    momentum: float | None = None,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    perturb: Perturb | None = None,
    input_transform: Callable | None = None,
    eval_data=None,
    eval_batch_size: int = 256,
    metrics: dict[str, Callable[[nn.Module], float]] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[dict[str, float]], Any] | None = None,
    config: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` by mini-batch gradient descent on Σ_i L(f(x_i), y_i); returns the per-epoch history.

    Each step: x' = ``perturb(model, x, y)`` if given (else x), then one optimizer step on the mean of
    ``loss(model(transform(x')), y)``.  With ``perturb`` an adversarial attack this is adversarial training's
    outer minimisation (Nielsen et al. 2022, eq 3).

    Parameters
    ----------
    model : nn.Module
        Trained in place (see the module docstring); in train mode while training, in eval mode on return
        (also on error).  All parameters with ``requires_grad`` are optimised; their ``.grad`` is cleared at
        the end.
    train_data : (inputs, labels) or iterable of batches
        A pair of tensors (N, ...) and (N,), shuffled each epoch by the trainer's own generator and cut into
        batches of ``batch_size``; or a re-iterable of ``(inputs, labels)`` batches (e.g. a ``DataLoader``),
        used in its own order (exact resumption then needs an order that does not depend on hidden state).
    epochs : int
        Total number of epochs, >= 1 (a resumed run trains the epochs the checkpoint lacks).
    lr : float or callable
        Learning rate, > 0; or ``lr(epoch) -> float`` (0-based epoch) for a schedule.
    optimizer : {"sgd", "adam"} or callable
        SGD (with ``momentum``, default 0.9) or Adam; or a factory ``optimizer(parameters) -> Optimizer``
        (its learning rate is set from ``lr`` at each epoch).
    momentum : float, optional
        SGD's momentum in [0, 1) (default 0.9); only with ``optimizer="sgd"``.
    weight_decay : float
        L2 penalty coefficient, >= 0 (for the named optimizers).
    batch_size : int, optional
        Samples per step for a tensor pair (default 64); not allowed with an iterable of batches.
    seed : int
        Seeds shuffling, the global RNG inside training (dropout) and per-batch ``perturb`` seeds.
    loss : callable, optional
        ``loss(logits, labels) -> (N,)`` per-sample losses; default cross-entropy.  The step uses their mean.
    perturb : callable, optional
        ``perturb(model, inputs, labels) -> inputs'`` applied to every training batch (e.g. PGD).  If it accepts
        a ``seed`` keyword it is called with a per-batch seed derived from ``(seed, epoch, batch)``.
    input_transform : callable, optional
        Applied to the (perturbed) inputs before the model (e.g. :class:`tribute.Normalize`).
    eval_data : (inputs, labels) or iterable of batches, optional
        Clean accuracy on it is recorded after each epoch as ``accuracy``.
    eval_batch_size : int
        Batch size of that evaluation (for a tensor pair).
    metrics : dict of name -> callable, optional
        ``metric(model) -> float`` evaluated after each epoch with the model in eval mode, recorded by name.
    checkpoint : path, optional
        Written atomically after each epoch (model and optimizer state, epochs done, history, seed and the
        settings that must match on resumption), with a digest that resumption verifies: a damaged file is
        refused with an error naming it (:mod:`tribute.checkpoint`).
    resume : bool
        If ``checkpoint`` exists, continue from it (settings must match) instead of starting afresh.
    progress : bool
        Show a tqdm progress bar over the batches.
    log : callable, optional
        Called with each epoch's record after the checkpoint is written.
    config : dict, optional
        Further settings (plain numbers and strings, e.g. an attack's ε) recorded in the checkpoint, which must
        match on resumption.

    Returns
    -------
    History
        One record per epoch (those of a resumed checkpoint included).
    """
    _check_positive_int("epochs", epochs)
    _check_int("seed", seed)
    _check_bool("resume", resume)
    _check_bool("progress", progress)
    for name, fn in (("loss", loss), ("perturb", perturb), ("input_transform", input_transform), ("log", log)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    metrics = dict(metrics or {})
    for name, fn in metrics.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError("metrics must map names (str) to callables metric(model) -> float")
        if name in ("epoch", "lr", "loss", "train_accuracy", "accuracy", "seconds"):
            raise ValueError(f"metric name {name!r} is taken by the history's own records")
    schedule = _schedule(lr)
    batches = _Batches(train_data, batch_size, "train_data")
    evaluation = None if eval_data is None else _Batches(eval_data, None, "eval_data", default=eval_batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True: there is nothing to train")
    opt = _optimizer(optimizer, params, schedule(0), momentum, weight_decay)
    settings = {"seed": seed, "optimizer": optimizer if isinstance(optimizer, str) else "custom",
                "momentum": momentum, "weight_decay": float(weight_decay), "batch_size": batches.batch_size,
                "samples": batches.samples, "lr": lr if isinstance(lr, (int, float)) else "schedule",
                "perturb": perturb is not None, **_plain_config(config)}
    pass_seed = perturb is not None and accepts_seed(perturb)

    history = History()
    start = 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        start, history = _load_checkpoint(checkpoint, model, opt, settings, epochs)

    device = params[0].device
    bar = None
    if progress and start < epochs:
        from tqdm.auto import tqdm

        per_epoch = batches.count()
        bar = tqdm(total=None if per_epoch is None else per_epoch * (epochs - start), desc="training",
                   unit="batch", initial=0)
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            rate = schedule(epoch)
            for group in opt.param_groups:
                group["lr"] = rate
            total_loss, correct, seen = 0.0, 0, 0
            with torch.random.fork_rng(devices=_cuda_devices(device)):
                torch.manual_seed(_derive(seed, "global", epoch))
                order = torch.Generator().manual_seed(_derive(seed, "shuffle", epoch))
                for b, (x, y) in enumerate(batches.iterate(order)):
                    x, y = x.to(device), y.to(device)
                    model.train()
                    if perturb is not None:
                        kw = {"seed": _derive(seed, "perturb", epoch, b)} if pass_seed else {}
                        x = perturb(model, x, y, **kw).detach()
                        model.train()  # in case perturb left it otherwise (tribute's attacks restore it)
                    logits = model(x if input_transform is None else input_transform(x))
                    losses = _per_sample_loss(loss, logits, y)
                    opt.zero_grad(set_to_none=True)
                    losses.mean().backward()
                    opt.step()
                    total_loss += float(losses.detach().sum())
                    correct += int((logits.detach().argmax(1) == y).sum()) if logits.dim() == 2 else 0
                    seen += len(y)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss / seen:.4f}")
            model.eval()
            record = {"epoch": epoch + 1, "lr": rate, "loss": total_loss / max(seen, 1),
                      "train_accuracy": correct / max(seen, 1)}
            if evaluation is not None:
                record["accuracy"] = accuracy(model, evaluation, input_transform=input_transform)
            for name, fn in metrics.items():
                record[name] = float(fn(model))
            record["seconds"] = time.perf_counter() - t0
            history.records.append(record)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, model, opt, settings, epoch + 1, history)
            if log is not None:
                log(record)
    finally:
        if bar is not None:
            bar.close()
        opt.zero_grad(set_to_none=True)
        model.eval()
    return history


@torch.no_grad()
def _predict(model, x, input_transform):
    return model(x if input_transform is None else input_transform(x))


def accuracy(
    model: nn.Module,
    data,
    *,
    batch_size: int = 256,
    perturb: Perturb | None = None,
    input_transform: Callable | None = None,
) -> float:
    """Fraction of ``data`` that ``model`` classifies right: mean of 1[argmax f(x') = y], x' = perturb(model, x, y).

    ``data`` is an (inputs, labels) pair (taken in order, ``batch_size`` at a time) or an iterable of batches.
    The model is evaluated in eval mode; every module's mode is restored afterwards.  With ``perturb`` (e.g. a
    seeded PGD) this is the robust accuracy under that attack.
    """
    if perturb is not None and not callable(perturb):
        raise TypeError(f"perturb must be callable or None, got {type(perturb).__name__}")
    batches = data if isinstance(data, _Batches) else _Batches(data, None, "data", default=batch_size)
    modes = [(m, m.training) for m in model.modules()]
    device = next((p.device for p in model.parameters()), None)
    correct, seen = 0, 0
    try:
        model.eval()
        for x, y in batches.iterate(None):
            if device is not None:
                x, y = x.to(device), y.to(device)
            if perturb is not None:
                x = perturb(model, x, y)
            correct += int((_predict(model, x, input_transform).argmax(1) == y).sum())
            seen += len(y)
    finally:
        for m, training in modes:
            m.training = training
    if seen == 0:
        raise ValueError("data hold no samples")
    return correct / seen


# -- the trainer hook: a user's train function, or fit ----------------------------------------------------------
def accepts_seed(fn) -> bool:
    """Whether ``fn`` takes a ``seed`` keyword (by name or through ``**kwargs``): then tribute passes one."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


Trainer = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], nn.Module]


def trainer(train_fn=None, train_options: dict | None = None, *, owner: str, defaults: dict | None = None,
            required: tuple[str, ...] = ()) -> Trainer:
    """``train(model, inputs, labels, seed) -> trained model``: the user's ``train_fn`` or :func:`fit`.

    The one hook through which the functions that retrain a model (ROAR, label randomisation) accept a user's
    training.  ``train_fn(model, inputs, labels)`` trains ``model`` and returns it (or None when it trained it in
    place); if it takes a ``seed`` keyword (:func:`accepts_seed`) it gets the caller's seed.  Without one,
    :func:`fit` trains with ``defaults`` updated by ``train_options`` (which must name ``required``; the seed
    comes from the caller, never from ``train_options``).  ``owner`` names the caller in errors.
    """
    if train_fn is not None:
        if not callable(train_fn):
            raise TypeError(f"train_fn must be a callable (model, inputs, labels) -> model, got "
                            f"{type(train_fn).__name__}")
        if train_options:
            raise TypeError("train_options are options of the built-in trainer tribute.training.fit; a train_fn "
                            "takes its own")
        seeded = accepts_seed(train_fn)
        return lambda m, x, y, seed: _trained(m, train_fn(m, x, y, seed=seed) if seeded else train_fn(m, x, y))
    if not isinstance(train_options, dict | None):
        raise TypeError(f"train_options must be a dict, got {type(train_options).__name__}")
    options = {"progress": False, **(defaults or {}), **(train_options or {})}
    missing = [k for k in required if k not in options]
    if missing:
        raise TypeError(f"{owner} trains with tribute.training.fit unless train_fn= is given: pass train_options "
                        f"with {' and '.join(missing)} (e.g. {{'epochs': 30, 'lr': 0.003, 'optimizer': 'adam'}}), or "
                        "a train_fn(model, inputs, labels) -> model")
    if "seed" in (train_options or {}):
        raise TypeError(f"train_options: the trainer's seed is {owner}'s seed=")

    def train(m, x, y, seed):
        fit(m, (x, y), seed=seed, **options)
        return m
    return train


def _trained(model: nn.Module, result) -> nn.Module:
    trained = model if result is None else result
    if not isinstance(trained, nn.Module):
        raise TypeError(f"train_fn must return the trained nn.Module or None, got {type(trained).__name__}")
    return trained


class _Batches:
    """Training or evaluation data as batches: a tensor pair cut by the trainer, or the user's iterable."""

    def __init__(self, data, batch_size, name, default: int = 64):
        self.name = name
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            x, y = data
            if x.dim() < 1 or y.dim() < 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{name}: inputs and labels need the same number of samples along dim 0; got "
                                 f"shapes {tuple(x.shape)} and {tuple(y.shape)}")
            if x.shape[0] == 0:
                raise ValueError(f"{name} hold no samples")
            if not x.is_floating_point():
                raise TypeError(f"{name}: inputs must be floating point, got {x.dtype}")
            self.pair = (x, y)
            self.batch_size = default if batch_size is None else batch_size
            _check_positive_int("batch_size", self.batch_size)
            self.samples = int(x.shape[0])
        elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str)):
            if iter(data) is data:
                raise TypeError(f"{name} is a one-shot iterator; pass a re-iterable (a list of batches, a "
                                "DataLoader) or an (inputs, labels) pair, since it is read once per epoch")
            if batch_size is not None:
                raise ValueError(f"batch_size applies to an (inputs, labels) pair; {name} already gives batches")
            self.pair, self.batch_size, self.samples = None, None, None
            self.iterable = data
        else:
            raise TypeError(f"{name} must be an (inputs, labels) pair of tensors or an iterable of such batches; "
                            f"got {type(data).__name__}")

    def count(self) -> int | None:
        if self.pair is not None:
            return math.ceil(self.samples / self.batch_size)
        try:
            return len(self.iterable)
        except TypeError:
            return None

    def iterate(self, generator: torch.Generator | None):
        """Batches in order, or in a random order drawn from ``generator`` (tensor pairs only)."""
        if self.pair is None:
            for item in self.iterable:
                if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                    raise TypeError(f"{self.name} must yield (inputs, labels) batches, got {type(item).__name__}")
                yield item[0], item[1]
            return
        x, y = self.pair
        index = torch.randperm(self.samples, generator=generator) if generator is not None else None
        for first in range(0, self.samples, self.batch_size):
            if index is None:
                yield x[first:first + self.batch_size], y[first:first + self.batch_size]
            else:
                rows = index[first:first + self.batch_size].to(x.device)
                yield x[rows], y[rows.to(y.device)]


def _per_sample_loss(loss, logits, y) -> torch.Tensor:
    if loss is None:
        if logits.dim() != 2:
            raise ValueError(f"cross-entropy needs logits of shape (N, classes); the model returned "
                             f"{tuple(logits.shape)}. Pass loss= for other outputs")
        return F.cross_entropy(logits, y, reduction="none")
    losses = loss(logits, y)
    if not isinstance(losses, torch.Tensor) or losses.shape != (logits.shape[0],):
        got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"loss must return one loss per sample, shape ({logits.shape[0]},); got {got}")
    return losses


def _schedule(lr) -> Callable[[int], float]:
    def checked(epoch: int) -> float:
        rate = lr(epoch) if callable(lr) else lr
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 or math.isinf(rate):
            where = f"lr({epoch})" if callable(lr) else "lr"
            raise ValueError(f"{where} must be a finite number > 0, got {rate!r}")
        return float(rate)
    checked(0)
    return checked


def _optimizer(optimizer, params, lr, momentum, weight_decay) -> torch.optim.Optimizer:
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                                 or not 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9 if momentum is None else momentum,
                               weight_decay=weight_decay)
    if isinstance(optimizer, str) and momentum is not None:
        raise ValueError(f"momentum applies to optimizer='sgd' only, not {optimizer!r}")
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if callable(optimizer) and not isinstance(optimizer, str):
        if momentum is not None or weight_decay:
            raise ValueError("momentum and weight_decay apply to the named optimizers; set them in your factory")
        made = optimizer(params)
        if not isinstance(made, torch.optim.Optimizer):
            raise TypeError(f"the optimizer factory must return a torch.optim.Optimizer, got {type(made).__name__}")
        return made
    raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))} or a factory "
                     f"optimizer(parameters) -> Optimizer; got {optimizer!r}")


def _plain_config(config) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError("config must be a dict with string keys")
    plain = (type(None), bool, int, float, str)
    out = {f"config.{k}": v if isinstance(v, plain) else repr(v) for k, v in config.items()}
    return out


def _derive(seed: int, *parts) -> int:
    """A 63-bit seed from ``seed`` and ``parts``: independent streams for each (purpose, epoch, batch)."""
    h = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _save_checkpoint(path, model, opt, settings, epochs_done, history) -> None:
    checkpoint_file.save(path, {"format": CHECKPOINT_FORMAT, "epochs_done": epochs_done, "settings": settings,
                                "model": model.state_dict(), "optimizer": opt.state_dict(),
                                "history": history.records})


def _load_checkpoint(path, model, opt, settings, epochs) -> tuple[int, History]:
    """Resume from ``path``: its digest, format, settings and shapes are checked before the model is touched."""
    state = checkpoint_file.load(path)
    if state.get("format") != CHECKPOINT_FORMAT or set(state) != _CHECKPOINT_KEYS:
        raise CheckpointError(f"{path} is not a tribute training checkpoint (format {CHECKPOINT_FORMAT}); "
                              "delete it or pass resume=False to start over")
    different = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
    if different:
        detail = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in different.items())
        raise CheckpointError(f"the checkpoint {path} was written with other settings ({detail}); pass "
                              "resume=False to start afresh, or another checkpoint path")
    done = int(state["epochs_done"])
    if done > epochs:
        raise CheckpointError(f"the checkpoint {path} has {done} epochs done, more than epochs={epochs}")
    own, stored = model.state_dict(), state["model"]
    if stored.keys() != own.keys() or any(stored[k].shape != v.shape for k, v in own.items()):
        raise CheckpointError(f"the checkpoint {path} holds the weights of another model (other parameter names "
                              "or shapes); pass this model's checkpoint, or resume=False to start over")
    try:
        opt.load_state_dict(state["optimizer"])  # checks its groups before it changes anything
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"the checkpoint {path} holds another optimizer's state ({e}); pass resume=False "
                              "to start over") from None
    model.load_state_dict(stored)
    return done, History([dict(r) for r in state["history"]])


def _check_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {v!r}")


def _check_positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def _check_bool(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}")
