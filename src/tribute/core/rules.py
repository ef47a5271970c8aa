"""Backward rules at elementwise nonlinearities (Ancona et al. 2019, Eq 16 and Table 1).

A rule replaces the chain-rule factor f'(z) of a nonlinearity y = f(z) by another function g during
the backward pass ("modified gradient", Eq 16), or replaces f itself in the forward pass.  Each rule is
a small class; :class:`RuleSet` says which rule applies to which nonlinearity.

Backward formulas are written in differentiable torch operations of the saved input, so attributions
computed with ``create_graph=True`` can be differentiated again (attacks on explanations, β-smoothing).
Differentiating an attribution a(x) = m(x) ⊙ ∂^g S/∂x needs the *true* derivative of the forward
pass (how the pre-activations z move with x) and the derivative of g: so a rule node answers its
first backward call, the one that computes the attribution, with g, and any later call (autograd
walking back through the forward pass from a saved z) with f'.
Rules that only need a mask save the mask, not the input: an in-place op later in the model could
overwrite an input but never a tensor the rule made itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .nonlinearities import Nonlinearity, is_rectifier, rectifier_gate
from .rule_registry import BackwardRule, RuleKind


def sign0(z: torch.Tensor) -> torch.Tensor:
    """sign(z) with sign(0) = +1, so that z + ε·sign0(z) is never zero for ε > 0.

    ``z + 0.0`` turns −0.0 into +0.0 (IEEE), so −0.0 counts as 0 too.  Arithmetic rather than a mask: on
    CPU ``torch.where`` on a comparison runs about five times slower than an elementwise op."""
    return torch.copysign(z.new_ones(()), z + 0.0)


def stab(d: torch.Tensor, e: float) -> torch.Tensor:
    """d + e·sign0(d): the stabilised denominator, never zero, in three elementwise passes and no mask."""
    s = torch.add(d, 0.0)
    torch.copysign(d.new_tensor(e), s, out=s)
    return s.add_(d)


def derivative(nl: Nonlinearity, z: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """f'(z) of an elementwise nonlinearity, by autograd (differentiable when grad mode is on)."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        zz = z if (create_graph and z.requires_grad) else z.detach().requires_grad_()
        y = nl(zz, **params)
        (d,) = torch.autograd.grad(y, zz, torch.ones_like(y), create_graph=create_graph)
    return d


class ElementwiseRule(BackwardRule):
    """Base class: a modified backward pass at one elementwise nonlinearity (the elementwise kind of
    :mod:`tribute.core.rule_registry`).

    Subclasses set ``saves_input`` and override :meth:`save` and :meth:`backward`; rules that change
    the forward function override :meth:`apply` instead.
    """

    kind = RuleKind.ELEMENTWISE
    name = "rule"
    #: whether :meth:`save` keeps the input z (an in-place call is then given a copy of z)
    saves_input = True

    def applies(self, nl: Nonlinearity, params: dict[str, Any]) -> bool:
        return True

    def apply(self, nl: Nonlinearity, z: torch.Tensor, params: dict[str, Any], phase: Phase) -> torch.Tensor:
        return _ModifiedBackward.apply(z, self, nl, params, phase)

    def keeps_input(self, phase: Phase) -> bool:
        """Whether this pass saves z itself (an in-place call then hands the rule a copy)."""
        return self.saves_input

    def apply_inplace(self, nl: Nonlinearity, z: torch.Tensor, params: dict[str, Any], phase: Phase) -> bool:
        """For an in-place call: overwrite ``z`` with the rule's output and return True, or return False to
        have :meth:`apply` compute it out of place (the default; the result is then copied into z)."""
        return False

    def save(self, nl: Nonlinearity, z: torch.Tensor, y: torch.Tensor, params) -> tuple[torch.Tensor, ...]:
        return (z,)

    def backward(self, nl: Nonlinearity, gy: torch.Tensor, saved: tuple, params) -> torch.Tensor:
        """The modified backward: gy · g."""
        raise NotImplementedError

    def forward_derivative(self, nl: Nonlinearity, gy: torch.Tensor, saved: tuple, params) -> torch.Tensor:
        """The true backward gy · f'(z), for derivatives of the attribution itself."""
        (z,) = saved
        return gy * derivative(nl, z, params)



