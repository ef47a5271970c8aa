"""``tribute experiment alignment``: Zeng et al. (2021)'s evidence for the aligned explainer, at two scales.

:func:`run_alignment` (and the command ``tribute experiment alignment --scale smoke|full --data
fashion-mnist|opencv-digits|digits --out DIR [--seeds K]``) trains the standard classifier, the robust twin and the
aligned explainers (:mod:`.models`), measures ROAR, the sanity check and the latency (:mod:`.measures`) for the
attributions of :mod:`.methods`, and writes into DIR:

- ``table1_roar``: ROAR at 20/40/60/80 % removed for random, saliency, IG, DeepLIFT, GradientSHAP, occlusion,
  SmoothGrad, the robust twin's attribution and the aligned explainer, mean ± sd over the seeds;
- ``fig4_robust_saliency.png``: ROAR of the standard model's saliency against the robust twin's saliency;
- ``fig5_sanity`` (.png and table): the last residual block re-initialised, Spearman before/after per method;
- ``table2_alignment``: robust against standard alignment (ROAR);
- ``table3_latency``: milliseconds per image of every method in one run, the explainer included;
- ``accuracy``: the classifier alone beside the classifiers trained jointly with the head (and the twin);
- ``run.json``: settings, seeds, versions, seconds per step.

Tables come as CSV and Markdown.  Each step's result is written atomically and reused on a rerun
(:mod:`.steps`).  The scales and the full scale's budget: :mod:`.scales`.
"""

from .runner import run_alignment
from .scales import SCALES, Scale, get_scale

__all__ = ["SCALES", "Scale", "get_scale", "run_alignment"]
