"""Class-contrast grids: one image explained for several classes, each map's similarity to the first written on it.

Methods whose maps hardly change with the class explained are not class-discriminative (Adebayo et al. 2018 and
Sixt et al. 2020 found this for several propagation methods); showing the maps of several classes side by side,
with a number for how alike they are, makes that visible.  The similarity is computed on the channel-reduced maps
over the pixels finite in both: Spearman's rank correlation (the usual choice for comparing saliency maps,
Adebayo et al. 2018) or cosine similarity.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .figures import method_figure
from .heatmap import reduce_channels

SIMILARITIES = ("spearman", "cosine")


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v``, ties given their average rank (as Spearman's ρ needs)."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def map_similarity(a, b, kind: str = "spearman", reduce: str = "sum") -> tuple[float | None, str]:
    """Similarity of two maps (C, H, W) or (H, W) over the pixels finite in both, and a text saying it.

    Returns (value, text); value is None, and the text says why, when the similarity is undefined (a constant or
    all-zero map, no finite pixel in common).
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}; got {kind!r}")
    x, y = reduce_channels(a, reduce), reduce_channels(b, reduce)
    if x.shape != y.shape:
        raise ValueError(f"the maps differ in shape: {x.shape} and {y.shape}")
    both = np.isfinite(x) & np.isfinite(y)
    x, y = x[both], y[both]
    symbol = "Spearman ρ" if kind == "spearman" else "cosine"
    dropped = f" over {both.sum()} finite pixels" if not both.all() else ""
    if x.size < 2:
        return None, f"{symbol}: undefined (fewer than 2 finite pixels in common)"
    if kind == "spearman":
        x, y = _ranks(x), _ranks(y)
        x, y = x - x.mean(), y - y.mean()
    else:  # scale first, so that 1e30-sized maps do not overflow the products
        x, y = x / np.abs(x).max() if x.any() else x, y / np.abs(y).max() if y.any() else y
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        why = "a constant map has no ranking" if kind == "spearman" else "an all-zero map has no direction"
        return None, f"{symbol}: undefined ({why})"
    value = float(np.clip(x @ y / (nx * ny), -1.0, 1.0))
    return value, f"{symbol} = {value:.2f}{dropped}"


def class_contrast_figure(image, attributions: Mapping[str, object], *, title: str | None = None,
                          similarity: str = "spearman", reduce: str = "sum", **options):
    """One image × several classes: the image, then one map per class, each with the similarity of its map to the
    first class's map written under it (``similarity``: ``"spearman"`` or ``"cosine"``, named on the panel).

    Parameters
    ----------
    image : tensor or array, (C, H, W) or (H, W), values in [0, 1]
    attributions : mapping of class name to a map, (C, H, W) or (H, W)
        The first class is the reference the others are compared with.
    options
        As in :func:`tribute.viz.method_figure` (``percentile``, ``scale``, ``share``, ``signed``, ``cell``, ...).
    """
    if not attributions:
        raise ValueError("no class maps to show: give at least one class's map")
    names = list(attributions)
    first = attributions[names[0]]
    notes = {names[0]: f"the reference of the {'Spearman ρ' if similarity == 'spearman' else 'cosine'} values"}
    for name in names[1:]:
        _, text = map_similarity(attributions[name], first, similarity, reduce)
        notes[name] = f"{text} to '{names[0]}'"
    x = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64)
    maps = {name: np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)[None]
            for name, a in attributions.items()}
    return method_figure(x[None], maps, None if title is None else [title], notes=notes, reduce=reduce, **options)
