"""Token attributions as coloured text: in a terminal (ANSI colours) and as a matplotlib figure.

One value per token (e.g. ``layer_integrated_gradients`` at the embeddings with ``reduce="sum"``) colours its
token with the heat maps' diverging scale (:func:`tribute.viz.heatmap.diverging_colors`): red for evidence
for the target, blue against, white for none, scaled symmetrically by the largest |value| of the sentence
(or a ``scale`` shared between sentences), so that colours compare within a sentence.  The scale used is
written beside the sentence: a reader sees what full colour means.  Non-finite values are refused by name,
never drawn as some colour.

Nothing here knows any attribution method: tokens are strings, values are a tensor or array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._optional import require
from .heatmap import as_numpy, diverging_colors


def _values(tokens: Sequence[str], values) -> np.ndarray:
    v = as_numpy(values)
    if v.ndim != 1 or v.shape[0] != len(tokens):
        raise ValueError(f"values must hold one number per token ({len(tokens)} tokens), got shape {v.shape}")
    bad = ~np.isfinite(v)
    if bad.any():
        where = ", ".join(f"{tokens[i]!r} (position {i})" for i in np.flatnonzero(bad)[:5])
        raise ValueError(f"token values are NaN or infinite at {where}: nothing to colour them by")
    return v


def token_scale(values) -> float:
    """The magnitude shown at full colour: the largest |value| (0 for an all-zero sentence)."""
    v = as_numpy(values)
    return float(np.abs(v).max()) if v.size else 0.0


def token_colors(tokens: Sequence[str], values, scale: float | None = None) -> tuple[np.ndarray, float]:
    """(T, 3) RGB colours in [0, 1] for the tokens, and the scale used (see the module doc)."""
    v = _values(tokens, values)
    s = token_scale(v) if scale is None else float(scale)
    if s < 0 or not np.isfinite(s):
        raise ValueError(f"scale must be finite and >= 0, got {s}")
    return diverging_colors(v / s if s > 0 else np.zeros_like(v)), s


def token_text(tokens: Sequence[str], values, scale: float | None = None, *, color: bool = True) -> str:
    """The sentence with each token on its colour (24-bit ANSI background) and the scale at the end.

    With ``color=False`` (a log file, a terminal without colours) each token is followed by its value in
    brackets instead: ``great[+0.42]``.
    """
    colors, s = token_colors(tokens, values, scale)
    v = _values(tokens, values)
    if not color:
        body = " ".join(f"{t}[{x:+.3g}]" for t, x in zip(tokens, v, strict=True))
    else:
        parts = []
        for t, (r, g, b) in zip(tokens, (colors * 255).round().astype(int), strict=True):
            parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{t}\x1b[0m")
        body = " ".join(parts)
    return f"{body}   (full colour = ±{s:.3g})"


def token_figure(sentences: Sequence[Sequence[str]], values: Sequence, *, titles: Sequence[str] | None = None,
                 shared_scale: bool = False, width: float = 8.0, font_size: int = 11):
    """A matplotlib figure: one line of coloured tokens per sentence, its scale and title beside it.

    ``values[i]`` holds one number per token of ``sentences[i]``; with ``shared_scale`` every sentence uses the
    largest |value| of all (compare sentences), else its own (compare tokens within a sentence).  Tokens wrap
    onto further lines when a sentence is wider than ``width`` inches.
    """
    figure_mod = require("matplotlib.figure", "viz", "token figures")
    agg = require("matplotlib.backends.backend_agg", "viz", "token figures")
    if len(sentences) != len(values):
        raise ValueError(f"got {len(sentences)} sentences but {len(values)} rows of values")
    if titles is not None and len(titles) != len(sentences):
        raise ValueError(f"titles must hold one title per sentence ({len(sentences)}), got {len(titles)}")
    checked = [_values(s, v) for s, v in zip(sentences, values, strict=True)]
    common = max((token_scale(v) for v in checked), default=0.0) if shared_scale else None
    lines = _layout(sentences, width, font_size)
    height = 0.35 * sum(len(rows) for rows in lines) + 0.45 * len(sentences) + 0.2
    fig = figure_mod.Figure(figsize=(width + 1.6, height), dpi=100)
    agg.FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, width + 1.6)
    ax.set_ylim(height, 0)
    y = 0.3
    for i, (tokens, v) in enumerate(zip(sentences, checked, strict=True)):
        colors, s = token_colors(tokens, v, common)
        label = f"{titles[i]}   " if titles is not None else ""
        ax.text(0.1, y, f"{label}full colour = ±{s:.3g}", fontsize=font_size - 2, color="0.3", va="center")
        y += 0.35
        for row in lines[i]:
            for k, x0 in row:
                ax.text(0.1 + x0, y, tokens[k], fontsize=font_size, va="center", ha="left", family="monospace",
                        bbox={"boxstyle": "square,pad=0.15", "facecolor": colors[k], "edgecolor": "0.85",
                              "linewidth": 0.5})
            y += 0.35
        y += 0.1
    return fig


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
