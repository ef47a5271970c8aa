"""tribute: attribution methods for PyTorch, and whether to trust them.

>>> import tribute
>>> attributions = tribute.explain(model, images, "integrated_gradients", target=3)  # doctest: +SKIP
"""

from .attribution import (
    LRP,
    DeconvNet,
    DeepLift,
    ExpectedGradients,
    Gradient,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LRPAlphaBeta,
    LRPEpsilon,
    LRPGamma,
    LRPZPlus,
    Saliency,
    SmoothGrad,
    SmoothGradSquared,
    VarGrad,
)
from .core import (
    Coverage,
    Method,
    NonFiniteAttributionError,
    Normalize,
    PassCount,
    count_passes,
    explain,
    get_method,
    known_nonlinearities,
    methods,
    register_nonlinearity,
)

__version__ = "0.1.0"

__all__ = [
    "LRP", "Coverage", "DeconvNet", "DeepLift", "ExpectedGradients", "Gradient", "GuidedBackprop",
    "InputXGradient", "IntegratedGradients", "LRPAlphaBeta", "LRPEpsilon", "LRPGamma", "LRPZPlus", "Method",
    "NonFiniteAttributionError", "Normalize", "PassCount", "Saliency", "SmoothGrad", "SmoothGradSquared",
    "VarGrad", "count_passes", "explain", "get_method", "known_nonlinearities", "methods",
    "register_nonlinearity",
]
