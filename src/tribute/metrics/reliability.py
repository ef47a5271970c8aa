"""Reliability of the faithfulness metrics themselves (Tomsett et al. 2020, "Sanity Checks for Saliency Metrics").

Tomsett, Harborne, Chakraborty, Gurram and Preece (AAAI 2020) borrow psychometrics' notions of reliability to
ask whether a saliency metric measures anything consistently.  Given per-sample scores S_k[i, m] of metric k
for image i and saliency method m (:func:`tribute.evaluate` computes them), three statistics:

- **Inter-rater reliability** (per metric): treat every image as a *rater* that ranks the saliency methods
  (the *units*) by the metric's score on that image; Krippendorff's α of these rankings.  α = 1: every image
  ranks the methods alike; α ≈ 0: the rankings agree no more than chance; a metric with low α cannot rank
  methods from a few images.  ``level="ordinal"`` (default) uses the per-image ranks; ``"interval"`` the raw
  scores (then scale differences between images count as disagreement).
- **Inter-method reliability** (per pair of metrics, per saliency method): Spearman's rank correlation, over
  the images, between the scores two metrics give the same saliency method: do two ways of measuring
  faithfulness (MoRF and LeRF, mean and random replacement) agree on which images a method explains well?
  (MoRF AOPC is better when high and LeRF AOPC when low, so agreement shows as a negative ρ between them.)
- **Internal consistency** (per metric with a perturbation curve, per saliency method): Cronbach's α of the
  curve's steps as the *items* whose mean is the score (AOPC = mean over steps k of f(x⁽⁰⁾) − f(x⁽ᵏ⁾)), over
  the images: do the steps measure the same thing?

Krippendorff's α (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"; Hayes & Krippendorff 2007):
for reliability data with values v_ru of rater r for unit u (missing allowed), only units with at least two
values are *pairable*; with n the number of pairable values, m_u the number of values in unit u and δ² a
difference function,

    D_o = 1/n Σ_u 1/(m_u − 1) Σ_{i≠j ∈ u} δ²(v_i, v_j)     (observed disagreement, within units)
    D_e = 1/(n(n − 1)) Σ_{i≠j} δ²(v_i, v_j)                (expected, over all pairable values)
    α = 1 − D_o / D_e

with δ² = 1[c ≠ k] (nominal), (c − k)² (interval), ((c − k)/(c + k))² (ratio) and, for ordinal data,
(Σ_{g=c}^{k} n_g − (n_c + n_k)/2)², n_g the number of pairable values equal to g — which is the squared
difference of the values' mid-ranks among all pairable values, so ordinal α is interval α of the mid-ranks.
The sums are evaluated in closed form (Σ_{i≠j}(v_i − v_j)² = 2m Σ_i (v_i − v̄)² over a set of m values), so the
cost is linear in the number of values except for ``"ratio"``.

Cronbach's α (Cronbach 1951) of K items over subjects: α = K/(K − 1) · (1 − Σ_j var(item_j) / var(Σ_j item_j)).

The definitions above follow the psychometric notions as Tomsett et al. name them; the assignment of images to
raters and methods to units for α, and of Spearman's ρ to inter-method reliability, is also how Fresz et al.
(FAccT 2024, who follow Tomsett et al.) compute them.  The choice of the curve steps as items of Cronbach's α is
ours.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core import options as opt
from .evaluate import EvaluationTable, evaluate
from .similarity import average_ranks

LEVELS = ("nominal", "ordinal", "interval", "ratio")


# -- the coefficients --------------------------------------------------------------------------------------------
def krippendorff_alpha(data, level: str = "interval") -> float:
    """Krippendorff's α of reliability data (raters × units, NaN = missing); see the module doc.

    Parameters
    ----------
    data : array-like or Tensor
        (raters, units): ``data[r, u]`` is the value rater r gave unit u, NaN where r gave none.
    level : ``"nominal"``, ``"ordinal"``, ``"interval"`` (default) or ``"ratio"``.

    Returns
    -------
    float
        α ≤ 1; 1 for perfect agreement; NaN when the pairable values do not vary (D_e = 0: α is undefined;
        for interval data, values equal up to rounding count as not varying).

    Raises
    ------
    ValueError
        Fewer than two raters, no unit with two values, or negative values with ``level="ratio"``.
    """
    opt.choice(LEVELS)("level", level)
    v = torch.as_tensor(data, dtype=torch.float64).detach().cpu()
    if v.dim() != 2 or v.shape[0] < 2:
        raise ValueError(f"reliability data must be (raters, units) with at least two raters, got shape "
                         f"{tuple(v.shape)}")
    if bool(torch.isinf(v).any()):
        raise ValueError("reliability data contain inf (use NaN for a missing value)")
    present = ~v.isnan()
    m_u = present.sum(0)
    pairable = m_u >= 2
    if not bool(pairable.any()):
        raise ValueError("no unit has values from two raters: Krippendorff's α needs pairable values")
    v, present, m_u = v[:, pairable], present[:, pairable], m_u[pairable].to(torch.float64)
    values = v[present]  # the pairable values, in the row-major order masked_scatter_ fills back
    n = values.numel()
    if level == "ratio" and bool((values < 0).any()):
        raise ValueError("level='ratio' needs values >= 0")
    if level == "ordinal":
        ranks = average_ranks(values.view(1, -1)).view(-1)  # mid-ranks among all pairable values
        v = torch.full_like(v, math.nan).masked_scatter_(present, ranks)
    if level in ("interval", "ordinal"):
        d_o = (_pair_sum_squares(v, present, m_u) / (m_u - 1)).sum() / n
        pooled = v[present]
        d_e = 2 * n * (pooled - pooled.mean()).pow(2).sum() / (n * (n - 1))
    elif level == "nominal":
        d_o = (_nominal_pairs(v, present) / (m_u - 1)).sum() / n
        _, counts = torch.unique(values, return_counts=True)
        d_e = (n * n - counts.to(torch.float64).pow(2).sum()) / (n * (n - 1))
    else:
        d_o = (_ratio_pairs_within(v, present) / (m_u - 1)).sum() / n
        d_e = _ratio_pairs_all(values) / (n * (n - 1))
    if float(d_e) == 0.0 or (level == "interval" and _constant(values)):
        return math.nan
    return float(1 - d_o / d_e)


def _pair_sum_squares(v: torch.Tensor, present: torch.Tensor, m_u: torch.Tensor) -> torch.Tensor:
    """Per unit Σ_{i≠j} (v_i − v_j)² = 2 m_u Σ_i (v_i − v̄_u)² over the unit's values."""
    w = present.to(torch.float64)
    x = torch.where(present, v, torch.zeros_like(v))
    mean = x.sum(0) / m_u
    return 2 * m_u * (w * (x - mean) ** 2).sum(0)


