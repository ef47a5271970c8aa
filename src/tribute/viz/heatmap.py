"""Attribution heat maps and method-comparison figures, from plain tensors.

Colours follow Ancona et al. (2018, Fig. 1): a diverging map with red for positive attribution, blue
for negative and white for zero, scaled symmetrically so that equal magnitudes get equal intensity
whatever their sign.  The scale is a high percentile of |a| rather than its maximum, so that a few
extreme pixels (frequent in gradients) do not wash out the rest of the map.

Nothing here knows any attribution method: inputs are tensors or arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .._optional import require

REDUCTIONS = ("sum", "mean", "abs_sum")
DEFAULT_PERCENTILE = 99.5


def as_numpy(a) -> np.ndarray:
    """A tensor or array as a float64 numpy array (detached, on the CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def reduce_channels(attribution, reduce: str = "sum") -> np.ndarray:
    """A (C, H, W) attribution as one (H, W) map; an (H, W) map is returned as is.

    ``"sum"`` adds the channels' signed contributions (the pixel's total, as in Ancona et al.),
    ``"mean"`` averages them, ``"abs_sum"`` adds their magnitudes.
    """
    a = as_numpy(attribution)
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}; got {reduce!r}")
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(f"expected an attribution of shape (C, H, W) or (H, W), got {a.shape}")
    if reduce == "sum":
        return a.sum(0)
    if reduce == "mean":
        return a.mean(0)
    return np.abs(a).sum(0)


def symmetric_scale(values, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The ``percentile``-th percentile of |values|: the magnitude shown at full colour (0 if all are 0)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    a = np.abs(as_numpy(values))
    if a.size == 0 or not np.isfinite(a).all():
        raise ValueError("values must be non-empty and finite")
    return float(np.percentile(a, percentile))


def diverging_colors(v: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] for values v in [−1, 1]: −1 blue (0, 0, 1), 0 white, +1 red (1, 0, 0), linear between."""
    v = np.clip(v, -1.0, 1.0)
    pos, neg = np.clip(v, 0, None), np.clip(-v, 0, None)
    # red keeps full intensity unless the value is negative, blue unless it is positive, and green
    # fades with the magnitude either way
    return np.stack([1.0 - neg, 1.0 - pos - neg, 1.0 - pos], axis=-1)


def heatmap(attribution, reduce: str = "sum", percentile: float = DEFAULT_PERCENTILE,
            scale: float | None = None) -> np.ndarray:
    """An attribution map as an RGB image: red positive, blue negative, white zero.

    Parameters
    ----------
    attribution : tensor or array, shape (C, H, W) or (H, W)
    reduce : {"sum", "mean", "abs_sum"}
        How channels are combined into one value per pixel (see :func:`reduce_channels`).
    percentile : float
        |values| at or above this percentile get full colour (default 99.5).
    scale : float, optional
        Use this magnitude for full colour instead of the percentile (e.g. to share one scale
        between several maps).

    Returns
    -------
    numpy.ndarray
        float64, shape (H, W, 3), values in [0, 1].
    """
    a = reduce_channels(attribution, reduce)
    s = symmetric_scale(a, percentile) if scale is None else float(scale)
    if s < 0 or not np.isfinite(s):
        raise ValueError(f"scale must be finite and >= 0, got {s}")
    v = a / s if s > 0 else np.zeros_like(a)  # an all-zero map is all white
    return diverging_colors(v)


def _image(image) -> np.ndarray:
    """A (3, H, W) or (H, W, 3) image in [0, 1] as an (H, W, 3) array for imshow."""
    x = as_numpy(image)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.clip(x, 0.0, 1.0)


def method_figure(images, attributions: Mapping[str, object], titles: Sequence[str] | None = None, *,
                  reduce: str = "sum", percentile: float = DEFAULT_PERCENTILE, cell: float = 2.0):
    """A matplotlib figure: one row per image, the image then one heat map per method.

    Parameters
    ----------
    images : tensor or array, shape (N, 3, H, W), values in [0, 1]
    attributions : mapping of str to tensor or array, each (N, C, H, W) or (N, H, W)
        Method name (the column title) to its attributions for the N images.
    titles : sequence of N str, optional
        Shown above each image (e.g. its predicted class).
    reduce, percentile
        As in :func:`heatmap`; each map is scaled on its own, since methods' units differ.
    cell : float
        Width and height of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Drawn on an Agg canvas; ``fig.axes[r * (1 + M) + c]`` is row r, column c.
    """
    figure_mod = require("matplotlib.figure", "viz", "attribution figures")
    agg = require("matplotlib.backends.backend_agg", "viz", "attribution figures")
    imgs = as_numpy(images)
    if imgs.ndim != 4:
        raise ValueError(f"images must have shape (N, 3, H, W), got {imgs.shape}")
    n = imgs.shape[0]
    maps = {name: as_numpy(a) for name, a in attributions.items()}
    for name, a in maps.items():
        if a.shape[0] != n or a.ndim not in (3, 4):
            raise ValueError(f"attributions[{name!r}] must have shape (N, C, H, W) or (N, H, W) with N = {n}, "
                             f"got {a.shape}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must hold one title per image ({n}), got {len(titles)}")
    cols = 1 + len(maps)
    # a Figure on its own Agg canvas: no pyplot, so no global backend state and no display needed
    fig = figure_mod.Figure(figsize=(cols * cell, n * cell * 1.12), dpi=100)
    agg.FigureCanvasAgg(fig)
    axes = fig.subplots(n, cols, squeeze=False, gridspec_kw={"wspace": 0.04, "hspace": 0.12})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.1 / n)
    for r in range(n):
        axes[r, 0].imshow(_image(imgs[r]))
        if titles is not None:
            axes[r, 0].set_title(titles[r], fontsize=9)
        for c, (name, a) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(heatmap(a[r], reduce, percentile), interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(name.replace("_", " "), fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def method_grid(images, attributions: Mapping[str, object], titles: Sequence[str] | None, path, *,
                reduce: str = "sum", percentile: float = DEFAULT_PERCENTILE, dpi: int = 100) -> Path:
    """Write the :func:`method_figure` of ``images`` and ``attributions`` as a PNG file at ``path``.

    Returns
    -------
    pathlib.Path
        The file written (parent directories are created).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = method_figure(images, attributions, titles, reduce=reduce, percentile=percentile)
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    return path
