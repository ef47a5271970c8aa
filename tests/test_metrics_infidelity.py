"""Infidelity (Yeh et al. 2019): analytic zeros on linear models, hand-worked values, Captum on the same draws.

INFD = E_I[(Iᵀφ − (f(x) − f(x − I)))²], optionally with φ scaled by β* = E[Iᵀφ Δf] / E[(Iᵀφ)²].  The
``"gradient"`` convention reads Iᵀφ as Σ I_i φ_i, the ``"salience"`` convention as Σ φ_i I_i / (x_i − x̄_i).
Captum's ``infidelity`` is called with a perturbation function that returns tribute's own draws, so both
average over identical perturbations (Captum is a reference here, never copied).
"""

from __future__ import annotations

import pytest
import torch
from conftest import residual_cnns
from torch import nn

import tribute
from tribute.metrics.infidelity import PERTURBATIONS, draw_perturbations, infidelity

DT = torch.float64
captum_metrics = pytest.importorskip("captum.metrics")


def linear_cnn(seed: int = 0) -> nn.Module:
    """A linear model on images: conv → flatten → linear, no nonlinearity (f(x) = wᵀx + b)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).to(DT).eval()


def positive_images(n: int = 4, seed: int = 1) -> torch.Tensor:
    """Images in [0.1, 1): no feature equals the zero baseline (the salience fractions I/x exist)."""
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.9 * torch.rand(n, 3, 8, 8, generator=g, dtype=DT)


class Product(nn.Module):
    """Two classes on two features: f_0(x) = x_1 x_2 and f_1(x) = 0."""

    def forward(self, x):
        return torch.stack([x[:, 0] * x[:, 1], torch.zeros_like(x[:, 0])], 1)


def scale_free(value: torch.Tensor, scale: torch.Tensor) -> float:
    return float((value / scale).abs().max())


# ---------------------------------------------------------------------------------------------------
# Linear models: exact zeros


@pytest.mark.parametrize("perturbation", sorted(PERTURBATIONS))
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_model_gradient_has_zero_infidelity(perturbation, normalize):
    model, x = linear_cnn(), positive_images()
    grad = tribute.explain(model, x, "gradient", target=2)
    got = infidelity(model, x, grad, 2, perturbation=perturbation, samples=16, normalize=normalize)
    # Δf = wᵀI exactly in real arithmetic; float64 rounding of Δf (|f| ~ 1) leaves ≤ 1e-28 squared
    assert got.shape == (4,) and got.dtype == DT
    assert float(got.max()) < 1e-26
    # the same attribution is *not* faithful when read as salience: the convention matters
    gxi = tribute.explain(model, x, "input_x_gradient", target=2)
    assert float(infidelity(model, x, gxi, 2, perturbation=perturbation, samples=16, normalize=normalize).min()) > 1e-8


@pytest.mark.parametrize("perturbation", sorted(PERTURBATIONS))
def test_linear_model_salience_methods_have_zero_infidelity(perturbation):
    """Gradient × input (x̄ = 0) and IG (x̄ = its baseline) read as salience: Σ_i w_i (x_i − x̄_i) I_i/(x_i − x̄_i)."""
    model, x = linear_cnn(), positive_images()
    gxi = tribute.explain(model, x, "input_x_gradient", target=1)
    assert float(infidelity(model, x, gxi, 1, perturbation=perturbation, samples=16, convention="salience",
                            normalize=False).max()) < 1e-26
    base = torch.full_like(x, 0.05)
    ig = tribute.explain(model, x, "integrated_gradients", target=1, baseline=base, steps=4)
    assert float(infidelity(model, x, ig, 1, perturbation=perturbation, samples=16, convention="salience",
                            baseline=base, normalize=False).max()) < 1e-26
    # maps: Σ_c of gradient × input per pixel; removals move all channels of a pixel by the same fraction
    if perturbation in ("square", "subset"):
        summed = gxi.sum(1, keepdim=True)
        assert float(infidelity(model, x, summed, 1, perturbation=perturbation, samples=16, convention="salience",
                                normalize=False).max()) < 1e-26


def test_linear_model_zero_infidelity_for_a_user_perturbation():
    model, x = linear_cnn(), positive_images()
    grad = tribute.explain(model, x, "gradient", target=0)

    def brighten(rows):  # a deterministic perturbation: the rows scaled by 0.7 and shifted
        pert = 0.3 * rows - 0.1
        return pert, rows - pert

    assert float(infidelity(model, x, grad, 0, perturbation=brighten, samples=3).max()) < 1e-26
    gxi = tribute.explain(model, x, "input_x_gradient", target=0)
    assert float(infidelity(model, x, gxi, 0, perturbation=brighten, samples=3, convention="salience").max()) < 1e-26


# ---------------------------------------------------------------------------------------------------
# Values worked by hand


def test_hand_worked_values():
    """f = x₁x₂; draws I¹ = (1, 0), I² = (0, 1); φ = (1, 1).

    x = (1, 2): Δf = (2 − 0, 2 − 1) = (2, 1).  Gradient reading a = (1, 1): mean((a − Δf)²) = 0.5;
    β* = 3/2, mean((βa − Δf)²) = 0.25.  Salience reading (x̄ = 0): a = (1/1, 1/2): 0.625; β* = 2.5/1.25 = 2, 0.
    x = (3, −1): Δf = (−3 + 2, −3 + 6) = (−1, 3).  Gradient: a = (1, 1): 4; β* = 1: 4.  Salience:
    a = (1/3, −1): ((4/3)² + 16)/2 = 80/9; β* = (−10/3)/(10/9) = −3, βa = (−1, 3) = Δf: 0.
    """
    model = Product()
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=DT)
    phi = torch.ones_like(x)
    draws = torch.eye(2, dtype=DT).expand(2, 2, 2)  # (N, samples, features)
    expected = {
        ("gradient", False): [0.5, 4.0], ("gradient", True): [0.25, 4.0],
        ("salience", False): [0.625, 80 / 9], ("salience", True): [0.0, 0.0],
    }
    for (convention, normalize), values in expected.items():
        got = infidelity(model, x, phi, 0, perturbation=draws, convention=convention, normalize=normalize)
        torch.testing.assert_close(got, torch.tensor(values, dtype=DT), rtol=1e-14, atol=1e-14)


def test_difference_to_baseline_is_the_squared_completeness_gap():
    """σ = 0: I = x − x̄ (Yeh's deterministic 'difference to baseline'); read as salience, Iᵀφ = Σφ, so
    unnormalised INFD = (Σφ − (f(x) − f(x̄)))², the completeness gap squared."""
    model, x = residual_cnns()["modules"], positive_images(3)
    grad_x_input = tribute.explain(model, x, "input_x_gradient", target=4)
    with torch.no_grad():
        gap = grad_x_input.flatten(1).sum(1) - (model(x)[:, 4] - model(torch.zeros_like(x))[:, 4])
    got = infidelity(model, x, grad_x_input, 4, perturbation="noisy_baseline", perturbation_options={"sigma": 0.0},
                     samples=1, convention="salience", normalize=False)
    torch.testing.assert_close(got, gap**2, rtol=1e-12, atol=0)
    assert float(gap.abs().min()) > 1e-3  # a real gap: gradient × input is not complete on this ReLU network
    # integrated gradients is complete up to its quadrature error on the ReLU kinks: a far smaller infidelity
    ig = tribute.explain(model, x, "integrated_gradients", target=4, steps=64)
    with torch.no_grad():
        ig_gap = ig.flatten(1).sum(1) - (model(x)[:, 4] - model(torch.zeros_like(x))[:, 4])
    ig_infd = infidelity(model, x, ig, 4, perturbation="noisy_baseline", perturbation_options={"sigma": 0.0},
                         samples=1, convention="salience", normalize=False)
    torch.testing.assert_close(ig_infd, ig_gap**2, rtol=1e-9, atol=0)
    assert bool((ig_infd < 1e-3 * got).all())


# ---------------------------------------------------------------------------------------------------
# Captum on the same perturbations


def captum_perturbation(draws: torch.Tensor):
    """Captum's perturb_func contract, (I, x − I) for the inputs repeated sample-major, from tribute's draws."""
    flat = draws.reshape(-1, *draws.shape[2:])

    def perturb(inputs):
        assert inputs.shape == flat.shape
        return flat, inputs - flat
    return perturb


@pytest.mark.parametrize("perturbation", ["noisy_baseline", "gaussian", "square", "subset"])
@pytest.mark.parametrize("normalize", [True, False])
def test_agrees_with_captum_gradient_convention(perturbation, normalize):
    model, x = residual_cnns()["modules"], positive_images(4)
    target = torch.tensor([0, 3, 1, 4])
    phi = tribute.explain(model, x, "integrated_gradients", target=target, steps=8)
    draws = draw_perturbations(x, perturbation, 12, seed=3)
    ours = infidelity(model, x, phi, target, perturbation=perturbation, samples=12, seed=3, normalize=normalize)
    theirs = captum_metrics.infidelity(model, captum_perturbation(draws), x, phi, target=target,
                                       n_perturb_samples=12, normalize=normalize)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)
    # the tensor path gives the same as drawing inside
    again = infidelity(model, x, phi, target, perturbation=draws, normalize=normalize)
    torch.testing.assert_close(again, ours, rtol=1e-13, atol=0)


@pytest.mark.parametrize("perturbation", ["square", "subset", "noisy_baseline"])
@pytest.mark.parametrize("normalize", [True, False])
def test_agrees_with_captum_salience_convention(perturbation, normalize):
    """convention='salience' is Captum's infidelity_perturb_func_decorator(multiply_by_inputs=True)."""
    model, x = residual_cnns()["modules"], positive_images(4)
    base = torch.full_like(x, 0.05)  # below every pixel: x − x̄ ≠ 0 everywhere
    target = torch.tensor([2, 2, 0, 1])
    phi = tribute.explain(model, x, "integrated_gradients", target=target, baseline=base, steps=8)
    draws = draw_perturbations(x, perturbation, 10, baseline=base, seed=5)
    flat = draws.reshape(-1, *x.shape[1:])

    @captum_metrics.infidelity_perturb_func_decorator(True)
    def perturbed_inputs(inputs, baselines):
        return inputs - flat

    ours = infidelity(model, x, phi, target, perturbation=perturbation, samples=10, seed=5, baseline=base,
                      convention="salience", normalize=normalize)
    theirs = captum_metrics.infidelity(model, perturbed_inputs, x, phi, baselines=base, target=target,
                                       n_perturb_samples=10, normalize=normalize)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=0)


