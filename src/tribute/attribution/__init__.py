"""Attribution methods, one file per family; importing this package registers them all."""

from .deeplift import DeepLift
from .gradient import Gradient, InputXGradient, Saliency
from .guided import DeconvNet, GuidedBackprop
from .integrated import ExpectedGradients, IntegratedGradients
from .lrp import LRP, LRPAlphaBeta, LRPEpsilon, LRPGamma, LRPZPlus
from .noise import SmoothGrad, SmoothGradSquared, VarGrad

__all__ = [
    "LRP", "DeconvNet", "DeepLift", "ExpectedGradients", "Gradient", "GuidedBackprop", "InputXGradient",
    "IntegratedGradients", "LRPAlphaBeta", "LRPEpsilon", "LRPGamma", "LRPZPlus", "Saliency", "SmoothGrad",
    "SmoothGradSquared", "VarGrad",
]
