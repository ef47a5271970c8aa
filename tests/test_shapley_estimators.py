"""The Shapley, KernelSHAP, permutation and LIME estimators on toy games whose values are known in closed form."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tribute.attribution.perturbation.coalitions import (
    all_coalitions,
    antithetic_permutations,
    kernel_size_probabilities,
    lime_coalitions,
    paired_kernel_coalitions,
    prefix_coalitions,
    shapley_kernel_weights,
)
from tribute.attribution.perturbation.lime_regression import lasso_fit, lime_fit, lime_kernel, ridge_fit
from tribute.attribution.perturbation.precision import sample_until_precise
from tribute.attribution.perturbation.shapley_estimators import exact_shapley, kernel_shap, permutation_shapley

Z95 = 1.959963984540054


class CubicGame:
    """v(z) = Σ a_i z_i + Σ_{i<j} b_ij z_i z_j + Σ_{i<j<k} c_ijk z_i z_j z_k + v0, a game with three-way interactions.

    Its Shapley values are known by hand: each interaction term is shared equally by its members,
    φ_i = a_i + Σ_j b_ij / 2 + Σ_{j,k} c_ijk / 3.
    """

    def __init__(self, m: int, seed: int = 0, scale: tuple = (1.0, 1.0, 1.0)):
        g = torch.Generator().manual_seed(seed)
        self.m = m
        self.a = torch.randn(m, generator=g, dtype=torch.float64) * scale[0]
        b = torch.randn(m, m, generator=g, dtype=torch.float64) * scale[1]
        self.b = torch.triu(b, 1)
        c = torch.randn(m, m, m, generator=g, dtype=torch.float64) * scale[2]
        i, j, k = torch.meshgrid(*(torch.arange(m),) * 3, indexing="ij")
        self.c = c * ((i < j) & (j < k))
        self.v0 = 0.7

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        zf = z.to(torch.float64)
        return (self.v0 + zf @ self.a + torch.einsum("...i,ij,...j->...", zf, self.b, zf)
                + torch.einsum("...i,ijk,...j,...k->...", zf, self.c, zf, zf))

    def shapley(self) -> torch.Tensor:
        b = self.b + self.b.T
        c = self.c + self.c.permute(0, 2, 1) + self.c.permute(1, 0, 2) + self.c.permute(1, 2, 0) \
            + self.c.permute(2, 0, 1) + self.c.permute(2, 1, 0)
        return self.a + b.sum(1) / 2 + c.sum((1, 2)) / 6  # c summed over ordered (j, k): each triple twice

    def ends(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.m
        return (self(torch.zeros(m, dtype=torch.bool)).expand(batch),
                self(torch.ones(m, dtype=torch.bool)).expand(batch))


def linear_game(m: int, seed: int = 1):
    """v(z) = Σ w_i z_i (x_i − b_i) + c: the Shapley values are w ⊙ (x − b)."""
    g = torch.Generator().manual_seed(seed)
    w, x, b = (torch.randn(m, generator=g, dtype=torch.float64) for _ in range(3))
    return (lambda z: 0.3 + z.to(torch.float64) @ (w * (x - b))), w * (x - b)


def _kernel_shap_exact(v, m, batch=1):
    z = all_coalitions(m)[1:-1].expand(batch, -1, -1)
    v0 = v(torch.zeros(m, dtype=torch.bool)).expand(batch)
    v1 = v(torch.ones(m, dtype=torch.bool)).expand(batch)
    return kernel_shap(z, v(z), v0, v1, exact=True)


def _kernel_shap_sampled(v, m, pairs, seeds):
    z = torch.stack([paired_kernel_coalitions(m, pairs, torch.Generator().manual_seed(s)) for s in seeds])
    v0, v1 = v(torch.zeros(m, dtype=torch.bool)).expand(len(seeds)), v(torch.ones(m, dtype=torch.bool)).expand(
        len(seeds))
    return kernel_shap(z, v(z), v0, v1, exact=False)


def _permutation(v, m, pairs, seeds):
    perms = torch.stack([antithetic_permutations(m, pairs, torch.Generator().manual_seed(s)) for s in seeds])
    prefixes = prefix_coalitions(perms.reshape(-1, m)).reshape(len(seeds), 2 * pairs, m - 1, m)
    v0, v1 = v(torch.zeros(m, dtype=torch.bool)).expand(len(seeds)), v(torch.ones(m, dtype=torch.bool)).expand(
        len(seeds))
    return permutation_shapley(perms, v(prefixes), v0, v1)


# -- coalitions ---------------------------------------------------------------------------------------------------

def test_shapley_kernel_by_hand_and_size_distribution():
    z = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    # (M − 1) / (C(M, s) s (M − s)) for M = 4: s = 1 → 3 / (4·3), s = 2 → 3 / (6·4), s = 3 → 3 / (4·3)
    torch.testing.assert_close(shapley_kernel_weights(z), torch.tensor([0.25, 0.125, 0.25], dtype=torch.float64))
    for m in (2, 5, 9):
        z = all_coalitions(m)[1:-1]
        w, s = shapley_kernel_weights(z), z.sum(1)
        by_size = torch.stack([w[s == k].sum() for k in range(1, m)])
        torch.testing.assert_close(kernel_size_probabilities(m), by_size / by_size.sum())


def test_all_coalitions_are_the_bits_of_their_index():
    z = all_coalitions(3)
    assert z.shape == (8, 3)
    assert z[5].tolist() == [True, False, True] and z[6].tolist() == [False, True, True]


def test_paired_coalitions_are_complements_with_the_kernel_sizes():
    z = paired_kernel_coalitions(6, 20000, torch.Generator().manual_seed(0))
    assert bool((z[0::2] == ~z[1::2]).all())
    sizes = z[0::2].sum(1)
    freq = torch.bincount(sizes, minlength=6)[1:].double() / len(sizes)
    torch.testing.assert_close(freq, kernel_size_probabilities(6), atol=0.01, rtol=0)
    # given its size, a subset is uniform: each player is in a size-1 coalition equally often
    ones = z[0::2][sizes == 1].double().mean(0)
    torch.testing.assert_close(ones, torch.full((6,), 1 / 6, dtype=torch.float64), atol=0.02, rtol=0)


def test_draws_come_from_the_given_generator_only():
    torch.manual_seed(0)
    a = paired_kernel_coalitions(7, 5, torch.Generator().manual_seed(3))
    torch.manual_seed(1)  # the global stream does not matter
    b = paired_kernel_coalitions(7, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, paired_kernel_coalitions(7, 5, torch.Generator().manual_seed(4)))


def test_permutations_prefixes_by_hand():
    perms = torch.tensor([[2, 0, 1]])
    assert prefix_coalitions(perms).tolist() == [[[False, False, True], [True, False, True]]]
    p = antithetic_permutations(5, 4, torch.Generator().manual_seed(0))
    assert torch.equal(p[1::2], p[0::2].flip(1))
    assert bool((p.sort(1).values == torch.arange(5)).all())


def test_lime_coalitions_keep_the_instance_first():
    z = lime_coalitions(8, 4000, torch.Generator().manual_seed(0))
    assert bool(z[0].all())
    torch.testing.assert_close(z[1:].double().mean(0), torch.full((8,), 0.5, dtype=torch.float64), atol=0.03, rtol=0)


# -- exactness -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [2, 3, 6, 10])
def test_exact_enumeration_matches_the_hand_formula(m):
    game = CubicGame(m, seed=m)
    phi = exact_shapley(game(all_coalitions(m))[None])
    torch.testing.assert_close(phi[0], game.shapley(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("m", [2, 3, 7, 10])
def test_exact_kernel_shap_equals_enumeration(m):
    game = CubicGame(m, seed=10 + m)
    phi, se = _kernel_shap_exact(game, m)
    exact = exact_shapley(game(all_coalitions(m))[None])
    assert (phi - exact).abs().max() < 1e-10
    assert bool((se == 0).all())


@pytest.mark.parametrize("m", [3, 5])
def test_all_permutations_give_the_exact_values(m):
    game = CubicGame(m, seed=20 + m)
    firsts = [p for p in itertools.permutations(range(m)) if p[0] < p[-1]]  # one of each (ordering, reverse) pair
    perms = torch.tensor([[list(p), list(reversed(p))] for p in firsts]).reshape(1, -1, m)
    assert perms.shape[1] == math.factorial(m)
    prefixes = prefix_coalitions(perms[0])[None]
    v0, v1 = game.ends(1)
    phi, _ = permutation_shapley(perms, game(prefixes), v0, v1)
    assert (phi[0] - game.shapley()).abs().max() < 1e-12


def test_efficiency_holds_for_every_sample():
    m = 9
    game = CubicGame(m, seed=3)
    gap = float(game(torch.ones(m, dtype=torch.bool)) - game(torch.zeros(m, dtype=torch.bool)))
    for phi, _ in (_kernel_shap_sampled(game, m, 24, range(5)), _permutation(game, m, 2, range(5))):
        torch.testing.assert_close(phi.sum(1), torch.full((5,), gap, dtype=torch.float64), atol=1e-11, rtol=0)


def test_linear_game_is_exact_for_every_estimator():
    m = 8
    v, truth = linear_game(m)
    estimates = (_kernel_shap_exact(v, m), _kernel_shap_sampled(v, m, 10, range(3)), _permutation(v, m, 2, range(3)))
    for phi, se in estimates:
        assert (phi - truth).abs().max() < 1e-12
        assert float(se.max()) < 1e-10  # nothing varies across draws
    z = torch.stack([lime_coalitions(m, 64, torch.Generator().manual_seed(s)) for s in range(3)])
    coef, intercept, se = lime_fit(z, v(z), kernel_width=0.25, alpha=0.0)
    assert (coef - truth).abs().max() < 1e-10 and (intercept - 0.3).abs().max() < 1e-10
    assert float(se.max()) < 1e-8


def test_sampled_kernel_shap_with_too_few_pairs_is_a_clear_error():
    game = CubicGame(10)
    with pytest.raises(ValueError, match="do not determine the 10 players"):
        _kernel_shap_sampled(game, 10, 2, [0])


# -- calibration: 95 % intervals over 200 seeds ----------------------------------------------------------------------

def _coverage(phi, se, truth):
    return float(((phi - truth).abs() <= Z95 * se).double().mean())


@pytest.mark.parametrize("estimate,m,draws,seed", [(_kernel_shap_sampled, 10, 128, 5), (_permutation, 8, 20, 6)],
                         ids=["kernel_shap", "permutations"])
def test_standard_error_is_calibrated(estimate, m, draws, seed):
    game = CubicGame(m, seed=seed)
    phi, se = estimate(game, m, draws, range(200))
    assert float(se.min()) > 0
    cover = _coverage(phi, se, game.shapley())
    assert 0.90 <= cover <= 0.99, cover


def test_lime_standard_error_is_calibrated():
    """The estimand is the surrogate over the whole coalition distribution: every coalition is equally likely,
    so it is the kernel-weighted least-squares fit on all 2^M coalitions."""
    m = 8
    game = CubicGame(m, seed=7)
    everything = all_coalitions(m)[None]
    estimand, _ = ridge_fit(everything, game(everything), lime_kernel(everything, 0.25), 0.0)
    z = torch.stack([lime_coalitions(m, 300, torch.Generator().manual_seed(s)) for s in range(200)])
    coef, _, se = lime_fit(z, game(z), kernel_width=0.25, alpha=0.0)
    cover = _coverage(coef, se, estimand)
    assert 0.90 <= cover <= 0.99, cover


# -- LIME's regression ----------------------------------------------------------------------------------------------

def test_lime_kernel_by_hand():
    z = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    # d = 1 − sqrt(|z| / M): 1/2, 0 and 1; w = exp(−d² / (2 σ²)) with σ = 0.25
    want = torch.tensor([math.exp(-2), 1.0, math.exp(-8)], dtype=torch.float64)
    torch.testing.assert_close(lime_kernel(z, 0.25), want)
    with pytest.raises(ValueError, match="kernel_width"):
        lime_kernel(z, 0.0)


def test_ridge_equals_the_closed_form_and_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    m, alpha = 6, 1.5
    game = CubicGame(m, seed=8)
    z = lime_coalitions(m, 50, torch.Generator().manual_seed(0))[None]
    y, w = game(z), lime_kernel(z, 0.25)
    coef, intercept = ridge_fit(z, y, w, alpha)
    x = np.concatenate([np.ones((50, 1)), z[0].double().numpy()], 1)
    d = np.diag([0.0] + [1.0] * m)
    wm = np.diag(w[0].numpy())
    theta = np.linalg.solve(x.T @ wm @ x + alpha * d, x.T @ wm @ y[0].numpy())
    np.testing.assert_allclose(coef[0].numpy(), theta[1:], atol=1e-12)
    np.testing.assert_allclose(float(intercept[0]), theta[0], atol=1e-12)
    ref = sklearn.Ridge(alpha=alpha).fit(z[0].double().numpy(), y[0].numpy(), sample_weight=w[0].numpy())
    np.testing.assert_allclose(coef[0].numpy(), ref.coef_, atol=1e-10)
    np.testing.assert_allclose(float(intercept[0]), ref.intercept_, atol=1e-10)


@pytest.mark.parametrize("alpha", [0.001, 0.02])
def test_lasso_equals_scikit_learn(alpha):
    sklearn = pytest.importorskip("sklearn.linear_model")
    m = 7
    game = CubicGame(m, seed=9)
    z = torch.stack([lime_coalitions(m, 80, torch.Generator().manual_seed(s)) for s in range(2)])
    y, w = game(z), lime_kernel(z, 0.25)
    coef, intercept = lasso_fit(z, y, w, alpha)
    for b in range(2):
        ref = sklearn.Lasso(alpha=alpha, tol=1e-14, max_iter=1_000_000).fit(
            z[b].double().numpy(), y[b].numpy(), sample_weight=w[b].numpy())
        np.testing.assert_allclose(coef[b].numpy(), ref.coef_, atol=1e-6)
        np.testing.assert_allclose(float(intercept[b]), ref.intercept_, atol=1e-6)
    assert bool((coef == 0).any()) or alpha < 0.01  # the larger penalty selects


def test_lime_without_enough_rows_is_a_clear_error():
    z = torch.ones(1, 5, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="do not determine the surrogate"):
        lime_fit(z, torch.zeros(1, 5, dtype=torch.float64), kernel_width=0.25, alpha=0.0)
    with pytest.raises(ValueError, match="no standard error"):
        lime_fit(z, torch.zeros(1, 5, dtype=torch.float64), kernel_width=0.25, alpha=1.0, solver="lasso")


# -- the tolerance loop ----------------------------------------------------------------------------------------------

def test_sampling_stops_at_the_first_round_within_tolerance():
    drawn = torch.zeros(3)
    noise = torch.tensor([1.0, 2.0, 4.0])  # se = noise / sqrt(n)

    def draw(active, k):
        drawn[active] += k

    taken = sample_until_precise(3, draw, lambda a: (noise[a] / drawn[a].sqrt())[:, None], start=4, step=4,
                                 tolerance=0.5, max_samples=100, method="toy")
    # se ≤ 0.5 needs n ≥ 4, 16, 64 draws
    assert taken.tolist() == [4, 16, 64] and drawn.tolist() == [4, 16, 64]
    with pytest.raises(RuntimeError, match=r"did not reach tolerance=0.5 within max_samples=32 for samples \[2\]"):
        drawn.zero_()
        sample_until_precise(3, draw, lambda a: (noise[a] / drawn[a].sqrt())[:, None], start=4, step=4,
                             tolerance=0.5, max_samples=32, method="toy")


def test_permutation_sampling_until_precise_reaches_the_tolerance():
    m = 6
    game = CubicGame(m, seed=11)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    kept = [[] for _ in gens]

    def draw(active, k):
        for i in active.tolist():
            kept[i].append(antithetic_permutations(m, k, gens[i]))

    def estimate(active):
        perms = torch.stack([torch.cat(kept[i]) for i in active.tolist()])
        prefixes = prefix_coalitions(perms.reshape(-1, m)).reshape(*perms.shape[:2], m - 1, m)
        v0, v1 = game.ends(len(active))
        return permutation_shapley(perms, game(prefixes), v0, v1)

    sample_until_precise(4, draw, lambda a: estimate(a)[1], start=4, step=4, tolerance=0.05, max_samples=10_000,
                         method="shapley_sampling")
    for i in range(4):  # each sample took its own number of draws
        phi, se = estimate(torch.tensor([i]))
        assert float(se.max()) <= 0.05
        assert float((phi - game.shapley()).abs().max()) <= 4 * 0.05
    assert len({sum(len(p) for p in kept[i]) for i in range(4)}) > 1
