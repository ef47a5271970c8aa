"""Explainers that a model computes itself, and what trains them (Zeng et al. 2021).

- :mod:`~tribute.explainers.resnet`: the CIFAR-style ResNet-18 of the experiments, of any width;
- :mod:`~tribute.explainers.twin`: step 1, the adversarially robust twin (PGD-L2 presets);
- :mod:`~tribute.explainers.twin_store`: step 2, the twin's SmoothGrad maps of a training set, in a store;
- :mod:`~tribute.explainers.pipeline`: steps 1–2 in one resumable call;
- :mod:`~tribute.explainers.datasets`: the experiments' data sets (Fashion-MNIST, OpenCV's digits).
"""

from .datasets import EXPERIMENT_DATASETS, load_experiment_data
from .pipeline import TwinTargets, robust_twin_targets
from .resnet import ResNetCIFAR, resnet18_cifar
from .twin import TWIN_PRESETS, StepDecay, TwinPreset, train_robust_twin, twin_preset
from .twin_store import TWIN_SMOOTHGRAD, twin_attributions

__all__ = ["EXPERIMENT_DATASETS", "TWIN_PRESETS", "TWIN_SMOOTHGRAD", "ResNetCIFAR", "StepDecay", "TwinPreset",
           "TwinTargets", "load_experiment_data", "resnet18_cifar", "robust_twin_targets", "train_robust_twin",
           "twin_attributions", "twin_preset"]
