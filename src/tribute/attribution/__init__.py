"""Attribution methods, one file per family; importing this package registers them all."""

from .cam import CAM, ContrastiveGradCAM, FullGrad, GradCAM, GradCAMPlusPlus, GuidedGradCAM, ScoreCAM
from .deeplift import DeepLift, DeepLiftRevealCancel
from .gradient import Gradient, InputXGradient, Saliency
from .guided import DeconvNet, GuidedBackprop
from .integrated import ExpectedGradients, IntegratedGradients
from .layer import (
    LayerAttribution,
    LayerDeepLift,
    LayerExpectedGradients,
    LayerGradient,
    LayerGradientXActivation,
    LayerIntegratedGradients,
)
from .lrp import LRP, LRPAlphaBeta, LRPEpsilon, LRPGamma, LRPZPlus
from .noise import SmoothGrad, SmoothGradSquared, VarGrad

__all__ = [
    "LRP", "DeconvNet", "DeepLift", "DeepLiftRevealCancel", "ExpectedGradients", "Gradient", "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients", "LRPAlphaBeta", "LRPEpsilon", "LRPGamma", "LRPZPlus", "Saliency", "SmoothGrad",
    "SmoothGradSquared", "VarGrad",
    # the CAM family and layer attribution
    "CAM", "ContrastiveGradCAM", "FullGrad", "GradCAM", "GradCAMPlusPlus", "GuidedGradCAM", "LayerAttribution",
    "LayerDeepLift", "LayerExpectedGradients", "LayerGradient", "LayerGradientXActivation",
    "LayerIntegratedGradients", "ScoreCAM",
]
