"""One panel of a figure: a map drawn with its colour bar and scale label, alone or over its image in grey.

Figures are :class:`matplotlib.figure.Figure` objects on their own Agg canvas (no pyplot: no global backend state
and no display needed).  A panel's colour bar is a child (inset) axes of the panel, so ``fig.axes`` holds the
panels only, in reading order; ``ax.child_axes[0]`` is a panel's colour bar.
"""

from __future__ import annotations

import numpy as np

from .._optional import require
from .heatmap import colormap, nonfinite_layer
from .scale import MapScale, as_numpy, describe, nonfinite_masks

#: the most opaque a map gets over its image (at full colour); weaker values let more of the image through
OVERLAY_ALPHA = 0.8
CBAR_GAP, CBAR_HEIGHT = 0.05, 0.09  # inches, below the panel


def new_figure(width: float, height: float, dpi: int = 100):
    """A blank figure of ``width`` × ``height`` inches on an Agg canvas."""
    figure_mod = require("matplotlib.figure", "viz", "attribution figures")
    agg = require("matplotlib.backends.backend_agg", "viz", "attribution figures")
    fig = figure_mod.Figure(figsize=(width, height), dpi=dpi, facecolor="white")
    agg.FigureCanvasAgg(fig)
    return fig


def display_image(image) -> tuple[np.ndarray, list[str]]:
    """An image as (H, W, 3) in [0, 1] for imshow, and notes on what was done to show it.

    Takes (3, H, W), (1, H, W), (H, W, 3), (H, W, 1) or (H, W); one channel is shown in grey.  Values outside
    [0, 1] are rescaled (min to 0, max to 1) rather than clipped, and non-finite pixels are shown black; both
    are named in the notes.
    """
    x = as_numpy(image)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3):
        raise ValueError(f"an image must have shape (C, H, W) or (H, W, C) with C = 1 or 3, or (H, W); got "
                         f"{as_numpy(image).shape}")
    notes = []
    bad = ~np.isfinite(x)
    if bad.any():
        notes.append(f"image: {int(bad.any(-1).sum())} non-finite pixels shown black")
        x = np.where(bad, 0.0, x)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
        notes.append(f"image rescaled from [{lo:.3g}, {hi:.3g}]")
    return (np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x), notes


def grey(image: np.ndarray) -> np.ndarray:
    """The luminance (ITU-R BT.601) of an (H, W, 3) image in [0, 1]: the background of an overlay."""
    return image @ np.array([0.299, 0.587, 0.114])


def draw_image(ax, image, title: str | None = None, fontsize: float = 8) -> None:
    """Draw ``image`` (see :func:`display_image`) on ``ax``, its notes under it."""
    rgb, notes = display_image(image)
    ax.imshow(rgb, interpolation="nearest")
    _bare(ax)
    if title:
        ax.set_title(title, fontsize=fontsize)
    if notes:
        ax.set_xlabel("\n".join(notes), fontsize=fontsize - 2, color="0.3")


def draw_map(ax, m: np.ndarray, scale: MapScale, *, image: np.ndarray | None = None, title: str | None = None,
             fontsize: float = 8) -> None:
    """Draw the (H, W) map ``m`` on ``ax`` with ``scale``, over ``image`` in grey when one is given (an overlay:
    each pixel's opacity grows with |φ| / s up to :data:`OVERLAY_ALPHA`), with a horizontal colour bar under
    the panel whose label states the scale and names the non-finite or constant values."""
    cmap = colormap(scale.signed)
    low, high = scale.limits
    finite = np.isfinite(m)
    shown = np.ma.masked_array(np.where(finite, m, 0.0), mask=~finite)
    alpha = None
    if image is not None:
        rgb, _ = display_image(image)
        if rgb.shape[:2] != m.shape:
            raise ValueError(f"the image is {rgb.shape[0]} × {rgb.shape[1]} but the map {m.shape[0]} × {m.shape[1]}")
        ax.imshow(grey(rgb), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        alpha = OVERLAY_ALPHA * np.clip(np.abs(np.where(finite, m, 0.0)) / scale.value, 0.0, 1.0)
    ax.imshow(shown, cmap=cmap, vmin=low, vmax=high, alpha=alpha, interpolation="nearest")
    layer = nonfinite_layer(m)
    if layer is not None:
        ax.imshow(layer, interpolation="nearest")
    _bare(ax)
    if title:
        ax.set_title(title, fontsize=fontsize)
    colorbar(ax, scale, describe(m), fontsize)


def colorbar(ax, scale: MapScale, notes: list[str], fontsize: float = 8):
    """A horizontal colour bar under ``ax`` spanning ``scale.limits``, labelled with the scale's rule and
    ``notes``; returns the colour bar's axes."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    height = ax.figure.get_figheight() * ax.get_position().height
    cax = ax.inset_axes((0.0, -(CBAR_GAP + CBAR_HEIGHT) / height, 1.0, CBAR_HEIGHT / height))
    low, high = scale.limits
    mappable = ScalarMappable(norm=Normalize(vmin=low, vmax=high), cmap=colormap(scale.signed))
    bar = ax.figure.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.set_ticks([low, 0.0, high] if scale.signed else [0.0, high])
    labels = bar.ax.set_xticklabels([f"{t:.2g}" for t in bar.get_ticks()], fontsize=fontsize - 2)
    labels[0].set_horizontalalignment("left")  # the end labels inside the bar's width: neighbours do not collide
    labels[-1].set_horizontalalignment("right")
    bar.ax.tick_params(length=2, pad=1)
    bar.outline.set_linewidth(0.4)
    cax.set_xlabel("\n".join([scale.label, *notes]), fontsize=fontsize - 2, labelpad=1,
                   color="#b00000" if any(n and n[0].isdigit() for n in notes) else "0.2")
    return cax


def count_nonfinite(m: np.ndarray) -> dict[str, int]:
    """How many NaN, +inf and −inf entries ``m`` holds (what the panel text names)."""
    return {k: int(v.sum()) for k, v in nonfinite_masks(m).items()}


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.4)
        spine.set_color("0.6")
