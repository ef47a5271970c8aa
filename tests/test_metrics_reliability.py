"""Reliability of metrics (Tomsett et al. 2020): Krippendorff's α and Cronbach's α by hand and from the literature,
and the three reliabilities over an evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import residual_cnns

from tribute.metrics import (
    ReliabilityResult,
    cronbach_alpha,
    evaluate,
    inter_method_reliability,
    inter_rater_reliability,
    internal_consistency,
    krippendorff_alpha,
    metric_reliability,
    reliability,
)
from tribute.metrics.similarity import spearman

NAN = math.nan
LEVELS = ("nominal", "ordinal", "interval", "ratio")

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", §C: 4 observers, 12 units, missing values;
# published: α_nominal = 0.743, α_ordinal = 0.815, α_interval = 0.849, α_ratio = 0.797.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
]
PUBLISHED = {"nominal": 0.743, "ordinal": 0.815, "interval": 0.849, "ratio": 0.797}


# -- Krippendorff's α ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_perfect_agreement_gives_one(level):
    data = torch.tensor([[1.0, 2, 3, 5, 4, NAN], [1, 2, 3, 5, NAN, 2], [1, 2, 3, 5, 4, 2]])
    assert krippendorff_alpha(data, level) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("level", LEVELS)
def test_the_published_example(level):
    assert krippendorff_alpha(KRIPPENDORFF_2011, level) == pytest.approx(PUBLISHED[level], abs=5e-4)


def test_hand_worked_interval_and_nominal_values():
    """Interval, raters (1, 2, 3) and (1, 2, 4): n = 6 pairable values; only unit 3 disagrees,
    D_o = (2 · 1²)/1 / 6 = 1/3; D_e = Σ_{i≠j}(v_i − v_j)² / (n(n − 1)) = 2 · 6 · (41/6) / 30 = 41/15;
    α = 1 − (1/3)/(41/15) = 36/41.
    Nominal, raters (a, a, b, b) and (a, b, b, b): D_o = 2/8 (unit 2's two ordered pairs), n_a = 3, n_b = 5,
    D_e = (64 − 9 − 25)/56 = 15/28; α = 1 − (1/4)/(15/28) = 8/15."""
    assert krippendorff_alpha([[1, 2, 3], [1, 2, 4]], "interval") == pytest.approx(36 / 41, abs=1e-15)
    assert krippendorff_alpha([[0, 0, 1, 1], [0, 1, 1, 1]], "nominal") == pytest.approx(8 / 15, abs=1e-15)


def test_ordinal_alpha_is_interval_alpha_of_the_mid_ranks():
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 6, (4, 25), generator=g).double()
    data[torch.rand(data.shape, generator=g) < 0.2] = NAN
    present = ~data.isnan()
    pairable = present.sum(0) >= 2
    d = data[:, pairable]
    values = d[~d.isnan()]
    sorted_values = values.sort().values
    midrank = {float(v): float((sorted_values < v).sum() + ((sorted_values == v).sum() + 1) / 2) for v in values}
    ranked = d.clone().apply_(lambda v: v if math.isnan(v) else midrank[v])
    assert krippendorff_alpha(data, "ordinal") == pytest.approx(krippendorff_alpha(ranked, "interval"), abs=1e-12)


def test_independent_raters_agree_at_chance():
    g = torch.Generator().manual_seed(1)
    data = torch.rand(3, 2000, generator=g)
    for level in ("ordinal", "interval"):
        assert abs(krippendorff_alpha(data, level)) < 0.03


def test_agreement_with_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff")
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(3):
        data = rng.integers(0, 6, size=(5, 30)).astype(float)
        data[rng.random(data.shape) < 0.2] = np.nan
        for level in LEVELS:
            ours = krippendorff_alpha(data, level)
            theirs = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
            assert ours == pytest.approx(theirs, abs=1e-12), level
    scores = rng.normal(size=(6, 40))
    for level in ("ordinal", "interval"):
        assert krippendorff_alpha(scores, level) == pytest.approx(
            krippendorff.alpha(reliability_data=scores, level_of_measurement=level), abs=1e-10)


def test_krippendorff_bad_input():
    with pytest.raises(ValueError, match="at least two raters"):
        krippendorff_alpha([[1, 2, 3]])
    with pytest.raises(ValueError, match="pairable"):
        krippendorff_alpha([[1, NAN], [NAN, 2]])
    with pytest.raises(ValueError, match="level must be one of"):
        krippendorff_alpha([[1, 2], [1, 2]], "cardinal")
    with pytest.raises(ValueError, match=">= 0"):
        krippendorff_alpha([[1, -2], [1, 2]], "ratio")
    assert math.isnan(krippendorff_alpha([[1, 1], [1, 1]]))  # nothing varies: α undefined


# -- Cronbach's α --------------------------------------------------------------------------------------------------
def test_cronbach_alpha_by_hand():
    """items (1, 2, 3) and (2, 3, 5): variances 1 and 7/3, the total (3, 5, 8) 19/3;
    α = 2/1 · (1 − (10/3)/(19/3)) = 18/19.  Identical items: α = 1."""
    assert cronbach_alpha([[1, 2], [2, 3], [3, 5]]) == pytest.approx(18 / 19, abs=1e-15)
    x = torch.randn(20, 1, generator=torch.Generator().manual_seed(0)).double()
    assert cronbach_alpha(x.repeat(1, 4)) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="K >= 2"):
        cronbach_alpha([[1], [2]])


def test_internal_consistency_uses_the_curve_drops_as_items():
    g = torch.Generator().manual_seed(0)
    curve = torch.rand(12, 6, generator=g, dtype=torch.float64)
    assert internal_consistency(curve) == pytest.approx(cronbach_alpha(curve[:, :1] - curve[:, 1:]), abs=1e-15)
    base = torch.rand(12, 1, generator=g, dtype=torch.float64)
    steady = torch.cat([base + 1, base.repeat(1, 4)], 1)  # every step drops by 1 on every image
    assert math.isnan(internal_consistency(steady))  # no variance over the images: α undefined
    # drops base·k for k = 1..4: Σ var = v Σ k² = 30 v, var of the total = v (Σ k)² = 100 v,
    # α = 4/3 · (1 − 30/100) = 14/15
    k = torch.arange(1, 5, dtype=torch.float64)
    proportional = torch.cat([base + 2, base + 2 - base * k], 1)
    assert internal_consistency(proportional) == pytest.approx(14 / 15, abs=1e-12)


# -- the three reliabilities ---------------------------------------------------------------------------------------
def test_inter_rater_reliability_of_rankings():
    g = torch.Generator().manual_seed(0)
    offsets = torch.rand(30, 1, generator=g, dtype=torch.float64) * 10
    same_order = offsets + torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    assert inter_rater_reliability(same_order) == pytest.approx(1.0, abs=1e-15)  # every image ranks alike
    assert inter_rater_reliability(same_order, "interval") < 0.5  # the raw scores differ by image
    flipped = same_order.clone()
    flipped[::2] = -flipped[::2]  # half the images rank the methods the other way round
    assert inter_rater_reliability(flipped) < 0
    with_missing = same_order.clone()
    with_missing[3, 1] = NAN
    assert inter_rater_reliability(with_missing) == pytest.approx(
        krippendorff_alpha(torch.tensor([[1.0, 2, 3, 4]] * 3 + [[1.0, NAN, 2, 3]] + [[1.0, 2, 3, 4]] * 26),
                           "ordinal"), abs=1e-15)


def test_inter_method_reliability_is_spearman_over_images_per_method():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(15, 3, generator=g, dtype=torch.float64)
    b = torch.stack([a[:, 0] ** 3, -a[:, 1], torch.rand(15, generator=g, dtype=torch.float64)], 1)
    rho = inter_method_reliability(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert rho[2] == pytest.approx(float(spearman(a[:, 2].view(1, -1), b[:, 2].view(1, -1))[0]))


def test_reliability_of_an_evaluation():
    model = residual_cnns()["modules"]
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    methods = ["gradient", "input_x_gradient", "random"]
    metrics = [("morf", "aopc_morf", {"steps": 4}), ("lerf", "aopc_lerf", {"steps": 4}), "completeness_gap"]
    table = evaluate(model, x, methods, metrics, progress=False)
    result = reliability(table)
    assert isinstance(result, ReliabilityResult)
    assert result.metrics == ("morf", "lerf", "completeness_gap") and result.samples == 8
    scores = {k: torch.stack([table[m, k] for m in table.methods], 1) for k in result.metrics}
    for k in result.metrics:
        assert result.inter_rater[k] == inter_rater_reliability(scores[k])
    assert list(result.inter_method) == [("morf", "lerf"), ("morf", "completeness_gap"), ("lerf", "completeness_gap")]
    assert result.inter_method["morf", "lerf"]["random"] == \
        float(inter_method_reliability(scores["morf"], scores["lerf"])[2])
    assert set(result.internal_consistency) == {"morf", "lerf"}  # the metrics with a curve
    assert result.internal_consistency["morf"]["gradient"] == internal_consistency(table.curves["gradient", "morf"])
    assert "Krippendorff" in str(result) and result.to_dict()["inter_method"]["morf|lerf"]
    again = metric_reliability(model, x, methods, metrics, progress=False)
    assert again.inter_rater == result.inter_rater
    with pytest.raises(ValueError, match="at least two methods"):
        reliability(evaluate(model, x, ["gradient"], ["aopc_morf"], progress=False))
    with pytest.raises(ValueError, match="not in the table"):
        reliability(table, metrics=["insertion"])
