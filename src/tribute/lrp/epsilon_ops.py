"""``lrp_epsilon`` (Ancona et al. 2019, Prop 1: x ⊙ a modified gradient) at the ops of transformers and gated nets.

Ancona et al. write ε-LRP as gradient × input with the chain-rule factor of each nonlinearity replaced by f(z)/z
(:mod:`tribute.lrp.elementwise`); an op linear in its inputs keeps its gradient.  The rules of the composites at
products, softmax and normalisations (:mod:`tribute.lrp.gates`, :mod:`tribute.lrp.attention`) read in that form,
with t = R / v the relevance per unit of a tensor v:

- **gate** (signal-take-all, Arras et al. 2017): y = a·g with g a gate gives R_a = R_y, R_g = 0; with t this is
  t_a = g ⊙ t_y, the gradient with g held constant, and no gradient to g;
- **uniform** (AttnLRP, Achtibat et al. 2024, the uniform rule): y = B(a, b) bilinear, R_a = R_b = R_y / 2 (for a
  product y_j = Σ_i a_ji b_ik: each term's relevance halved); with t, each operand's gradient halved;
- **softmax**: under CP-LRP a gate (above); under AttnLRP its rule is the plain gradient in this form
  (:mod:`tribute.lrp.attention`);
- **normalisations**: 1/σ held constant (Ali et al. 2022), the plain gradient of the affine map that is left.

"Held constant" and "halved" hold for the attribution's backward pass only (:class:`tribute.core.rules.Phase`):
later passes, which differentiate the attribution itself (``differentiable=True``), see the true derivatives.
The family's op handler (:class:`EpsilonOps`) is the engine's :class:`~tribute.core.family_rules.FamilyOps` with
gate marks (:mod:`tribute.lrp.gates`) and the attention option.
"""

from __future__ import annotations

import torch

from ..core.family_rules import FamilyOps, FamilyPass
from ..core.rule_registry import OpRule, register_rule
from ..core.rules import Phase
from .attention import Normalisation, Softmax
from .elementwise import FAMILY
from .gates import factors, gates_only, gates_only_on_path, made_gate, mark_gate, path_tensors
from .ops import IN_PLACE, MOVES

ATTENTION = ("cp", "attnlrp")


class EpsilonOps(FamilyOps):
    """The op handler of ``lrp_epsilon``: the family's rules, attention's softmax as ``attention`` says."""

    def __init__(self, attention: str = "cp"):
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        super().__init__(FAMILY, {"attention": attention})

    def start(self) -> EpsilonPass:
        return EpsilonPass(self.family, self.options)


class EpsilonPass(FamilyPass):
    """One forward pass of ``lrp_epsilon`` under its op rules (the gradient form, see the module doc)."""

    form = "gradient"

    @property
    def attention(self) -> str:
        return self.options["attention"]

    def made_by_nonlinearity(self, y: torch.Tensor, name: str) -> None:
        """A nonlinearity made ``y``: a sigmoid's output (and the others of :mod:`tribute.lrp.gates`) is a gate."""
        mark_gate(y, made_gate(name))

    def hold(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` held constant in the attribution's backward pass (a normalisation's 1/σ)."""
        return held(t, self.phase)

    def no_rule(self, func, args, kwargs, tagged, name):
        self.unruled.append(name)
        return NotImplemented


def held(t: torch.Tensor, phase: Phase | None) -> torch.Tensor:
    """``t`` with no gradient in the attribution's backward pass, its true one in later passes.  Where the attribution
    will not be differentiated (``differentiable=False``: no later pass) that is ``t.detach()``, which also spares the
    backward pass the zeros it would carry back through whatever made ``t`` (an attention's softmax and scores)."""
    if not t.requires_grad:
        return t
    if phase is not None and not phase.differentiable:
        return t.detach()
    return _Share.apply(t, 0.0, phase)


class _Share(torch.autograd.Function):
    """Identity forward; the gradient times ``share`` in the attribution's backward pass, unchanged in later ones."""

    @staticmethod
    def forward(ctx, t, share: float, phase: Phase | None):
        ctx.share, ctx.phase = share, phase
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        if ctx.phase is not None and not ctx.phase.first_order:
            return g, None, None
        return g * ctx.share, None, None


class Product(OpRule):
    """A product or division of tensors on the input's path: gates held constant, the signals' gradients shared
    uniformly (see the module doc); one signal and no gate is linear (the plain gradient)."""

    name = "product"

    def __init__(self, base: str, inplace: bool = False):
        self.base, self.inplace = base, inplace

    def apply(self, handler, func, args, kwargs, tagged, name):
        if self.base == "einsum" and len(args) == 2 and isinstance(args[1], (list, tuple)):
            args = (args[0], *args[1])  # einsum(eq, [a, b]) = einsum(eq, a, b)
        signals, gates = factors(self.base, args, kwargs, tagged)
        strength = gates_only(path_tensors(args, kwargs, tagged))
        if not signals:  # c / b with only the divisor on the path: not linear in it, and no rule
            return handler.no_rule(func, args, kwargs, tagged, name)
        if not gates and len(signals) == 1:
            if not strength:
                return NotImplemented  # linear in its one operand on the path
            out = func(*args, **kwargs)
        else:
            share = 1.0 / len(signals)
            # in place: the product reads a copy of the first operand, which the result then overwrites (what the
            # product saved for its backward pass must not be that operand)
            own = {id(args[0]): args[0].clone()} if self.inplace else {}
            swap = {id(t): held(own.get(id(t), t), handler.phase) for t in gates}
            if len(signals) > 1:
                swap.update({id(t): _Share.apply(own.get(id(t), t), share, handler.phase) for t in signals})
            swap = {**own, **swap}
            new_args = [swap.get(id(a), a) if isinstance(a, torch.Tensor) else a for a in args]
            new_kwargs = {k: swap.get(id(v), v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            if self.inplace:
                out = args[0].copy_(getattr(torch, self.base)(*new_args, **new_kwargs))
            else:
                out = func(*new_args, **new_kwargs)
        mark_gate(out, strength)
        return out


class GateMarks(OpRule):
    """A move or an affine op: its plain gradient; a tensor made from gates only is a gate (:mod:`.gates`)."""

    name = "gate_marks"

    def apply(self, handler, func, args, kwargs, tagged, name):
        strength = gates_only_on_path(args, kwargs, tagged)
        if not strength:
            return NotImplemented
        out = func(*args, **kwargs)
        mark_gate(out, strength)
        return out


_PRODUCTS = ("mul", "__mul__", "__rmul__", "multiply", "div", "__truediv__", "true_divide", "divide", "matmul",
             "__matmul__", "mm", "bmm", "einsum")
_AFFINE = ("add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "neg", "__neg__")

for _op in _PRODUCTS:
    register_rule(FAMILY, _op, Product(_op))
for _op, _base in IN_PLACE.items():
    register_rule(FAMILY, _op, Product(_base, inplace=True) if _base in ("mul", "div") else GateMarks())
register_rule(FAMILY, (*MOVES, *_AFFINE), GateMarks())
register_rule(FAMILY, "softmax", Softmax())
for _op in ("layer_norm", "group_norm", "rms_norm"):
    register_rule(FAMILY, _op, Normalisation(_op))
