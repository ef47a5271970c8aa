"""The colour scale of an attribution map, chosen by an explicit rule and written down, never silent.

A map φ is drawn with full colour at a magnitude s:

- **signed** maps (some φ < 0) on a diverging scale centred on 0, from −s (blue) through 0 (white) to +s (red):
  equal magnitudes get equal intensity whatever their sign (Ancona et al. 2018, Fig. 1);
- **unsigned** maps (every φ ≥ 0, e.g. saliency |∂S/∂x|) on a sequential scale from 0 (white) to s (red).

s is, by default, the 99.5th percentile of |φ| over the map's finite values, so that a few extreme pixels (frequent
in gradients) do not wash out the rest; values beyond it are shown at full colour, and the colour bar's label says
so ("clipped at the 99.5th percentile of |φ| = 3.2e-02").  A given value, or a percentile shared by several maps
(a row or a column of a grid), may replace it; the label then says that.  Degenerate maps get a stated scale too:
an all-zero map is "all zero" with s = 1; a map whose percentile is 0 but that is not all zero (a few non-zero
pixels) is scaled by its largest |φ|, and the label says so.

NaN and ±inf are never drawn as some value's colour: they get colours of their own (:data:`NONFINITE_COLORS`), are
counted in the panel's text ("12 NaN, 3 +inf pixels") and take no part in choosing s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_PERCENTILE = 99.5
#: colours of non-finite values, outside both colour scales (white–red, blue–white–red)
NONFINITE_COLORS: dict[str, tuple[float, float, float]] = {
    "NaN": (0.0, 0.75, 0.0),  # green
    "+inf": (1.0, 0.8, 0.0),  # gold
    "-inf": (0.0, 0.85, 0.85),  # cyan
}


REDUCTIONS = ("sum", "mean", "abs_sum")


def combine_channels(a: np.ndarray, reduce: str = "sum") -> np.ndarray:
    """An (H, W) map from an (H, W) or (C, H, W) array: ``"sum"`` adds the channels' signed contributions (the
    pixel's total, as in Ancona et al. 2018), ``"mean"`` averages them, ``"abs_sum"`` adds their magnitudes.  A NaN
    in any channel makes the pixel NaN; +inf and −inf in one pixel make it NaN too (their sum is undefined)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}; got {reduce!r}")
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(f"expected an attribution of shape (H, W) or (C, H, W), got {a.shape}")
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf is NaN, and is then counted as such
        if reduce == "sum":
            return a.sum(0)
        if reduce == "mean":
            return a.mean(0)
        return np.abs(a).sum(0)


def as_numpy(a) -> np.ndarray:
    """A tensor or array as a float64 numpy array (detached, on the CPU); the input is never modified."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.array(a, dtype=np.float64)  # a copy: callers may change it freely


def nonfinite_masks(a: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the NaN, +inf and −inf entries of ``a``, by the names of :data:`NONFINITE_COLORS`."""
    return {"NaN": np.isnan(a), "+inf": np.isposinf(a), "-inf": np.isneginf(a)}


def nonfinite_text(a: np.ndarray, unit: str = "pixel") -> str:
    """E.g. ``"12 NaN (green), 3 +inf (gold) pixels"``; empty when every value is finite."""
    counts = {k: int(m.sum()) for k, m in nonfinite_masks(a).items()}
    colour = {"NaN": "green", "+inf": "gold", "-inf": "cyan"}
    parts = [f"{n} {k} ({colour[k]})" for k, n in counts.items() if n]
    if not parts:
        return ""
    return ", ".join(parts) + f" {unit}{'s' if sum(counts.values()) > 1 else ''}"


def describe(a: np.ndarray, unit: str = "pixel") -> list[str]:
    """Notes a reader needs beside a map: its non-finite values, and that it is constant when it is."""
    notes = []
    text = nonfinite_text(a, unit)
    if text:
        notes.append(text)
    finite = a[np.isfinite(a)]
    if finite.size > 1 and np.all(finite == finite[0]) and finite[0] != 0:
        notes.append(f"constant: every {unit} = {finite[0]:.3g}")
    return notes


