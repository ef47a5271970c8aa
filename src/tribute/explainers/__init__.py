"""Explainers that are part of the model: the aligned explainer of Zeng et al. (2021) and what trains it.

- :class:`AlignedExplainer` (:mod:`.aligned`): a classifier with an explainer head on one of its feature maps; one
  forward pass gives ``{"logits", "attribution"}``;
- :class:`ExplainerHead` (:mod:`.head`): the head, transposed convolutions from (C, h, w) to the input's (H, W);
- the alignment target and loss (:mod:`.target`), the registered method ``"aligned"`` (:mod:`.method`) and the
  training, joint (Eq 5) or of the head alone on a frozen classifier (:mod:`.train`).
"""

from .aligned import AlignedExplainer
from .head import PAPER_WIDTHS, ExplainerHead, default_widths, plan_axis
from .method import AlignedMap
from .target import alignment_loss, alignment_map, targets_from_method, targets_from_store
from .train import PAPER_LAMBDA, train_aligned

__all__ = ["PAPER_LAMBDA", "PAPER_WIDTHS", "AlignedExplainer", "AlignedMap", "ExplainerHead", "alignment_loss",
           "alignment_map", "default_widths", "plan_axis", "targets_from_method", "targets_from_store", "train_aligned"]
