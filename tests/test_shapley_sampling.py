"""shapley_sampling on small models: exact on a linear model and for null players, within its standard error of
the Shapley values by enumeration (and Captum's ShapleyValueSampling too), efficiency for any sample, samples
independent of the batch, a tolerance, clear errors."""

from __future__ import annotations

import pytest
import torch
from test_kernel_shap import (
    MASK,
    QUARTERS,
    PlantedSquare,
    brute_force_shapley,
    coverage_over_seeds,
    images,
    linear_net,
    small_cnn,
    spread,
)

import tribute

DT = torch.float64


def test_linear_model_gives_w_times_x_minus_baseline_per_group():
    net, x = linear_net(), images()
    e = tribute.ShapleySampling(net, feature_mask=MASK, baseline=0.5, samples=4, seed=0)
    a = e.attribute(x, target=1)
    per_pixel = (net[1].weight[1].view(1, 1, 4, 4) * (x - 0.5)).detach()
    per_group = torch.zeros(3, 8, dtype=DT).index_add_(1, MASK.flatten(), per_pixel.flatten(1))
    assert float((a - spread(per_group, MASK, x)).abs().max()) < 1e-12
    assert float(e.standard_error.max()) < 1e-12
    assert e.passes.forward_rows == 3 * (4 * 7 + 2)  # M − 1 prefixes per ordering, v(0) and v(1)
    e.attribute(x, target=1, samples=2)  # one pair: a spread needs two, so the standard error is unknown (NaN)
    assert bool(e.standard_error.isnan().all())


def test_within_its_standard_error_of_the_exact_values_with_efficiency_exact():
    net, x = small_cnn(), images(3, seed=2)
    e = tribute.ShapleySampling(net, feature_mask=MASK, samples=200, seed=1)
    a = e.attribute(x, target=2)
    exact = spread(brute_force_shapley(net, x, torch.zeros_like(x), MASK, 2), MASK, x)
    se = e.standard_error
    assert float(se.min()) > 0
    assert bool(((a - exact).abs() <= 4.5 * se + 1e-12).all())
    gap = (net(x)[:, 2] - net(torch.zeros_like(x))[:, 2]).detach()
    torch.testing.assert_close(a.sum((1, 2, 3)) / 2, gap, rtol=0, atol=1e-12)  # two pixels per group


def test_captum_shapley_value_sampling_and_ours_approach_the_same_exact_values():
    captum = pytest.importorskip("captum.attr")
    net, x = small_cnn(3), images(2, seed=4)
    exact = captum.ShapleyValues(net).attribute(x, target=0, feature_mask=QUARTERS).double()
    ours = tribute.ShapleySampling(net, feature_mask=QUARTERS, samples=400, seed=0)
    a = ours.attribute(x, target=0)
    assert bool(((a - exact).abs() <= 4.5 * ours.standard_error + 1e-6).all())
    torch.manual_seed(0)
    theirs = captum.ShapleyValueSampling(net).attribute(x, target=0, feature_mask=QUARTERS, n_samples=400).double()
    scale = float(exact.abs().max())
    assert float((theirs - exact).abs().max()) < 0.1 * scale and float((a - exact).abs().max()) < 0.1 * scale


def test_planted_square_players_outside_it_get_exactly_zero():
    x = images(2, seed=6)
    mask = torch.arange(16).view(1, 1, 4, 4)
    e = tribute.ShapleySampling(PlantedSquare(), feature_mask=mask, samples=6, seed=0)
    a = e.attribute(x, target=0)
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 1:3] = True
    assert bool((a[..., ~inside] == 0).all()) and bool((e.standard_error[..., ~inside] == 0).all())
    gap = PlantedSquare()(x)[:, 0] - PlantedSquare()(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(a.sum((1, 2, 3)), gap, rtol=0, atol=1e-12)


def test_a_sample_draws_the_same_alone_in_any_batch_and_chunking():
    net, x = small_cnn(), images(4, seed=9)
    mask = torch.arange(16).view(1, 1, 4, 4)
    batch = tribute.ShapleySampling(net, feature_mask=mask, samples=4, seed=4).attribute(x, target=0)
    alone = tribute.ShapleySampling(net, feature_mask=mask, samples=4, seed=4, batch_size=5).attribute(x[1:2],
                                                                                                     target=0)
    flipped = tribute.ShapleySampling(net, feature_mask=mask, samples=4, seed=4, batch_size=3).attribute(
        x.flip(0), target=0)
    torch.testing.assert_close(alone, batch[1:2], rtol=0, atol=1e-12)
    torch.testing.assert_close(flipped.flip(0), batch, rtol=0, atol=1e-12)


def test_tolerance_and_its_limit():
    net, x = small_cnn(), images(2)
    e = tribute.ShapleySampling(net, feature_mask=MASK, samples=4, seed=0)
    e.attribute(x, target=1)
    first = float(e.standard_error.max())
    e.attribute(x, target=1, tolerance=first / 3)
    assert float(e.standard_error.max()) <= first / 3
    with pytest.raises(RuntimeError, match="did not reach tolerance"):
        e.attribute(x, target=1, tolerance=first / 100, max_samples=16)


def test_clear_errors():
    net, x = small_cnn(), images(2)
    with pytest.raises(ValueError, match="samples must be even"):
        tribute.ShapleySampling(net, feature_mask=MASK, samples=5).attribute(x, target=0)
    with pytest.raises(ValueError, match="tolerance"):
        tribute.ShapleySampling(net, feature_mask=MASK, tolerance=0.0).attribute(x, target=0)


def test_standard_error_is_calibrated_on_a_model_with_three_way_interactions():
    cover = coverage_over_seeds("shapley_sampling", 40)  # 20 antithetic pairs
    assert 0.90 <= cover <= 0.99, cover
