"""The autograd nodes of LRP's relevance form: a linear layer under its rule, an op under the Norm rule, batch norm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.rules import stab
from ..core.tensors import per_channel
from .layer_call import LayerCall
from .rules import Epsilon, LinearRule


class LinearLayerFunction(torch.autograd.Function):
    """z = op(x, W, b) forward; the layer's LRP rule backward."""

    @staticmethod
    def forward(ctx, x, layer: LayerCall, rule: LinearRule, keep):
        bias = None if layer.bias is None else layer.bias.detach()
        if getattr(layer.op, "adjoint", None) is None:
            # no direct transposed op: keep the forward's own graph (x → z) so that Jᵀ needs no recompute
            with torch.enable_grad():
                xx = x.detach().requires_grad_()
                z = layer.op(xx, layer.weight.detach(), bias)
            layer.graph = (xx, z)
        else:
            z = layer.op(x.detach(), layer.weight.detach(), bias)
        ctx.layer, ctx.rule = layer, rule
        ctx.save_for_backward(x)
        # an in-place ReLU that is z's only reader turns it into ReLU(z) rather than copying it first
        ctx.z = keep(z, unneeded=layer.only_read_by_relu, rectify=True)
        return z.detach()

    @staticmethod
    def backward(ctx, r):
        (x,) = ctx.saved_tensors
        layer, rule, kept = ctx.layer, ctx.rule, ctx.z
        x = x.detach()
        # rectified: the ReLU that overwrote z was its only reader, so with every rule downstream proportional no
        # relevance reaches z ≤ 0 (relu_only); dropped: overwritten by another op after only a ReLU read it
        if kept.tensor is None or (kept.rectified and not (layer.facts.all_proportional and rule.positive_z_suffices)):
            z = layer.op(x, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
        else:
            z = kept.get()
        relevance = rule.relevance(layer, x, z, r)
        if layer.absorbed is not None:
            _count_bias(layer, rule, x, z, r, relevance)
        return relevance, None, None, None


def _count_bias(layer: LayerCall, rule: LinearRule, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor,
                relevance: torch.Tensor) -> None:
    """Count the relevance the layer's bias absorbs: under the ε rule its share b_j · R_j / stab(z_j) (Bach et al.
    2015, Eq 58, the bias as an input that is always on); under the other rules, whose bias terms differ (b⁺ in
    z⁺, none in flat and zᴮ), what the layer's inputs do not receive."""
    w, b = layer.params()
    if isinstance(rule, Epsilon):
        if b is not None:
            layer.absorbed.add(layer.op(torch.zeros_like(x), w, b) * r / stab(layer.output(z), rule.epsilon))
        return
    layer.absorbed.add(r)
    layer.absorbed.add(-relevance)


class NormFunction(torch.autograd.Function):
    """y = op(*inputs) for an op linear or affine in its inputs; backward: R_k = share · x_k ⊙ J_kᵀ (R / stab(y)).

    ``share`` is 1 for the Norm rule and 1/n for a product of n inputs under AttnLRP's uniform rule (Achtibat et al.
    2024, for multiplications: y = a·b is linear in each, and x_k ⊙ J_kᵀ(R / y) gives each the whole of R).  With
    ``absorbed`` (:class:`tribute.lrp.absorbed.Absorbed`), the constants' share c ⊙ R / stab(y) is counted,
    c = op(0) the part of y that no input makes (the op is affine in its inputs, the other arguments held).
    The inputs are kept by reference (:class:`Kept`); the backward pass recomputes y with its graph, which
    for an addition or a pooling costs less than copying inputs and output in the forward pass."""

    @staticmethod
    def forward(ctx, op, prop: Any, inplace_op, additive: bool, share: float, absorbed, vjp, *inputs):
        ctx.op, ctx.additive, ctx.share, ctx.absorbed, ctx.vjp = op, additive, share, absorbed, vjp
        ctx.eps = prop.stabilizer
        ctx.kept = [prop.keep(t) for t in inputs]
        if inplace_op is None:
            return op(*(t.detach() for t in inputs))
        # ``x += y`` with x the first input: keep x's old value (one copy, shared with whatever else kept x),
        # then write the result straight into x
        target = inputs[0]
        prop.before_write(target)
        inplace_op(*inputs)
        ctx.mark_dirty(target)
        return target

    @staticmethod
    def backward(ctx, r):
        if ctx.additive:  # y = a + b: R_a = a ⊙ s, R_b = b ⊙ s with s = R / stab(y), no graph needed
            a, b = (k.get() for k in ctx.kept)
            s = stab(torch.add(a, b), ctx.eps)
            s = torch.div(r, s, out=s)
            return None, None, None, None, None, None, None, a * s, s.mul_(b)
        if ctx.vjp is not None:
            out = _closed_form(ctx, r)
            if out is not None:
                return out
        with torch.enable_grad():
            xs = [k.get().detach().requires_grad_() for k in ctx.kept]
            y = ctx.op(*xs)
            s = r / stab(y.detach(), ctx.eps)
            grads = torch.autograd.grad(y, xs, s, allow_unused=True)
        if ctx.absorbed is not None:
            with torch.no_grad():
                ctx.absorbed.add(ctx.op(*(torch.zeros_like(x) for x in xs)) * s)
        out = [None] * 7
        for x, g in zip(xs, grads, strict=True):
            if g is not None:
                g = x.detach() * g if ctx.share == 1 else x.detach() * g * ctx.share
            out.append(g)
        return tuple(out)


def _closed_form(ctx, r: torch.Tensor) -> tuple | None:
    """:class:`NormFunction`'s backward for y = op(x, c) with ``ctx.vjp`` (:func:`elementwise_vjp`): the same values
    as recomputing y under autograd and asking it for Jᵀs, without doing so (on a small model the engine's call per
    op cost more than the op).  None where y's shape or dtype is not x's (then autograd's reduction or cast is due)."""
    x = ctx.kept[0].get().detach()
    y = ctx.op(x)  # (checks that a gate held in a product is unchanged)
    if y.shape != x.shape or y.dtype != x.dtype:
        return None
    s = r / stab(y, ctx.eps)
    if ctx.absorbed is not None:
        ctx.absorbed.add(ctx.op(torch.zeros_like(x)) * s)
    g = ctx.vjp(s)
    return None, None, None, None, None, None, None, x * g if ctx.share == 1 else x * g * ctx.share


_SUMS = frozenset({"add", "__add__", "__radd__"})
_DIFFERENCES = {"sub": (False, True), "__sub__": (False, True), "__rsub__": (True, False)}  # negated, by x's position
_PRODUCTS = frozenset({"mul", "__mul__", "__rmul__"})


def elementwise_vjp(base: str, args: tuple, kwargs: dict, inputs: Callable[[Any], bool]) -> Callable | None:
    """s ↦ Jᵀs for y = op(x, c), ``base`` an addition, subtraction or product of two arguments, x the one of ``inputs``
    and c a constant (a number, a tensor off the input's path, a gate held): s, −s or s·c, what autograd's backward of
    the op gives x when y has x's shape and dtype; None for any other call."""
    if kwargs or len(args) != 2 or not (base in _SUMS or base in _DIFFERENCES or base in _PRODUCTS):
        return None
    at = [i for i, a in enumerate(args) if inputs(a)]
    if len(at) != 1:
        return None
    other = args[1 - at[0]]
    if base in _PRODUCTS:
        c = other.detach() if isinstance(other, torch.Tensor) else other
        return lambda s: s * c
    if base in _DIFFERENCES and _DIFFERENCES[base][at[0]]:
        return torch.neg
    return _same


def _same(s: torch.Tensor) -> torch.Tensor:
    return s


class BatchNormFunction(torch.autograd.Function):
    """Batch norm (eval) after a linear layer: relevance passes if the norm is merged into that layer,
    else it is an affine map with the Norm rule."""

    @staticmethod
    def forward(ctx, z, layer: LayerCall, scale, shift, keep, absorbed=None, eps: float = 1e-6):
        ctx.layer, ctx.scale, ctx.shift = layer, per_channel(scale, z), per_channel(shift, z)
        ctx.absorbed, ctx.eps = absorbed, eps
        ctx.z = keep(z)
        return torch.addcmul(ctx.shift, z, ctx.scale)

    @staticmethod
    def backward(ctx, r):
        if ctx.layer.merged:  # its shift is in the layer's bias, counted there
            return r, None, None, None, None, None, None
        z = ctx.z.get()
        contribution = z * ctx.scale
        s = r / stab(contribution + ctx.shift, ctx.eps)
        if ctx.absorbed is not None:
            ctx.absorbed.add(ctx.shift * s)
        return contribution * s, None, None, None, None, None, None

