"""LRP at the multivariate ops of transformers: softmax, the normalisations, constants joining the path.

Every rule here serves both forms: the relevance form of the composites (:class:`tribute.lrp.propagation.Propagation`,
the backward signal is the relevance R) and the gradient form of ``lrp_epsilon`` (Ancona et al. 2019: the signal is
relevance per unit of the tensor, t = R / v, and the attribution x ⊙ t); ``handler.form`` says which.

- **Softmax** s = softmax(x).  Under CP-LRP (``attention="cp"``, the default) its output is a gate
  (:mod:`tribute.lrp.gates`): in attention's s·V the weights are held constant and V takes all the relevance, so
  the value path carries it and the relevance conserves (Ali et al. 2022, "XAI for Transformers: Better Explanations
  through Conservative Propagation", their AH-rule; as LXT does for vision transformers).  Under
  ``attention="attnlrp"`` the product s·V is bilinear (each operand half, AttnLRP's uniform rule) and the softmax
  redistributes its relevance by AttnLRP's softmax rule (Achtibat et al. 2024; a first-order Taylor expansion at x
  with the bias absorbed):

      R_x = x ⊙ (R_s − s · Σ_j R_s,j)        (along the softmax's dim),

  which does *not* conserve: Σ R_x = Σ_i x_i R_i − (Σ_i x_i s_i)(Σ_j R_j).  Entries masked with −∞ get 0.  In the
  gradient form, t_x = R_x / x = s ⊙ t_s − s Σ_j s_j t_s,j = Jᵀ t_s: the rule is the softmax's plain gradient.
- **LayerNorm, GroupNorm, RMSNorm** (``F.layer_norm``, ``F.group_norm``, ``F.rms_norm``): the normalisation held
  constant (Ali et al. 2022, their LN-rule: the standard deviation detached): y = γ ⊙ (x − μ(x)) / σ + β with
  σ a constant (μ = 0 for RMSNorm) is affine in x, and takes the Norm rule R_x = x ⊙ Jᵀ(R / stab(y)); the centring
  stays linear, β absorbs β ⊙ R / stab(y) like a bias.  With β = 0 it conserves up to ε.
- **masked_fill** with a constant, **where** with a constant, **cat/stack** with a constant part (a class token):
  moves, relevance follows the gradient; what reaches the constant entries (the filled entries, the class token's
  row) is the constant's, counted when asked (:mod:`tribute.lrp.absorbed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.rule_registry import OpRule
from .gates import STRONG, mark_gate, path_tensors

# ops that move their tensor arguments (in a list, or beside a condition) into one output
_JOINING = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack", "where"})
_FILLS = frozenset({"masked_fill", "masked_fill_"})


class Softmax(OpRule):
    """softmax(x, dim): a gate under CP-LRP, AttnLRP's rule under ``attention="attnlrp"`` (see the module doc)."""

    name = "softmax"
    gradient_form = False  # the ε composites' fast form does not cover it: the relevance form runs

    def apply(self, handler, func, args, kwargs, tagged, name):
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not tagged(x) or not isinstance(dim, int) or len(path_tensors(args, kwargs, tagged)) != 1:
            return handler.no_rule(func, args, kwargs, tagged, name)
        rest, rest_kw = args[1:], {k: v for k, v in kwargs.items() if k not in ("input", "self")}
        if handler.form == "gradient":
            out = func(x, *rest, **rest_kw)  # the rule's gradient form is the plain gradient
        else:
            out = SoftmaxRelevance.apply(x, lambda v: func(v, *rest, **rest_kw), dim)
        if handler.attention == "cp":
            mark_gate(out, STRONG)
        return out


class SoftmaxRelevance(torch.autograd.Function):
    """s = softmax(x) forward; AttnLRP's R_x = x ⊙ (R − s Σ R) backward (Achtibat et al. 2024, the softmax rule)."""

    @staticmethod
    def forward(ctx, x, softmax: Callable, dim: int):
        s = softmax(x.detach())
        ctx.dim = dim
        ctx.save_for_backward(x, s)
        return s

    @staticmethod
    def backward(ctx, r):
        x, s = ctx.saved_tensors
        rx = x * (r - s * r.sum(ctx.dim, keepdim=True))
        return torch.where(torch.isfinite(x), rx, torch.zeros_like(rx)), None, None


class Normalisation(OpRule):
    """``F.layer_norm``, ``F.group_norm``, ``F.rms_norm`` with the normalisation held constant (Ali et al. 2022; see
    the module doc): the Norm rule at the affine map it leaves."""

    name = "normalisation"
    gradient_form = False

    def __init__(self, kind: str):
        self.kind = kind

    def apply(self, handler, func, args, kwargs, tagged, name):
        p = _norm_arguments(self.kind, args, kwargs)
        x = p.get("input")
        if not tagged(x) or any(tagged(p.get(k)) for k in ("weight", "bias")):
            return handler.no_rule(func, args, kwargs, tagged, name)
        op = held_normalisation(self.kind, p, x, handler.hold)
        if handler.form == "gradient":
            return op(x)
        return handler.affine(op, x)


