"""ROAR and KAR: remove (or keep) what an attribution ranks first, retrain from scratch, and test.

Hooker, Erhan, Kindermans and Kim, *A Benchmark for Interpretability Methods in Deep Neural Networks*
(NeurIPS 2019), §3.  Perturbation curves (:mod:`tribute.metrics.perturbation`) score images the model never
saw in training, so an accuracy drop mixes lost information with distribution shift.  ROAR removes the
shift by retraining: for each fraction t of the features,

1. rank every image's features by the attribution of the trained model f (train and test set alike);
2. **ROAR** (remove and retrain): replace the top-t features of every image by an uninformative value, the
   per-channel mean of the training set; **KAR** (keep and retrain, their appendix): replace all *but* the
   top-t features;
3. train a fresh model of the same architecture on the modified training set and report its accuracy on the
   equally modified test set.

A good ranking makes ROAR's accuracy fall faster than a random ranking's (the information is gone) and KAR's
stay higher (the information is kept).  A random-attribution row (uniform noise, seeded per sample) is always
included as the yardstick, and ``reference`` is the accuracy of the same training on the unmodified data.

**The mask leaks** (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", §3): the *positions* of the replaced features are visible in the modified image (a patch of mean
value), and they depend on the image's class through the attribution, so the retrained model can classify
from the mask alone.  On scikit-learn's digits a classifier trained on nothing but the gradient's removal masks
reaches a test accuracy of 1.0 (``tests/test_metrics_roar.py``), and ROAR with mean replacement then rates the
gradient family *above* random removal at every fraction.  ``replacement="noisy_linear"`` fills the removed
pixels by Rong et al.'s noisy linear imputation from their neighbours instead
(:func:`tribute.metrics.road.noisy_linear_imputation`), which hides the mask's shape; the default stays
Hooker's per-channel mean.

Units.  ``unit="pixel"`` (default) ranks pixels by the channel-reduced map (the sum over channels of
``|a|``, or of ``a`` with ``absolute=False``) and replaces all channels of a pixel together; ``unit="value"``
ranks every input element (each channel value) on its own.  ``patch_size=p`` ranks p×p patches by their
summed score, as :func:`tribute.metrics.pixel_perturbation`.

Ties.  Units with equal scores go to the lower index by default (``ties="index"``, deterministic): raster order,
the top rows first.  Where many scores tie this shapes the mask: integrated gradients and DeepLIFT with a zero
baseline give exactly 0 to every pixel that is 0, and on a black background (87.5 % of the OpenCV digits' pixels)
every fraction beyond the strokes then removes the top rows first, the same rows for both methods.
``ties="random"`` orders equal scores by a random permutation per sample, drawn from ``seed`` and the sample's
position in its set, the same for every method (so ties are not what tells methods apart) and for any
``batch_size``.
We rank by magnitude by default (``absolute=True``): ROAR asks whether a feature carries information, and a
strongly negative attribution marks an informative feature as much as a strongly positive one.

Attributions are computed once, batched, on the user's trained model (never modified: every retraining starts
from a re-initialised deep copy or a fresh ``model_factory()`` instance).  Every run of a repeat starts from
the same initialisation and the same training seed, so rows differ only by the data.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core import options as opt
from ..core.engine import check_model
from ..core.targets import check_target
from ..training import accuracy, trainer
from .common import check_attributions, derived_seed, resolve_target
from .fixed_arguments import fixed_arguments, trainable
from .methods import RANDOM, BoundExplainer, ResolvedMethod, named_methods, random_attribution, resolve_method
from .perturbation import check_fractions, element_mask, unit_counts, unit_ids, unit_ranks
from .reinitialise import randomised_copy
from .road import noisy_linear_imputation
from .view_methods import refuse_options_for_callable

MODES = ("roar", "kar", "both")
UNITS = ("pixel", "value")
REPLACEMENTS = ("mean", "noisy_linear")
TIES = ("index", "random")
DEFAULT_FRACTIONS = (0.2, 0.4, 0.6, 0.8)
#: the built-in trainer's settings unless ``train_options`` override them: Adam at its usual rate.  On the 8×8
#: digits they train an MLP 64-64-10 to a test accuracy of 0.94 and a two-convolution CNN to 0.85 (measured);
#: pass ``train_options`` that train your model well (every row of ROAR is trained the same way)
DEFAULT_TRAINING: dict[str, Any] = {"epochs": 20, "lr": 1e-3, "optimizer": "adam", "batch_size": 64}
#: the target kinds ROAR cannot use, and why
REFUSED_TARGETS = {"tensor": "one tensor cannot serve both the training and the test set; pass 'label', None, "
                             "a class index or a callable"}


# -- the result --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoarResult:
    """Accuracy of the retrained models, per test (ROAR, KAR), method and fraction.

    Attributes
    ----------
    tests : tuple of str
        ``("roar",)``, ``("kar",)`` or ``("roar", "kar")``.
    methods : tuple of str
        The method labels, ``"random"`` (the baseline) included.
    fractions : tuple of float
        The fractions t of the features removed (ROAR) or kept (KAR).
    accuracy : dict
        ``(test, method) -> (accuracy at each fraction)``, the mean over the repeats.
    runs : dict
        ``(test, method) -> ((accuracy at each fraction) for each repeat)``.
    reference : float or None
        Accuracy of the same training on the unmodified data (mean over repeats): the t = 0 point of ROAR.
    original : float
        The user's model's accuracy on the unmodified test set.
    info : dict
        The settings (unit, replacement, sample counts, training) and the wall time.
    """

    tests: tuple[str, ...]
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    accuracy: dict[tuple[str, str], tuple[float, ...]]
    runs: dict[tuple[str, str], tuple[tuple[float, ...], ...]]
    reference: float | None
    original: float
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, str]) -> torch.Tensor:
        """``result["roar", "gradient"]``: (fractions,) float64 tensor of mean accuracies."""
        if key not in self.accuracy:
            raise KeyError(f"no row {key!r}; rows: {', '.join(map(repr, self.accuracy))}")
        return torch.tensor(self.accuracy[key], dtype=torch.float64)

    def std(self, test: str, method: str) -> torch.Tensor:
        """(fractions,) sample standard deviation over the repeats (NaN with one repeat)."""
        runs = torch.tensor(self.runs[test, method], dtype=torch.float64)
        return runs.std(0) if runs.shape[0] > 1 else torch.full((runs.shape[1],), math.nan, dtype=torch.float64)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per (test, method, fraction): test, method, fraction, accuracy, std, repeats; then a row
        ``test="reference"`` (fraction 0) with the accuracy on the unmodified data, if it was measured."""
        out = []
        for (test, method), acc in self.accuracy.items():
            sd = self.std(test, method).tolist()
            for f, a, s in zip(self.fractions, acc, sd, strict=True):
                out.append({"test": test, "method": method, "fraction": f, "accuracy": a, "std": s,
                            "repeats": len(self.runs[test, method])})
        if self.reference is not None:
            out.append({"test": "reference", "method": "", "fraction": 0.0, "accuracy": self.reference,
                        "std": math.nan, "repeats": self.info.get("repeats", 1)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready; NaN as None)."""
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v
        return {"tests": list(self.tests), "methods": list(self.methods), "fractions": list(self.fractions),
                "accuracy": {f"{t}/{m}": list(a) for (t, m), a in self.accuracy.items()},
                "runs": {f"{t}/{m}": [list(r) for r in runs] for (t, m), runs in self.runs.items()},
                "reference": self.reference, "original": self.original,
                "rows": [{k: clean(v) for k, v in row.items()} for row in self.rows],
                "info": {k: clean(v) for k, v in self.info.items()}}

    def to_csv(self, path) -> None:
        """Write :attr:`rows` as CSV (header: test, method, fraction, accuracy, std, repeats)."""
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["test", "method", "fraction", "accuracy", "std", "repeats"])
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})

    def __str__(self) -> str:
        i = self.info
        lines = [f"ROAR/KAR (Hooker et al. 2019): test accuracy of models retrained on {i.get('train samples')} "
                 f"samples with the top-t ranked units ({i.get('unit')}) removed (ROAR) or kept (KAR), "
                 f"{i.get('replacement')} replacement; {i.get('repeats')} repeat(s)",
                 f"original model: {self.original:.3f}" + (
                     "" if self.reference is None else f"   retrained on unmodified data: {self.reference:.3f}")]
        width = max(len("method"), *map(len, self.methods))
        many = i.get("repeats", 1) > 1
        cell = 15 if many else 7
        lines.append(f"{'test':4s}  {'method':{width}s}  " + "  ".join(f"{f'{t:g}':>{cell}s}" for t in self.fractions))
        for (test, method), acc in self.accuracy.items():
            sd = self.std(test, method).tolist()
            cells = [f"{a:.3f} ± {s:.3f}".rjust(cell) if many else f"{a:{cell}.3f}" for a, s in zip(acc, sd,
                                                                                                strict=True)]
            lines.append(f"{test:4s}  {method:{width}s}  " + "  ".join(cells))
        return "\n".join(lines)


# -- ROAR and KAR ------------------------------------------------------------------------------------------------
def roar(
    model: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    test_data: tuple[torch.Tensor, torch.Tensor],
    methods=("gradient",),
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mode: str = "roar",
    unit: str = "pixel",
    absolute: bool = True,
    patch_size=1,
    replacement: str = "mean",
    noise: float = 0.01,
    ties: str = "index",
    target="label",
    train_fn: Callable[..., nn.Module | None] | None = None,
    train_options: dict[str, Any] | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    reference: bool = True,
    repeats: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    forward_args: tuple | None = None,
    forward_kwargs: dict | None = None,
    output=None,
) -> RoarResult:
    """Remove (ROAR) or keep (KAR) the top-t features by each method's attribution, retrain, test (module doc).

    For every method m (and the random baseline), fraction t and repeat r: a fresh model is trained by
    ``train_fn`` on the training images with their top-t units (ROAR) or all but them (KAR) replaced, and its
    accuracy on the equally modified test images is recorded.

    Parameters
    ----------
    model : nn.Module
        The trained model whose attributions rank the features (eval mode; never modified).
    train_data, test_data : (inputs, labels)
        Tensors (N, ...) and integer labels (N,), batch first.
    methods : list
        Registry names, :class:`tribute.Method` classes or instances, callables ``(model, inputs, target) ->
        attributions``, ``(label, method)`` pairs or ``(label, method, options)`` triples.  A ``"random"`` row
        (:func:`random_attribution`) is always added if not given.
    fractions : sequence of float
        Strictly increasing, each in (0, 1) (default ``(0.2, 0.4, 0.6, 0.8)``, Hooker et al.'s t; Zeng et al. 2021).
        Each must leave at least one unit removed and one kept (round(t · units) in [1, units − 1]).
    mode : ``"roar"`` (default), ``"kar"`` or ``"both"`` (the attributions are shared).
    unit : ``"pixel"`` (default: all channels of a pixel together) or ``"value"`` (each input element).
    absolute : rank by |a| (default) or by the signed a.
    patch_size : 1 (default) or p / (p_h, p_w): rank and replace p×p patches (pixel units of images only).
    replacement : ``"mean"`` (default, Hooker et al.: the training set's per-channel mean; per-feature mean for
        (N, D) inputs) or ``"noisy_linear"`` (Rong et al.'s noisy linear imputation, σ = ``noise``; images only).
    ties : ``"index"`` (default: equal scores in index order) or ``"random"`` (a seeded random order per sample,
        shared by the methods); module doc.
    target : ``"label"`` (default: attribute the true class), ``None`` (the model's predicted class), an int,
        or a callable (as in :mod:`tribute.core.targets`).
    train_fn : callable, optional
        ``train_fn(fresh_model, inputs, labels)`` trains the fresh model and returns it (or None when it trained
        it in place); if it accepts a ``seed`` keyword it gets the repeat's training seed.  Default:
        :func:`tribute.training.fit` with :data:`DEFAULT_TRAINING` updated by ``train_options``.
    train_options : dict, optional
        Options of :func:`tribute.training.fit` for the default trainer (not ``seed``: that comes from ``seed``).
    model_factory : callable, optional
        ``model_factory() -> nn.Module``, a fresh untrained model; called with torch's CPU generator seeded from
        the repeat's initialisation seed (then restored).  Default: a deep copy of ``model`` with every
        parameter re-initialised as :func:`tribute.metrics.reinitialise.reinitialise` does (PyTorch's default
        initialisation) and batch-norm statistics reset.
    reference : also train on the unmodified data (the t = 0 accuracy).
    repeats : independent repeats (initialisation and training seeds differ; Hooker et al. use 5).
    seed : seeds the initialisations, the training, the random baseline, seeded methods and the imputation noise.
    batch_size : samples attributed (and modified) at once (default 256).
    progress : a progress bar over the retrainings.
    forward_args, forward_kwargs : extra arguments of every forward pass that are the same for every sample (each
        tensor wrapped in ``tribute.constant``; a per-sample tensor is refused, since the training and test sets
        are different samples); they reach the attributions, the accuracies and the retrained models.
    output : which part of a structured output holds the logits (:mod:`tribute.core.outputs`).  With forward
        arguments or ``output=`` the trainer gets the fresh model as
        :class:`tribute.metrics.fixed_arguments.FixedArguments`, whose ``forward(x)`` returns the logits.

    Several inputs (a tuple of tensors) are refused: the units ranked and replaced are those of one input
    tensor, and the trainer trains on one.

    Returns
    -------
    RoarResult
    """
    t0 = time.perf_counter()
    _check_models(model, model_factory)
    fixed, options = _forward_options(forward_args, forward_kwargs, output)
    (x_train, y_train), (x_test, y_test) = _check_data("train_data", train_data), _check_data("test_data", test_data)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"train_data and test_data inputs differ in shape: {tuple(x_train.shape[1:])} and "
                         f"{tuple(x_test.shape[1:])}")
    fractions_t = check_fractions(fractions, closed=False)
    repeats, seed, batch_size = _check_options(mode, unit, replacement, absolute, reference, progress, noise, x_train,
                                               repeats, seed, batch_size, ties)
    check_target(target, label=True, refuse=REFUSED_TARGETS)
    train = trainer(train_fn, train_options, owner="roar", defaults=DEFAULT_TRAINING)
    items = _methods(methods, options)
    ids, units = unit_ids(_ranked_shape(x_train, unit), patch_size)
    counts = _unit_counts(fractions_t, units, unit)

    scorer = trainable(model, fixed)  # the model as the accuracies and the trainer call it: model(x) -> logits
    ranks = _rankings(items, model, scorer, options, {"train": (x_train, y_train), "test": (x_test, y_test)}, seed,
                      ties, target=target, unit=unit, absolute=absolute, ids=ids, units=units, batch_size=batch_size)
    original = accuracy(scorer, (x_test, y_test), batch_size=batch_size)
    removal = _Removal(ids, _channel_mean(x_train), replacement, noise, derived_seed(seed, "imputation"), batch_size)
    retrain = _Retraining(model, model_factory, train, (x_train, y_train), (x_test, y_test), batch_size, fixed)
    tests = ("roar", "kar") if mode == "both" else (mode,)
    runs, references = retrain.all(tests, ranks, counts, removal, repeats, seed, reference, progress)
    info = {"unit": unit, "absolute": absolute, "patch_size": patch_size, "replacement": replacement, "ties": ties,
            "noise": noise if replacement == "noisy_linear" else None, "target": _target_name(target),
            "train samples": int(x_train.shape[0]), "test samples": int(x_test.shape[0]), "units": units,
            "repeats": repeats, "seed": seed, "training": _training_name(train_fn, train_options),
            "seconds": round(time.perf_counter() - t0, 3)}
    return RoarResult(
        tests=tests, methods=tuple(m.label for m in items), fractions=tuple(fractions_t.tolist()),
        accuracy={key: tuple(torch.tensor(v, dtype=torch.float64).mean(0).tolist()) for key, v in runs.items()},
        runs={key: tuple(tuple(row) for row in v) for key, v in runs.items()},
        reference=sum(references) / len(references) if references else None, original=original, info=info)


def kar(model: nn.Module, train_data, test_data, methods=("gradient",), **options) -> RoarResult:
    """KAR (keep and retrain): :func:`roar` with ``mode="kar"``; the same options."""
    if "mode" in options:
        raise TypeError("kar() sets mode='kar'; call roar(..., mode=...) to choose")
    return roar(model, train_data, test_data, methods, mode="kar", **options)


# -- helpers -----------------------------------------------------------------------------------------------------
def _check_data(name: str, data) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (tuple, list)):
        raise TypeError(f"{name}: the inputs are a {type(data[0]).__name__} of {len(data[0])}; ROAR ranks and replaces "
                        "the units of one input tensor and retrains on one, so a model taking several inputs is not "
                        "supported (an input that is the same for every sample can be passed as "
                        "forward_args=(tribute.constant(t),))")
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise TypeError(f"{name} must be a pair of tensors (inputs, labels)")
    x, y = data
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} is empty or not batch first (inputs of shape {tuple(x.shape)}): ROAR needs samples")
    if not x.is_floating_point():
        raise TypeError(f"{name}: inputs must be floating point, got {x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be a 1-D integer tensor of length {x.shape[0]}, got "
                         f"{y.dtype} {tuple(y.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: inputs contain NaN or inf")
    return x.detach(), y


def _check_models(model, model_factory) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_model(model)  # before any forward pass: a refused model is left as it was
    if model_factory is not None and not callable(model_factory):
        raise TypeError(f"model_factory must be a callable () -> nn.Module, got {type(model_factory).__name__}")


def _target_name(target) -> str | int | None:
    return target if isinstance(target, (str, int, type(None))) else "callable"


def _training_name(train_fn, train_options) -> str:
    return "train_fn" if train_fn is not None else repr({**DEFAULT_TRAINING, **(train_options or {})})


def _check_options(mode, unit, replacement, absolute, reference, progress, noise, x_train, repeats, seed,
                   batch_size, ties) -> tuple[int, int, int]:
    """The options checked; returns the repeats, the seed and the batch size (default 256)."""
    opt.choice(MODES)("mode", mode)
    opt.choice(TIES)("ties", ties)
    opt.choice(UNITS)("unit", unit)
    opt.choice(REPLACEMENTS)("replacement", replacement)
    opt.boolean("absolute", absolute)
    opt.boolean("reference", reference)
    opt.boolean("progress", progress)
    opt.real(0)("noise", noise)
    if replacement == "noisy_linear" and x_train.dim() != 4:
        raise ValueError(f"replacement='noisy_linear' imputes pixels of (N, C, H, W) images; the inputs have shape "
                         f"{tuple(x_train.shape)}")
    return (opt.integer(1)("repeats", repeats), opt.integer(0)("seed", seed),
            opt.optional(opt.integer(1))("batch_size", batch_size) or 256)


def _unit_counts(fractions: torch.Tensor, units: int, unit: str) -> torch.Tensor:
    """Units removed at each fraction; each must remove at least one unit and keep at least one."""
    counts = unit_counts(fractions, units)
    bad = [(float(t), int(k)) for t, k in zip(fractions, counts, strict=True) if not 0 < k < units]
    if bad:
        raise ValueError(f"fractions: {bad[0][0]} of {units} {unit} units rounds to {bad[0][1]}; every fraction must "
                         f"remove at least one unit and keep at least one")
    return counts


@dataclass(frozen=True)
class _Removal:
    """How the top-k units of a sample are removed (or, for KAR, kept): which units, and what replaces them."""

    ids: torch.Tensor
    fill: torch.Tensor
    replacement: str
    noise: float
    seed: int | None
    batch_size: int

    def __call__(self, x: torch.Tensor, ranks: torch.Tensor, k: int, keep: bool) -> torch.Tensor:
        """``x`` with the top-k units of each sample replaced (or, with ``keep``, all the others)."""
        out = []
        for first in range(0, x.shape[0], self.batch_size):
            xb = x[first:first + self.batch_size]
            top = element_mask(ranks[first:first + self.batch_size].long(), self.ids,
                               torch.full((xb.shape[0],), k))
            removed = (~top if keep else top).to(xb.device)
            if self.replacement == "mean":
                out.append(torch.where(removed, self.fill, xb))
            else:
                out.append(noisy_linear_imputation(xb, removed, noise=self.noise, seed=self.seed))
        return torch.cat(out)


@dataclass(frozen=True)
class _Retraining:
    """Fresh models trained on modified training data and tested on equally modified test data."""

    model: nn.Module
    model_factory: Callable | None
    train: Callable
    train_data: tuple[torch.Tensor, torch.Tensor]
    test_data: tuple[torch.Tensor, torch.Tensor]
    batch_size: int
    fixed: dict[str, Any] | None = None  # the constant forward arguments and output= (fixed_arguments)

    def accuracy(self, x_train: torch.Tensor, x_test: torch.Tensor, seeds: tuple[int, int]) -> float:
        """Accuracy on ``x_test`` of a fresh model trained on ``x_train`` (seeds: initialisation, training)."""
        fresh = trainable(_fresh_model(self.model, self.model_factory, seeds[0]), self.fixed)
        trained = self.train(fresh, x_train, self.train_data[1], seeds[1])
        return accuracy(trained.eval(), (x_test, self.test_data[1]), batch_size=self.batch_size)

    def all(self, tests, ranks, counts, removal: _Removal, repeats: int, seed: int, reference: bool, progress: bool):
        """Every (test, method) row of every repeat, and the reference accuracies."""
        total = repeats * (len(tests) * len(ranks) * len(counts) + int(reference))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="ROAR/KAR", unit="model")
        runs: dict[tuple[str, str], list[list[float]]] = {(t, label): [] for t in tests for label in ranks}
        references: list[float] = []
        data = (self.train_data[0], self.test_data[0])
        try:
            for r in range(repeats):
                seeds = (derived_seed(seed, f"init/{r}"), derived_seed(seed, f"train/{r}"))
                if reference:
                    references.append(self.accuracy(*data, seeds))
                    if bar is not None:
                        bar.update(1)
                for test, label in runs:
                    row = []
                    for k in counts.tolist():
                        modified = [removal(x, rk, k, test == "kar") for x, rk in zip(data, ranks[label], strict=True)]
                        row.append(self.accuracy(*modified, seeds))
                        if bar is not None:
                            bar.update(1)
                    runs[test, label].append(row)
        finally:
            if bar is not None:
                bar.close()
        return runs, references


def _fresh_model(model: nn.Module, model_factory, init_seed: int) -> nn.Module:
    """An untrained model: ``model_factory()`` under a seeded CPU generator, or a re-initialised deep copy."""
    if model_factory is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            fresh = model_factory()
        if not isinstance(fresh, nn.Module):
            raise TypeError(f"model_factory must return an nn.Module, got {type(fresh).__name__}")
        if fresh is model:
            raise ValueError("model_factory returned the user's model itself; it must build a new one")
        return fresh
    try:
        fresh = randomised_copy(model, [""], seed=init_seed)
    except ValueError as e:
        raise ValueError(f"{e}. ROAR re-initialises a copy of the model; pass model_factory= to build fresh "
                         "models instead") from None
    for m in fresh.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.reset_running_stats()
    return fresh


def _ranked_shape(x: torch.Tensor, unit: str) -> tuple[int, ...]:
    """The shape of one sample's ranking scores: (1, *spatial) for pixel units of images, else the input's."""
    if unit == "pixel" and x.dim() >= 3:
        return (1, *x.shape[2:])
    return tuple(x.shape[1:])


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    """The per-channel mean over the training set, shaped to broadcast against one batch (per feature for (N, D))."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dim=dims, keepdim=True)


def _forward_options(forward_args, forward_kwargs, output) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """What the trainer's model holds fixed (:func:`fixed_arguments`: constants only) and what the methods are
    given (the user's options, constants still marked)."""
    fixed = fixed_arguments("roar", forward_args, forward_kwargs, output)
    given = {"forward_args": forward_args, "forward_kwargs": forward_kwargs, "output": output}
    return fixed, {k: v for k, v in given.items() if v is not None}


def _methods(methods, options: dict[str, Any]) -> list[ResolvedMethod]:
    """The user's methods resolved, with the random baseline added; a plain callable cannot take ``options``."""
    items = named_methods(methods)
    if RANDOM not in [m.label for m in items]:
        items.append(resolve_method(random_attribution))
    for m in items:
        refuse_options_for_callable(m, options, "roar")
    return items


def _bind(m: ResolvedMethod, model: nn.Module, seed: int | None, options: dict[str, Any]) -> BoundExplainer:
    """``m`` bound to the user's model with the call's forward arguments and ``output=`` (the random baseline,
    which ignores the model, takes none)."""
    if m.klass is None:
        return m.bind(model, seed=seed)
    return m.bind(model, seed=seed, **options)


def _rankings(items, model, scorer, options, data: dict, seed: int, ties: str, **ranking) -> dict:
    """{method label: (ranks of the training set, ranks of the test set)}; with ``ties="random"`` each set's
    samples draw their tie order from the set's own seed, the same for every method."""
    def tie_seed(part: str) -> int | None:
        return derived_seed(seed, f"ties/{part}") if ties == "random" else None

    return {m.label: tuple(_ranks(_bind(m, model, derived_seed(seed, "method"), options), scorer, m.label, *pair,
                                  tie_seed=tie_seed(part), **ranking) for part, pair in data.items())
            for m in items}


def _tie_keys(tie_seed: int, first: int, n: int, units: int) -> torch.Tensor:
    """(n, units) random keys of samples first .. first + n − 1, each drawn from its own generator (seeded by the
    sample's position), so that a sample's keys do not depend on the batch it is in."""
    return torch.stack([torch.rand(units, generator=torch.Generator().manual_seed(derived_seed(tie_seed, str(i))))
                        for i in range(first, first + n)])


def _ranks(explain, scorer, label, x, y, *, target, unit, absolute, ids, units, batch_size,
           tie_seed: int | None = None) -> torch.Tensor:
    """(N, units) int32: each unit's position in the ranking (0 = top) by the method's attribution scores
    (``scorer``: the model as ``model(x) -> logits``, for the predicted class of ``target=None``); equal scores in
    index order, or in a random order per sample from ``tie_seed``."""
    out = []
    for first in range(0, x.shape[0], batch_size):
        xb = x[first:first + batch_size]
        if target == "label":
            t = y[first:first + batch_size].to(xb.device)
        elif target is None:
            t = resolve_target(scorer, xb, None)
        else:
            t = target
        a = explain(xb, t)
        try:
            a = check_attributions(xb, a)
        except (TypeError, ValueError) as e:
            raise type(e)(f"method {label!r}: {e}") from None
        s = a.abs() if absolute else a
        if unit == "pixel" and s.dim() >= 3 and s.shape[1] != 1:
            s = s.sum(1, keepdim=True)
        elif unit == "value" and s.shape != xb.shape:
            raise ValueError(f"unit='value' ranks each input element, but method {label!r} returned a map of shape "
                             f"{tuple(s.shape)}; use unit='pixel'")
        keys = None if tie_seed is None else _tie_keys(tie_seed, first, xb.shape[0], units)
        out.append(unit_ranks(s, ids, units, "morf", tie_keys=keys).to(torch.int32))
    return torch.cat(out)


__all__ = ["RoarResult", "kar", "roar"]
