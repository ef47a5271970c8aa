"""Guided backpropagation and DeconvNet: gradients with modified ReLU backward passes (Nielsen et al. 2022, §3.1)."""

from __future__ import annotations

from ..core.registry import register
from ..core.rules import DeconvRelu, GuidedRelu, RuleSet
from .gradient import GradientAtInput


@register("guided_backprop")
class GuidedBackprop(GradientAtInput):
    """Guided backpropagation (Springenberg et al. 2015).

    At every ReLU the backward signal passes only where the forward input was positive *and* the
    incoming signal is positive: R_in = 1[z > 0] · max(R_out, 0).  Other nonlinearities keep f'.
    """

    rules = RuleSet("guided_backprop", {"*": GuidedRelu()})


@register("deconvnet")
class DeconvNet(GradientAtInput):
    """DeconvNet (Zeiler & Fergus 2014): at every ReLU the backward signal is rectified, R_in = max(R_out, 0),
    regardless of the forward input.  Other nonlinearities keep f'.
    """

    rules = RuleSet("deconvnet", {"*": DeconvRelu()})
