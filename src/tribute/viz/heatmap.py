"""Attribution maps as colours: channel reduction, the diverging and sequential colour scales, RGB heat maps.

Colours follow Ancona et al. (2018, Fig. 1): red for positive attribution, blue for negative and white for zero,
linear in between, scaled so that equal magnitudes get equal intensity whatever their sign.  An unsigned map uses
the positive half (white to red).  How the scale is chosen, and how NaN and ±inf are shown, is
:mod:`tribute.viz.scale`'s business.

Nothing here knows any attribution method: inputs are tensors or arrays.
"""

from __future__ import annotations

import numpy as np

from .scale import (
    DEFAULT_PERCENTILE,
    NONFINITE_COLORS,
    REDUCTIONS,  # noqa: F401 (published here first: tribute.viz.figures reads it from this module)
    as_numpy,
    combine_channels,
    map_scale,
    nonfinite_masks,
)


def reduce_channels(attribution, reduce: str = "sum") -> np.ndarray:
    """A (C, H, W) attribution as one (H, W) float64 map; an (H, W) map is returned as is (a copy).  The channels
    are combined by :func:`tribute.viz.scale.combine_channels` (``"sum"``, ``"mean"`` or ``"abs_sum"``)."""
    return combine_channels(as_numpy(attribution), reduce)


def diverging_colors(v: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] for values v in [−1, 1]: −1 blue (0, 0, 1), 0 white, +1 red (1, 0, 0), linear between."""
    v = np.clip(v, -1.0, 1.0)
    pos, neg = np.clip(v, 0, None), np.clip(-v, 0, None)
    # red keeps full intensity unless the value is negative, blue unless it is positive, and green
    # fades with the magnitude either way
    return np.stack([1.0 - neg, 1.0 - pos - neg, 1.0 - pos], axis=-1)


def colormap(signed: bool):
    """The matplotlib colormap of :func:`diverging_colors` (signed) or of its white-to-red half (unsigned).

    An odd number of entries puts 0 of a signed map exactly on the white middle entry.
    """
    from matplotlib.colors import ListedColormap

    v = np.linspace(-1.0, 1.0, 257) if signed else np.linspace(0.0, 1.0, 257)
    cmap = ListedColormap(diverging_colors(v), name="tribute_diverging" if signed else "tribute_sequential")
    return cmap.with_extremes(bad=(0.0, 0.0, 0.0, 0.0))  # non-finite pixels get their own layer (nonfinite_layer)


def nonfinite_layer(a: np.ndarray) -> np.ndarray | None:
    """An (H, W, 4) RGBA image: each NaN/±inf pixel of ``a`` in its colour, opaque; None when all are finite."""
    masks = nonfinite_masks(a)
    if not any(m.any() for m in masks.values()):
        return None
    rgba = np.zeros((*a.shape, 4))
    for name, mask in masks.items():
        rgba[mask] = (*NONFINITE_COLORS[name], 1.0)
    return rgba


def heatmap(attribution, reduce: str = "sum", percentile: float = DEFAULT_PERCENTILE,
            scale: float | None = None) -> np.ndarray:
    """An attribution map as an RGB image: red positive, blue negative, white zero; NaN and ±inf in the colours
    of :data:`tribute.viz.scale.NONFINITE_COLORS`.

    Parameters
    ----------
    attribution : tensor or array, shape (C, H, W) or (H, W)
    reduce : {"sum", "mean", "abs_sum"}
        How channels are combined into one value per pixel (see :func:`reduce_channels`).
    percentile : float
        |values| at or above this percentile of the finite |values| get full colour (default 99.5).
    scale : float, optional
        Use this magnitude for full colour instead of the percentile (e.g. to share one scale
        between several maps).

    Returns
    -------
    numpy.ndarray
        float64, shape (H, W, 3), values in [0, 1]; an all-zero map is all white.
    """
    a = reduce_channels(attribution, reduce)
    # the rule of map_scale: a percentile of the finite |values|, the largest |value| when that is 0
    s = map_scale(a, percentile=percentile).value if scale is None else float(scale)
    if s < 0 or not np.isfinite(s):
        raise ValueError(f"scale must be finite and >= 0, got {s}")
    finite = np.isfinite(a)
    v = np.where(finite, a, 0.0) / s if s > 0 else np.zeros_like(a)
    rgb = diverging_colors(v)
    for name, mask in nonfinite_masks(a).items():
        rgb[mask] = NONFINITE_COLORS[name]
    return rgb
