"""Training the aligned explainer (Zeng et al. 2021, §3.2.3, step 3), on :func:`tribute.training.fit`.

Two modes:

- ``"joint"`` (the paper's Eq 5): classifier and head together, on CE(f(x), y) + λ·L(E(h), g) per image, λ = 0.35
  by default; the classifier's weights change (in place, as with ``fit``: train a copy to keep the original);
- ``"head"`` (not in the paper): the head alone on a frozen, already trained classifier, on L(E(h), g): any existing
  model gets one-pass explanations, its predictions unchanged.  The classifier runs in eval mode and outside the
  trained module (its parameters and batch-norm statistics are never touched); λ has no term to weigh here and is
  refused.

The targets g (:mod:`tribute.explainers.target`) come from an attribution store (``targets=`` a
:class:`tribute.store.Store` or its path, checked to hold the labels' maps of these very samples, by
``target_method``) or are computed now by ``target_method`` on ``twin`` (for small runs).  L is ``loss``
(``"mse"`` on normalised maps by default, or Eq 5's ``"l2"``).

How the targets reach the loss.  ``fit`` shuffles an ``(inputs, labels)`` pair and calls ``loss(logits, labels)``;
each image's target map travels with it as one more input channel (``(N, C + 1, H, W)``), so the trainer's own
seeded shuffling and checkpoints serve unchanged: the trained module splits it off, computes the alignment loss of
the batch beside the logits, and the loss function adds it.  Hence the run is seeded, checkpointed after each
epoch and resumable, and a resumed run equals an uninterrupted one bit for bit (``fit``'s guarantee).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..store import Store, open_store
from ..store.identity import model_identity
from ..training import History, fit
from .aligned import AlignedExplainer, eval_mode
from .target import LOSSES, alignment_loss, targets_from_method, targets_from_store

MODES = ("joint", "head")
PAPER_LAMBDA = 0.35


class _Aligning(nn.Module):
    """What ``fit`` trains: inputs with the target map as a last channel → logits, the batch's alignment loss kept
    for the loss function.  Plain inputs (evaluation) give the logits alone."""

    def __init__(self, explainer: AlignedExplainer, mode: str, loss: str, input_transform):
        super().__init__()
        if mode == "joint":
            self.explainer = explainer
        else:  # the classifier stays out of the trained module: fit neither optimises nor switches it to train mode
            self.head = explainer.head
            object.__setattr__(self, "frozen", explainer)
        self.mode, self.loss, self.transform = mode, loss, input_transform
        self.channels = explainer.input_shape[0]
        self.alignment: torch.Tensor | None = None

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        x, g = packed[:, :self.channels], packed[:, self.channels:]
        x = x if self.transform is None else self.transform(x)
        if self.mode == "joint":
            logits, h = self.explainer.features(x)
            head = self.explainer.head
        else:
            with torch.no_grad():
                logits, h = self.frozen.features(x)
            head = self.head
        self.alignment = alignment_loss(head(h), g, self.loss) if g.shape[1] else None
        return logits


def train_aligned(explainer: AlignedExplainer, train_data: tuple[torch.Tensor, torch.Tensor], *, epochs: int,
                  lr: float, mode: str = "joint", targets=None, twin: nn.Module | None = None,
                  target_method: str = "smoothgrad", target_options: dict[str, Any] | None = None,
                  lam: float | None = None, loss: str = "mse", seed: int = 0, batch_size: int = 64,
                  input_transform=None, checkpoint: str | os.PathLike | None = None, resume: bool = True,
                  progress: bool = False, **fit_options: Any) -> History:
    """Train ``explainer`` (see the module doc) on ``train_data = (inputs, labels)``; the per-epoch history.

    Parameters
    ----------
    mode : "joint" or "head"
        Classifier and head on CE + λ·L (Eq 5), or the head alone on L with the classifier frozen.
    targets : Store or path, optional
        An attribution store of these samples' label maps (:func:`targets_from_store`); else ``twin`` is required.
    twin : nn.Module, optional
        The model whose attributions are the targets: checked against the store's model when both are given, used
        to compute them (``target_method`` with ``target_options``, :func:`targets_from_method`) otherwise.
    lam : float, optional
        λ of Eq 5, >= 0 (joint mode; default 0.35, the paper's).  Refused in head mode.
    loss : "mse" or "l2"
        The alignment loss (:mod:`tribute.explainers.target`).
    epochs, lr, seed, batch_size, checkpoint, resume, progress, **fit_options
        As :func:`tribute.training.fit` (``optimizer``, ``momentum``, ``weight_decay``, ``eval_data``, ``log``, ...;
        each of ``metrics`` is called with the explainer).  ``loss``, ``perturb``, ``config`` and
        ``input_transform`` of ``fit`` are set here (``input_transform`` is applied to the images, not their maps).
    input_transform : callable, optional
        Applied to the images before the classifier (e.g. :class:`tribute.Normalize`).

    The targets are held in memory beside the images (one map per image).
    """
    lam = _check(explainer, train_data, mode, lam, loss, targets, twin)
    for name in ("perturb", "loss", "config", "input_transform"):
        if name in fit_options:
            raise TypeError(f"train_aligned sets fit's {name}= itself (the alignment objective); it cannot be given")
    if targets is not None and target_options is not None:
        raise ValueError("target_options apply to targets computed on the fly (twin= without targets=); a store "
                         "holds maps already computed with its own options")
    if "metrics" in fit_options:  # fit hands its model to a metric: give the user's explainer, not the training view
        fit_options["metrics"] = {k: (lambda _, f=f: f(explainer)) for k, f in dict(fit_options["metrics"]).items()}
    x, y = train_data
    if targets is not None:
        g = targets_from_store(targets, x, y, method=target_method, model=twin)
        origin = {"store": _store_identity(targets)}
    else:
        g = targets_from_method(twin, x, y, target_method, batch_size=batch_size, **(target_options or {}))
        origin = {"twin": model_identity(twin)["state_dict_sha256"], "target_options": repr(target_options)}
    module = _Aligning(explainer, mode, loss, input_transform)

    def objective(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if mode == "head":
            return module.alignment
        return F.cross_entropy(logits, labels, reduction="none") + lam * module.alignment

    config = {"aligned.mode": mode, "aligned.lambda": lam, "aligned.loss": loss, "aligned.layer": explainer.layer,
              "aligned.widths": repr(explainer.head.widths), "aligned.target_method": target_method, **origin}
    if mode == "head":  # the frozen classifier is not in the checkpoint: resuming on another one is refused
        config["aligned.classifier"] = model_identity(explainer.classifier)["state_dict_sha256"]
    packed = torch.cat([x, g.to(x.dtype)], 1)
    with eval_mode(explainer.classifier) if mode == "head" else contextlib.nullcontext():
        return fit(module, (packed, y), epochs=epochs, lr=lr, seed=seed, batch_size=batch_size, loss=objective,
                   checkpoint=checkpoint, resume=resume, progress=progress, config=config, **fit_options)


def _store_identity(targets) -> str:
    """The identity of a store (its manifest's digest), recorded in the checkpoint's settings."""
    store = targets if isinstance(targets, Store) else open_store(targets)
    return store.manifest["identity_sha256"]


def _check(explainer, train_data, mode, lam, loss, targets, twin) -> float | None:
    if not isinstance(explainer, AlignedExplainer):
        raise TypeError(f"train_aligned trains an AlignedExplainer, got {type(explainer).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    if targets is None and twin is None:
        raise ValueError("the alignment targets come from a store (targets=) or are computed on a model (twin=): "
                         "pass one")
    if not (isinstance(train_data, (tuple, list)) and len(train_data) == 2
            and all(isinstance(t, torch.Tensor) for t in train_data)):
        raise TypeError("train_data must be an (inputs, labels) pair of tensors")
    x, y = train_data
    if x.dim() != 4 or tuple(x.shape[1:]) != explainer.input_shape:
        raise ValueError(f"the explainer takes images (N, {', '.join(map(str, explainer.input_shape))}), the "
                         f"input_shape its head was built for; train_data's inputs are {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"train_data needs one label per image: {len(x)} images and labels of shape "
                         f"{tuple(y.shape)}")
    if mode == "head":
        if lam is not None:
            raise ValueError("lam weighs the alignment against cross-entropy in joint training; the head alone "
                             "(mode='head') trains on the alignment loss only: leave lam unset")
        return None
    lam = PAPER_LAMBDA if lam is None else lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 or math.isinf(lam):
        raise ValueError(f"lam (λ of Eq 5) must be a finite number >= 0, got {lam!r}")
    return float(lam)
