"""Explainers that are part of the model: the aligned explainer of Zeng et al. (2021) and what trains it.

- :class:`AlignedExplainer` (:mod:`.aligned`): a classifier with an explainer head on one of its feature maps; one
  forward pass gives ``{"logits", "attribution"}``;
- :class:`ExplainerHead` (:mod:`.head`): the head, transposed convolutions from (C, h, w) to the input's (H, W);
- the alignment target and loss (:mod:`.target`), the registered method ``"aligned"`` (:mod:`.method`) and the
  training, joint (Eq 5) or of the head alone on a frozen classifier (:mod:`.train`);
- the pipeline before it: the CIFAR-style ResNet-18 of any width (:mod:`.resnet`), step 1, the adversarially
  robust twin with PGD-L2 presets (:mod:`.twin`), step 2, the twin's SmoothGrad maps of a training set in a store
  (:mod:`.twin_store`), both in one resumable call (:mod:`.pipeline`), and the experiments' data sets
  (:mod:`.datasets`: Fashion-MNIST, OpenCV's digits).
"""

from .aligned import AlignedExplainer
from .datasets import EXPERIMENT_DATASETS, load_experiment_data
from .head import PAPER_WIDTHS, ExplainerHead, default_widths, plan_axis
from .method import AlignedMap
from .pipeline import TwinTargets, robust_twin_targets
from .resnet import ResNetCIFAR, resnet18_cifar
from .target import alignment_loss, alignment_map, targets_from_method, targets_from_store
from .train import PAPER_LAMBDA, train_aligned
from .twin import TWIN_PRESETS, StepDecay, TwinPreset, train_robust_twin, twin_preset
from .twin_store import TWIN_SMOOTHGRAD, twin_attributions

__all__ = ["EXPERIMENT_DATASETS", "PAPER_LAMBDA", "PAPER_WIDTHS", "TWIN_PRESETS", "TWIN_SMOOTHGRAD",
           "AlignedExplainer", "AlignedMap", "ExplainerHead", "ResNetCIFAR", "StepDecay", "TwinPreset", "TwinTargets",
           "alignment_loss", "alignment_map", "default_widths", "load_experiment_data", "plan_axis",
           "resnet18_cifar", "robust_twin_targets", "targets_from_method", "targets_from_store", "train_aligned",
           "train_robust_twin", "twin_attributions", "twin_preset"]
