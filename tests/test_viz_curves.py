"""Metric curve figures (tribute.viz.curves): the plotted lines and bands are the means and standard errors of the
result objects' curves, worked by hand or recomputed; kinds and directions are named; degenerate curves
(all-zero, constant, NaN, ±inf, one sample) are drawn and their left-out values named."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")

from tribute import evaluate  # noqa: E402
from tribute.metrics import (  # noqa: E402
    PerturbationCurve,
    RoarResult,
    SanityResult,
    deletion,
    insertion,
    parameter_randomisation,
    pixel_perturbation,
    sensitivity_n,
)
from tribute.viz.curves import (  # noqa: E402
    figure_png,
    mean_and_sem,
    perturbation_figure,
    roar_figure,
    sanity_figure,
    sensitivity_n_figure,
    table_curves_figure,
    table_fractions,
)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    return net.double().eval()


def data(n: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 6, 6, generator=g, dtype=torch.float64)


def lines(ax) -> dict[str, np.ndarray]:
    """Legend label → (x, y) of each plotted line with a marker (the means)."""
    return {ln.get_label(): np.vstack(ln.get_data()).astype(float) for ln in ax.get_lines() if ln.get_marker() == "o"}


def band_edges(ax) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lower, upper) at each x of each filled band, read back from its polygon's vertices."""
    out = []
    for coll in ax.collections:
        v = coll.get_paths()[0].vertices
        xs = np.unique(v[:, 0])
        out.append((np.array([v[v[:, 0] == x, 1].min() for x in xs]), np.array([v[v[:, 0] == x, 1].max() for x in xs])))
    return out


def test_mean_and_standard_error_worked_by_hand():
    v = np.array([[1.0, 2.0, np.nan], [3.0, np.inf, np.nan], [5.0, 4.0, 7.0]])
    mean, sem, count = mean_and_sem(v)
    np.testing.assert_allclose(mean, [3.0, 3.0, 7.0])
    # column 0: sd of 1, 3, 5 is 2, over √3; column 1: 2 and 4 (inf left out): sd √2 over √2; column 2: one value
    np.testing.assert_allclose(sem[:2], [2 / math.sqrt(3), 1.0])
    assert math.isnan(sem[2]) and count.tolist() == [3, 2, 1]
    with pytest.raises(ValueError, match=r"\(n, K\)"):
        mean_and_sem(np.zeros(3))


def test_perturbation_figure_draws_the_mean_curve_with_standard_errors():
    model, x = tiny_cnn(), data()
    grads = {"gradient": torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)}
    grads["negated"] = -grads["gradient"]
    curves = {m: pixel_perturbation(model, x, a, 0, steps=6) for m, a in grads.items()}
    fig = perturbation_figure(curves)
    (ax,) = fig.axes
    drawn = lines(ax)
    for name, c in curves.items():
        xy = drawn[f"{name} (n=5)"]
        np.testing.assert_allclose(xy[0], c.fractions.numpy())
        np.testing.assert_allclose(xy[1], c.curve.mean(0).numpy())
    lo, hi = band_edges(ax)[0]
    c = curves["gradient"].curve.numpy()
    sem = c.std(0, ddof=1) / math.sqrt(5)
    np.testing.assert_allclose(hi - lo, 2 * sem, atol=1e-12)
    assert "MoRF" in ax.get_title() and "lower curve is better" in ax.get_title()
    assert "fraction removed" in ax.get_xlabel()
    lerf = perturbation_figure(pixel_perturbation(model, x, grads["gradient"], 0, order="lerf", steps=4))
    assert "LeRF" in lerf.axes[0].get_title() and "higher curve is better" in lerf.axes[0].get_title()
    assert figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_insertion_and_deletion_need_their_kind():
    model, x = tiny_cnn(), data()
    a = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ins, dele = insertion(model, x, a, 0, steps=4), deletion(model, x, a, 0, steps=4)
    with pytest.raises(ValueError, match="pass kind='insertion' or kind='deletion'"):
        perturbation_figure({"gradient": ins})
    assert "higher curve is better" in perturbation_figure(ins, kind="insertion").axes[0].get_title()
    assert "lower curve is better" in perturbation_figure(dele, kind="deletion").axes[0].get_title()
    with pytest.raises(ValueError, match="kind must be one of"):
        perturbation_figure(ins, kind="upward")
    with pytest.raises(ValueError, match="different kinds"):
        perturbation_figure({"a": pixel_perturbation(model, x, a, 0, steps=4),
                             "b": pixel_perturbation(model, x, a, 0, order="lerf", steps=4)})