def _nominal_pairs(v: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Per unit the number of ordered pairs i ≠ j of its values with v_i ≠ v_j."""
    same = (v.unsqueeze(0) == v.unsqueeze(1)) & present.unsqueeze(0) & present.unsqueeze(1)
    m = present.sum(0).to(torch.float64)
    return m * m - same.sum((0, 1)).to(torch.float64)


def _ratio_delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    s = a + b
    return torch.where(s != 0, ((a - b) / torch.where(s != 0, s, torch.ones_like(s))) ** 2, torch.zeros_like(s))


def _ratio_pairs_within(v: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    both = present.unsqueeze(0) & present.unsqueeze(1)
    d = _ratio_delta(v.unsqueeze(0), v.unsqueeze(1))
    return torch.where(both, d, torch.zeros_like(d)).sum((0, 1))


def _ratio_pairs_all(values: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Σ_{i≠j} δ²_ratio over all pairable values, in chunks of rows (the diagonal terms are 0)."""
    return sum(_ratio_delta(values[i:i + chunk].unsqueeze(1), values.unsqueeze(0)).sum()
               for i in range(0, values.numel(), chunk))


def cronbach_alpha(items) -> float:
    """Cronbach's α of ``items`` (subjects × K items): K/(K − 1) · (1 − Σ_j var(item_j) / var(Σ_j item_j)).

    Sample variances (n − 1); subjects with a NaN item are left out.  NaN when the total does not vary
    (beyond rounding).
    """
    x = torch.as_tensor(items, dtype=torch.float64).detach().cpu()
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"items must be (subjects, K) with K >= 2 items, got shape {tuple(x.shape)}")
    x = x[~x.isnan().any(1)]
    if x.shape[0] < 2:
        raise ValueError("Cronbach's α needs at least two subjects with every item present")
    k = x.shape[1]
    total = x.sum(1)
    if _constant(total):
        return math.nan
    return float(k / (k - 1) * (1 - x.var(0).sum() / total.var()))


