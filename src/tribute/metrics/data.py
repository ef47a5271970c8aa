"""The data of :func:`tribute.evaluate`: batches of inputs (a tensor, or a tuple of tensors for a model taking
several) with their labels, and the forward arguments of the whole data cut per batch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..core import options as opt
from ..core.inputs import Layout

#: samples per batch of tensor data when ``batch_size`` is not given
DEFAULT_BATCH = 64


def batches_of(data, batch_size) -> tuple[Iterable[tuple[Any, torch.Tensor | None]], int | None]:
    """The data as (inputs, labels or None) batches, and their number when known; inputs are a tensor or a
    tuple of tensors."""
    batch_size = opt.optional(opt.integer(1))("batch_size", batch_size)
    pair = _as_pair(data)
    if pair is not None:
        x, y = pair
        n = count_samples(x)
        if n == 0:
            raise ValueError("data hold no samples: nothing to evaluate")
        if y is not None and (y.dim() != 1 or y.shape[0] != n):
            raise ValueError(f"data: labels must be 1-D with one entry per sample ({n}), got shape {tuple(y.shape)} "
                             "(two tensors are (inputs, labels); the inputs of a model taking several are nested: "
                             "((img, tab), labels) or ((img, tab), None))")
        size = batch_size or DEFAULT_BATCH
        starts = range(0, n, size)
        return ((_rows(x, i, i + size), None if y is None else y[i:i + size]) for i in starts), len(starts)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        if batch_size is not None:
            raise ValueError("batch_size applies to tensor data; an iterable of batches gives its own batches")
        try:
            count = len(data)
        except TypeError:
            count = None
        return (_split(item) for item in data), count
    raise TypeError(f"data must be inputs, an (inputs, labels) pair of tensors or an iterable of batches; got "
                    f"{type(data).__name__}")


def _is_inputs(v) -> bool:
    """A tensor, or a non-empty tuple or list of tensors (the inputs of a model taking several)."""
    return isinstance(v, torch.Tensor) or (isinstance(v, (tuple, list)) and len(v) > 0
                                           and all(isinstance(t, torch.Tensor) for t in v))


def _as_pair(data):
    """Tensor data as (inputs, labels or None); None for an iterable of batches.  Two tensors are (inputs,
    labels); several inputs are nested: ((img, tab), labels) or ((img, tab), None)."""
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x, y
        if isinstance(x, (tuple, list)) and _is_inputs(x) and (y is None or isinstance(y, torch.Tensor)):
            return tuple(x), y
    return None


def _rows(inputs, start: int, stop: int):
    return inputs[start:stop] if isinstance(inputs, torch.Tensor) else tuple(t[start:stop] for t in inputs)


def _split(item) -> tuple[Any, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and item and _is_inputs(item[0]):
        y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        return (item[0] if isinstance(item[0], torch.Tensor) else tuple(item[0])), y
    raise TypeError(f"data must yield input tensors or (inputs, labels) batches, got {type(item).__name__}")


class DataArguments:
    """``forward_args`` / ``forward_kwargs`` of :func:`evaluate` for the whole data, cut per batch: a tensor holds
    one row per sample of the data, in order; :class:`tribute.constant` and anything else pass whole."""

    def __init__(self, args, kwargs, output):
        if args is not None and not isinstance(args, (tuple, list)):
            raise TypeError(f"forward_args must be a tuple or list of arguments, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"forward_kwargs must be a dict of keyword arguments, got {type(kwargs).__name__}")
        self.args, self.kwargs, self.output = args, kwargs, output
        named = [(f"forward_args[{k}]", v) for k, v in enumerate(args or ())]
        self.tensors = named + [(f"forward_kwargs[{k!r}]", v) for k, v in (kwargs or {}).items()]
        self.tensors = [(name, v) for name, v in self.tensors if isinstance(v, torch.Tensor)]

    def batch(self, offset: int, n: int) -> dict[str, Any]:
        """The options of the batch of samples offset … offset + n − 1 (what a metric or method is given)."""
        for name, v in self.tensors:
            if v.dim() == 0 or v.shape[0] < offset + n:
                raise ValueError(f"{name} has {0 if v.dim() == 0 else v.shape[0]} rows, fewer than the samples of the "
                                 "data: a tensor forward argument holds one row per sample of the whole data "
                                 "(wrap it in tribute.constant(...) if it is the same for every sample)")

        def cut(v):
            return v[offset:offset + n] if isinstance(v, torch.Tensor) else v  # a constant(...) is not a tensor
        out: dict[str, Any] = {}
        if self.args:
            out["forward_args"] = tuple(cut(v) for v in self.args)
        if self.kwargs:
            out["forward_kwargs"] = {k: cut(v) for k, v in self.kwargs.items()}
        if self.output is not None:
            out["output"] = self.output
        return out

    def check_total(self, samples: int) -> None:
        for name, v in self.tensors:
            if v.shape[0] != samples:
                raise ValueError(f"{name} has {v.shape[0]} rows but the data hold {samples} samples")


def count_samples(inputs) -> int:
    """The number of samples of a batch's inputs (a tensor or a tuple of tensors, checked to agree)."""
    _, xs = Layout.of(inputs)
    return 0 if xs[0].dim() == 0 else xs[0].shape[0]


__all__: list[str] = []