_NORM_PARAMETERS = {
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "rms_norm": ("input", "normalized_shape", "weight", "eps"),
}
_EPS_DEFAULT = {"layer_norm": 1e-5, "group_norm": 1e-5, "rms_norm": None}


def _norm_arguments(kind: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    p = {"weight": None, "bias": None, "eps": _EPS_DEFAULT[kind]}
    p.update(zip(_NORM_PARAMETERS[kind], args, strict=False))
    p.update(kwargs)
    return p


def held_normalisation(kind: str, p: dict[str, Any], x: torch.Tensor,
                       hold: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The normalisation ``kind`` with arguments ``p`` as an affine map v ↦ γ ⊙ (v − μ(v)) · s + β, its scale
    s = 1/σ computed from ``x`` and passed through ``hold`` (the gradient form: held constant in the attribution's
    backward pass only; the relevance form: detached).  The mode is off inside a rule: these ops run plainly."""
    eps = p["eps"]
    if kind == "group_norm":
        n, c, groups = x.shape[0], x.shape[1], p["num_groups"]
        grouped = x.reshape(n, groups, -1)
        scale = hold(torch.rsqrt(grouped.var(-1, unbiased=False, keepdim=True) + eps))
        shape = (1, c) + (1,) * (x.dim() - 2)

        def centred(v):
            g = v.reshape(n, groups, -1)
            return ((g - g.mean(-1, keepdim=True)) * scale).reshape(v.shape)
    else:
        dims = tuple(range(-len(tuple(p["normalized_shape"])), 0))
        shape = None
        if kind == "rms_norm":
            eps = torch.finfo(x.dtype).eps if eps is None else eps
            scale = hold(torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps))

            def centred(v):
                return v * scale
        else:
            scale = hold(torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps))

            def centred(v):
                return (v - v.mean(dims, keepdim=True)) * scale
    weight, bias = p["weight"], p.get("bias")

    def op(v):
        y = centred(v)
        if weight is not None:
            y = y * (weight.detach() if shape is None else weight.detach().reshape(shape))
        if bias is not None:
            y = y + (bias.detach() if shape is None else bias.detach().reshape(shape))
        return y

    return op


def joins_constants(name: str, args: tuple, kwargs: dict, tagged: Callable[[Any], bool]) -> bool:
    """Whether the move ``name`` brings a constant onto the input's path: masked_fill (its fill value), or cat,
    stack or where with a tensor or number that is not on the path."""
    op = name.rsplit(".", 1)[-1]
    if op in _FILLS:
        return True
    if op not in _JOINING:
        return False
    values = args[0] if op != "where" and args and isinstance(args[0], (list, tuple)) else args[1:3]
    return any(not tagged(v) for v in values if isinstance(v, (torch.Tensor, int, float)))


def move_with_constants(func, args: tuple, kwargs: dict, tagged: Callable[[Any], bool], absorbed) -> torch.Tensor:
    """``func(*args, **kwargs)``, a move, with relevance by its gradient to the tensors on the path and the rest (what
    reaches constant entries) counted in ``absorbed``."""
    inputs = path_tensors(args, kwargs, tagged)
    return _MoveWithConstants.apply(_substituting(func, args, kwargs, inputs), absorbed, *inputs)


def _substituting(func, args: tuple, kwargs: dict, inputs: list[torch.Tensor]) -> Callable:
    """``(*xs) ↦ func(args and kwargs with each of inputs replaced by the matching x)``."""
    where = {id(t): k for k, t in enumerate(inputs)}

    def swap(a, xs):
        if isinstance(a, torch.Tensor) and id(a) in where:
            return xs[where[id(a)]]
        if isinstance(a, (list, tuple)):
            return type(a)(swap(b, xs) for b in a)
        return a

    def call(*xs):
        return func(*(swap(a, xs) for a in args), **{k: swap(v, xs) for k, v in kwargs.items()})

    return call


class _MoveWithConstants(torch.autograd.Function):
    """A move of ``inputs`` and constants: relevance by the gradient; what the inputs do not receive is the
    constants' (a move conserves, so that is exactly what reached the constant entries)."""

    @staticmethod
    def forward(ctx, call, absorbed, *inputs):
        ctx.call, ctx.absorbed = call, absorbed
        ctx.save_for_backward(*inputs)
        return call(*(t.detach() for t in inputs))

    @staticmethod
    def backward(ctx, r):
        with torch.enable_grad():
            xs = [t.detach().requires_grad_() for t in ctx.saved_tensors]
            out = ctx.call(*xs)
            grads = torch.autograd.grad(out, xs, r, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads, strict=True)]
        ctx.absorbed.add(r)
        for g in grads:
            ctx.absorbed.add(-g)
        return (None, None, *grads)