# ---------------------------------------------------------------------------------------------------
# Per-sample draws: batch independence, the distributions


@pytest.mark.parametrize("perturbation", sorted(PERTURBATIONS))
def test_batch_independence(perturbation):
    model, x = residual_cnns()["modules"], positive_images(5)
    phi = tribute.explain(model, x, "gradient", target=3)
    full = infidelity(model, x, phi, 3, perturbation=perturbation, samples=7)
    for batch_size in (1, 4, 13, 100):
        torch.testing.assert_close(infidelity(model, x, phi, 3, perturbation=perturbation, samples=7,
                                              batch_size=batch_size), full, rtol=1e-10, atol=1e-14)
    order = torch.tensor([4, 2, 0, 3, 1])
    torch.testing.assert_close(infidelity(model, x[order], phi[order], 3, perturbation=perturbation, samples=7),
                               full[order], rtol=1e-10, atol=1e-14)
    alone = infidelity(model, x[2:3], phi[2:3], 3, perturbation=perturbation, samples=7)
    torch.testing.assert_close(alone, full[2:3], rtol=1e-10, atol=1e-14)
    assert not torch.equal(infidelity(model, x, phi, 3, perturbation=perturbation, samples=7, seed=1), full)


def test_square_removal_is_uniform_over_all_squares():
    """Yeh et al. enumerate every square of every side: (side, position) is uniform over the squares that fit."""
    from scipy.stats import chi2

    x = positive_images(1)[:, :, :6, :5]  # H = 6, W = 5: 30 + 20 + 12 = 62 squares of sides 1..3
    draws = draw_perturbations(x, "square", 3100, perturbation_options={"min_side": 1, "max_side": 3})
    removed = draws[0] != 0  # (samples, C, H, W); x > 0 so every removed feature has I ≠ 0
    assert torch.equal(removed.all(1), removed.any(1))  # all channels of a pixel go together
    counts: dict[tuple[int, int, int], int] = {}
    for m in removed[:, 0]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        side = len(rows)
        assert len(cols) == side and int(m.sum()) == side * side  # a full square
        assert torch.equal(rows, torch.arange(rows[0], rows[0] + side))
        key = (side, int(rows[0]), int(cols[0]))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 62
    observed = torch.tensor(list(counts.values()), dtype=DT)
    statistic = float(((observed - 3100 / 62) ** 2 / (3100 / 62)).sum())
    assert statistic < chi2.ppf(0.999, 61)


