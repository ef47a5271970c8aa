"""ε-LRP as a modified gradient (Bach et al. 2015; Ancona et al., seed 001 Eq 14–15, Prop 1)."""

from __future__ import annotations

from types import SimpleNamespace

from ..core import options as opt
from ..core.registry import register
from ..core.rules import EpsilonRatio, RuleSet
from .gradient import GradientAtInput


@register("lrp_epsilon")
class LRPEpsilon(GradientAtInput):
    """ε-LRP in Ancona's form (seed 001, Prop 1): x ⊙ ∂^g S_c(x)/∂x with g(z) = f(z) / (z + ε·sign z).

    sign(0) is taken as +1, so g is finite where z = 0.  On ReLU networks this equals gradient × input
    up to O(ε) (Prop 3i).  The stabiliser sits at the nonlinearities only; it agrees with the Eq 15 form
    (ε at every linear layer) where every linear layer feeds a nonlinearity and ε → 0.

    Options
    -------
    epsilon : the stabiliser ε > 0 (default 1e-9).
    """

    options = {"epsilon": opt.Option(1e-9, opt.real(0, low_open=True))}

    def rule_set(self, o: SimpleNamespace) -> RuleSet:
        return RuleSet(f"lrp_epsilon({o.epsilon:g})", {"*": EpsilonRatio(o.epsilon)})

    def combine(self, x, grad):
        return x * grad
