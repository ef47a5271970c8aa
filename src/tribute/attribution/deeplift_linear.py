"""DeepLIFT at a linear layer: its gradient (Shrikumar et al. 2017, §3.5.1: the multipliers of a linear unit are its
weights), computed only for the rows that carry one.

Input and reference run as one batch of 2N rows (:mod:`.deeplift`), but only the inputs' rows carry the score:
every rule of the family gives the references' rows a zero multiplier (Rescale's ``gy · ratio`` with gy = 0 there,
the bilinear and multivariate rules likewise), so in the attribution's backward pass the gradient reaching a linear
layer is zero on half the batch and autograd's gᵀW spends half its matrix product on zeros.  :class:`PairedLinear`
checks that half for zeros (along dimension 0, or 1 for the (L, 2N, E) layout of ``multi_head_attention_forward``)
and multiplies only the other: a zero row of g gives a zero row of gᵀW for a finite W, so the result is autograd's,
up to the rounding of a matrix product of another height.  Anything else (a non-zero half, a non-finite weight, the
attribution's derivatives with ``differentiable=True``) takes the full product or the plain op.  Layers too small
for the saving to outweigh an autograd node of Python are left to autograd (:data:`MIN_MACS`).
The same saving serves products with a constant right factor, x @ W and ``torch.addmm(c, x, W)`` (Hugging Face's
Conv1D in GPT-2): :class:`PairedProduct`, which leaves a product of two factors on the path to the bilinear rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.rule_registry import OpRule
from .deeplift_ops import BilinearRule, call_arg

#: multiply-adds of a layer's forward pass below which the plain op runs (the node's Python costs ~20 µs)
MIN_MACS = 1 << 21


def _zero_half(g: torch.Tensor) -> int | None:
    """A dimension (0 or 1) along which g's second half is all zeros, or None."""
    for d in (0, 1):
        if d < g.dim() - 1 and g.shape[d] % 2 == 0 and g.shape[d] > 0:
            half = g.shape[d] // 2
            low, high = torch.aminmax(g.narrow(d, half, half))  # a quicker read than ``any`` (NaN: not zero)
            if float(low) == 0 and float(high) == 0:
                return d
    return None


def _paired_product(g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """g @ m, multiplied only where g's rows are not known zeros (module doc)."""
    d = _zero_half(g)
    # a finite sum means finite entries (an infinity or NaN would carry into it), read quicker than isfinite
    if d is None or not bool(m.sum().isfinite()):
        return g @ m
    half = g.shape[d] // 2
    top = g.narrow(d, 0, half) @ m
    return torch.cat([top, torch.zeros_like(top)], d)


class _PairedLinearFn(torch.autograd.Function):
    """y = x Wᵀ + b forward; backward gᵀW, multiplied only where g's rows are not known zeros (module doc)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        (weight,) = ctx.saved_tensors
        return _paired_product(g, weight), None, None


class _PairedMatmulFn(torch.autograd.Function):
    """y = run(x) for a product x @ W (+ c) with W and c constants; backward g·αWᵀ, multiplied only where g's rows are
    not known zeros (module doc)."""

    @staticmethod
    def forward(ctx, x, run, transposed):
        ctx.save_for_backward(transposed)
        return run(x)

    @staticmethod
    def backward(ctx, g):
        (transposed,) = ctx.saved_tensors
        return _paired_product(g, transposed), None, None


class PairedLinear(OpRule):
    """DeepLIFT at ``F.linear`` with the input alone on the path: the gradient (the layer is linear), with the
    references' zero half skipped in the attribution's backward pass (module doc)."""

    name = "paired_linear"
    gradient_form = True  # the layer's own gradient: coverage counts it as linear, not as ruled

    def apply(self, handler, func, args, kwargs, tagged, name):
        x = call_arg(args, kwargs, 0, "input")
        weight = call_arg(args, kwargs, 1, "weight")
        bias = call_arg(args, kwargs, 2, "bias")
        phase = getattr(handler, "phase", None)
        if (phase is None or phase.differentiable or not isinstance(x, torch.Tensor) or not tagged(x)
                or not isinstance(weight, torch.Tensor) or weight.dim() != 2 or tagged(weight) or tagged(bias)
                or x.dim() < 2 or x.numel() * weight.shape[0] < MIN_MACS or len(args) + len(kwargs) > 3):
            return NotImplemented  # the plain op: its gradient is the rule
        return _PairedLinearFn.apply(x, weight, bias)


#: products with a constant right factor: ``torch.addmm(c, x, W)`` (Hugging Face's Conv1D), ``x @ W``, ``mm``
PRODUCTS = ("addmm", "mm", "matmul", "__matmul__")


def paired_product(handler, func, args: tuple, kwargs: dict, tagged, name: str):
    """:class:`PairedLinear`'s saving at a product whose left factor alone is on the path (x @ W, addmm(c, x, W) with
    W and c constants): the product's gradient g·αWᵀ with the references' zero half skipped; ``NotImplemented`` where
    it does not apply (two factors on the path: the bilinear rule; anything unusual: the plain op)."""
    op = name.rsplit(".", 1)[-1]
    addmm = op == "addmm"
    x = call_arg(args, kwargs, 1 if addmm else 0, "mat1" if addmm else "input")
    w = call_arg(args, kwargs, 2 if addmm else 1, "mat2" if addmm else "other")
    phase = getattr(handler, "phase", None)
    extra = set(kwargs) - ({"beta", "alpha"} if addmm else set())
    if (phase is None or phase.differentiable or extra or not isinstance(x, torch.Tensor) or not tagged(x)
            or not isinstance(w, torch.Tensor) or w.dim() != 2 or tagged(w) or x.dim() < 2
            or (addmm and tagged(args[0] if args else kwargs.get("input")))
            or x.numel() * w.shape[1] < MIN_MACS or len(args) > (3 if addmm else 2)):
        return NotImplemented
    alpha = kwargs.get("alpha", 1) if addmm else 1
    transposed = w.mT if alpha == 1 else alpha * w.mT
    return _PairedMatmulFn.apply(x, lambda t: func(*args[:1 if addmm else 0], t, *args[2 if addmm else 1:], **kwargs),
                                 transposed)


class PairedProduct(BilinearRule):
    """DeepLIFT at ``addmm``, ``mm`` and ``matmul``: with the left factor alone on the path the product's gradient,
    the references' zero half skipped (:func:`paired_product`; Hugging Face's Conv1D is an ``addmm``); with two
    factors on the path the bilinear rule."""

    def apply(self, handler, func, args, kwargs, tagged, name):
        out = paired_product(handler, func, args, kwargs, tagged, name)
        if out is NotImplemented:
            return super().apply(handler, func, args, kwargs, tagged, name)
        handler.gradient_form = True  # the product's own gradient: coverage counts it as linear, not as ruled
        return out
