"""The attribution methods compared, as in Zeng et al. (2021, §4.3), each bound to the model whose maps it gives.

Post-hoc methods explain the standard classifier: saliency (Simonyan et al. 2014), integrated gradients
(Sundararajan et al. 2017, zero baseline), DeepLIFT (Shrikumar et al. 2017, zero baseline), GradientSHAP (Lundberg
and Lee 2017; tribute's ``expected_gradients`` with Gaussian references of σ = 0.001 around 0, the paper's "set of
Gaussian distributions with σ = 0.001"), occlusion (Zeiler and Fergus 2014; window (C, 4, 4), stride 2, the
paper's (3, 4, 4) on a C-channel image) and SmoothGrad (Smilkov et al. 2017).  The *robust twin's attribution* is
SmoothGrad of the twin f′ used to explain the classifier; the *aligned explainer* is the head's map.  Two more
rankings serve Table 2 (``aligned_standard``: the explainer aligned with the standard model's SmoothGrad) and Fig 4
(``twin_saliency``: the twin's plain gradient against the classifier's).

Targets: the post-hoc methods explain the label (ROAR's default); the aligned explainers give the map of the class
their classifier predicts, the only map their head has (:class:`tribute.explainers.AlignedMap`).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import torch

from ...core.registry import explain
from .scales import Scale

TABLE1 = ("random", "saliency", "integrated_gradients", "deeplift", "gradient_shap", "occlusion", "smoothgrad",
          "robust_twin", "aligned")
EXTRA = ("aligned_standard", "twin_saliency")
#: σ of GradientSHAP's Gaussian references (the paper's)
SHAP_SIGMA = 0.001
SHAP_REFERENCES = 16


class Spec(NamedTuple):
    """One compared attribution: the model it reads (a key of the models), the registered method, its options."""

    model: str
    method: str
    options: dict


def specs(scale: Scale, image_shape, seed: int = 0) -> dict[str, Spec]:
    """Every compared attribution but ``random`` (ROAR adds it), by label."""
    g = torch.Generator().manual_seed(seed)
    references = torch.randn(SHAP_REFERENCES, *image_shape, generator=g) * SHAP_SIGMA
    smooth = {"samples": scale.smoothgrad_samples, "seed": seed}
    return {
        "saliency": Spec("classifier", "saliency", {}),
        "integrated_gradients": Spec("classifier", "integrated_gradients", {"steps": scale.ig_steps}),
        "deeplift": Spec("classifier", "deeplift", {}),
        "gradient_shap": Spec("classifier", "expected_gradients",
                              {"references": references, "samples": scale.shap_samples, "seed": seed}),
        "occlusion": Spec("classifier", "occlusion", {"window": (image_shape[0], 4, 4), "stride": 2}),
        "smoothgrad": Spec("classifier", "smoothgrad", smooth),
        "robust_twin": Spec("twin", "smoothgrad", smooth),
        "aligned": Spec("aligned", "aligned", {}),
        "aligned_standard": Spec("aligned_standard", "aligned", {}),
        "twin_saliency": Spec("twin", "saliency", {}),
    }


def attribute(spec: Spec, models: dict, x: torch.Tensor, target) -> torch.Tensor:
    """``spec``'s attributions of ``x``: the label's (``target``) for post-hoc methods, the prediction's for the
    aligned explainers."""
    model = models[spec.model]
    if spec.method == "aligned":
        with torch.no_grad():
            return explain(model, x, "aligned", target=None)
    return explain(model, x, spec.method, target=target, **spec.options).detach()


def roar_callable(label: str, spec: Spec, models: dict, cache: dict | None = None):
    """``spec`` as ROAR's method callable ``(model, inputs, target)`` (the model argument, ROAR's classifier, is
    ignored: each attribution reads its own model).

    With ``cache`` (a dict shared by the ROAR calls of every seed) a batch already attributed is looked up by the
    digest of its images and targets instead of attributed again: every attribution here is seeded by the spec,
    not by ROAR's seed, so the seeds rank the same data identically and the rankings are computed once (at the
    full scale they cost about as much as one seed's retrainings)."""
    def method(model, x, target):
        if cache is None:
            return attribute(spec, models, x, target)
        key = (label, _digest(x), _digest(torch.as_tensor(target)) if target is not None else None)
        if key not in cache:
            cache[key] = attribute(spec, models, x, target)
        return cache[key]
    method.__name__ = label
    return method


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
