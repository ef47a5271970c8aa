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

import torch
from torch import nn

from ..core.engine import check_model
from ..core.reduce import reduce as reduce_channels
from ..core.targets import Target, check_target

#: why a metric that compares one class's scores refuses a callable target
CLASSES_NEEDED = "this metric needs class indices (an int, a tensor of ints or None)"


def resolve_target(model: nn.Module, inputs: torch.Tensor, target, *, batch_size: int | None = None,
                   keep_callable: bool = False):
    """``target`` as one class index per sample: None → the model's prediction on ``inputs``.

    Metrics compare scores across perturbed inputs, so the class must be fixed once, on the clean input.
    A callable target (a contrast) is returned as it is with ``keep_callable=True`` (callers that score any
    output) and refused otherwise.  The model is checked (eval mode where it matters) before its first forward
    pass, so a refused model is not changed.
    """
    check_model(model)
    kind = check_target(target, samples=inputs.shape[0], refuse=None if keep_callable else {"callable": CLASSES_NEEDED})
    if kind == "callable":
        return target
    t = Target(target, inputs.shape[0])
    with torch.no_grad():
        if t.needs_argmax:
            out = torch.cat([model(c) for c in inputs.split(batch_size or inputs.shape[0])])
            t.set_argmax(out)
        else:
            out = model(inputs[:1])
    c = out.shape[1]
    if bool((t.index >= c).any()):
        raise IndexError(f"target class {int(t.index.max())} is out of range for a model with {c} outputs")
    return t.index.to(inputs.device)


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


__all__ = ["as_map", "check_attributions", "resolve_target"]