def synthetic_curve(values) -> PerturbationCurve:
    c = torch.as_tensor(values, dtype=torch.float64)
    k = c.shape[1]
    return PerturbationCurve(score=(c[:, :1] - c).mean(1), curve=c, fractions=torch.linspace(0, 1, k),
                             predictions=None, target=None, order="morf")


@pytest.mark.parametrize("values, note", [
    ([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], ""),                        # all zero
    ([[0.5, 0.5, 0.5]], ""),                                         # constant, one sample: no band
    ([[1e300, -1e300, 1e-300], [1e300, -1e300, 0.0]], ""),           # extreme
    ([[1.0, math.nan, 0.5], [1.0, 0.2, math.inf], [1.0, 0.4, -math.inf]], "; 1 NaN, 2 ±inf left out)"),
])
def test_degenerate_curves_are_drawn_and_left_out_values_named(values, note):
    fig = perturbation_figure({"m": synthetic_curve(values)})
    (ax,) = fig.axes
    (label,) = lines(ax)
    n = len(values)
    assert label == f"m (n={n}" + (note or ")")
    mean, _, _ = mean_and_sem(np.array(values))
    np.testing.assert_allclose(lines(ax)[label][1], mean)
    assert len(figure_png(fig)) > 1000
    if n == 1:
        assert not ax.collections  # no standard error from one curve


def test_table_curves_follow_the_evaluation_table():
    model, x = tiny_cnn(), data(4)
    table = evaluate(model, x, ["gradient", "input_x_gradient"], ["aopc_morf", "deletion", "completeness_gap"],
                     progress=False)
    fig = table_curves_figure(table)
    assert len(fig.axes) == 2  # completeness_gap has no curve
    for ax, metric in zip(fig.axes, ["aopc_morf", "deletion"], strict=True):
        drawn = lines(ax)
        for m in table.methods:
            xy = drawn[f"{m} (n=4)"]
            np.testing.assert_allclose(xy[1], table.curves[m, metric].mean(0).numpy())
            np.testing.assert_allclose(xy[0], np.arange(21) / 20)  # the default 20 steps
        assert ax.get_title().startswith(metric)
    assert "lower curve is better" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="no curves for completeness_gap"):
        table_curves_figure(table, ["completeness_gap"])


def test_table_fractions_from_the_registry_defaults():
    np.testing.assert_allclose(table_fractions("aopc_morf", 21), np.arange(21) / 20)
    np.testing.assert_allclose(table_fractions("road_morf", 10), [0, .1, .2, .3, .4, .5, .6, .7, .8, .9])
    assert table_fractions("aopc_morf", 11) is None  # other options: the step number is shown instead
    assert table_fractions("my_label@10", 11) is None


def test_roar_figure_means_over_repeats():
    runs = {("roar", "gradient"): ((0.9, 0.5), (0.7, 0.3)), ("roar", "random"): ((0.9, 0.8), (0.9, 0.6)),
            ("kar", "gradient"): ((0.6, 0.8), (0.6, 0.8)), ("kar", "random"): ((0.2, 0.4), (0.4, 0.6))}
    acc = {k: tuple(np.mean(v, 0)) for k, v in runs.items()}
    result = RoarResult(tests=("roar", "kar"), methods=("gradient", "random"), fractions=(0.25, 0.75), accuracy=acc,
                        runs=runs, reference=0.95, original=0.97)
    fig = roar_figure(result)
    roar_ax, kar_ax = fig.axes
    np.testing.assert_allclose(lines(roar_ax)["gradient (n=2)"], [[0.25, 0.75], [0.8, 0.4]])
    np.testing.assert_allclose(lines(kar_ax)["random (n=2)"][1], [0.3, 0.5])
    lo, hi = band_edges(roar_ax)[0]
    np.testing.assert_allclose(hi - lo, [0.2, 0.2], atol=1e-12)  # sd √0.02 over √2 = 0.1 either side
    dashed = [ln.get_ydata()[0] for ln in roar_ax.get_lines() if ln.get_linestyle() in ("--", ":")]
    assert sorted(dashed) == [0.95, 0.97]
    assert "lower is better" in roar_ax.get_title() and "higher is better" in kar_ax.get_title()


