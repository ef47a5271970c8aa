"""Figures of the metrics' curves, from their result objects: perturbation (MoRF/LeRF, ROAD, insertion/deletion),
ROAR/KAR, sanity checks and sensitivity-n.

Every curve is the mean over the samples (or repeats) with a band of ± one standard error of that mean (the
sample standard deviation over √n, NaNs left out; no band where fewer than two values are defined).  Axes say
what is measured and titles which direction is better, so that a figure read on its own is not misread.

The result objects are read by their attributes (duck typing), so this module imports no metric:
:class:`tribute.metrics.PerturbationCurve`, :class:`tribute.metrics.EvaluationTable`,
:class:`tribute.metrics.RoarResult`, :class:`tribute.metrics.SanityResult`, :class:`tribute.metrics.SensitivityN`.
"""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .._optional import require

# kind → (title, x label, the direction that is better for the curve itself)
PERTURBATION_KINDS = {
    "morf": ("MoRF perturbation (Samek et al. 2017)", "fraction removed, most relevant first",
             "a lower curve is better (the score falls fast)"),
    "lerf": ("LeRF perturbation (Samek et al. 2017)", "fraction removed, least relevant first",
             "a higher curve is better (the score stays)"),
    "road_morf": ("ROAD, MoRF (Rong et al. 2022)", "fraction removed (noisy linear imputation)",
                  "a lower curve is better (the score falls fast)"),
    "road_lerf": ("ROAD, LeRF (Rong et al. 2022)", "fraction removed (noisy linear imputation)",
                  "a higher curve is better (the score stays)"),
    "deletion": ("Deletion (Petsiuk et al. 2018)", "fraction deleted, most relevant first",
                 "a lower curve is better (the score falls fast)"),
    "insertion": ("Insertion (Petsiuk et al. 2018)", "fraction inserted, most relevant first",
                  "a higher curve is better (the score rises fast)"),
}
# the evaluate() metric names with a curve, and the kind of that curve
TABLE_CURVE_KINDS = {"aopc_morf": "morf", "aopc_lerf": "lerf", "road_morf": "road_morf", "road_lerf": "road_lerf",
                     "deletion": "deletion", "insertion": "insertion"}
PANEL = (5.2, 3.6)  # inches per panel: readable at 100 dpi on a page


