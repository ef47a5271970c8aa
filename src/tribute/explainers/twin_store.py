"""Step 2 of the aligned explainer's pipeline (Zeng et al. 2021, §3.2.2, Eq 4): the twin's SmoothGrad maps.

The target the explainer is aligned with is g(f′, x) = (1/n) Σ_i ∂f′_c/∂x evaluated at x + N(0, σ²), SmoothGrad
(Smilkov et al. 2017) of the robust twin f′ for the class c = the sample's *label* (the class the classifier is
trained to predict).  :func:`twin_attributions` computes it for a whole training set into an attribution store
(:func:`tribute.store.compute_store`): safetensors shards with a manifest, resumable after a kill (finished shards
are kept), and spread over the processes of a ``torchrun`` run with the same contents as one process.

Settings.  n = 50 noisy samples, the paper's ("the sampling size is set to 50 for SmoothGrad", §4.3).  The paper
does not state σ; we take σ = 0.15 × (max − min) of each image, the middle of the 10–20 % that Smilkov et al.
recommend and the library's default (:class:`tribute.attribution.noise.SmoothGrad`).  The noise is drawn from
per-sample streams seeded by ``seed``, so a sample's map does not depend on its shard, batch or process.

Form.  The store keeps the maps as computed: signed, per input channel ((N, 1, 28, 28) for grey images), not
normalised.  The alignment target's form (absolute value or not, summed over channels, normalised per image) is
a choice of the alignment loss, applied when it reads the store, so one store serves every choice.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..store import Store, compute_store

#: SmoothGrad's settings for the twin's maps (module docstring): the paper's samples, Smilkov et al.'s σ.
TWIN_SMOOTHGRAD = {"samples": 50, "noise_level": 0.15}


def twin_attributions(twin: nn.Module, data, out_dir: str | os.PathLike, *,
                      samples: int = TWIN_SMOOTHGRAD["samples"], noise_level: float = TWIN_SMOOTHGRAD["noise_level"],
                      seed: int = 0, chunk_size: int = 256, batch_size: int | None = None,
                      dtype: torch.dtype | None = None, progress: bool | str = False,
                      overwrite: bool = False) -> Store:
    """SmoothGrad maps of ``twin`` for every sample of ``data``, explaining its label, into the store ``out_dir``.

    Calls :func:`tribute.store.compute_store` with method ``"smoothgrad"`` (gradient base, ``samples`` noisy
    copies with σ = ``noise_level`` × the image's value range, ``seed``) and ``target="label"``; rerunning the
    same call resumes an interrupted run, and under ``torchrun`` the processes share the shards.

    Parameters
    ----------
    twin : nn.Module
        The robust twin (step 1: :func:`tribute.explainers.twin.train_robust_twin`), in eval mode.
    data : (images, labels)
        The training set of the classifier to be explained, with its labels (the classes explained).
    out_dir : path
        The store directory: new, empty, or this computation's store (to resume it).
    samples : int
        Noisy copies per image, >= 1 (the paper's 50).
    noise_level : float
        σ as a fraction of each image's value range, > 0 (0.15).
    seed : int
        Seeds the noise.
    chunk_size, batch_size, dtype, progress, overwrite
        As in :func:`tribute.store.compute_store` (``batch_size``: rows of noisy images per forward pass).

    Returns
    -------
    Store
        The store: ``store.attributions(i, j)`` are the maps of samples i..j-1, ``store.targets`` their labels.
    """
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor)):
        raise TypeError("twin_attributions explains each image's label: give data as (images, labels) tensors, "
                        f"got {type(data).__name__}")
    if not isinstance(twin, nn.Module):
        raise TypeError(f"twin must be an nn.Module, got {type(twin).__name__}")
    if twin.training:
        raise ValueError("the twin is in training mode (batch norm would use each batch's statistics, so a map would "
                         "depend on its batch): call twin.eval() first")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) or not noise_level > 0:
        raise ValueError(f"noise_level must be > 0 (σ as a fraction of the image's range), got {noise_level!r}; "
                         "noise_level=0 is the plain gradient: compute_store(..., 'gradient') computes it")
    return compute_store(out_dir, twin, data, "smoothgrad", target="label", samples=samples,
                         noise_level=float(noise_level), seed=seed, chunk_size=chunk_size, batch_size=batch_size,
                         dtype=dtype, progress=progress, overwrite=overwrite)