def _constant(values: torch.Tensor) -> bool:
    """Whether ``values`` vary by no more than rounding (a spread of a few ulps of their magnitude): a ratio of
    variances of rounding errors would be noise, not a reliability."""
    spread = float(values.max() - values.min())
    return spread <= 64 * torch.finfo(torch.float64).eps * float(values.abs().max())


# -- the three reliabilities of a metric -------------------------------------------------------------------------
def inter_rater_reliability(scores, level: str = "ordinal") -> float:
    """Krippendorff's α with the images (rows of ``scores``, (N, M)) as raters of the M methods (columns).

    ``level="ordinal"`` (default) rates each method by its rank among the methods on that image (ties: the
    mean rank; a NaN score: missing); ``"interval"`` or ``"ratio"`` by the raw score.
    """
    s = _scores("scores", scores)
    if s.shape[1] < 2:
        raise ValueError("inter-rater reliability needs at least two methods to rank")
    if level in ("ordinal", "nominal"):
        missing = s.isnan()
        ranks = average_ranks(torch.where(missing, torch.full_like(s, math.inf), s))
        s = torch.where(missing, torch.full_like(s, math.nan), ranks)
    return krippendorff_alpha(s, level)


def inter_method_reliability(scores_a, scores_b) -> torch.Tensor:
    """(M,) Spearman's ρ over the images between two metrics' scores of each method ((N, M) each).

    Images where either score is NaN are left out; NaN for a method with fewer than two images left or a
    constant score.
    """
    a, b = _scores("scores_a", scores_a), _scores("scores_b", scores_b)
    if a.shape != b.shape:
        raise ValueError(f"scores_a and scores_b differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    from .similarity import spearman

    out = []
    for m in range(a.shape[1]):
        keep = ~(a[:, m].isnan() | b[:, m].isnan())
        out.append(spearman(a[keep, m].view(1, -1), b[keep, m].view(1, -1))[0] if int(keep.sum()) >= 2
                   else torch.tensor(math.nan, dtype=torch.float64))
    return torch.stack(out)


def internal_consistency(curve) -> float:
    """Cronbach's α of a perturbation curve's steps, (N, K + 1), as items: f(x⁽⁰⁾) − f(x⁽ᵏ⁾) for k = 1..K."""
    c = torch.as_tensor(curve, dtype=torch.float64).detach().cpu()
    if c.dim() != 2 or c.shape[1] < 3:
        raise ValueError(f"curve must be (samples, K + 1) with K >= 2 steps, got shape {tuple(c.shape)}")
    return cronbach_alpha(c[:, :1] - c[:, 1:])


def _scores(name: str, s) -> torch.Tensor:
    s = torch.as_tensor(s, dtype=torch.float64).detach().cpu()
    if s.dim() != 2 or s.shape[0] < 2:
        raise ValueError(f"{name} must be (images, methods) with at least two images, got shape {tuple(s.shape)}")
    return s


# -- over an evaluation ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReliabilityResult:
    """Tomsett et al.'s three reliabilities of each metric over a set of images and methods.

    Attributes
    ----------
    metrics, methods : tuple of str
    samples : int
        The number of images.
    level : str
        The level of measurement of the inter-rater α.
    inter_rater : dict
        metric → Krippendorff's α (images rate methods).
    inter_method : dict
        (metric_a, metric_b) → {method: Spearman's ρ over the images}, for every pair of metrics.
    internal_consistency : dict
        metric → {method: Cronbach's α of the curve steps}, for the metrics with a curve.
    """

    metrics: tuple[str, ...]
    methods: tuple[str, ...]
    samples: int
    level: str
    inter_rater: dict[str, float]
    inter_method: dict[tuple[str, str], dict[str, float]]
    internal_consistency: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready; NaN as None)."""
        def clean(v: float):
            return None if math.isnan(v) else v
        return {"metrics": list(self.metrics), "methods": list(self.methods), "samples": self.samples,
                "level": self.level, "inter_rater": {k: clean(v) for k, v in self.inter_rater.items()},
                "inter_method": {f"{a}|{b}": {m: clean(v) for m, v in per.items()}
                                 for (a, b), per in self.inter_method.items()},
                "internal_consistency": {k: {m: clean(v) for m, v in per.items()}
                                         for k, per in self.internal_consistency.items()}}

    def __str__(self) -> str:
        width = max(len("metric"), *map(len, self.metrics))
        mw = max(8, *map(len, self.methods))
        lines = [f"reliability of {len(self.metrics)} metric(s) over {self.samples} images and "
                 f"{len(self.methods)} methods (Tomsett et al. 2020)",
                 f"inter-rater: Krippendorff's α ({self.level}), images ranking methods"]
        lines += [f"  {k:{width}s}  {v:7.3f}" for k, v in self.inter_rater.items()]
        if self.inter_method:
            lines.append("inter-method: Spearman's ρ over the images between two metrics' scores of each method")
            lines.append("  " + " " * (2 * width + 3) + "  " + "  ".join(f"{m:>{mw}s}" for m in self.methods))
            for (a, b), per in self.inter_method.items():
                lines.append(f"  {a:{width}s} ~ {b:{width}s}  " + "  ".join(f"{per[m]:{mw}.3f}" for m in self.methods))
        if self.internal_consistency:
            lines.append("internal consistency: Cronbach's α of the curve steps (items) over the images")
            lines.append("  " + " " * width + "  " + "  ".join(f"{m:>{mw}s}" for m in self.methods))
            for k, per in self.internal_consistency.items():
                lines.append(f"  {k:{width}s}  " + "  ".join(f"{per[m]:{mw}.3f}" for m in self.methods))
        return "\n".join(lines)


def reliability(table: EvaluationTable, *, metrics: Sequence[str] | None = None,
                level: str = "ordinal") -> ReliabilityResult:
    """Inter-rater, inter-method and internal-consistency reliability of the metrics of an evaluation.

    Parameters
    ----------
    table : EvaluationTable
        From :func:`tribute.evaluate`, with at least two methods and two samples.
    metrics : the metrics to assess (default: all of the table's).
    level : level of measurement of the inter-rater α (``"ordinal"``, default, or ``"interval"``, ...).
    """
    if not isinstance(table, EvaluationTable):
        raise TypeError(f"table must be an EvaluationTable (from tribute.evaluate), got {type(table).__name__}")
    opt.choice(LEVELS)("level", level)
    metrics = tuple(table.metrics if metrics is None else metrics)
    unknown = [k for k in metrics if k not in table.metrics]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in the table; it has {', '.join(table.metrics)}")
    if not metrics:
        raise ValueError("no metric to assess: evaluate at least one metric")
    if len(table.methods) < 2 or table.samples < 2:
        raise ValueError(f"reliability needs at least two methods and two images; the table has "
                         f"{len(table.methods)} method(s) and {table.samples} sample(s)")
    matrix = {k: torch.stack([table[m, k] for m in table.methods], 1) for k in metrics}
    inter_rater = {k: inter_rater_reliability(matrix[k], level) for k in metrics}
    inter_method = {(a, b): dict(zip(table.methods, inter_method_reliability(matrix[a], matrix[b]).tolist(),
                                     strict=True))
                    for a, b in itertools.combinations(metrics, 2)}
    consistency = {k: {m: internal_consistency(table.curves[m, k]) for m in table.methods}
                   for k in metrics if all((m, k) in table.curves and table.curves[m, k].shape[1] >= 3
                                           for m in table.methods)}
    return ReliabilityResult(metrics, tuple(table.methods), table.samples, level, inter_rater, inter_method,
                             consistency)


def metric_reliability(model: nn.Module, data, methods: Sequence, metrics: Sequence = ("aopc_morf", "aopc_lerf"),
                       *, level: str = "ordinal", **options) -> ReliabilityResult:
    """Evaluate ``methods`` by ``metrics`` on ``data`` (:func:`tribute.evaluate`, same ``options``: target,
    batch_size, seed, progress) and assess the metrics' reliability (:func:`reliability`)."""
    return reliability(evaluate(model, data, methods, metrics, **options), level=level)


__all__ = ["ReliabilityResult", "cronbach_alpha", "inter_method_reliability", "inter_rater_reliability",
           "internal_consistency", "krippendorff_alpha", "metric_reliability", "reliability"]
