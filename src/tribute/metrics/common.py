"""What every metric shares: turning ``method`` into an explainer, and checking attributions.

Two kinds of metric (as in Xplique):

- metrics of *given* attributions: ``metric(model, inputs, attributions, target=None, **options)``;
- metrics of a *method*: ``metric(model, inputs, method, target=None, **options)``, where ``method`` is a
  registry name (``"integrated_gradients"``), a :class:`tribute.Method` instance, or any callable
  ``(model, inputs, target) -> attributions``.

Per-sample metrics return (N,) tensors.  Attributions may have the input's shape or, for images, be one
map per sample, (N, 1, H, W): :func:`as_map` turns either into the map a metric needs (the shared
``reduce=``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.method import Method
from ..core.reduce import reduce as reduce_channels
from ..core.registry import get_method
from ..core.targets import Target

Explainer = Callable[[nn.Module, torch.Tensor, Any], torch.Tensor]


def as_explainer(method, **options: Any) -> Explainer:
    """``method`` as a callable ``(model, inputs, target) -> attributions``.

    A registry name or a :class:`Method` subclass is instantiated per model with ``options``; a
    :class:`Method` instance is used as it is (its model is replaced by the model given, so the same
    method can explain randomised copies); any other callable is used as it is.
    """
    if isinstance(method, str) or (isinstance(method, type) and issubclass(method, Method)):
        klass = get_method(method) if isinstance(method, str) else method
        last: list = []  # (model, instance) of the latest call: chunks of one model share an instance (and what
        # it keeps between calls, e.g. LRP's derived weights)

        def explain(model, inputs, target):
            if not last or last[0] is not model:
                last[:] = [model, klass(model, **options)]
            return last[1].attribute(inputs, target)
        return explain
    if isinstance(method, Method):
        def explain_with(model, inputs, target):
            m = method if model is method.model else _rebind(method, model)
            return m.attribute(inputs, target, **options)
        return explain_with
    if callable(method):
        if options:
            raise TypeError(f"options {sorted(options)} can only be given with a method name or Method class")
        return method
    raise TypeError(
        f"method must be a registered name, a tribute Method or a callable (model, inputs, target) -> "
        f"attributions; got {type(method).__name__}"
    )


def _rebind(method: Method, model: nn.Module) -> Method:
    m = type(method).__new__(type(method))
    m.__dict__.update(method.__dict__)
    m.model = model
    return m


def resolve_target(model: nn.Module, inputs: torch.Tensor, target, *, batch_size: int | None = None) -> torch.Tensor:
    """``target`` as one class index per sample: None → the model's prediction on ``inputs``.

    Metrics compare scores across perturbed inputs, so the class must be fixed once, on the clean input.
    Callable targets are kept as they are by callers that support them; this function needs ints.
    """
    n = inputs.shape[0]
    t = Target(target, n)
    if t.fn is not None:
        raise TypeError("this metric needs class indices as target (an int, a tensor of ints or None)")
    if t.needs_argmax:
        with torch.no_grad():
            chunks = inputs.split(batch_size or n)
            out = torch.cat([model(c) for c in chunks])
        t.set_argmax(out)
    with torch.no_grad():
        c = model(inputs[:1]).shape[1]
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


__all__ = ["as_explainer", "as_map", "check_attributions", "resolve_target"]
