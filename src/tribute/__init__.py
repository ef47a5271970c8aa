"""tribute: attribution methods for PyTorch, and whether to trust them.

>>> import tribute
>>> attributions = tribute.explain(model, images, "integrated_gradients", target=3)  # doctest: +SKIP
"""

from .attribution import (
    CAM,
    LRP,
    ContrastiveGradCAM,
    DeconvNet,
    DeepLift,
    DeepLiftRevealCancel,
    ExpectedGradients,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    Gradient,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerDeepLift,
    LayerExpectedGradients,
    LayerGradient,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    LRPAlphaBeta,
    LRPEpsilon,
    LRPGamma,
    LRPZPlus,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    SmoothGradSquared,
    VarGrad,
)
from .core import (
    Coverage,
    LayerError,
    Method,
    NonFiniteAttributionError,
    Normalize,
    PassCount,
    count_passes,
    explain,
    get_method,
    known_nonlinearities,
    methods,
    reduce,
    register_nonlinearity,
)

__version__ = "0.1.0"

__all__ = [
    "LRP", "Coverage", "DeconvNet", "DeepLift", "DeepLiftRevealCancel", "ExpectedGradients", "Gradient",
    "GuidedBackprop",
    "InputXGradient", "IntegratedGradients", "LRPAlphaBeta", "LRPEpsilon", "LRPGamma", "LRPZPlus", "Method",
    "NonFiniteAttributionError", "Normalize", "PassCount", "Saliency", "SmoothGrad", "SmoothGradSquared",
    "VarGrad", "count_passes", "explain", "get_method", "known_nonlinearities", "methods",
    "register_nonlinearity",
    # the CAM family and layer attribution
    "CAM", "ContrastiveGradCAM", "FullGrad", "GradCAM", "GradCAMPlusPlus", "GuidedGradCAM", "LayerAttribution",
    "LayerDeepLift", "LayerExpectedGradients", "LayerError", "LayerGradient", "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "ScoreCAM", "reduce",
]
