"""Extra arguments of the model's forward (``forward_args=``, ``forward_kwargs=``): held constant, not attributed.

An attention mask, sequence lengths, a conditioning vector: the model needs them, the attribution is not
about them.  They go to every forward pass after the inputs (``model(*inputs, *forward_args,
**forward_kwargs)``).  Methods expand the batch (integration steps, noise samples, references), and each
row they send must meet its own sample's arguments, so per-sample arguments are indexed by the sample of
every row, whatever the method.

Which arguments are per sample is stated, never guessed from shapes (a guess breaks at N = 1, or when a
constant's first dimension happens to equal N): as in Captum, every tensor argument is per sample, its dim 0
the batch, and a per-sample tensor whose dim 0 is not N is an error.  A tensor that is the same for every
sample is wrapped in :class:`constant`.  Anything that is not a tensor (a flag, a string, None) is passed as
it is.  Only top-level arguments are inspected: a tensor inside a list or dict is passed unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class constant:  # noqa: N801  (reads as a marker: tribute.constant(table))
    """Marks a forward argument as the same for every sample: passed unchanged to every forward pass."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"constant({self.value!r})"


class ForwardArgs:
    """The checked extra arguments of one call, for ``n`` samples; :meth:`take` gives them for some rows."""

    def __init__(self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, n: int):
        if args is not None and not isinstance(args, (tuple, list)):
            raise TypeError(f"forward_args must be a tuple or list of arguments, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"forward_kwargs must be a dict of keyword arguments, got {type(kwargs).__name__}")
        self.n = n
        self.args = tuple(args or ())
        self.kwargs = dict(kwargs or {})
        for k, v in enumerate(self.args):
            _check(f"forward_args[{k}]", v, n)
        for k, v in self.kwargs.items():
            _check(f"forward_kwargs[{k!r}]", v, n)
        self.per_sample = any(_is_per_sample(v) for v in (*self.args, *self.kwargs.values()))

    @property
    def empty(self) -> bool:
        return not self.args and not self.kwargs

    def take(self, sample: torch.Tensor | None, rows: int) -> tuple[tuple, dict]:
        """The arguments for ``rows`` rows, row r belonging to sample ``sample[r]``.

        ``sample=None`` means the rows are the samples themselves, in order; it is refused when the rows are
        not N (a method that expands the batch must say which sample each row is).
        """
        if sample is None:
            if self.per_sample and rows != self.n:
                raise RuntimeError(
                    f"internal: {rows} rows reached the model without their samples, for {self.n} samples with "
                    "per-sample forward arguments; the method must pass sample= to the forward"
                )
            return tuple(_value(v) for v in self.args), {k: _value(v) for k, v in self.kwargs.items()}
        if len(sample) != rows:
            raise RuntimeError(f"internal: {rows} rows but {len(sample)} sample indices")
        return (tuple(_rows(v, sample) for v in self.args), {k: _rows(v, sample) for k, v in self.kwargs.items()})


    def for_samples(self, sample: torch.Tensor) -> ForwardArgs:
        """The arguments of the samples ``sample`` (a subset or repetition), as the samples of a nested call."""
        sub = ForwardArgs.__new__(ForwardArgs)
        sub.n, sub.per_sample = len(sample), self.per_sample
        picked = self.options_for(sample)  # constants stay marked: a nested call passes them unchanged too
        sub.args, sub.kwargs = picked.get("forward_args", ()), picked.get("forward_kwargs", {})
        return sub


    def options_for(self, sample: torch.Tensor | None = None) -> dict[str, Any]:
        """``forward_args=`` / ``forward_kwargs=`` as a user would pass them to a method explaining the samples
        ``sample`` of this call (all of them for None): per-sample tensors indexed, constants still marked."""
        def pick(v):
            return v.index_select(0, sample.to(v.device)) if sample is not None and isinstance(v, torch.Tensor) else v

        out: dict[str, Any] = {}
        if self.args:
            out["forward_args"] = tuple(pick(v) for v in self.args)
        if self.kwargs:
            out["forward_kwargs"] = {k: pick(v) for k, v in self.kwargs.items()}
        return out


def _is_per_sample(v: Any) -> bool:
    return isinstance(v, torch.Tensor)


def _check(name: str, v: Any, n: int) -> None:
    if isinstance(v, torch.Tensor) and (v.dim() == 0 or v.shape[0] != n):
        shape = tuple(v.shape)
        raise ValueError(
            f"{name} is a tensor, so it is taken as per sample (dim 0 the batch), but its shape {shape} does not "
            f"start with N = {n}; wrap it in tribute.constant(...) if it is the same for every sample"
        )


def _value(v: Any) -> Any:
    return v.value if isinstance(v, constant) else v


def _rows(v: Any, sample: torch.Tensor) -> Any:
    if isinstance(v, torch.Tensor):
        return v.index_select(0, sample.to(v.device))
    return _value(v)
