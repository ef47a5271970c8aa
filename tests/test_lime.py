"""lime on small models: the surrogate's coefficients recover a linear model's group contributions without
regularisation, equal the closed-form ridge solution and scikit-learn's lasso on the same coalitions, agree with
Captum's Lime fed the same coalitions, and report a standard error that matches the spread across seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_kernel_shap import MASK, CubicModel, images, linear_net, small_cnn, spread

import tribute
from tribute.attribution.perturbation.coalitions import lime_coalitions
from tribute.core.randomness import SampleStreams

DT = torch.float64


def coalitions_and_scores(net, x, mask, samples, seed, target, baseline=0.0):
    """The coalitions lime draws for each sample (its own stream) and the model's scores on them, by hand."""
    labels = mask.expand_as(x).reshape(x.shape[0], -1)
    m = int(labels.max()) + 1
    out = []
    for i in range(x.shape[0]):
        z = lime_coalitions(m, samples, SampleStreams(x, seed).generators[i])
        rows = torch.where(z[:, labels[i]], x[i].reshape(-1), torch.full_like(x[i].reshape(-1), baseline))
        with torch.no_grad():
            out.append((z, net(rows.view(-1, *x.shape[1:]))[:, target]))
    return out


def kernel(z, width=0.25):
    d = 1 - torch.sqrt(z.double().sum(1) / z.shape[1])
    return torch.exp(-d ** 2 / (2 * width ** 2))


def test_linear_model_without_regularisation_recovers_each_groups_contribution():
    net, x = linear_net(), images()
    e = tribute.Lime(net, feature_mask=MASK, baseline=0.5, alpha=0.0, samples=60, seed=0)
    a = e.attribute(x, target=1)
    per_pixel = (net[1].weight[1].view(1, 1, 4, 4) * (x - 0.5)).detach()
    per_group = torch.zeros(3, 8, dtype=DT).index_add_(1, MASK.flatten(), per_pixel.flatten(1))
    assert float((a - spread(per_group, MASK, x)).abs().max()) < 1e-10
    assert float(e.standard_error.max()) < 1e-10
    assert e.passes.forward_rows == 3 * (60 + 2)  # the rows, v(0) and v(1)


def test_ridge_equals_the_closed_form_on_the_same_coalitions():
    net, x = small_cnn(), images(2, seed=3)
    a = tribute.Lime(net, feature_mask=MASK, samples=80, seed=2, alpha=1.0).attribute(x, target=0)
    for i, (z, y) in enumerate(coalitions_and_scores(net, x, MASK, 80, 2, 0)):
        xd = torch.cat([torch.ones(80, 1, dtype=DT), z.double()], 1)
        w = torch.diag(kernel(z))
        d = torch.diag(torch.tensor([0.0] + [1.0] * 8, dtype=DT))
        theta = torch.linalg.solve(xd.T @ w @ xd + d, xd.T @ w @ y)
        assert float((a[i:i + 1] - spread(theta[None, 1:], MASK, x[i:i + 1])).abs().max()) < 1e-12


def test_lasso_equals_scikit_learn_on_the_same_coalitions():
    sklearn = pytest.importorskip("sklearn.linear_model")
    net, x = small_cnn(1), images(2, seed=4)
    alpha = 2e-3
    a = tribute.Lime(net, feature_mask=MASK, samples=100, seed=1, solver="lasso", alpha=alpha)
    got = a.attribute(x, target=1)
    assert a.standard_error is None
    zeros = 0
    for i, (z, y) in enumerate(coalitions_and_scores(net, x, MASK, 100, 1, 1)):
        ref = sklearn.Lasso(alpha=alpha, tol=1e-14, max_iter=1_000_000).fit(
            z.double().numpy(), y.numpy(), sample_weight=kernel(z).numpy())
        want = spread(torch.from_numpy(ref.coef_)[None], MASK, x[i:i + 1])
        assert float((got[i:i + 1] - want).abs().max()) < 1e-6
        zeros += int((ref.coef_ == 0).sum())
    assert zeros > 0  # the penalty selects: a test of the lasso, not of least squares


def test_captum_lime_fed_the_same_coalitions_agrees():
    captum = pytest.importorskip("captum.attr")
    from captum._utils.models.linear_model import SkLearnRidge

    net, x = small_cnn(2), images(2, seed=5)
    ours = tribute.Lime(net, feature_mask=MASK, samples=50, seed=7).attribute(x, target=2)
    for i, (z, _) in enumerate(coalitions_and_scores(net, x, MASK, 50, 7, 2)):
        rows = [r[None].to(torch.get_default_dtype()) for r in z]

        def perturb(*_, rows=rows, **__):
            yield from rows

        def similarity(_, __, interpretable, **___):
            return kernel(interpretable.bool()).float()

        lime = captum.Lime(net, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity,
                           perturb_func=perturb)
        theirs = lime.attribute(x[i:i + 1], target=2, feature_mask=MASK, n_samples=50).double()
        assert float((ours[i:i + 1] - theirs).abs().max()) < 1e-5 * float(ours.abs().max())


