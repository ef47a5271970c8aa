"""Backward rules at elementwise nonlinearities (Ancona et al. 2019, Eq 16 and Table 1).

A rule replaces the chain-rule factor f'(z) of a nonlinearity y = f(z) by another function g during
the backward pass ("modified gradient", Eq 16), or replaces f itself in the forward pass.  This module holds the
machinery: the rule base class, the autograd Functions that run a rule, the plain :class:`Gradient` and
:class:`RuleSet`, which says which rule applies to which nonlinearity.  Each method's own rules live beside the
method and are registered under its family (:mod:`tribute.core.rule_registry`); :func:`tribute.core.family_rules.
family_rules` makes a family's rule set from them.

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

from .nonlinearities import Nonlinearity
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
    #: whether the rule only replaces the forward function (smoothing) and keeps its true gradient: the plain
    #: gradient at ops without a rule is then exact, so strictness does not count them (:mod:`.strictness`)
    changes_forward_only = False
    #: whether the method is *defined* as the plain gradient at the ops this rule does not take (guided backprop and
    #: DeconvNet modify rectifiers only): an op that cannot hide a rectifier is then no gap (:mod:`.strictness`)
    gradient_elsewhere = False

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


class ModifiedBackwardInPlace(torch.autograd.Function):
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


class SavedFactor(torch.autograd.Function):
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

    @property
    def exact_elsewhere(self) -> bool:
        """Whether ops without a rule are exact under this set: its rules only replace forward functions."""
        return self.ops is None and bool(self.rules) and all(
            getattr(r, "changes_forward_only", False) for r in self.rules.values())

    @property
    def gradient_elsewhere(self) -> bool:
        """Whether this set's method is defined as the gradient wherever its rules do not apply."""
        return self.ops is None and bool(self.rules) and all(
            getattr(r, "gradient_elsewhere", False) for r in self.rules.values())

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
