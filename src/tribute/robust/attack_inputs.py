"""The inputs of an attack on a model: one tensor or several, each with its own budget, step and bounds.

A model taking several inputs (an image and a table) is attacked *jointly*: one loss, one gradient with
respect to every input at once (the inputs packed into one row, :mod:`tribute.core.inputs`), and each step
moves every input.  The threat model is the product of per-input balls,

    ‖δ_k‖_p ≤ ε_k  and  lo_k ≤ x_k + δ_k ≤ hi_k   for every input k,

as Captum's attacks on tuples of inputs do.  In L∞ with one ε for all inputs this *is* the L∞ ball of radius ε
around the packed vector (the L∞ ball is a product of intervals).  In L2 the budgets stay per input: the inputs
are in different units (pixels, table features), one shared L2 budget would let the attack trade pixels for
table entries at an exchange rate set by those units, and the steepest-ascent step s(g_k) = g_k / ‖g_k‖₂
per input keeps each input's step its own.  ε, the step size and the bounds take one value for every input or
a tuple with one entry per input; an input with ε_k = 0 is held exactly where it is (the attack is then the
attack of the other inputs with that one held fixed, e.g. passed as a forward argument).

Random starts: input k draws from per-sample streams (:class:`tribute.core.randomness.SampleStreams`) keyed by
its own values and a seed derived from ``seed`` and k (the first input's from ``seed`` itself, so that it draws
what it would alone), so two inputs with equal values still start independently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core import options as opt
from ..core.engine import Forward
from ..core.inputs import Layout
from ..core.randomness import SampleStreams
from ..metrics.common import ModelInputs, derived_seed


def check_attackable(owner: str, inputs) -> tuple[Layout, tuple[torch.Tensor, ...]]:
    """The layout of ``inputs``; integer inputs (token ids) are refused, naming them: a gradient step cannot
    move them."""
    layout, xs = Layout.of(inputs)
    for k, t in enumerate(xs):
        if not t.is_floating_point():
            name = "inputs" if layout.single else f"inputs[{k}]"
            raise TypeError(
                f"{owner}: {name} are {t.dtype}; an attack moves its inputs along a gradient, so they must be "
                "floating point. Token ids cannot be attacked: pass them with forward_args= to hold them fixed, "
                "or attack a model that takes their embeddings"
            )
    return layout, xs


def budgets(owner: str, name: str, value, layout: Layout) -> tuple[float, ...]:
    """``eps`` (or a step size) per input: one number > 0 for all, or a tuple of numbers >= 0, one per input,
    not all 0 (an input with 0 is held fixed)."""
    entries = layout.entries(f"{owner}: {name}", value)
    per_input = isinstance(value, tuple) and not layout.single
    check = opt.real(0.0) if per_input else opt.real(0.0, low_open=True)
    out = []
    for k, v in enumerate(entries):
        label = f"{owner}: {name}[{k}]" if per_input else f"{owner}: {name}"
        v = check(label, v)
        if math.isinf(v):
            raise ValueError(f"{label} must be finite, got {v!r}")
        out.append(v)
    if not any(v > 0 for v in out):
        raise ValueError(f"{owner}: {name} is 0 for every input: nothing would move")
    return tuple(out)


def steps_for(owner: str, step_name: str, steps: tuple[float, ...], eps: tuple[float, ...]) -> None:
    """Every input that may move (ε_k > 0) needs a step > 0."""
    for k, (s, e) in enumerate(zip(steps, eps, strict=True)):
        if e > 0 and s <= 0:
            raise ValueError(f"{owner}: {step_name}[{k}] must be > 0 for input {k}, whose eps is {e!r}")


def bounds_per_input(bounds, layout: Layout) -> tuple:
    """``bounds`` per input: None, one pair (lo, hi) for every input, or a tuple with one entry (None or a
    pair) per input.  A pair's lo and hi are numbers or tensors, never tuples, so the forms do not overlap."""
    if bounds is None:
        return (None,) * layout.count
    entries = isinstance(bounds, (tuple, list)) and len(bounds) > 0 and \
        all(b is None or isinstance(b, (tuple, list)) for b in bounds)
    if not entries:
        return (bounds,) * layout.count
    if len(bounds) != layout.count:
        raise ValueError(f"bounds has {len(bounds)} entries (None or a pair (lo, hi) each) but the model takes "
                         f"{layout.count} input{'s' if layout.count > 1 else ''}")
    return tuple(bounds)


def transforms_per_input(owner: str, input_transform, layout: Layout):
    """``input_transform`` as :class:`tribute.core.engine.Forward` takes it: the callable for one input, a
    tuple with one callable (or None) per input for several."""
    if layout.single:
        (t,) = layout.entries(f"{owner}: input_transform", input_transform)
        opt.function(f"{owner}: input_transform", t)
        return t
    if input_transform is None:
        return None
    entries = layout.entries(f"{owner}: input_transform", input_transform)
    for k, t in enumerate(entries):
        opt.function(f"{owner}: input_transform[{k}]", t)
    return entries


def with_transform(view: ModelInputs, transform) -> Forward:
    """The view's forward (forward arguments, ``output=``) with ``input_transform`` applied to the inputs."""
    f = view.forward
    return Forward(f.model, transform, layout=f.layout, args=f.args, output=f.output)


@dataclass(frozen=True)
class InputStreams:
    """Per-sample random streams of each input (None for an input that does not move)."""

    streams: tuple[SampleStreams | None, ...]

    @classmethod
    def of(cls, xs: tuple[torch.Tensor, ...], eps: tuple[float, ...], seed: int | None) -> InputStreams:
        keys = [seed if k == 0 else derived_seed(seed, f"attack input {k}") for k in range(len(xs))]  # None: fresh
        return cls(tuple(SampleStreams(x, key) if e > 0 else None for x, key, e in zip(xs, keys, eps, strict=True)))


__all__ = ["InputStreams", "bounds_per_input", "budgets", "check_attackable", "steps_for", "transforms_per_input",
           "with_transform"]
