"""Batch norm merged into the linear layer before it, planned from an explainer's earlier pass.

LRP merges eval-mode batch norm into the linear layer whose output only it reads (W' = W·γ/σ per output
channel, b' = (b − μ)·γ/σ + β).  A pass that meets a model for the first time still runs the batch norm: only as
the pass goes on does it learn that nothing else reads the layer's output.  That pass leaves a :class:`MergePlan`;
the explainer's next passes compute those layers with (W', b') from its weight cache, and the batch-norm call hands
its input on as its output, which saves a batch-norm op, forward and backward, per layer (7% of a ResNet-18's
forward and backward pass).

The plan is checked as the pass runs: the layer at that position has the same weight tensor, the batch norm that
reads its output is the same (its statistics and affine parameters the same tensors, whose values the weight cache
validates) and is the output's first reader.  Anything else (another op reading the layer's output first, a
different batch norm, none) raises :class:`Replan`, and the caller runs the pass again without the plan, which
then records a new one.  What no check can see is a read of the layer's raw output *after* its batch norm (the two
are one tensor then); a pass that records a plan never merges such a layer, so it could only happen to a model
whose forward pass does so on some inputs and not on others.  Models with forward hooks, which would see the
merged values, and explainers with ``cache_weights=False`` use no plan.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from .weight_cache import PassCache


def batch_norm_affine(p: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of eval-mode batch norm with arguments ``p``: y = scale·x + shift."""
    scale = torch.add(p["running_var"].detach(), p.get("eps", 1e-5)).rsqrt_()  # γ / σ
    gamma, beta, mean = p.get("weight"), p.get("bias"), p["running_mean"].detach()
    if gamma is not None:
        scale.mul_(gamma.detach())
    # β − μ·γ/σ
    shift = torch.mul(mean, scale).neg_() if beta is None else torch.addcmul(beta.detach(), mean, scale, value=-1)
    return scale, shift


def fold_affine(kind: str, groups: int, w: torch.Tensor, b: torch.Tensor | None, scale: torch.Tensor,
                shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of the layer followed by y ↦ scale·y + shift per output channel (batch norm merged)."""
    if kind == "conv_transpose":  # weight (in, out / groups, …): output channel g·(out / groups) + j
        k = (1,) * (w.dim() - 2)
        w = (w.view(groups, -1, *w.shape[1:]) * scale.view(groups, 1, -1, *k)).view(w.shape)
    else:
        w = w * scale.view(-1, *(1,) * (w.dim() - 1))
    b = shift if b is None else b * scale + shift
    return w, b


class Replan(Exception):
    """The model ran differently from the pass its :class:`MergePlan` came from (a layer's output read first by
    something other than the batch norm that was merged into it); run the pass again without the plan."""


_NORM_TENSORS = ("running_mean", "running_var", "weight", "bias")


def _ref(t):
    return None if t is None else weakref.ref(t)


def _is(ref, t) -> bool:
    return t is None if ref is None else ref() is t


class Merge:
    """Batch norm merged into one linear-layer call: the layer's parameters and the norm's, by weak reference."""

    __slots__ = ("weight", "bias", "norm", "eps")

    def __init__(self, weight, bias, norm: dict[str, Any]):
        self.weight, self.bias = _ref(weight), _ref(bias)
        self.norm = tuple(_ref(norm.get(k)) for k in _NORM_TENSORS)
        self.eps = float(norm.get("eps", 1e-5))

    def same_layer(self, weight, bias) -> bool:
        return _is(self.weight, weight) and _is(self.bias, bias)

    def same_norm(self, norm: dict[str, Any]) -> bool:
        return float(norm.get("eps", 1e-5)) == self.eps and all(
            _is(r, norm.get(k)) for r, k in zip(self.norm, _NORM_TENSORS, strict=True))

    def weights(self, cache: PassCache, kind: str, groups: int, weight, bias) -> tuple | None:
        """((W', b'), the cache entry they are kept in) (derived on a miss), or None if a norm tensor is gone or
        the tensors cannot be cached."""
        norm = [None if r is None else r() for r in self.norm]
        if any(r is not None and t is None for r, t in zip(self.norm, norm, strict=True)):
            return None
        entry = cache.entry((weight, bias, *norm), tag=("batch_norm", kind, groups, self.eps))
        if entry is None:
            return None

        def make():
            p = dict(zip(_NORM_TENSORS, norm, strict=True), eps=self.eps)
            return fold_affine(kind, groups, weight.detach(), None if bias is None else bias.detach(),
                               *batch_norm_affine(p))

        return cache.get(entry, "batch_norm_merged", make), entry


class MergePlan:
    """Which linear-layer calls (by position on the input's path) batch norm merged into in the last complete
    pass of one explainer (see the module doc)."""

    def __init__(self):
        self.merges: dict[int, Merge] = {}

    def clear(self) -> None:
        self.merges = {}

    def planned(self, index: int, kind: str, groups: int, weight, bias, cache: PassCache) -> tuple | None:
        """(the merge, (W', b'), their cache entry) if batch norm merged into linear call ``index`` last time and
        this call is the same layer; else None."""
        m = self.merges.get(index)
        if m is None or not m.same_layer(weight, bias):
            return None
        merged = m.weights(cache, kind, groups, weight, bias)
        return None if merged is None else (m, *merged)


def has_forward_hooks(model) -> bool:
    """Whether a forward hook (the model's or global) could see a layer's output, merged under a plan."""
    if not isinstance(model, nn.Module):
        return False
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def batch_norm_arguments(args, kwargs) -> dict[str, Any]:
    """``F.batch_norm``'s arguments by name; LRP refuses train mode (its statistics mix the batch)."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    p = dict(zip(names, args, strict=False))
    p.update(kwargs)
    if p.get("training", False):
        raise ValueError("LRP needs batch norm in eval mode (running statistics); call model.eval()")
    return p

