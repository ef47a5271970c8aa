"""Feature ablation: each group's attribution is the score lost when that group alone is removed.

φ_g = S(x) − S(x with group g replaced by the baseline), given to every feature of group g (the definition
Captum's ``FeatureAblation`` uses; Zeiler & Fergus 2014 for the image form with windows, see occlusion).
One perturbation per group and sample, M per sample, all sent through the model in chunks.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ...core.registry import register as register_method
from ...core.targets import Target
from .base import GroupPerturbation
from .scoring import clean_scores, perturbed_scores


@register_method("feature_ablation")
class FeatureAblation(GroupPerturbation):
    """Feature ablation: φ_g = S(x) − S(x \\ g) for each group g of ``feature_mask`` / ``segments``
    (default: each feature alone)."""

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        groups = self._groups(x, o)
        full = clean_scores(o.call.forward, target, x, o.batch_size)
        m = groups.size
        baseline = self._baseline(x, o)

        def make_rows(sample, draw):
            # the chunk's coalitions only (all but group draw[r]): an M × M table would not fit for M = 150,528
            # features of an ImageNet image, each alone
            return groups.rows(x, baseline, torch.arange(m)[None, :] != draw[:, None], sample)

        dropped = perturbed_scores(o.call.forward, target, x.shape[0], m, make_rows, batch_size=o.batch_size,
                                   progress=o.progress)
        moved = groups.present() & ~groups.unchanged(x, baseline)
        phi = torch.where(moved.to(full.device), full[:, None] - dropped, 0.0)
        return groups.spread(phi, x).to(x.dtype) if x.is_floating_point() else groups.spread(phi, x)