def test_sanity_figure_from_a_real_randomisation():
    model, x = tiny_cnn(), data(4)
    results = [parameter_randomisation(model, x, m, 0, similarities=("spearman", "pearson")) for m in
               ("gradient", "input_x_gradient")]
    fig = sanity_figure(results)
    assert len(fig.axes) == 2
    for ax, sim in zip(fig.axes, ("spearman", "pearson"), strict=True):
        for r in results:
            np.testing.assert_allclose(lines(ax)[f"{r.method} (n=4)"][1], r.curve(sim).numpy())
        assert [t.get_text() for t in ax.get_xticklabels()] == list(results[0].steps)
        assert sim in ax.get_ylabel()
    with pytest.raises(ValueError, match="has no similarity ssim"):
        sanity_figure(results, ["ssim"])
    nan = SanityResult("cascading", "m", ("a", "b"), ("spearman",), torch.tensor([[[0.5, math.nan], [0.1, 0.3]]]))
    (ax,) = sanity_figure(nan).axes
    assert list(lines(ax)) == ["m (n=2; 1 NaN left out)"]
    np.testing.assert_allclose(lines(ax)["m (n=2; 1 NaN left out)"][1], [0.5, 0.2])


def test_sensitivity_n_figure_from_a_real_run():
    model, x = tiny_cnn(), data(4)
    a = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    result = sensitivity_n(model, x, a * x, 0, ns=[1, 4, 16, 30], samples=8, seed=0)
    fig = sensitivity_n_figure({"input × random": result})
    (ax,) = fig.axes
    xy = lines(ax)["input × random (n=4)"]
    np.testing.assert_allclose(xy[0], [1, 4, 16, 30])
    np.testing.assert_allclose(xy[1], result.correlation.nanmean(0).numpy())
    assert ax.get_xscale() == "log" and "higher is better" in ax.get_title()


def test_the_docs_examples_are_listed_for_the_figure_command():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "figures" / "curve_examples.py"
    spec = importlib.util.spec_from_file_location("curve_examples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports only: the runs happen when a figure is asked for
    names = [name for name, _ in module.EXAMPLES]
    assert len(set(names)) == len(names) == 7 and all(n.endswith(".png") for n in names)
    assert all(callable(make) for _, make in module.EXAMPLES)
    for name in names:  # each has its image in the docs, written by that command
        assert (path.parent / name).stat().st_size > 10_000


DEGENERATE = {
    "all zero": np.zeros((3, 4)),
    "constant": np.full((3, 4), 0.25),
    "extreme": np.array([[1e300, -1e300, 1e-300, 0.0]] * 3),
    "nan and inf": np.array([[np.nan, 0.1, np.inf, 0.2], [0.3, -np.inf, 0.1, np.nan], [0.2, 0.2, 0.2, 0.2]]),
    "all nan": np.full((3, 4), np.nan),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_every_curve_figure_draws_degenerate_values(case):
    from tribute.metrics import SensitivityN

    v = torch.tensor(DEGENERATE[case], dtype=torch.float64)  # (3 samples or repeats, 4 points)
    bad = int((~torch.isfinite(v)).sum())
    figures = {
        "perturbation": perturbation_figure({"m": synthetic_curve(v)}),
        "sensitivity_n": sensitivity_n_figure({"m": SensitivityN(v, torch.tensor([1, 2, 4, 8]), v[..., None],
                                                                 v[..., None])}),
        "sanity": sanity_figure(SanityResult("independent", "m", ("a", "b", "c", "d"), ("spearman",), v.T[None])),
        "roar": roar_figure(RoarResult(("roar",), ("m",), (0.1, 0.2, 0.3, 0.4), {("roar", "m"): tuple(v.mean(0))},
                                       {("roar", "m"): tuple(map(tuple, v.tolist()))}, None, 0.9)),
    }
    for name, fig in figures.items():
        ax = fig.axes[0]
        (label,) = lines(ax)
        nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
        parts = [f"{k} {w}" for k, w in ((nan, "NaN"), (inf, "±inf")) if k]
        assert label == "m (n=3" + (f"; {', '.join(parts)} left out)" if bad else ")"), name
        mean, _, _ = mean_and_sem(v.numpy())
        np.testing.assert_allclose(lines(ax)[label][1], mean, err_msg=name)
        assert figure_png(fig)[:4] == b"\x89PNG", name
