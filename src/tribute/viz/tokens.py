"""Token attributions as coloured text: in a terminal (ANSI colours) and as a matplotlib figure.

One value per token (e.g. ``layer_integrated_gradients`` at the embeddings with ``reduce="sum"``) colours its
token with the heat maps' diverging scale (:func:`tribute.viz.heatmap.diverging_colors`): red for evidence
for the target, blue against, white for none, scaled symmetrically by the largest finite |value| of the sentence
(or a ``scale`` shared between sentences), so that colours compare within a sentence.  The scale and its rule are
written beside the sentence ("full colour = ±0.8, the largest |φ|"); an all-zero sentence says "all zero" (scale
1).  NaN and ±inf tokens get the colours of :data:`tribute.viz.scale.NONFINITE_COLORS` and are named beside the
sentence ("1 NaN (green) token: 'film'"), never drawn as some value's colour.

Nothing here knows any attribution method: tokens are strings, values are a tensor or array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._optional import require
from .heatmap import colormap, diverging_colors
from .scale import NONFINITE_COLORS, as_numpy, nonfinite_masks, nonfinite_text


def _values(tokens: Sequence[str], values) -> np.ndarray:
    v = as_numpy(values)
    if v.ndim != 1 or v.shape[0] != len(tokens):
        raise ValueError(f"values must hold one number per token ({len(tokens)} tokens), got shape {v.shape}")
    return v


def token_scale(values) -> float:
    """The magnitude shown at full colour: the largest finite |value| (0 when there is none or all are 0)."""
    v = np.abs(as_numpy(values))
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else 0.0


def token_colors(tokens: Sequence[str], values, scale: float | None = None) -> tuple[np.ndarray, float]:
    """(T, 3) RGB colours in [0, 1] for the tokens, and the scale used (see the module doc; 1 for an all-zero
    sentence)."""
    v = _values(tokens, values)
    s = token_scale(v) if scale is None else float(scale)
    if s < 0 or not np.isfinite(s):
        raise ValueError(f"scale must be finite and >= 0, got {s}")
    s = s if s > 0 else 1.0  # all zero: every token white, whatever the scale
    colors = diverging_colors(np.where(np.isfinite(v), v, 0.0) / s)
    for name, mask in nonfinite_masks(v).items():
        colors[mask] = NONFINITE_COLORS[name]
    return colors, s


def token_note(tokens: Sequence[str], values, scale: float | None = None) -> str:
    """The text beside a sentence: its scale and rule, and its non-finite tokens by name."""
    v = _values(tokens, values)
    _, s = token_colors(tokens, v, scale)
    if scale is not None:
        parts = [f"full colour = ±{s:.3g}, the scale given"]
    elif token_scale(v) == 0:
        parts = ["all zero"]
    else:
        parts = [f"full colour = ±{s:.3g}, the largest |φ|"]
    bad = ~np.isfinite(v)
    if bad.any():
        names = ", ".join(repr(tokens[i]) for i in np.flatnonzero(bad)[:5]) + (", ..." if bad.sum() > 5 else "")
        parts.append(f"{nonfinite_text(v, 'token')}: {names}")
    return "; ".join(parts)


def token_text(tokens: Sequence[str], values, scale: float | None = None, *, color: bool = True) -> str:
    """The sentence with each token on its colour (24-bit ANSI background) and its note at the end
    (:func:`token_note`).

    With ``color=False`` (a log file, a terminal without colours) each token is followed by its value in
    brackets instead: ``great[+0.42]``.
    """
    colors, _ = token_colors(tokens, values, scale)
    v = _values(tokens, values)
    if not color:
        body = " ".join(f"{t}[{x:+.3g}]" for t, x in zip(tokens, v, strict=True))
    else:
        parts = []
        for t, (r, g, b) in zip(tokens, (colors * 255).round().astype(int), strict=True):
            parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{t}\x1b[0m")
        body = " ".join(parts)
    return f"{body}   ({token_note(tokens, v, scale)})"


def token_figure(sentences: Sequence[Sequence[str]], values: Sequence, *, titles: Sequence[str] | None = None,
                 shared_scale: bool = False, width: float = 8.0, font_size: int = 11):
    """A matplotlib figure: one line of coloured tokens per sentence, its note (:func:`token_note`) and title above
    it, and a colour bar at the bottom.

    ``values[i]`` holds one number per token of ``sentences[i]``; with ``shared_scale`` every sentence uses the
    largest finite |value| of all (compare sentences; the colour bar is in the values' units), else its own (compare
    tokens within a sentence; the colour bar is in units of each sentence's scale).  Tokens wrap onto further
    lines when a sentence is wider than ``width`` inches.
    """
    from .panels import new_figure

    require("matplotlib.figure", "viz", "token figures")
    if len(sentences) != len(values):
        raise ValueError(f"got {len(sentences)} sentences but {len(values)} rows of values")
    if titles is not None and len(titles) != len(sentences):
        raise ValueError(f"titles must hold one title per sentence ({len(sentences)}), got {len(titles)}")
    checked = [_values(s, v) for s, v in zip(sentences, values, strict=True)]
    common = max((token_scale(v) for v in checked), default=0.0) if shared_scale else None
    lines = _layout(sentences, width, font_size)
    height = 0.35 * sum(len(rows) for rows in lines) + 0.45 * len(sentences) + 0.2 + 0.75
    fig = new_figure(width + 1.6, height)
    ax = fig.add_axes((0, 0.75 / height, 1, 1 - 0.75 / height))
    ax.set_axis_off()
    ax.set_xlim(0, width + 1.6)
    ax.set_ylim(height - 0.75, 0)
    y = 0.3
    for i, (tokens, v) in enumerate(zip(sentences, checked, strict=True)):
        colors, _ = token_colors(tokens, v, common)
        label = f"{titles[i]}   " if titles is not None else ""
        note = token_note(tokens, v, None if common is None else common or 1.0)
        if common is not None:
            note = note.replace("the scale given", "the largest |φ| of all sentences")
        ax.text(0.1, y, f"{label}{note}", fontsize=font_size - 2, color="0.3", va="center")
        y += 0.35
        for row in lines[i]:
            for k, x0 in row:
                ax.text(0.1 + x0, y, tokens[k], fontsize=font_size, va="center", ha="left", family="monospace",
                        bbox={"boxstyle": "square,pad=0.15", "facecolor": colors[k], "edgecolor": "0.85",
                              "linewidth": 0.5})
            y += 0.35
        y += 0.1
    _token_colorbar(fig, height, width, common, font_size)
    return fig


def _token_colorbar(fig, height: float, width: float, common: float | None, font_size: int) -> None:
    """The colour bar under the sentences: in φ with a shared scale, else in units of each sentence's scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    s = (common or 1.0) if common is not None else 1.0
    cax = fig.add_axes((0.1 / (width + 1.6), 0.45 / height, min(4.0, width) / (width + 1.6), 0.1 / height))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(-s, s), cmap=colormap(True)), cax=cax, orientation="horizontal")
    bar.set_ticks([-s, 0.0, s])
    bar.ax.tick_params(labelsize=font_size - 3, length=2, pad=1)
    unit = "φ (one scale for all sentences)" if common is not None else "φ / the sentence's full-colour scale"
    cax.set_xlabel(f"{unit}; NaN green, +inf gold, −inf cyan", fontsize=font_size - 3, labelpad=1)


def _layout(sentences, width: float, font_size: int) -> list[list[list[tuple[int, float]]]]:
    """Per sentence, rows of (token index, x offset in inches), wrapping at ``width`` (monospace advance)."""
    advance = 0.6 * font_size / 72  # inches per character of a monospace font
    out = []
    for tokens in sentences:
        rows, row, x = [], [], 0.0
        for k, t in enumerate(tokens):
            w = (len(t) + 1) * advance
            if row and x + w > width:
                rows.append(row)
                row, x = [], 0.0
            row.append((k, x))
            x += w
        rows.append(row)
        out.append(rows)
    return out
