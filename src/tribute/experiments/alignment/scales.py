"""The two scales of the alignment experiment: ``smoke`` (the whole pipeline in seconds) and ``full`` (the study).

Budget of the full scale (measured on this machine's cores, :mod:`tribute.explainers` benchmarks): a width-8
ResNet-18 trains one clean epoch of 60,000 Fashion-MNIST images in ≈ 1.3 CPU-min, one PGD-7 epoch in ≈ 8.3
CPU-min, and SmoothGrad with 50 samples costs ≈ 54 ms per image.  With 6,000 training and 1,000 test images:

- classifier alone, 10 clean epochs: 10 × 1.3 × 0.1 ≈ 1.3 CPU-min; the two jointly trained aligned explainers
  (robust and standard targets), 10 epochs each with the head: ≈ 2 × 2 ≈ 4 CPU-min;
- robust twin, 10 PGD-7 epochs: 10 × 8.3 × 0.1 ≈ 8.3 CPU-min;
- the two SmoothGrad-50 stores of the training set (twin, standard model): 2 × 6,000 × 54 ms ≈ 11 CPU-min;
- ROAR's rankings of the 7,000 train + test images, once for all seeds: SmoothGrad-50 twice (the classifier's,
  the twin's), integrated gradients (50 steps), GradientSHAP (50 samples) and occlusion ((1, 4, 4) windows at
  stride 2: 169 forward passes per image) at ≈ 40–60 ms per image each: ≈ 5 × 7,000 × 55 ms ≈ 32 CPU-min;
  saliency, DeepLIFT and the explainers in seconds;
- ROAR's retrainings: 11 rankings (Table 1's nine rows, the standard alignment of Table 2, the twin's saliency of
  Fig 4) × 4 fractions + the unmodified reference = 45 per seed, 5 epochs of 6,000 images each
  (5 × 1.3 × 0.1 ≈ 0.65 CPU-min): ≈ 29 CPU-min per seed, ≈ 88 CPU-min for 3 seeds;
- the sanity check (100 images) and the latency table (32 images): a few CPU-min.

In all ≈ 2.5 CPU-hours, under two hours of wall time on 2 cores.  The seeds are ROAR's: each seed retrains every
row with its own initialisation and training order (and draws its own random baseline), the attributions coming
from one classifier, twin and explainer (seed 0 of the pipeline); mean ± sd in Table 1 are over these seeds.

The smoke scale runs every step on a few hundred of scikit-learn's 8×8 digits (``tribute.data.load_digits``:
shipped with scikit-learn, so CI needs no Debian data package) with a width-4 ResNet-18, 1 epoch, 4 noise samples
and 1 seed; it checks the pipeline, not the paper's claims.  Asked for ``fashion-mnist`` or ``opencv-digits`` at the
smoke scale it uses them when their Debian package is installed and falls back to the digits otherwise (the
settings JSON records which); the full scale never falls back.
"""

from __future__ import annotations

import dataclasses

DATA_SETS = ("fashion-mnist", "opencv-digits", "digits")
#: data sets smaller than the full scale's 6,000 / 1,000 images, taken whole at that scale (the OpenCV digits:
#: 4,000 / 1,000 in :func:`tribute.data.load_opencv_digits`'s split); any other size shortfall is an error
WHOLE_AT_FULL_SCALE = ("opencv-digits",)
FRACTIONS = (0.2, 0.4, 0.6, 0.8)


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes of one scale of the experiment (module docstring)."""

    name: str
    train_size: int | None  # None: the whole training set
    test_size: int | None
    width: int  # the ResNet-18's width (64 is the standard network)
    epochs: int  # the classifier alone and the aligned explainers (joint training)
    twin_epochs: int
    roar_epochs: int
    smoothgrad_samples: int  # SmoothGrad's and the twin's target maps' noise samples (the paper's 50)
    shap_samples: int  # GradientSHAP's samples (Gaussian baselines, σ = 0.001)
    ig_steps: int
    seeds: int
    sanity_images: int
    latency_images: int
    batch_size: int = 64
    lr: float = 0.05  # SGD with momentum 0.9 for the classifier and the aligned explainers


SCALES: dict[str, Scale] = {
    "smoke": Scale("smoke", train_size=300, test_size=100, width=4, epochs=1, twin_epochs=1, roar_epochs=1,
                   smoothgrad_samples=4, shap_samples=4, ig_steps=8, seeds=1, sanity_images=16, latency_images=8),
    "full": Scale("full", train_size=6000, test_size=1000, width=8, epochs=10, twin_epochs=10, roar_epochs=5,
                  smoothgrad_samples=50, shap_samples=50, ig_steps=50, seeds=3, sanity_images=100,
                  latency_images=32),
}


def get_scale(name: str | Scale, seeds: int | None = None) -> Scale:
    """The scale ``name`` (:data:`SCALES`, or a :class:`Scale` of one's own, e.g. a reduced full scale), with
    ``seeds`` ROAR seeds instead of its own if given."""
    if isinstance(name, Scale):
        scale = name
    elif name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; the scales are {', '.join(map(repr, SCALES))}, or a Scale")
    else:
        scale = SCALES[name]
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
        scale = dataclasses.replace(scale, seeds=seeds)
    return scale
