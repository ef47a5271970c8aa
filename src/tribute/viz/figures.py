"""Grids of attribution maps: images × methods, optionally grouped by method family, each map with its colour bar.

A grid has one row per image: the image, then one panel per method; every panel has a colour bar whose label states
its scale (:mod:`tribute.viz.scale`).  With ``families`` the methods are grouped by family (gradient, propagation,
CAM, perturbation), each group under its header; groups are packed side by side into bands of at most
``max_columns`` methods, and the bands stacked one above the other, so that a figure of many methods stays a
readable width.  A note per method (``notes``) is printed under its column.

Nothing here knows any attribution method: methods are names, their maps tensors or arrays.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .heatmap import REDUCTIONS, reduce_channels
from .panels import draw_image, draw_map, new_figure
from .scale import DEFAULT_PERCENTILE, as_numpy, map_scale, shared_scales

#: method families by method name, in the order blocks are shown; names not listed form the block "other"
METHOD_FAMILIES: dict[str, tuple[str, ...]] = {
    "gradient": ("gradient", "saliency", "input_x_gradient", "integrated_gradients", "smoothgrad",
                 "smoothgrad_squared", "vargrad", "expected_gradients", "fullgrad", "layer_gradient",
                 "layer_gradient_x_activation", "layer_integrated_gradients", "layer_expected_gradients"),
    "propagation": ("deeplift", "deeplift_reveal_cancel", "layer_deeplift", "lrp", "lrp_epsilon", "lrp_gamma",
                    "lrp_alpha_beta", "lrp_zplus", "guided_backprop", "deconvnet"),
    "CAM": ("cam", "gradcam", "gradcam_plus_plus", "contrastive_gradcam", "guided_gradcam", "scorecam"),
    "perturbation": ("occlusion", "feature_ablation", "lime", "kernel_shap", "shapley_sampling", "rise",
                     "meaningful_perturbation", "extremal_perturbation", "prediction_difference"),
}
TITLE_H, CBAR_ZONE, HEADER_H, GAP_W, NOTE_LINE = 0.3, 0.62, 0.32, 0.15, 0.13  # inches
FONT = 8.0


@dataclass
class _Grid:
    """The checked inputs of a grid: images (or None), the reduced (H, W) maps per method, titles."""

    images: np.ndarray | None
    maps: dict[str, list[np.ndarray]]
    titles: list[str] | None
    n: int


def _check(images, attributions: Mapping[str, object], titles, reduce: str) -> _Grid:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}; got {reduce!r}")
    if not attributions:
        raise ValueError("no attributions to show: give at least one method's maps")
    raw = {name: as_numpy(a) for name, a in attributions.items()}
    imgs = None if images is None else as_numpy(images)
    n = imgs.shape[0] if imgs is not None and imgs.ndim >= 1 else next(iter(raw.values())).shape[0]
    if imgs is not None and imgs.ndim not in (3, 4):
        raise ValueError(f"images must have shape (N, C, H, W) or (N, H, W), got {imgs.shape}")
    for name, a in raw.items():
        if a.ndim not in (3, 4) or a.shape[0] != n:
            raise ValueError(f"attributions[{name!r}] must have shape (N, C, H, W) or (N, H, W) with N = {n} "
                             f"(the number of images), got {a.shape}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must hold one title per image ({n}), got {len(titles)}")
    maps = {name: [reduce_channels(a[i], reduce) for i in range(n)] for name, a in raw.items()}
    return _Grid(imgs, maps, None if titles is None else [str(t) for t in titles], n)


def _blocks(names: list[str], families: Mapping[str, Sequence[str]] | None,
            max_columns: int | None) -> list[list[tuple[str | None, list[str]]]]:
    """Bands of (header, methods) groups: one band of one group of all methods, or one group per family in the
    families' order (methods of no family last, as "other"), a family wider than ``max_columns`` split into equal
    parts, and consecutive groups packed into one band while it stays within ``max_columns`` methods."""
    if families is None:
        return [[(None, names)]]
    placed = {m for members in families.values() for m in members}
    groups = [(f, [m for m in names if m in members]) for f, members in families.items()]
    groups.append(("other", [m for m in names if m not in placed]))
    chunks = []
    for header, members in groups:
        if not members:
            continue
        parts = 1 if not max_columns else math.ceil(len(members) / max_columns)
        size = math.ceil(len(members) / parts)
        for k in range(parts):
            chunks.append((header if k == 0 else f"{header} (continued)", members[k * size:(k + 1) * size]))
    bands: list[list[tuple[str | None, list[str]]]] = []
    for chunk in chunks:
        if bands and max_columns and sum(len(m) for _, m in bands[-1]) + len(chunk[1]) <= max_columns:
            bands[-1].append(chunk)
        else:
            bands.append([chunk])
    return bands


def _methods(band) -> list[str]:
    return [m for _, members in band for m in members]


def _note_lines(notes: Mapping[str, str] | None, methods: list[str], cell: float) -> dict[str, list[str]]:
    width = max(12, int(cell * 72 / (0.5 * (FONT - 1))))  # characters of the note font per column
    return {m: textwrap.wrap(notes[m], width) for m in methods if notes and notes.get(m)}


def method_figure(images, attributions: Mapping[str, object], titles: Sequence[str] | None = None, *,
                  families: Mapping[str, Sequence[str]] | None = None, notes: Mapping[str, str] | None = None,
                  reduce: str = "sum", percentile: float = DEFAULT_PERCENTILE, scale: float | None = None,
                  share: str | None = None, signed: bool | None = None, overlay: bool = False,
                  max_columns: int | None = None, cell: float = 2.2, dpi: int = 100):
    """A figure: one row per image, the image then one heat map per method, each with its colour bar.

    Parameters
    ----------
    images : tensor or array, (N, C, H, W) with C = 1 or 3 or (N, H, W), values in [0, 1]; or None (no image
        column; then N is the maps' first dimension)
    attributions : mapping of str to tensor or array, each (N, C, H, W) or (N, H, W)
        Method name (the column title) to its attributions for the N images.
    titles : sequence of N str, optional
        Shown above each image (e.g. its name and predicted class).
    families : mapping of str to method names, optional
        Group the methods by family under headers (see :data:`METHOD_FAMILIES` and :func:`family_figure`).
    notes : mapping of method name to str, optional
        A short note printed under the method's column.
    reduce : {"sum", "mean", "abs_sum"}
        How channels are combined into one value per pixel (:func:`tribute.viz.reduce_channels`).
    percentile, scale, signed
        The scale rule (:func:`tribute.viz.map_scale`); by default each map on its own, since methods' units
        differ.
    share : {None, "row", "column", "all"}
        One scale for all maps of a row, a column, or every panel, instead of one per map (with ``families``:
        within each band of the figure).
    overlay : bool
        Draw each map over its image in grey instead of alone.
    max_columns : int, optional
        With ``families``: the most methods in one band of the figure (bands are stacked).
    cell, dpi
        A panel's width and height in inches; the resolution.

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas.  ``fig.axes`` lists the panels in reading order (per band, per row: the image, then
        the methods); ``ax.child_axes[0]`` is a map panel's colour bar, whose x-limits are the scale's limits.
    """
    grid = _check(images, attributions, titles, reduce)
    unknown = sorted(set(notes or {}) - set(grid.maps))
    if unknown:
        raise ValueError(f"notes for {', '.join(map(repr, unknown))}, which have no attributions here; the methods "
                         f"are {', '.join(map(repr, grid.maps))}")
    if overlay and grid.images is None:
        raise ValueError("overlay=True needs the images to draw the maps over")
    blocks = _blocks(list(grid.maps), families, max_columns)
    lead = 0 if grid.images is None else 1
    cols = lead + max(len(_methods(band)) for band in blocks)
    heights = [_block_height(any(h for h, _ in band), _note_lines(notes, _methods(band), cell), grid.n, cell)
               for band in blocks]
    width = GAP_W + cols * (cell + GAP_W)
    fig = new_figure(width, sum(heights) + 0.1, dpi)
    top = 0.1
    for band, height in zip(blocks, heights, strict=True):
        _draw_block(fig, grid, band, top, cell, notes,
                    {"percentile": percentile, "scale": scale, "signed": signed}, share, overlay)
        top += height
    return fig


def _block_height(header: bool, note_lines: dict[str, list[str]], n: int, cell: float) -> float:
    notes = max((len(v) for v in note_lines.values()), default=0)
    return (HEADER_H if header else 0.0) + n * (TITLE_H + cell + CBAR_ZONE) + (NOTE_LINE * notes + 0.1 if notes else 0)


def _draw_block(fig, grid: _Grid, band, top, cell, notes, rule: dict, share, overlay) -> None:
    """Draw one band of the grid with its top ``top`` inches below the figure's top."""
    width, height = fig.get_size_inches()
    lead = 0 if grid.images is None else 1
    methods = _methods(band)

    def axes(col: int, row_top: float):
        left = GAP_W + col * (cell + GAP_W)
        return fig.add_axes((left / width, 1 - (row_top + cell) / height, cell / width, cell / height))

    if any(h for h, _ in band):
        _headers(fig, band, lead, top, cell)
        top += HEADER_H
    table = [[grid.maps[m][i] for m in methods] for i in range(grid.n)]
    shared = shared_scales(table, share, **rule)
    for i in range(grid.n):
        row_top = top + i * (TITLE_H + cell + CBAR_ZONE) + TITLE_H
        title = grid.titles[i] if grid.titles is not None else None
        if lead:
            draw_image(axes(0, row_top), grid.images[i], title, FONT)
        for c, m in enumerate(methods):
            ax = axes(lead + c, row_top)
            s = shared[i][c] if shared is not None else map_scale(table[i][c], **rule)
            head = m.replace("_", " ") if i == 0 else None
            draw_map(ax, table[i][c], s, image=grid.images[i] if overlay else None, title=head, fontsize=FONT)
            if not lead and c == 0 and title:
                ax.set_ylabel(title, fontsize=FONT)
    note_top = top + grid.n * (TITLE_H + cell + CBAR_ZONE)
    for c, m in enumerate(methods):
        lines = _note_lines(notes, [m], cell).get(m)
        if lines:
            left = GAP_W + (lead + c) * (cell + GAP_W)
            fig.text(left / width, 1 - note_top / height, "\n".join(lines), fontsize=FONT - 1, va="top",
                     style="italic", color="0.25", linespacing=1.15)


def _headers(fig, band, lead: int, top: float, cell: float) -> None:
    """Each group's header above its first column, underlined across its columns."""
    from matplotlib.lines import Line2D

    width, height = fig.get_size_inches()
    col = lead
    for header, members in band:
        left = GAP_W + col * (cell + GAP_W)
        right = left + len(members) * (cell + GAP_W) - GAP_W
        y = 1 - (top + 0.2) / height
        fig.text(left / width, y, header, fontsize=FONT + 3, fontweight="bold", va="baseline")
        fig.add_artist(Line2D([left / width, right / width], [y - 0.06 / height] * 2, transform=fig.transFigure,
                              color="0.55", linewidth=0.8))
        col += len(members)


def family_figure(images, attributions: Mapping[str, object], titles: Sequence[str] | None = None, *,
                  families: Mapping[str, Sequence[str]] | None = None, max_columns: int | None = 4, **options):
    """:func:`method_figure` with the methods grouped by family (default :data:`METHOD_FAMILIES`), in bands at most
    ``max_columns`` methods wide (a wider family is split into equal parts; narrower families share a band); other
    options as there."""
    return method_figure(images, attributions, titles, families=METHOD_FAMILIES if families is None else families,
                         max_columns=max_columns, **options)


def save_figure(fig, path, dpi: int | None = None) -> Path:
    """Write ``fig`` as a PNG file at ``path`` (parent folders created); the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi or fig.dpi, facecolor="white")
    return path


def method_grid(images, attributions: Mapping[str, object], titles: Sequence[str] | None, path, *,
                dpi: int = 100, **options) -> Path:
    """Write the :func:`method_figure` of ``images`` and ``attributions`` (``options`` as there) as a PNG file at
    ``path``; the file written (parent directories are created)."""
    return save_figure(method_figure(images, attributions, titles, dpi=dpi, **options), path, dpi)


def heatmap_figure(attribution, image=None, *, title: str | None = None, overlay: bool = False, **options):
    """One map with its colour bar: alone, beside its ``image``, or over it (``overlay=True``).

    ``attribution`` is (C, H, W) or (H, W), ``image`` (C, H, W), (H, W, C) or (H, W); ``options`` as in
    :func:`method_figure` (``reduce``, ``percentile``, ``scale``, ``signed``, ``cell``).
    """
    a = as_numpy(attribution)
    if a.ndim not in (2, 3):
        raise ValueError(f"attribution must have shape (C, H, W) or (H, W), got {a.shape}")
    imgs = None
    if image is not None:
        x = as_numpy(image)
        imgs = x[None] if x.ndim in (2, 3) else x
        if x.ndim == 3 and x.shape[-1] in (1, 3) and x.shape[0] not in (1, 3):
            imgs = np.moveaxis(x, -1, 0)[None]
    name = title if title is not None else ("attribution over the image" if overlay else "attribution")
    return method_figure(imgs, {name: a[None]}, overlay=overlay, **options)


def overlay_figure(image, attribution, *, title: str | None = None, **options):
    """:func:`heatmap_figure` with the map drawn over the image in grey (opacity growing with |φ|)."""
    return heatmap_figure(attribution, image, title=title, overlay=True, **options)