def new_figure(panels: int, *, width: float = PANEL[0], height: float = PANEL[1], columns: int = 2):
    """A matplotlib Figure on its own Agg canvas (no pyplot state) with ``panels`` axes in rows of ``columns``."""
    figure_mod = require("matplotlib.figure", "viz", "metric curve figures")
    agg = require("matplotlib.backends.backend_agg", "viz", "metric curve figures")
    cols = max(1, min(columns, panels))
    rows = math.ceil(panels / cols)
    fig = figure_mod.Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    agg.FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def figure_png(fig, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (white background)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def mean_and_sem(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of an (n, K) array: the mean, the standard error of the mean and the count of finite values.

    NaN and ±inf are left out (the caller names them, see :func:`band`).  The standard error is the sample
    standard deviation (n − 1) over √n; NaN where fewer than two values are finite (the mean NaN where none is).
    """
    v = np.asarray(_numpy(values), dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"expected an (n, K) array of curves, got shape {v.shape}")
    ok = np.isfinite(v)
    count = ok.sum(0)
    total = np.where(ok, v, 0.0).sum(0)
    mean = np.divide(total, count, out=np.full(v.shape[1], np.nan), where=count > 0)
    dev = np.where(ok, v - mean, 0.0)
    var = np.divide((dev ** 2).sum(0), count - 1, out=np.full(v.shape[1], np.nan), where=count > 1)
    return mean, np.sqrt(var) / np.sqrt(np.maximum(count, 1)), count


def band(ax, x, values, label: str, color=None):
    """Plot the mean of ``values`` (n, K) over ``x`` with a ± standard-error band (:func:`mean_and_sem`).

    The legend gives n, the number of curves, and how many values were left out as NaN or ±inf (an undefined
    score, a diverged model), so that a mean over fewer values is never mistaken for the whole.
    Returns the line.
    """
    v = _numpy(values)
    mean, sem, _ = mean_and_sem(v)
    nan, inf = int(np.isnan(v).sum()), int(np.isinf(v).sum())
    left_out = ", ".join(f"{k} {name}" for k, name in ((nan, "NaN"), (inf, "±inf")) if k)
    text = f"{label} (n={v.shape[0]}" + (f"; {left_out} left out)" if left_out else ")")
    line, = ax.plot(np.asarray(x, dtype=np.float64), mean, marker="o", markersize=3, label=text, color=color)
    if np.isfinite(sem).any():
        ax.fill_between(x, mean - sem, mean + sem, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _finish(ax, title: str, xlabel: str, ylabel: str, better: str) -> None:
    ax.set_title(f"{title}\n{better}", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


# -- perturbation curves -------------------------------------------------------------------------------------------
def curve_kind(curve, kind: str | None) -> str:
    """The kind of a :class:`PerturbationCurve`: ``kind`` checked against the curve, or found from it.

    MoRF and LeRF are told apart by the curve's ``order``; an AUC-scored curve (insertion or deletion, whose
    curves go opposite ways) cannot be told from its numbers, so it needs ``kind``.
    """
    if kind is not None:
        if kind not in PERTURBATION_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PERTURBATION_KINDS)}; got {kind!r}")
        return kind
    score, auc = _numpy(curve.score), _numpy(curve.auc)
    if score.size and np.allclose(score, auc, equal_nan=True) and not np.allclose(score, _numpy(curve.aopc),
                                                                               equal_nan=True):
        raise ValueError("this curve is scored by its area (insertion or deletion, whose curves go opposite ways): "
                         "pass kind='insertion' or kind='deletion'")
    return curve.order if curve.order in ("morf", "lerf") else "morf"


def perturbation_figure(curves, *, kind: str | None = None, title: str | None = None,
                        ylabel: str = "target class score"):
    """Perturbation curves of several methods on one axes: mean ± standard error over the samples.

    Parameters
    ----------
    curves : PerturbationCurve or mapping of str to PerturbationCurve
        Method name → the result of :func:`tribute.metrics.pixel_perturbation`, ``deletion``, ``insertion`` or
        ``road`` for the same samples.
    kind : {"morf", "lerf", "road_morf", "road_lerf", "deletion", "insertion"}, optional
        What the curves are (title, axis, which direction is better); found from MoRF/LeRF curves, required
        for insertion and deletion.
    ylabel : str
        What the curve measures (the metrics' ``score=``: probability by default).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(curves, Mapping):
        curves = {"": curves}
    if not curves:
        raise ValueError("no curves to draw")
    kinds = {curve_kind(c, kind) for c in curves.values()}
    if len(kinds) > 1:
        raise ValueError(f"the curves are of different kinds ({', '.join(sorted(kinds))}): draw one figure per kind")
    (found,) = kinds
    fig, (ax,) = new_figure(1)
    for name, c in curves.items():
        band(ax, _numpy(c.fractions), c.curve, name or "mean")
    head, xlabel, better = PERTURBATION_KINDS[found]
    _finish(ax, title or head, xlabel, ylabel, better)
    return fig


def table_fractions(metric: str, columns: int) -> np.ndarray | None:
    """The fractions of the curve of registered metric ``metric`` under its default options, if they give
    ``columns`` points (0 first); None when they cannot be known (a labelled metric with options of its own)."""
    from ..metrics.registry import get_metric

    try:
        spec = get_metric(metric)
    except ValueError:
        return None
    params = inspect.signature(spec.fn).parameters
    options = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    options.update(spec.options)
    fractions = options.get("fractions")
    if fractions is None and isinstance(options.get("steps"), int):
        fractions = np.arange(1, options["steps"] + 1) / options["steps"]
    if fractions is None:
        return None
    x = np.concatenate([[0.0], np.asarray(fractions, dtype=np.float64)])
    return x if x.size == columns else None


def table_curves_figure(table, metrics: Sequence[str] | None = None):
    """The perturbation curves an :class:`EvaluationTable` kept: one panel per metric, one line per method.

    The x axis is the fraction perturbed when the metric is a registered name with its default options, else the
    step number (the table does not store fractions).  Raises when the table holds no curve.
    """
    available = [k for k in table.metrics if any((m, k) in table.curves for m in table.methods)]
    metrics = available if metrics is None else list(metrics)
    missing = [k for k in metrics if k not in available]
    if missing or not metrics:
        raise ValueError(f"no curves for {', '.join(missing) or 'any metric'} in this table; metrics with curves: "
                         f"{', '.join(available) or 'none'}")
    fig, axes = new_figure(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        columns = next(table.curves[m, metric].shape[1] for m in table.methods if (m, metric) in table.curves)
        x = table_fractions(metric, columns)
        kind = TABLE_CURVE_KINDS.get(metric)
        for m in table.methods:
            if (m, metric) in table.curves:
                band(ax, np.arange(columns) if x is None else x, table.curves[m, metric], m)
        head, xlabel, better = PERTURBATION_KINDS[kind] if kind else (
            metric, "step", f"summary {table.better.get(metric) or 'without a direction'} is better")
        _finish(ax, f"{metric}: {head}", xlabel if x is not None else "step (fractions not recorded)",
                "target class score", better)
    return fig


# -- ROAR ------------------------------------------------------------------------------------------------------------
def roar_figure(result):
    """ROAR and/or KAR accuracy against the fraction removed / kept (Hooker et al. 2019), one panel per test.

    Mean over the repeats ± standard error (a band only with several repeats); the accuracy of the model
    retrained on unmodified data (``reference``) and of the original model are dashed lines.
    """
    fig, axes = new_figure(len(result.tests))
    x = np.asarray(result.fractions, dtype=np.float64)
    for ax, test in zip(axes, result.tests, strict=True):
        for method in result.methods:
            runs = np.asarray(result.runs[test, method], dtype=np.float64)
            band(ax, x, runs, method, color="0.4" if method == "random" else None)
        if result.reference is not None:
            ax.axhline(result.reference, linestyle="--", color="0.5", linewidth=1, label="retrained, unmodified")
        ax.axhline(result.original, linestyle=":", color="0.3", linewidth=1, label="original model")
        if test == "roar":
            _finish(ax, "ROAR: top t removed, retrained (Hooker et al. 2019)",
                    "fraction t of features removed", "test accuracy", "lower is better (below random)")
        else:
            _finish(ax, "KAR: top t kept, retrained (Hooker et al. 2019)",
                    "fraction t of features kept", "test accuracy", "higher is better (above random)")
    return fig


# -- sanity checks ---------------------------------------------------------------------------------------------------
SANITY_TITLES = {"cascading": "Cascading randomisation, top layer first",
                 "independent": "Independent randomisation, one layer each",
                 "labels": "Label randomisation"}


def sanity_figure(results, similarities: Sequence[str] | None = None):
    """Adebayo et al. (2018)'s sanity-check curves: similarity of each randomised model's maps to the trained
    model's maps, per step (layer), mean ± standard error over the samples; one panel per similarity measure,
    one line per method (results of one test on the same model)."""
    results = [results] if not isinstance(results, Sequence) else list(results)
    if not results:
        raise ValueError("no sanity-check results to draw")
    tests, steps = {r.test for r in results}, {tuple(r.steps) for r in results}
    if len(tests) > 1 or len(steps) > 1:
        raise ValueError("the results come from different tests or steps: draw one figure per test and model")
    names = list(similarities or results[0].similarities)
    for r in results:
        absent = [s for s in names if s not in r.similarities]
        if absent:
            raise ValueError(f"{r.method}'s result has no similarity {', '.join(absent)}; it has "
                             f"{', '.join(r.similarities)}")
    labels = [step or "(whole model)" for step in results[0].steps]
    fig, axes = new_figure(len(names), width=max(PANEL[0], 0.45 * len(labels) + 2.5), height=PANEL[1] + 0.8)
    x = np.arange(len(labels))
    for ax, similarity in zip(axes, names, strict=True):
        for r in results:
            band(ax, x, _numpy(r[similarity]).T, r.method)  # (steps, samples) → samples as rows
        ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=8)
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        _finish(ax, f"{SANITY_TITLES.get(results[0].test, results[0].test)} (Adebayo et al. 2018)",
                "model compared" if results[0].test == "labels" else "layers randomised (cumulative)"
                if results[0].test == "cascading" else "layer randomised",
                f"{similarity}: similarity to the trained model's maps",
                "lower is better (the maps depend on the model)")
    return fig


# -- sensitivity-n ---------------------------------------------------------------------------------------------------
def sensitivity_n_figure(results):
    """Sensitivity-n (Ancona et al. 2018): the correlation between the attributions summed over random subsets
    of n features and the output drop when they are removed, against n; mean ± standard error over the samples,
    one line per method."""
    if not isinstance(results, Mapping):
        results = {"": results}
    if not results:
        raise ValueError("no sensitivity-n results to draw")
    fig, (ax,) = new_figure(1)
    ns = []
    for name, r in results.items():
        x = _numpy(r.ns)
        ns.append(x)
        band(ax, x, r.correlation, name or "mean")
    every = np.concatenate(ns)
    if every.min() > 0 and every.max() / every.min() >= 10:
        ax.set_xscale("log")
    _finish(ax, "Sensitivity-n (Ancona et al. 2018)", "subset size n (features removed)",
            "Pearson correlation of Σ R with the output drop", "higher is better")
    return fig
