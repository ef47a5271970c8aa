"""The inputs a model takes: one tensor or a tuple of tensors, and the one tensor a method works on.

Every method is written for one batch tensor x (N, …).  A model with several inputs (an image and a table,
two images) is explained by *packing*: each sample's inputs are flattened and laid end to end in one row of
an (N, D) tensor, D = Σ_k D_k.  The forward pass unpacks the rows into the model's inputs with ``split`` and
``reshape``, which are linear, so gradients and every backward rule see the same graph as with separate
tensors; the attribution is unpacked into one tensor per input, each of its input's shape.  Integration
steps, noise samples and references then move all the inputs of a sample together, row by row, and
completeness (Σ over all inputs' features) holds over the inputs jointly.

Options that describe the inputs (a baseline, references, a noise level) may be given once for all inputs
or as a tuple with one entry per input; :meth:`Layout.pack_option` resolves each entry against its own
input (so a ``"blur"`` baseline blurs the image and not the table) and packs the results like the inputs.
A single tensor is its own packing: nothing is copied or reshaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


class Layout:
    """How a user's inputs map to the packed tensor a method works on (see the module doc)."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[torch.dtype], single: bool):
        self.shapes = tuple(tuple(s) for s in shapes)  # per-sample shapes (without the batch dim)
        self.dtypes = tuple(dtypes)
        self.sizes = tuple(math.prod(s) for s in self.shapes)
        self.single = single

    @property
    def count(self) -> int:
        """How many inputs the model takes."""
        return len(self.shapes)

    @classmethod
    def of(cls, inputs: Any) -> tuple[Layout, tuple[torch.Tensor, ...]]:
        """The layout of ``inputs`` (a tensor, or a tuple or list of tensors) and its tensors, checked:
        every input is a tensor with the samples along dim 0, all with the same number of samples."""
        if isinstance(inputs, torch.Tensor):
            return cls([tuple(inputs.shape[1:])], [inputs.dtype], single=True), (inputs,)
        if not isinstance(inputs, (tuple, list)):
            raise TypeError(f"inputs must be a torch.Tensor or a tuple of tensors, got {type(inputs).__name__}")
        if len(inputs) == 0:
            raise ValueError("inputs is an empty tuple: give at least one tensor")
        for k, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"inputs[{k}] must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() < 1:
                raise ValueError(f"inputs[{k}] must be a batch with the samples along dim 0, got a 0-d tensor")
        sizes = [t.shape[0] for t in inputs]
        if len(set(sizes)) > 1:
            listed = ", ".join(f"inputs[{k}]: {n}" for k, n in enumerate(sizes))
            raise ValueError(f"the inputs disagree in their number of samples (dim 0): {listed}")
        dtypes = {t.dtype for t in inputs}
        if len(dtypes) > 1:
            listed = ", ".join(f"inputs[{k}]: {t.dtype}" for k, t in enumerate(inputs))
            raise TypeError(
                f"the inputs have different dtypes ({listed}); attributed inputs share one dtype. Pass inputs "
                "that are not attributed (token ids, masks, lengths) with forward_args= or forward_kwargs="
            )
        if len({t.device for t in inputs}) > 1:
            raise ValueError(f"the inputs lie on different devices: {[str(t.device) for t in inputs]}")
        return cls([tuple(t.shape[1:]) for t in inputs], [t.dtype for t in inputs], single=False), tuple(inputs)

    def pack(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """One row per sample holding all of its inputs, flattened (the tensor itself for a single input)."""
        if self.single:
            return xs[0]
        return torch.cat([x.reshape(x.shape[0], -1) for x in xs], 1)

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The inputs held in the packed rows ``x`` (views where possible), in the model's argument order."""
        if self.single:
            return (x,)
        lead = x.shape[:-1]
        return tuple(p.reshape(*lead, *s) for p, s in zip(x.split(self.sizes, -1), self.shapes, strict=True))

    def result(self, a: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """An attribution of the packed rows in the user's structure: a tensor, or one tensor per input."""
        return a if self.single else self.unpack(a)

    def entries(self, name: str, value: Any) -> tuple:
        """``value`` per input: a tuple with one entry per input, or the same value for every input."""
        if isinstance(value, tuple) and not self.single:
            if len(value) != self.count:
                raise ValueError(f"{name} has {len(value)} entries but the model takes {self.count} inputs")
            return value
        if isinstance(value, tuple) and self.single and len(value) == 1:
            return value
        if isinstance(value, tuple) and self.single:
            raise ValueError(f"{name} is a tuple of {len(value)} entries but the inputs are one tensor")
        return (value,) * self.count

    def pack_option(self, name: str, value: Any, xs: Sequence[torch.Tensor],
                    resolve: Callable[[Any, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """An option describing each sample's inputs, resolved per input (``resolve(entry, x_k)`` gives a tensor
        of x_k's shape) and packed like the inputs."""
        parts = [resolve(v, x) for v, x in zip(self.entries(name, value), xs, strict=True)]
        return self.pack(parts)

    def pack_references(self, name: str, value: Any) -> torch.Tensor:
        """Reference inputs (M, …) per input (a tuple of tensors, one per input) packed into (M, D)."""
        if self.single:
            return value[0] if isinstance(value, tuple) and len(value) == 1 else value
        refs = self.entries(name, value)
        for k, (r, s) in enumerate(zip(refs, self.shapes, strict=True)):
            if not isinstance(r, torch.Tensor) or tuple(r.shape[1:]) != s:
                got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
                raise ValueError(f"{name}[{k}] must be a tensor of shape (M, {', '.join(map(str, s))}), got {got}")
        if len({r.shape[0] for r in refs}) > 1:
            raise ValueError(f"{name}: every input needs the same number of references, got "
                             f"{[r.shape[0] for r in refs]}")
        return self.pack(refs)

    def per_feature(self, name: str, value: Any, like: torch.Tensor) -> torch.Tensor | float:
        """A number per input (e.g. a noise level) as one value per packed feature (D,), or the number itself
        when it is the same for all inputs."""
        entries = self.entries(name, value)
        if self.single or len(set(entries)) == 1:
            return entries[0]
        return torch.cat([torch.full((n,), float(v), dtype=like.dtype, device=like.device)
                          for v, n in zip(entries, self.sizes, strict=True)])

    def value_range(self, x: torch.Tensor) -> torch.Tensor:
        """max − min of each sample's values, per input: (N, 1, …) for one input, (N, D) for packed inputs
        (each input's features carry that input's range), to broadcast against ``x``."""
        if self.single:
            flat = x.flatten(1)
            return (flat.amax(1) - flat.amin(1)).view(-1, *([1] * (x.dim() - 1)))
        parts = [p.amax(1, keepdim=True) - p.amin(1, keepdim=True) for p in x.split(self.sizes, 1)]
        return torch.cat([r.expand(-1, n) for r, n in zip(parts, self.sizes, strict=True)], 1)

    def input_slice(self, index: int) -> slice:
        """The packed features of input ``index``."""
        self.check_index(index)
        start = sum(self.sizes[:index])
        return slice(start, start + self.sizes[index])

    def check_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not -self.count <= index < self.count:
            raise ValueError(f"input_index must be an integer in [0, {self.count}) for a model taking "
                             f"{self.count} input{'s' if self.count > 1 else ''}, got {index!r}")
        return index % self.count


def resolve_per_input(schema: dict, o: Any, layout: Layout, xs: Sequence[torch.Tensor]) -> None:
    """Resolve, in the call's options ``o``, every option of ``schema`` marked ``per_input`` against the inputs.

    With one input, a 1-tuple is unwrapped and the method resolves the value as usual.  With several, each
    entry (or the one value given for all) is resolved against its own input and the results packed:
    ``"baseline"`` by :func:`tribute.core.baselines.make_baseline` (with the call's ``baseline_options`` and
    ``seed``), ``"references"`` as (M, …) tensors, ``"elementwise"`` (a number or a tensor broadcastable to
    the input) as a tensor of the input's shape; ``"transform"`` (``input_transform``) becomes one entry per
    input, applied by the forward pass.  None stays None.
    """
    from .baselines import make_baseline

    for name, option in schema.items():
        kind = option.per_input
        value = getattr(o, name)
        if kind is None or value is None:
            continue
        if layout.single:
            if isinstance(value, tuple):
                setattr(o, name, layout.entries(name, value)[0])
            continue
        if kind == "transform":
            setattr(o, name, layout.entries(name, value))
            continue
        if kind == "references":
            setattr(o, name, layout.pack_references(name, value))
            continue
        if kind == "baseline":
            def resolve(v, x):
                return make_baseline(v, x, getattr(o, "baseline_options", None), getattr(o, "seed", None))
        else:
            def resolve(v, x, name=name):
                return _elementwise(name, v, x)
        setattr(o, name, layout.pack_option(name, value, xs, resolve))


def _elementwise(name: str, v: Any, x: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        try:
            return torch.broadcast_to(v.to(x.device, x.dtype), x.shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(v.shape)} does not broadcast to its input's shape "
                             f"{tuple(x.shape)}") from None
    return torch.full_like(x, float(v))


def check_nested_options(schema: dict, o: Any, layout: Layout | None) -> None:
    """The per-input options of a method run inside another's call (SmoothGrad's base method), whose rows are
    copies of the samples in chunks that need not hold every sample once in order.

    So a baseline is broadcast to every row, never paired with rows by position: a per-sample tensor (dim 0
    of size N > 1) is refused, one for all samples (dim 0 of size 1, or fewer dims) is taken.  With several
    inputs, each entry (or the one value for all) must need no input to resolve: a number, ``"zero"`` or such
    a tensor, packed per feature; a name that looks at the input (``"blur"``, ``"mean"``) or a callable is
    refused, not guessed.  References (expected gradients) are packed as at the top level.
    """
    for name, option in schema.items():
        kind, value = option.per_input, getattr(o, name)
        if kind is None or value is None or kind == "transform":
            continue
        if layout is None or layout.single:
            if isinstance(value, tuple) and layout is not None:
                value = layout.entries(name, value)[0]
                setattr(o, name, value)
            if kind == "baseline" and isinstance(value, torch.Tensor) and layout is not None:
                _one_for_all(name, value, layout.shapes[0])
            continue
        if kind == "references":
            setattr(o, name, layout.pack_references(name, value))
            continue
        parts = [_nested_entry(name, e, s) for e, s in zip(layout.entries(name, value), layout.shapes, strict=True)]
        setattr(o, name, torch.cat(parts))


def _nested_entry(name: str, e: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """One input's entry of a nested method's per-input option as one value per feature (D_k,)."""
    if isinstance(e, str) and e == "zero":
        e = 0.0
    if isinstance(e, (int, float)) and not isinstance(e, bool):
        return torch.full((math.prod(shape),), float(e), dtype=torch.float64)
    if isinstance(e, torch.Tensor):
        _one_for_all(name, e, shape)
        t = e.detach().to(torch.float64)
        t = t[0] if t.dim() == len(shape) + 1 else t  # (1, …): the one sample's shape
        try:
            return torch.broadcast_to(t, shape).reshape(-1)
        except RuntimeError:
            raise ValueError(f"{name}: a tensor of shape {tuple(e.shape)} does not broadcast to its input's sample "
                             f"shape {shape}") from None
    raise ValueError(
        f"{name}={e!r}: a method nested in another (e.g. SmoothGrad's base) on several inputs takes {name} per "
        "input as a number, 'zero' or a tensor for all samples; a name or callable that looks at the input is not "
        "resolved against noisy copies of packed inputs"
    )


def _one_for_all(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Refuse a per-sample tensor where rows are not the samples in order (a nested method's noisy copies)."""
    if t.dim() > len(shape) and t.shape[0] != 1:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} has one entry per sample, but a method nested in another (e.g. "
            "SmoothGrad's base) sees copies of the samples, not the samples in order: give one for all samples "
            "(dim 0 of size 1), a number or 'zero'"
        )
