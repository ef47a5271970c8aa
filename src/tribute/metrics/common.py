"""What every metric shares: fixing the target class once, and checking attributions.

Two kinds of metric (as in Xplique):

- metrics of *given* attributions: ``metric(model, inputs, attributions, target=None, **options)``;
- metrics of a *method*: ``metric(model, inputs, method, target=None, **options)``, where ``method`` is a
  registry name (``"integrated_gradients"``), a :class:`tribute.Method` class or instance, or any callable
  ``(model, inputs, target) -> attributions`` (resolved by :func:`tribute.metrics.methods.resolve_method`).

Per-sample metrics return (N,) tensors.  Attributions may have the input's shape or, for images, be one
map per sample, (N, 1, H, W): :func:`as_map` turns either into the map a metric needs (the shared
``reduce=``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.engine import Forward, check_inputs, check_model
from ..core.forward_args import ForwardArgs
from ..core.inputs import Layout
from ..core.reduce import reduce as reduce_channels
from ..core.targets import Target, check_target
from .methods import NOISE_KEY, BoundExplainer

#: why a metric that compares one class's scores refuses a callable target
CLASSES_NEEDED = "this metric needs class indices (an int, a tensor of ints or None)"


def resolve_target(model: nn.Module, inputs: torch.Tensor, target, *, batch_size: int | None = None,
                   keep_callable: bool = False):
    """``target`` as one class index per sample: None → the model's prediction on ``inputs``.

    Metrics compare scores across perturbed inputs, so the class must be fixed once, on the clean input.
    A callable target (a contrast) is returned as it is with ``keep_callable=True`` (callers that score any
    output) and refused otherwise.  The model is checked (eval mode where it matters) before its first forward
    pass, so a refused model is not changed.  :func:`resolve_target_in` does the same for a :class:`ModelInputs`.
    """
    check_model(model)
    view = ModelInputs(inputs, (inputs,), Layout.of(inputs)[0], Forward(model), {})
    return resolve_target_in(view, target, batch_size=batch_size, keep_callable=keep_callable)


def resolve_target_in(view: ModelInputs, target, *, batch_size: int | None = None, keep_callable: bool = False):
    """:func:`resolve_target` for the inputs of ``view`` (several inputs, forward arguments, ``output=``)."""
    n = view.x.shape[0]
    kind = check_target(target, samples=n, refuse=None if keep_callable else {"callable": CLASSES_NEEDED})
    if kind == "callable":
        return target
    t = Target(target, n)
    with torch.no_grad():
        if t.needs_argmax:
            out = view.forward.outputs(view.x, batch_size or n)
            t.set_argmax(out)
        else:
            out = view.forward(view.x[:1], torch.zeros(1, dtype=torch.long))
    c = out.shape[1]
    if bool((t.index >= c).any()):
        raise IndexError(f"target class {int(t.index.max())} is out of range for a model with {c} outputs")
    return t.index.to(view.x.device)


@dataclass(frozen=True)
class ModelInputs:
    """A metric's view of the user's inputs, the one methods have (:mod:`tribute.core.inputs`).

    ``x`` is the packed batch (the tensor itself for one input, (N, D) rows for several), ``layout`` how it
    holds the inputs, ``forward`` the model with the call's forward arguments and ``output=`` (score packed
    rows with ``forward(rows, sample)``), and ``method_options`` what a method called on the user's inputs
    must be given so that it sees the same model (forward arguments, ``output=``).
    """

    x: torch.Tensor
    inputs: tuple[torch.Tensor, ...]
    layout: Layout
    forward: Forward
    method_options: dict[str, Any]

    @property
    def user_inputs(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The inputs in the user's structure (a tensor or a tuple), for a method."""
        return self.inputs[0] if self.layout.single else self.inputs

    def method_options_for(self, sample: torch.Tensor) -> dict[str, Any]:
        """What a method explaining rows of the samples ``sample`` (a subset, a repetition, perturbed copies)
        must be given: those samples' forward arguments (constants as they are) and ``output=``."""
        args = self.forward.args
        out = {} if args is None else args.options_for(sample)
        if self.forward.output is not None:
            out["output"] = self.forward.output
        return out

    def user_rows(self, rows: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Packed rows in the user's structure (a tensor, or one tensor per input), to hand to a method."""
        return self.layout.result(rows)

    def pack_attributions(self, attributions) -> torch.Tensor:
        """Attributions in the user's structure (one tensor per input), checked and packed like ``x``."""
        if self.layout.single:
            return check_attributions(self.x, attributions)
        if not isinstance(attributions, (tuple, list)) or len(attributions) != self.layout.count:
            got = f"{len(attributions)} tensors" if isinstance(attributions, (tuple, list)) else \
                type(attributions).__name__
            raise ValueError(f"attributions of a model with {self.layout.count} inputs must be a tuple with one tensor "
                             f"per input, got {got} (a metric takes the attributions of one input with input_index=k)")
        parts = []
        for k, (t, a) in enumerate(zip(self.inputs, attributions, strict=True)):
            part = _checked_part(k, t.shape, a, "attributions")
            parts.append(part.to(self.x.dtype))
        return self.layout.pack(parts)

    def pack_explanation(self, out, rows: int) -> torch.Tensor:
        """A method's result for ``rows`` packed rows (a tensor for one input, one tensor per input for several),
        checked (finite, one row each; with several inputs each of its input's shape) and packed like ``x``."""
        if self.layout.single:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the method must return a tensor of attributions, got {type(out).__name__}")
            if out.dim() == 0 or out.shape[0] != rows:
                raise ValueError(f"the method returned attributions of shape {tuple(out.shape)}; "
                                 f"expected ({rows}, ...)")
            if not bool(torch.isfinite(out).all()):
                raise ValueError("the method returned NaN or inf attributions")
            return out.detach()
        if not isinstance(out, (tuple, list)) or len(out) != self.layout.count:
            got = f"{len(out)} tensors" if isinstance(out, (tuple, list)) else type(out).__name__
            raise ValueError(f"the method must return one attribution per input ({self.layout.count}) for a model "
                             f"with several inputs, got {got}")
        parts = [_checked_part(k, (rows, *s), a, "the method's attributions")
                 for k, (a, s) in enumerate(zip(out, self.layout.shapes, strict=True))]
        return self.layout.pack([p.to(self.x.dtype) for p in parts])


def _checked_part(k: int, shape, a, what: str) -> torch.Tensor:
    """One input's attributions among several: exactly that input's shape (no map: maps of several inputs
    cannot be laid end to end; a metric takes one input's map with ``input_index=k``), finite."""
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{what}[{k}] must be a tensor, got {type(a).__name__}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{what}[{k}] has shape {tuple(a.shape)}; with several inputs each attribution has its "
                         f"input's shape {tuple(shape)} (a map of one input is taken with input_index=k)")
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{what}[{k}] contain NaN or inf")
    return a.detach()


