"""ε-LRP in Ancona's form (Ancona et al. 2019, Prop 1): a modified gradient with its rule at the nonlinearities,
registered as the family ``"lrp_epsilon"`` (:mod:`tribute.core.rule_registry`).

``family_rules("lrp_epsilon", epsilon=ε)`` is the rule set of one call (:mod:`tribute.core.family_rules`); the
family's rules at products, softmax and normalisations are in :mod:`tribute.lrp.epsilon_ops`.
The composites' ε rule at linear layers (Eq 15) is :class:`tribute.lrp.Epsilon`, a rule of the family ``"lrp"``.
"""

from __future__ import annotations

import torch

from ..core.rule_registry import register_rule
from ..core.rules import ElementwiseRule, SavedFactor, sign0, stab
from .zero_value import zero_value

FAMILY = "lrp_epsilon"


class ElementwiseEpsilon(ElementwiseRule):
    """ε-LRP at a nonlinearity (Ancona et al. 2019, Prop 1): g = f(z) / (z + ε·sign z), sign(0) = +1.

    With ε > 0 the ratio is finite at z = 0; for f with f(0) = 0 (ReLU, tanh, GELU, SiLU) it is the average slope
    of f on [0, z].  Where f(0) ≠ 0 (sigmoid, hardsigmoid, softplus, exp) it is unbounded, ~f(0)/ε near z = 0
    (relevance sums of 1e13× the score): such nonlinearities are refused unless ``unbounded=True`` asks for
    Ancona's ratio anyway.  The LRP composites (method ``"lrp"``) count f(0) as an absorbed bias instead,
    g = (f(z) − f(0))/z, which stays bounded (:class:`tribute.lrp.PassRelevance`).
    When the attribution will not be differentiated, g is computed in the forward pass
    from y = f(z) and saved instead of z (no copy of z for an in-place call; one multiplication backward).
    """

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-9, unbounded: bool = False):
        if not epsilon > 0:
            raise ValueError(f"ε-LRP's epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)
        self.unbounded = bool(unbounded)

    def check(self, nl, params, z) -> None:
        """Refuse a nonlinearity with f(0) ≠ 0 (the ratio is unbounded there) unless ``unbounded`` is set."""
        if self.unbounded or nl.name == "relu":
            return
        f0 = zero_value(nl, params, z)
        if f0 != 0:
            raise ValueError(
                f"lrp_epsilon refuses {nl.name}: f(0) = {f0:g} ≠ 0, so Ancona's ratio f(z)/(z + ε) is unbounded near "
                "z = 0 (relevance can reach f(0)/ε times the score). Use the LRP composites (method 'lrp', e.g. "
                "composite='epsilon'), which count f(0) as an absorbed bias, or pass unbounded=True to get the "
                "unbounded ratio anyway")

    def keeps_input(self, phase):
        return phase.differentiable

    def apply(self, nl, z, params, phase):
        self.check(nl, params, z)
        if phase.differentiable:
            return super().apply(nl, z, params, phase)
        return SavedFactor.apply(z, nl, params, lambda zz, y: self.ratio(nl, zz, y))

    def ratio(self, nl, z, y):
        if nl.name == "relu":  # y ≥ 0 and y = z where z > 0: y / (y + ε) is the ratio
            den = y + self.epsilon
        else:
            den = stab(z, self.epsilon)
        return torch.div(y, den, out=den)

    def backward(self, nl, gy, saved, params):
        (z,) = saved
        return gy * nl(z, **params) / (z + self.epsilon * sign0(z))


register_rule(FAMILY, "*", ElementwiseEpsilon())
