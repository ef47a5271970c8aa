"""Gradient, saliency and gradient × input (Ancona et al. 2019, §3.1, Table 1).

All three need one modified gradient at the input itself: φ(x) = m(x) ⊙ ∂^g S_c(x)/∂x, with the plain
gradient g = f' here; guided backprop, DeconvNet and ε-LRP reuse :class:`GradientAtInput` with other
rules and multipliers.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..core import options as opt
from ..core.engine import accumulate
from ..core.family_rules import family_rules
from ..core.method import Method
from ..core.registry import register
from ..core.rule_registry import register_rule
from ..core.rules import GRADIENT, ElementwiseRule, RuleSet
from ..core.targets import Target

SOFTPLUS = "softplus"  # the family of β-smoothing (Dombrowski et al. 2019)


class SoftplusRelu(ElementwiseRule):
    """Replace ReLU by softplus_β in the forward pass (Dombrowski et al. 2019, β-smoothing).

    Gradients are then the true gradients of the smoothed network; β → ∞ recovers the ReLU.
    """

    name = "softplus"
    changes_forward_only = True  # the smoothed network's true gradient: other ops' plain gradient is exact

    def __init__(self, beta: float = 10.0):
        if not beta > 0:
            raise ValueError(f"softplus beta must be > 0, got {beta}")
        self.beta = float(beta)

    def applies(self, nl, params):
        return nl.family == "relu"

    def apply(self, nl, z, params, phase):
        return F.softplus(z, beta=self.beta, threshold=20.0)


register_rule(SOFTPLUS, "*", SoftplusRelu())

SOFTPLUS_OPTION = {
    "softplus_beta": opt.Option(None, opt.optional(opt.real(0, low_open=True)),
                                "replace every ReLU by softplus_β in the forward pass (β-smoothing)"),
}


def smoothed_rules(o: SimpleNamespace) -> RuleSet:
    """The plain gradient, or the gradient of the network with ReLUs made softplus_β (Dombrowski 2019)."""
    if o.softplus_beta is None:
        return GRADIENT
    return family_rules(SOFTPLUS, beta=o.softplus_beta)


class GradientAtInput(Method):
    """φ(x) = multiplier(x) ⊙ ∂^g S_c(x)/∂x: one forward and one backward pass per sample."""

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return x.shape[0] <= o.batch_size  # one chunk: the engine takes the prediction from its forward pass

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        def contribution(sample, _):
            rows = x[sample]
            return self.combine(rows, self._gradients(rows, target, sample, o))

        return accumulate(x.shape[0], 1, contribution, batch_size=o.batch_size)

    def combine(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad


@register("gradient")
class Gradient(GradientAtInput):
    """The gradient ∂S_c(x)/∂x (Simonyan et al. 2014; Ancona et al. 2019, Eq 4, Table 1: g = f', multiplier 1)."""

    options = SOFTPLUS_OPTION
    rule_set = staticmethod(smoothed_rules)

    def _predicts_on_first_pass(self, x, o):
        # softplus_β changes the forward pass: the prediction is the model's own, so it takes a pass of its own
        return o.softplus_beta is None and super()._predicts_on_first_pass(x, o)


@register("saliency")
class Saliency(Gradient):
    """Saliency |∂S_c(x)/∂x| (Simonyan et al. 2014; Nielsen et al. 2022, §3.1)."""

    def combine(self, x, grad):
        return grad.abs()


@register("input_x_gradient")
class InputXGradient(Gradient):
    """Gradient × input, x ⊙ ∂S_c(x)/∂x (Shrikumar et al. 2016; Ancona et al. 2019, Eq 6, Table 1)."""

    def combine(self, x, grad):
        return x * grad
