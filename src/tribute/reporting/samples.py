"""The samples section of the report: each sample's image (or a note) and every method's map, encoded straight to
PNG (:mod:`tribute.viz.encode`) with the scale it was drawn at."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..viz.encode import DEFAULT_PERCENTILE, encode_map, high_percentile, png_bytes, png_data_uri, value_colors

SCALES = ("map", "method")


@dataclass
class MapCell:
    """One method's map of one sample: the PNG as a data URI and what its colours mean."""

    method: str
    uri: str | None
    scale: float = 0.0
    signed: bool = True
    strip: bool = False  # a 1 × T strip (tokens, features), stretched on the page
    target: str | None = None
    clipped: int = 0  # values beyond the scale (saturated)
    notes: list[str] = field(default_factory=list)
    words: list[tuple[str, str]] | None = None  # tokens as (text, background colour), when the run has their text


@dataclass
class SampleRow:
    """A sample: its name, label, image (a data URI, or None) and one :class:`MapCell` per method."""

    index: int
    name: str
    label: str | None
    image: str | None
    cells: list[MapCell]


@dataclass
class SamplesSection:
    rows: list[SampleRow]
    methods: list[str]
    total: int
    notes: list[str]


def class_name(index: int, classes: list[str] | None) -> str:
    """``"3 (cat)"`` when the class names are known, else ``"3"``."""
    if classes is not None and 0 <= index < len(classes):
        return f"{index} ({classes[index]})"
    return str(index)


def as_map(a: torch.Tensor, kind: str) -> np.ndarray | None:
    """A sample's attribution as the 2-D array drawn: (C, H, W) and image (H, W) as they are, one value per token
    or feature ((T,) or (T, D) summed over D) as a 1 × T strip; None for other shapes."""
    x = a.detach().cpu()
    x = (x.float() if x.element_size() < 4 or not x.is_floating_point() else x).numpy()
    if x.ndim == 3 or (x.ndim == 2 and kind == "image"):
        return x if x.ndim == 2 else x.sum(0)
    if x.ndim == 2:
        return x.sum(-1)[None]
    if x.ndim == 1:
        return x[None]
    return None


def display_image(inputs, i: int) -> tuple[str | None, str | None]:
    """Sample i as a PNG data URI (images only) and a note on how it is shown."""
    if inputs.kind != "image":
        return None, None
    shown = inputs.display if inputs.display is not None else inputs.inputs
    x = shown[i].detach().cpu().double().numpy()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        return None, f"images of shape {tuple(shown.shape[1:])} are not shown (expected (1 or 3, H, W))"
    note = None
    if not np.isfinite(x).all():
        note = "the image has NaN or ±inf values (shown black)"
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if inputs.display is None:  # the model's own input scale: stretched per image to [0, 1] to be seen
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    rgb = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x
    pixels = np.rint(np.clip(np.moveaxis(rgb, 0, -1), 0.0, 1.0) * 255).astype(np.uint8)
    return png_data_uri(png_bytes(np.ascontiguousarray(pixels))), note


def method_maps(store, shown: int, kind: str) -> tuple[list[np.ndarray | None], torch.Tensor]:
    """The first ``shown`` maps of a store (see :func:`as_map`) and the classes they explain."""
    a = store.attributions(0, shown)
    return [as_map(a[i], kind) for i in range(shown)], store.targets(0, shown)


def method_scale(maps: list[np.ndarray | None], percentile: float) -> float:
    """One scale for all of a method's shown maps: the percentile of |a| over all their finite values."""
    values = np.concatenate([np.abs(m[np.isfinite(m)]).ravel() for m in maps if m is not None] or [np.zeros(0)])
    return high_percentile(values, percentile) if values.size else 0.0


def method_cells(method: str, store, shown: int, kind: str, classes, scale: str, percentile: float) -> list[MapCell]:
    """One :class:`MapCell` per shown sample of one method's store."""
    maps, targets = method_maps(store, shown, kind)
    finite_min = [np.nanmin(np.where(np.isfinite(m), m, np.nan)) for m in maps if m is not None and
                  np.isfinite(m).any()]
    signed = bool(finite_min) and min(finite_min) < 0  # one colour table per method: its column reads alike
    shared = method_scale(maps, percentile) if scale == "method" else None
    cells = []
    for i, m in enumerate(maps):
        target = class_name(int(targets[i]), classes)
        if m is None:
            cells.append(MapCell(method, None, target=target,
                                 notes=[f"attributions of shape {tuple(store.shape)} are not drawn"]))
            continue
        enc = encode_map(m, signed=signed, scale=shared, percentile=percentile)
        cells.append(MapCell(method, enc.data_uri(), enc.scale, enc.signed, m.shape[0] == 1 and kind != "image",
                             target, enc.clipped, enc.notes(clipped=False)))
    return cells


def samples_section(inputs, stores: dict, *, max_samples: int = 12, scale: str = "map",
                    percentile: float = DEFAULT_PERCENTILE) -> SamplesSection:
    """The rows of the samples section: at most ``max_samples`` samples (the first ones), every store that fits.

    A store whose sample count differs from the inputs' is left out with a note (its maps would be paired with
    the wrong samples).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive int, got {max_samples!r}")
    notes = []
    total = inputs.inputs.shape[0] if inputs is not None else max((len(s) for s in stores.values()), default=0)
    usable = {}
    for method, store in stores.items():
        if len(store) != total:
            notes.append(f"attributions/{method} holds {len(store)} samples but the run has {total}: its maps are "
                         "not shown")
        else:
            usable[method] = store
    shown = min(total, max_samples)
    if shown < total:
        notes.append(f"showing the first {shown} of {total} samples (max_samples={max_samples})")
    kind = inputs.kind if inputs is not None else "image"
    classes = inputs.classes if inputs is not None else None
    columns = {m: method_cells(m, s, shown, kind, classes, scale, percentile) for m, s in usable.items()}
    if kind == "tokens" and inputs is not None and inputs.tokens is not None:
        for m, cells in columns.items():
            add_words(cells, usable[m], inputs.tokens)
    rows = [sample_row(i, inputs, [columns[m][i] for m in usable], notes) for i in range(shown)]
    return SamplesSection(rows, list(usable), total, notes)


def add_words(cells: list[MapCell], store, tokens: list[list[str]]) -> None:
    """Each cell's tokens as text coloured by their attribution (summed over the embedding), at the cell's scale."""
    a = store.attributions(0, len(cells))
    for i, cell in enumerate(cells):
        values = a[i].detach().double().reshape(len(tokens[i]), -1).sum(-1).numpy()
        if cell.uri is not None:
            cell.words = list(zip(tokens[i], value_colors(values, signed=cell.signed, scale=cell.scale), strict=True))


def sample_row(i: int, inputs, cells: list[MapCell], notes: list[str]) -> SampleRow:
    """Row i: name, label and image from the inputs when the run has them."""
    if inputs is None:
        return SampleRow(i, f"sample {i}", None, None, cells)
    image, note = display_image(inputs, i)
    if note and note not in notes:
        notes.append(note)
    label = None
    if inputs.labels is not None:
        label = class_name(int(inputs.labels[i]), inputs.classes)
    return SampleRow(i, inputs.names[i], label, image, cells)