def symmetric_scale(values, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The ``percentile``-th percentile of |values| over the finite values (0 when none is finite or all are 0)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    a = np.abs(as_numpy(values))
    a = a[np.isfinite(a)]
    return float(np.percentile(a, percentile)) if a.size else 0.0


@dataclass(frozen=True)
class MapScale:
    """The scale a map is drawn with: full colour at ±``value`` (signed) or ``value`` (unsigned), and the rule.

    ``label`` is the text written under the colour bar.
    """

    value: float
    signed: bool
    label: str

    @property
    def limits(self) -> tuple[float, float]:
        """The values at the two ends of the colour bar."""
        return (-self.value if self.signed else 0.0, self.value)


def _rule(percentile: float) -> str:
    if percentile == 100:
        return "the largest |φ|"
    p = f"{percentile:g}"
    suffix = "th" if p.endswith(("11", "12", "13")) or p[-1] not in "123" else {"1": "st", "2": "nd", "3": "rd"}[p[-1]]
    return f"the {p}{suffix} percentile of |φ|"


def map_scale(maps, *, percentile: float = DEFAULT_PERCENTILE, scale: float | None = None,
              signed: bool | None = None, shared: str | None = None) -> MapScale:
    """The :class:`MapScale` of one map, or of several maps drawn on one scale (a list; ``shared`` names them in
    the label, e.g. ``"the row"``).

    Parameters
    ----------
    maps : array-like, or a sequence of array-likes (with ``shared``)
    percentile : float
        Full colour at this percentile of |φ| over the finite values (default 99.5).
    scale : float, optional
        Full colour at this magnitude instead (positive and finite).
    signed : bool, optional
        Diverging (True) or sequential (False) scale; default: diverging when some finite φ < 0.
    """
    arrays = [as_numpy(m) for m in maps] if shared is not None else [as_numpy(maps)]
    values = np.concatenate([m.ravel() for m in arrays]) if arrays else np.zeros(0)
    finite = values[np.isfinite(values)]
    if signed is None:
        signed = bool((finite < 0).any())
    where = f"shared by {shared}: " if shared is not None else ""
    if scale is not None:
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be finite and > 0, got {scale}")
        return MapScale(float(scale), signed, f"{where}scale given: full colour at {_pm(signed)}{scale:.2g}")
    if finite.size == 0:
        return MapScale(1.0, signed, f"{where}no finite value (scale 1)")
    if not (finite != 0).any():
        return MapScale(1.0, signed, f"{where}all zero (scale 1)")
    s = symmetric_scale(finite, percentile)
    if s > 0:
        clipped = "clipped at" if (np.abs(finite) > s).any() else "full colour at"
        return MapScale(s, signed, f"{where}{clipped} {_rule(percentile)} = {s:.2g}")
    s = float(np.abs(finite).max())
    return MapScale(s, signed, f"{where}{_rule(percentile)} is 0; full colour at the largest |φ| = {s:.2g}")


def _pm(signed: bool) -> str:
    return "±" if signed else ""


def shared_scales(maps: Sequence, share: str | None, **options) -> list[list[MapScale]] | None:
    """Per row and column of a grid of maps (``maps[r][c]``), the scale shared by its ``share`` (``"row"``,
    ``"column"`` or ``"all"``); None when ``share`` is None (each map has its own)."""
    if share is None:
        return None
    rows, cols = len(maps), len(maps[0]) if maps else 0
    if share == "all":
        s = map_scale([m for row in maps for m in row], shared="every panel", **options)
        return [[s] * cols for _ in range(rows)]
    if share == "row":
        per = [map_scale(list(row), shared="the row", **options) for row in maps]
        return [[per[r]] * cols for r in range(rows)]
    if share == "column":
        per = [map_scale([maps[r][c] for r in range(rows)], shared="the column", **options) for c in range(cols)]
        return [list(per) for _ in range(rows)]
    raise ValueError(f"share must be None, 'row', 'column' or 'all'; got {share!r}")