def test_standard_error_matches_the_spread_across_seeds():
    net, x = small_cnn(), images(2, seed=8)
    e = tribute.Lime(net, feature_mask=MASK, samples=300, alpha=0.0)
    runs, ses = [], []
    for seed in range(60):
        runs.append(e.attribute(x, target=0, seed=seed))
        ses.append(e.standard_error)
    spread_ = torch.stack(runs).std(0)
    mean_se = torch.stack(ses).mean(0)
    ratio = float(mean_se.mean() / spread_.mean())
    assert 0.8 < ratio < 1.25, ratio


def test_a_sample_draws_the_same_alone_in_any_batch_and_chunking():
    net, x = small_cnn(), images(4, seed=9)
    batch = tribute.Lime(net, feature_mask=MASK, samples=40, seed=4).attribute(x, target=0)
    alone = tribute.Lime(net, feature_mask=MASK, samples=40, seed=4, batch_size=7).attribute(x[3:4], target=0)
    flipped = tribute.Lime(net, feature_mask=MASK, samples=40, seed=4, batch_size=3).attribute(x.flip(0), target=0)
    torch.testing.assert_close(alone, batch[3:4], rtol=0, atol=1e-12)
    torch.testing.assert_close(flipped.flip(0), batch, rtol=0, atol=1e-12)


def test_tolerance_and_clear_errors():
    net, x = small_cnn(), images(2)
    e = tribute.Lime(net, feature_mask=MASK, samples=40, seed=0, alpha=0.0)
    e.attribute(x, target=1)
    first = float(e.standard_error.max())
    e.attribute(x, target=1, tolerance=first / 2)
    assert float(e.standard_error.max()) <= first / 2
    with pytest.raises(ValueError, match="lasso"):
        e.attribute(x, target=1, tolerance=1e-3, solver="lasso")
    with pytest.raises(ValueError, match="do not determine the surrogate"):
        e.attribute(x, target=1, samples=3)  # three rows for eight groups and an intercept
    with pytest.raises(ValueError, match="kernel_width"):
        e.attribute(x, target=1, kernel_width=0.0)
    assert math.isfinite(float(np.float64(first)))


def test_standard_error_is_calibrated_against_a_reference_run_with_very_many_samples():
    """The estimand is the surrogate over the whole coalition distribution: a run with 200 000 coalitions stands for
    it (its own standard error is 1/25 of a 300-coalition run's)."""
    model, x = CubicModel(), torch.rand(1, 8, generator=torch.Generator().manual_seed(3), dtype=DT) + 0.5
    e = tribute.Lime(model, alpha=0.0, batch_size=4096)
    reference = e.attribute(x, target=0, samples=200_000, seed=12345)
    hits = 0
    for seed in range(200):
        a = e.attribute(x, target=0, samples=300, seed=seed)
        hits += int(((a - reference).abs() <= 1.959964 * e.standard_error).sum())
    cover = hits / (8 * 200)
    assert 0.90 <= cover <= 0.99, cover


def test_noise_key_draws_another_inputs_coalitions():
    """The robustness metrics explain a perturbed input with the clean input's draws: the coalitions come from the
    key's stream, the scores from the input explained."""
    net, x = small_cnn(), images(2, seed=10)
    moved = x + 0.01
    e = tribute.Lime(net, feature_mask=MASK, samples=40, seed=3, alpha=0.5)
    torch.testing.assert_close(e.attribute(x, target=0, noise_key=x), e.attribute(x, target=0), rtol=0, atol=0)
    a = e.attribute(moved, target=0, noise_key=x)
    labels = MASK.expand_as(x).reshape(2, -1)
    for i in range(2):
        z = lime_coalitions(8, 40, SampleStreams(x, 3).generators[i])  # the clean input's stream
        rows = torch.where(z[:, labels[i]], moved[i].reshape(-1), 0.0).view(-1, *x.shape[1:])
        with torch.no_grad():
            y = net(rows)[:, 0]
        xd = torch.cat([torch.ones(40, 1, dtype=DT), z.double()], 1)
        w = torch.diag(kernel(z))
        theta = torch.linalg.solve(xd.T @ w @ xd + 0.5 * torch.diag(torch.tensor([0.0] + [1.0] * 8, dtype=DT)),
                                   xd.T @ w @ y)
        assert float((a[i:i + 1] - spread(theta[None, 1:], MASK, x[i:i + 1])).abs().max()) < 1e-12