def call_method(explainer: BoundExplainer, inputs, target, options: dict[str, Any], *,
                noise_key: torch.Tensor | None = None):
    """``explainer`` (a bound method) on ``inputs`` in the user's structure with the call's ``options`` (forward
    arguments, ``output=``): a tribute method takes them per call; a plain callable ``(model, inputs, target)``
    cannot be given them, so it is refused rather than run on another model than the metric's."""
    if not options:
        return explainer(inputs, target, noise_key=noise_key)
    if explainer.instance is None:
        raise TypeError(
            f"the method is a plain callable (model, inputs, target), which cannot be given this call's "
            f"{', '.join(sorted(f'{k}=' for k in options))}: bind them in the callable (e.g. lambda m, x, t: "
            "f(m, x, t, ...)) and leave them out here, or pass a tribute method (a name, class or instance)"
        )
    extra = {NOISE_KEY: noise_key} if noise_key is not None and explainer.keyed else {}
    return explainer.explain(inputs, target, **options, **extra)


def explain_rows(view: ModelInputs, explainer: BoundExplainer, rows: torch.Tensor, target, sample: torch.Tensor, *,
                 noise_key: torch.Tensor | None = None) -> torch.Tensor:
    """The method's attribution of packed ``rows`` (row r a copy, perturbed or not, of sample ``sample[r]``),
    given to the method in the user's structure with those samples' forward arguments, and packed back."""
    out = call_method(explainer, view.user_rows(rows), target, view.method_options_for(sample), noise_key=noise_key)
    return view.pack_explanation(out, rows.shape[0])


def model_inputs(model: nn.Module, inputs, *, forward_args=None, forward_kwargs=None, output=None,
                 integers: bool = False) -> ModelInputs:
    """Check ``model`` (before any forward pass) and ``inputs`` (a tensor or a tuple of tensors) and give the
    :class:`ModelInputs` a metric works with; ``integers`` admits token ids."""
    check_model(model)
    layout, xs = Layout.of(inputs)
    for k, t in enumerate(xs):
        check_inputs(model, t, integers=integers, name="inputs" if layout.single else f"inputs[{k}]")
    args = ForwardArgs(forward_args, forward_kwargs, xs[0].shape[0])
    forward = Forward(model, layout=layout, args=None if args.empty else args, output=output)
    given = {"forward_args": forward_args, "forward_kwargs": forward_kwargs, "output": output}
    return ModelInputs(layout.pack(xs).detach(), xs, layout, forward, {k: v for k, v in given.items() if v is not None})


def check_attributions(inputs: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
    """Attributions must be finite and have the input's shape or (N, 1, *spatial); returns them detached."""
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"attributions must be a tensor, got {type(attributions).__name__}")
    shape, ishape = tuple(attributions.shape), tuple(inputs.shape)
    as_map_shape = (ishape[0], 1, *ishape[2:]) if len(ishape) >= 3 else None
    if shape != ishape and shape != as_map_shape:
        allowed = f"{ishape}" + (f" or a map {as_map_shape}" if as_map_shape else "")
        raise ValueError(f"attributions have shape {shape}; expected the input's shape {allowed}")
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError("attributions contain NaN or inf")
    return attributions.detach()


def as_map(attributions: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """(N, C, *spatial) attributions as (N, 1, *spatial) maps by the shared ``reduce=``; maps pass through."""
    if attributions.dim() >= 3 and attributions.shape[1] != 1:
        return reduce_channels(attributions, how)
    return attributions


def derived_seed(seed: int | None, purpose: str) -> int | None:
    """A seed for one ``purpose`` derived from the user's ``seed`` (None stays None: fresh entropy).

    A metric that draws perturbations and also passes ``seed`` on (to a method, a random baseline) keys its
    own draws with this, so the two never read the same random stream.
    """
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**62 - 1)


__all__ = ["ModelInputs", "as_map", "check_attributions", "model_inputs", "resolve_target", "resolve_target_in"]
