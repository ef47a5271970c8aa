"""Attribution methods, one file per family; importing this package registers them all."""

from .deeplift import DeepLift
from .gradient import Gradient, InputXGradient, Saliency
from .guided import DeconvNet, GuidedBackprop
from .integrated import ExpectedGradients, IntegratedGradients
from .lrp import LRPEpsilon
from .noise import SmoothGrad, SmoothGradSquared, VarGrad

__all__ = [
    "DeconvNet", "DeepLift", "ExpectedGradients", "Gradient", "GuidedBackprop", "InputXGradient",
    "IntegratedGradients", "LRPEpsilon", "Saliency", "SmoothGrad", "SmoothGradSquared", "VarGrad",
]