def test_subset_and_noise_draws():
    x = positive_images(2)
    subset = draw_perturbations(x, "subset", 400, perturbation_options={"p": 0.3}) != 0
    assert torch.equal(subset.all(2), subset.any(2))  # per pixel, all channels
    assert abs(float(subset.double().mean()) - 0.3) < 0.01
    noise = draw_perturbations(x, "gaussian", 200, perturbation_options={"sigma": 0.5})
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 0.5) < 0.01
    noisy = draw_perturbations(x, "noisy_baseline", 200, baseline=0.2)  # x − I = x̄ + ε, σ = 0.2
    eps = x[:, None] - noisy - 0.2
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.std()) - 0.2) < 0.005


def test_model_is_left_as_it_was():
    model, x = residual_cnns()["modules"], positive_images(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    infidelity(model, x, torch.ones_like(x), 0, perturbation="square", samples=3)
    assert not model.training and flags == [p.requires_grad for p in model.parameters()]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_clear_errors():
    model, x = linear_cnn(), positive_images(2)
    phi = torch.ones_like(x)
    with pytest.raises(ValueError, match="attributions have shape"):
        infidelity(model, x, phi[:, :, :4], 0)
    with pytest.raises(ValueError, match="attributions have shape"):
        infidelity(model, x, phi[:1], 0)
    nan = phi.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        infidelity(model, x, nan, 0)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        infidelity(model, x, phi, 0, samples=0)
    with pytest.raises(ValueError, match="perturbation must be one of"):
        infidelity(model, x, phi, 0, perturbation="blur")
    with pytest.raises(ValueError, match="takes options sigma; got p"):
        infidelity(model, x, phi, 0, perturbation="gaussian", perturbation_options={"p": 0.5})
    with pytest.raises(ValueError, match="sigma must be > 0"):
        infidelity(model, x, phi, 0, perturbation="gaussian", perturbation_options={"sigma": 0.0})
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        infidelity(model, x, phi, 0, perturbation="noisy_baseline", perturbation_options={"sigma": -1.0})
    for p in (0.0, 1.5):
        with pytest.raises(ValueError, match="p must be > 0 and <= 1"):
            infidelity(model, x, phi, 0, perturbation="subset", perturbation_options={"p": p})
    with pytest.raises(ValueError, match=r"max_side must be an integer in \[1, 8\]"):
        infidelity(model, x, phi, 0, perturbation="square", perturbation_options={"max_side": 9})
    with pytest.raises(ValueError, match="convention must be one of"):
        infidelity(model, x, phi, 0, convention="input")
    with pytest.raises(TypeError, match="normalize must be True or False"):
        infidelity(model, x, phi, 0, normalize=1)
    with pytest.raises(IndexError, match="out of range"):
        infidelity(model, x, phi, 7)
    flat_model, flat = nn.Linear(6, 2).to(DT).eval(), torch.rand(3, 6, dtype=DT)
    with pytest.raises(ValueError, match="square removal needs inputs with two spatial dims"):
        infidelity(flat_model, flat, torch.ones_like(flat), 0, perturbation="square")


def test_salience_convention_refuses_to_move_features_at_the_baseline():
    model, x = linear_cnn(), positive_images(2)
    x[1, 0, 3, 3] = 0.0  # equal to the zero baseline: no fraction I / (x − x̄) exists there
    phi = torch.ones_like(x)
    with pytest.raises(ValueError, match=r"convention='salience'.*equal the baseline \(sample 1\)"):
        infidelity(model, x, phi, 0, perturbation="gaussian", convention="salience", samples=2)
    # removals leave such features where they are, so they are fine
    assert torch.isfinite(infidelity(model, x, phi, 0, perturbation="square", convention="salience", samples=2)).all()


def test_bad_perturbation_callables_and_tensors():
    model, x = linear_cnn(), positive_images(2)
    phi = torch.ones_like(x)
    with pytest.raises(TypeError, match="pair of tensors"):
        infidelity(model, x, phi, 0, perturbation=lambda rows: rows, samples=2)
    with pytest.raises(ValueError, match="the perturbed input is x - I"):
        infidelity(model, x, phi, 0, perturbation=lambda rows: (0.1 * rows, 1.1 * rows), samples=2)
    with pytest.raises(ValueError, match="shape"):
        infidelity(model, x, phi, 0, perturbation=lambda rows: (rows[:1], rows[:1]), samples=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        infidelity(model, x, phi, 0, perturbation=lambda rows: (rows * float("nan"), rows), samples=2)
    with pytest.raises(ValueError, match=r"shape \(N, samples, \*input shape\)"):
        infidelity(model, x, phi, 0, perturbation=torch.zeros(2, 3, 3, 8))
    with pytest.raises(ValueError, match="holds 3 per input"):
        infidelity(model, x, phi, 0, perturbation=torch.zeros(2, 3, 3, 8, 8, dtype=DT), samples=4)
    with pytest.raises(ValueError, match="perturbation_options apply to the built-in"):
        infidelity(model, x, phi, 0, perturbation=torch.zeros(2, 3, 3, 8, 8, dtype=DT),
                   perturbation_options={"sigma": 1.0})