class Phase:
    """Whether the backward pass that computes the attribution is still to come (see module doc), and
    whether the attribution will itself be differentiated (``create_graph``): only then must rules keep
    what they need for the true derivative f'."""

    def __init__(self, differentiable: bool = True):
        self.first_order = True
        self.differentiable = differentiable


class _ModifiedBackward(torch.autograd.Function):
    """y = f(z) forward; the rule's g in the attribution's backward pass, f' in any later one."""

    @staticmethod
    def forward(ctx, z, rule: ElementwiseRule, nl: Nonlinearity, params, phase: Phase):
        y = nl(z, **params)
        ctx.rule, ctx.nl, ctx.params, ctx.phase = rule, nl, params, phase
        ctx.save_for_backward(*rule.save(nl, z, y, params))
        return y

    @staticmethod
    def backward(ctx, gy):
        step = ctx.rule.backward if ctx.phase.first_order else ctx.rule.forward_derivative
        return step(ctx.nl, gy, ctx.saved_tensors, ctx.params), None, None, None, None


class _ModifiedBackwardInPlace(torch.autograd.Function):
    """:class:`_ModifiedBackward` for an in-place call by a rule that saves only what it reads from z first
    (a gate): z is overwritten with f(z), with no new output and no copy."""

    @staticmethod
    def forward(ctx, z, rule: ElementwiseRule, nl: Nonlinearity, params, phase: Phase):
        ctx.rule, ctx.nl, ctx.params, ctx.phase = rule, nl, params, phase
        ctx.save_for_backward(*rule.save(nl, z, None, params))
        if nl.name == "relu":
            z.relu_()
        else:
            z.copy_(nl(z, **params))
        ctx.mark_dirty(z)
        return z

    backward = _ModifiedBackward.backward


class Gradient(ElementwiseRule):
    """The plain gradient g = f'(z): the nonlinearity runs untouched under autograd."""

    name = "gradient"

    def apply(self, nl, z, params, phase):
        return nl(z, **params)


class ElementwiseEpsilon(ElementwiseRule):
    """ε-LRP at a nonlinearity (Ancona et al. 2019, Prop 1): g = f(z) / (z + ε·sign z), sign(0) = +1.

    With ε > 0 the ratio is finite at z = 0; for f with f(0) = 0 (ReLU, tanh) it is the average slope
    of f on [0, z].  When the attribution will not be differentiated, g is computed in the forward pass
    from y = f(z) and saved instead of z (no copy of z for an in-place call; one multiplication backward).
    """

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-9):
        self.epsilon = float(epsilon)

    def keeps_input(self, phase):
        return phase.differentiable

    def apply(self, nl, z, params, phase):
        if phase.differentiable:
            return super().apply(nl, z, params, phase)
        return _SavedFactor.apply(z, nl, params, lambda zz, y: self.ratio(nl, zz, y))

    def ratio(self, nl, z, y):
        if nl.name == "relu":  # y ≥ 0 and y = z where z > 0: y / (y + ε) is the ratio
            den = y + self.epsilon
        else:
            den = stab(z, self.epsilon)
        return torch.div(y, den, out=den)

    def backward(self, nl, gy, saved, params):
        (z,) = saved
        return gy * nl(z, **params) / (z + self.epsilon * sign0(z))


class _SavedFactor(torch.autograd.Function):
    """y = f(z) forward; gy · factor(z, y) backward, the factor computed and saved in the forward pass.

    For attributions that are not differentiated further: the node has no second-order behaviour."""

    @staticmethod
    def forward(ctx, z, nl: Nonlinearity, params, factor):
        y = nl(z, **params)
        ctx.save_for_backward(factor(z, y))
        return y

    @staticmethod
    def backward(ctx, gy):
        (factor,) = ctx.saved_tensors
        return gy * factor, None, None, None


