"""Guided backpropagation and DeconvNet: gradients with modified ReLU backward passes (Nielsen et al. 2022, §3.1).

Their rules at rectifiers are registered as the families ``"guided_backprop"`` and ``"deconvnet"``
(:mod:`tribute.core.rule_registry`); other nonlinearities keep f'.
"""

from __future__ import annotations

from ..core.family_rules import FamilyRules
from ..core.nonlinearities import is_rectifier, rectifier_gate
from ..core.registry import register
from ..core.rule_registry import register_rule
from ..core.rules import ElementwiseRule, ModifiedBackwardInPlace
from .gradient import GradientAtInput


class _RectifierRule(ElementwiseRule):
    """A rule at rectifiers only; it saves the forward gate, the rectifier's own f'."""

    saves_input = False
    # Springenberg et al. and Zeiler & Fergus change the backward pass at rectifiers alone: a product, a softmax or
    # a LayerNorm keeps its derivative by the methods' definition, so it is no op "without a rule"
    gradient_elsewhere = True

    def applies(self, nl, params):
        return is_rectifier(nl, params)

    def save(self, nl, z, y, params):
        return (rectifier_gate(nl, z, params),)

    def apply_inplace(self, nl, z, params, phase):
        ModifiedBackwardInPlace.apply(z, self, nl, params, phase)
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


register_rule("guided_backprop", "*", GuidedRelu())
register_rule("deconvnet", "*", DeconvRelu())


@register("guided_backprop")
class GuidedBackprop(GradientAtInput):
    """Guided backpropagation (Springenberg et al. 2015).

    At every ReLU the backward signal passes only where the forward input was positive *and* the
    incoming signal is positive: R_in = 1[z > 0] · max(R_out, 0).  Other nonlinearities keep f'.
    """

    rules = FamilyRules("guided_backprop")


@register("deconvnet")
class DeconvNet(GradientAtInput):
    """DeconvNet (Zeiler & Fergus 2014): at every ReLU the backward signal is rectified, R_in = max(R_out, 0),
    regardless of the forward input.  Other nonlinearities keep f'.
    """

    rules = FamilyRules("deconvnet")
