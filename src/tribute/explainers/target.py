"""The alignment target g and the alignment loss of the aligned explainer (Zeng et al. 2021, Eq 4-5), written down.

What the head learns to output, for each training image x with label y:

- **which class**: the label's map, g = SmoothGrad of the score of class y (Eq 4, S = ∂A^y/∂x).  During training
  the label is the class the classifier is taught to predict, so at inference the head's map explains the
  prediction (the registered method refuses other targets: :mod:`tribute.explainers.method`);
- **form**: the absolute value summed over the input's channels, |g| → Σ_c |g_c| (N, 1, H, W).  Absolute,
  because the head is built to rank pixels by importance (ROAR, the figures) and a gradient's sign flips from
  pixel to pixel on the same stroke; the paper's head ends in a ReLU, so its output is non-negative too.
  Summed over channels, because the head gives one map per image, as the CAM family does;
- **normalisation per image**: divided by its mean over the pixels, so every target map has mean 1 (an all-zero
  map stays zero).  Raw gradient magnitudes vary by orders of magnitude between images and models (a robust
  twin's gradients are smaller); per-image normalisation makes the target the map's *shape*, which is what the
  explanation is, and puts the loss on the scale of cross-entropy (both O(1));
- **SmoothGrad**: ``noise_level`` 0.15 of each image's value range (Smilkov et al. 2017's 10-20 %; the paper gives
  no σ) and 50 samples (the paper's Table 1 setting), seeded;
- **loss**: the mean squared error over the map's pixels, per image, ``"mse"`` (default); Eq 5's unsquared L2 norm
  ‖E(h) − g‖₂ is ``"l2"``.  Measured (tests/test_explainers_train.py prints it) on a small CNN of the 8×8 digits,
  a batch of 64, a robust twin (PGD-L2, ε = 0.5) and the untrained head in train mode: CE 0.55, gradient norm 0.95
  on the trunk (none on the head); λ‖E − g‖₂ on raw |SmoothGrad|, λ = 0.35: 0.73, gradient norm 3.3 on the head
  and 0.31 on the trunk.  So on raw scales the paper's term is not without effect: its gradient with respect to
  E(h) has norm λ per image whatever the target's scale ((E − g)/‖E − g‖; the test checks it for targets scaled by
  1e-3 and 1e3).  But what it asks the head for is the raw scale, which is the model's and not the explanation's
  (the robust twin's raw |SmoothGrad| per pixel is 0.11 where the standard model's is 0.47, on the same images),
  and its gradient keeps norm λ up to the optimum, where it is not differentiable, so SGD jitters around the target
  by about the step size.  Normalised maps with the MSE make the target the map's shape on one scale for every
  model, and their gradient vanishes as the head reaches it: chosen as the default.  λ·MSE there: 0.62, gradient
  norm 1.15 on the head and 0.07 on the trunk; with λ = 0.35 the alignment's pull on the trunk in joint training
  is thus about a tenth of the cross-entropy's at the start (raise λ for more).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import store as store_module
from ..core.registry import explain
from ..store.data import Samples

LOSSES = ("mse", "l2")
#: the target's SmoothGrad, when computed on the fly (module doc)
SMOOTHGRAD_OPTIONS = {"samples": 50, "noise_level": 0.15, "seed": 0}


def alignment_map(attribution: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) attributions → (N, 1, H, W): Σ_c |a_c| divided by its per-image mean (module doc)."""
    if not isinstance(attribution, torch.Tensor) or attribution.dim() != 4:
        got = tuple(attribution.shape) if isinstance(attribution, torch.Tensor) else type(attribution).__name__
        raise ValueError(f"an alignment target is made from image attributions (N, C, H, W); got {got}")
    m = attribution.abs().sum(1, keepdim=True)
    mean = m.mean((2, 3), keepdim=True)
    return torch.where(mean > 0, m / mean.clamp_min(torch.finfo(m.dtype).tiny), torch.zeros_like(m))


def alignment_loss(maps: torch.Tensor, targets: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """Per-image alignment loss (N,): ``"mse"`` mean over pixels of (E − g)², ``"l2"`` ‖E − g‖₂ (Eq 5)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    if maps.shape != targets.shape:
        raise ValueError(f"the head's maps {tuple(maps.shape)} and the target maps {tuple(targets.shape)} differ in "
                         "shape")
    d = (maps - targets).flatten(1)
    return d.pow(2).mean(1) if loss == "mse" else d.norm(dim=1)


def targets_from_method(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, method: str = "smoothgrad",
                        *, batch_size: int | None = None, **options) -> torch.Tensor:
    """Target maps computed now: ``method``'s attributions of each label's score on ``model`` (the robust twin, or
    the standard model for the ablation), made into :func:`alignment_map`.  SmoothGrad gets
    :data:`SMOOTHGRAD_OPTIONS` unless ``options`` say otherwise."""
    if method == "smoothgrad":
        options = {**SMOOTHGRAD_OPTIONS, **options}
    return alignment_map(explain(model, inputs, method, target=labels, batch_size=batch_size, **options))


def targets_from_store(store, inputs: torch.Tensor, labels: torch.Tensor, *, method: str | None = "smoothgrad",
                       model: nn.Module | None = None) -> torch.Tensor:
    """Target maps read from an attribution store (:mod:`tribute.store`; a Store or its path), checked first: it must
    hold ``method``'s attributions (None: any method) of the labels' classes for exactly these ``(inputs, labels)``
    (and, given ``model``, have been computed from that model: the robust twin); a mismatch is a
    ``StoreMismatchError`` naming it."""
    if not isinstance(store, store_module.Store):
        store = store_module.open_store(store)
    manifest, problems = store.manifest, []
    if method is not None and store.method != method:
        problems.append(f"it holds {store.method!r} attributions, not {method!r}")
    if manifest["data"] != Samples((inputs, labels)).identity():
        problems.append(f"it was computed for another data set ({manifest['data']['count']} samples of "
                        f"{manifest['data']['sample_shape']}, SHA-256 {manifest['data']['sha256'][:12]}…) than the "
                        f"{len(inputs)} training samples given")
    if manifest["settings"]["target"].get("kind") != "label":
        problems.append(f"it explains target {manifest['settings']['target']}, not the labels (compute it with "
                        "target='label': the head learns each label's map)")
    if model is not None:
        from ..store.identity import model_identity
        if manifest["model"] != model_identity(model):
            problems.append("it was computed from another model than the one given")
    if problems:
        raise store_module.StoreMismatchError(f"the store at {store.path} cannot align this training: "
                                              + "; ".join(problems))
    return alignment_map(store.attributions().to(inputs.dtype))