class Rescale(ElementwiseRule):
    """DeepLIFT Rescale (Ancona et al. 2019, Prop 2): g = (f(z) − f(z̄)) / (z − z̄).

    The batch holds the inputs in its first half and their references in the second half (one 2N
    pass).  Where |z − z̄| ≤ ``tolerance``·(1 + |z|) the ratio is replaced by its limit, f' at the
    midpoint.  Both halves get the same multiplier; only the first half carries the score.
    """

    name = "rescale"

    def __init__(self, tolerance: float = 1e-6):
        self.tolerance = float(tolerance)

    def apply(self, nl, z, params, phase):
        if z.shape[0] % 2:
            raise ValueError(
                f"DeepLIFT runs inputs and references as one batch of 2N rows, but a {nl.name} received "
                f"{z.shape[0]} rows: the model must keep the batch as the first dimension"
            )
        return super().apply(nl, z, params, phase)

    def backward(self, nl, gy, saved, params):
        (z,) = saved
        zx, zr = z.chunk(2)
        dz = zx - zr
        close = dz.abs() <= self.tolerance * (1 + zx.abs())
        safe_dz = torch.where(close, torch.ones_like(dz), dz)
        ratio = (nl(zx, **params) - nl(zr, **params)) / safe_dz
        if bool(close.any()):
            ratio = torch.where(close, derivative(nl, (zx + zr) / 2, params), ratio)
        return gy * torch.cat([ratio, ratio])


class _RectifierRule(ElementwiseRule):
    """A rule at rectifiers only; it saves the forward gate, the rectifier's own f'."""

    saves_input = False

    def applies(self, nl, params):
        return is_rectifier(nl, params)

    def save(self, nl, z, y, params):
        return (rectifier_gate(nl, z, params),)

    def apply_inplace(self, nl, z, params, phase):
        _ModifiedBackwardInPlace.apply(z, self, nl, params, phase)
        return True

    def forward_derivative(self, nl, gy, saved, params):
        (mask,) = saved
        return gy * mask


class GuidedRelu(_RectifierRule):
    """Guided backprop at a rectifier (Springenberg et al. 2015): g = 1[z > 0] · 1[gy > 0].

    For ReLU6 the forward gate is 1[0 < z < 6], its own f'.
    """

    name = "guided"

    def backward(self, nl, gy, saved, params):
        (mask,) = saved
        return gy.clamp(min=0).mul_(mask)


class DeconvRelu(_RectifierRule):
    """DeconvNet at a rectifier (Zeiler & Fergus 2014): the backward signal is rectified, g·gy = relu(gy),
    whatever the forward input (the saved gate serves only derivatives of the attribution)."""

    name = "deconvnet"

    def backward(self, nl, gy, saved, params):
        return gy.clamp(min=0)


class SoftplusRelu(ElementwiseRule):
    """Replace ReLU by softplus_β in the forward pass (Dombrowski et al. 2019, β-smoothing).

    Gradients are then the true gradients of the smoothed network; β → ∞ recovers the ReLU.
    """

    name = "softplus"

    def __init__(self, beta: float = 10.0):
        if not beta > 0:
            raise ValueError(f"softplus beta must be > 0, got {beta}")
        self.beta = float(beta)

    def applies(self, nl, params):
        return nl.family == "relu"

    def apply(self, nl, z, params, phase):
        return F.softplus(z, beta=self.beta, threshold=20.0)


class RuleSet:
    """Which rule applies to which nonlinearity.

    Keys are nonlinearity names (``"relu"``, ``"sigmoid"``, …) or ``"*"`` for every nonlinearity the
    rule :meth:`ElementwiseRule.applies` to.  Nonlinearities no rule takes keep the plain gradient.
    """

    def __init__(self, name: str, rules: Mapping[str, ElementwiseRule], ops: Any = None):
        self.name = name
        self.rules = dict(rules)
        #: the rules at other ops: ``ops.start()`` gives the handler of one pass, ``ops.key()`` says what it does
        #: (e.g. an LRP composite, :mod:`tribute.lrp`)
        self.ops = ops

    def rule_for(self, nl: Nonlinearity, params: dict[str, Any]) -> ElementwiseRule | None:
        rule = self.rules.get(nl.name)
        if rule is None:
            rule = self.rules.get("*")
        if rule is None or not rule.applies(nl, params) or isinstance(rule, Gradient):
            return None
        return rule

    def key(self) -> tuple:
        ops = None if self.ops is None else self.ops.key()
        return tuple(sorted((k, r.key()) for k, r in self.rules.items())), ops

    def __eq__(self, other) -> bool:
        return isinstance(other, RuleSet) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return f"RuleSet({self.name!r}, {self.rules!r})"


GRADIENT = RuleSet("gradient", {"*": Gradient()})
