"""Targets: which score S_c(x) an attribution explains.

``target`` may be
- ``None``: the class the model predicts for the clean input (argmax), fixed across the steps and
  noise samples of that input;
- an ``int``: the same class for every sample;
- a 1-D integer tensor: one class per sample;
- a callable ``f(outputs) -> scores`` with one score per *row* (e.g. ``lambda out: out[:, p] - out[:, q]``
  for a contrast, or ``lambda out: out[:, 0]`` for a regression output).  Methods that expand the
  batch (integration steps, noise samples, references) call it on the expanded batch, so it must act
  row by row and never mix rows (no batch means or softmax across dim 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class Target:
    """A user's ``target`` normalised for ``n`` samples; :meth:`scores` picks one score per row."""

    def __init__(self, target, n: int):
        self.fn: Callable | None = None
        self.index: torch.Tensor | None = None
        self.n = n
        kind = check_target(target, samples=n)
        if kind == "callable":
            self.fn = target
        elif kind == "int":
            self.index = torch.full((n,), target, dtype=torch.long)
        elif kind == "tensor":
            self.index = target.detach().to("cpu", torch.long).expand(n)

    @property
    def needs_argmax(self) -> bool:
        return self.fn is None and self.index is None

    def set_argmax(self, outputs: torch.Tensor) -> None:
        """Fix ``target=None`` to the predicted classes, from the model's outputs on the clean inputs."""
        _check_logits(outputs, self.n)
        self.index = outputs.detach().argmax(dim=1).cpu()

    def resolve(self, clean_outputs: torch.Tensor) -> None:
        """Fix ``target=None`` from the model's outputs on the clean inputs; a given target is left as it is."""
        if self.needs_argmax:
            self.set_argmax(clean_outputs)

    def scores(self, outputs: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """One score per row of ``outputs``; ``sample[r]`` is the sample that row ``r`` belongs to."""
        rows = outputs.shape[0]
        if self.fn is not None:
            s = self.fn(outputs)
            if not isinstance(s, torch.Tensor) or s.shape != (rows,):
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(
                    f"a callable target must return one score per row: expected shape ({rows},), got {got}"
                )
            return s
        if self.index is None:
            raise RuntimeError("target=None must be fixed with set_argmax before scoring")
        _check_logits(outputs, rows)
        idx = self.index[sample.cpu()]
        c = outputs.shape[1]
        if bool((idx >= c).any()):
            raise IndexError(f"target class {int(idx.max())} is out of range for a model with {c} outputs")
        return outputs.gather(1, idx.to(outputs.device).unsqueeze(1)).squeeze(1)

    def for_samples(self, sample: torch.Tensor) -> Target:
        """The target for a subset (or repetition) of the samples, e.g. noisy copies of each input."""
        t = Target.__new__(Target)
        t.n, t.fn = len(sample), self.fn
        t.index = None if self.index is None else self.index[sample.cpu()]
        return t


#: what :func:`check_target` says a target is
TARGET_KINDS = ("none", "label", "int", "tensor", "callable")


def check_target(target, *, samples: int | None = None, label: bool = False,
                 refuse: dict[str, str] | None = None) -> str:
    """Check a user's ``target`` before any forward pass and say which kind it is (one of :data:`TARGET_KINDS`).

    Every entry point that takes a target checks it here, so the same target gets the same verdict everywhere:
    a bool is refused, class indices must be integers >= 0, a tensor is 0-D or 1-D (with ``samples`` entries
    when ``samples`` is given).  ``label=True`` also accepts ``"label"`` (the data's labels, for the functions
    that take data sets).  ``refuse`` maps a kind to the reason a family cannot use it (e.g. ROAR: ``{"tensor":
    "one tensor cannot serve both the training and the test set"}``); the error states that reason.
    """
    kind = _kind(target, label)
    if kind == "tensor":
        _check_tensor(target, samples)
    elif kind == "int" and target < 0:
        raise IndexError(f"target classes must be >= 0, got {target}")
    if refuse and kind in refuse:
        raise ValueError(f"a target {_DESCRIPTIONS[kind]} is not accepted here: {refuse[kind]}")
    return kind


_DESCRIPTIONS = {"none": "None", "label": "'label'", "int": "int", "tensor": "tensor", "callable": "callable"}


def _kind(target, label: bool) -> str:
    accepted = "an int, a 1-D tensor of ints, a callable" + (", 'label'" if label else "") + " or None"
    if target is None:
        return "none"
    if isinstance(target, str):
        if label and target == "label":
            return "label"
        raise TypeError(f"target must be {accepted}; got the string {target!r}")
    if isinstance(target, torch.Tensor):
        return "tensor"
    if callable(target):
        return "callable"
    if isinstance(target, bool):
        raise TypeError(f"target must be {accepted}; got a bool")
    if isinstance(target, int):
        return "int"
    raise TypeError(f"target must be {accepted}; got {type(target).__name__}")


def _check_tensor(target: torch.Tensor, samples: int | None) -> None:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"a target tensor must hold integers, got dtype {target.dtype}")
    if target.dim() > 1 or (samples is not None and target.dim() == 1 and target.shape[0] != samples):
        expected = f"({samples},)" if samples is not None else "(N,)"
        raise ValueError(f"a target tensor needs one class per sample: expected shape {expected}, "
                         f"got {tuple(target.shape)}")
    if target.numel() and bool((target < 0).any()):
        raise IndexError(f"target classes must be >= 0, got {target.min().item()}")


def _check_logits(outputs: torch.Tensor, rows: int) -> None:
    if outputs.dim() != 2 or outputs.shape[0] != rows:
        raise ValueError(
            f"an integer or None target needs model outputs of shape (N, classes); got {tuple(outputs.shape)} "
            f"for N = {rows}. Pass a callable target for other outputs"
        )
