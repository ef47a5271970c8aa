"""Quadrature rules on [0, 1] (tribute.core.quadrature) against closed forms, in float64.

For f(x) = Σ_i x_i² and the zero baseline the path gradient is ∂f(αx)/∂x_i = 2α x_i, so
IG_i = x_i · Σ_k w_k 2α_k x_i = c · x_i² with c = 2 Σ_k w_k α_k, the rule applied to ∫_0^1 2α dα = 1:
- riemann_middle:    (2/n) Σ_k (k + ½)/n = 1 exactly;
- riemann_trapezoid: exact for integrands linear in α, c = 1;
- gauss_legendre:    exact to degree 2n − 1, c = 1;
- riemann_left:      (2/n) Σ_k k/n       = (n − 1)/n = 1 − 1/n;
- riemann_right:     (2/n) Σ_k (k + 1)/n = (n + 1)/n = 1 + 1/n.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import tribute
from tribute.core.quadrature import RULES, quadrature

DT = torch.float64
STEPS = [2, 3, 5, 8, 16, 64]


class SeparablePower(nn.Module):
    """f(x) = Σ_i x_i^p: one output, so target 0 is the score."""

    def __init__(self, p: int):
        super().__init__()
        self.p = p

    def forward(self, x):
        return (x.flatten(1) ** self.p).sum(1, keepdim=True)


def _x(shape=(4, 7), seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * (2 * torch.rand(*shape, generator=g, dtype=DT) - 1)


def linear_factor(rule: str, n: int) -> float:
    return {"riemann_left": 1 - 1 / n, "riemann_right": 1 + 1 / n}.get(rule, 1.0)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("rule", RULES)
def test_nodes_and_weights(rule, steps):
    alphas, weights = quadrature(rule, steps)
    assert alphas.dtype == weights.dtype == torch.float64
    assert alphas.shape == weights.shape == (steps,)
    assert bool((alphas >= 0).all() and (alphas <= 1).all())
    assert bool((weights > 0).all())
    # the weights sum to 1 to float64 rounding: a constant integrand is integrated exactly
    assert abs(math.fsum(weights.tolist()) - 1) <= 4 * 2**-52
    # and Σ w_k α_k is the closed-form factor c / 2 of the module docstring
    assert math.fsum((weights * alphas).tolist()) == pytest.approx(linear_factor(rule, steps) / 2, abs=1e-15)


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_nodes_are_the_textbook_ones(steps):
    n = steps
    k = torch.arange(n, dtype=DT)
    expected = {"riemann_left": k / n, "riemann_right": (k + 1) / n, "riemann_middle": (k + 0.5) / n}
    for rule, nodes in expected.items():
        alphas, weights = quadrature(rule, n)
        torch.testing.assert_close(alphas, nodes, rtol=0, atol=1e-16)
        torch.testing.assert_close(weights, torch.full((n,), 1 / n, dtype=DT), rtol=0, atol=1e-16)
    if n >= 2:
        alphas, weights = quadrature("riemann_trapezoid", n)
        w = torch.full((n,), 1 / (n - 1), dtype=DT)
        w[[0, -1]] /= 2
        torch.testing.assert_close(alphas, k / (n - 1), rtol=0, atol=1e-16)
        torch.testing.assert_close(weights, w, rtol=0, atol=1e-16)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_of_sum_of_squares(rule, steps):
    """IG of Σx² from the zero baseline is x² for middle/trapezoid/Gauss–Legendre, (1 ∓ 1/n)·x² for left/right."""
    x = _x(scale=2.0)
    ig = tribute.IntegratedGradients(SeparablePower(2)).attribute(x, 0, steps=steps, quadrature=rule, baseline="zero")
    expected = linear_factor(rule, steps) * x**2
    torch.testing.assert_close(ig, expected, rtol=1e-13, atol=1e-15)
    # completeness holds exactly for the exact rules and misses by ∓(1/n)·f(x) for left/right
    f = (x**2).sum(1)
    torch.testing.assert_close(ig.sum(1), linear_factor(rule, steps) * f, rtol=1e-13, atol=0)


def test_left_and_right_rules_are_really_inexact():
    """The left/right factors are not rounding: at n = 4 they are 3/4 and 5/4."""
    x = _x()
    model = SeparablePower(2)
    for rule, factor in (("riemann_left", 0.75), ("riemann_right", 1.25)):
        ig = tribute.IntegratedGradients(model).attribute(x, 0, steps=4, quadrature=rule)
        torch.testing.assert_close(ig, factor * x**2, rtol=1e-14, atol=0)


def test_trapezoid_refuses_fewer_than_two_steps():
    with pytest.raises(ValueError, match="steps >= 2"):
        quadrature("riemann_trapezoid", 1)
    with pytest.raises(ValueError, match="steps >= 2"):
        tribute.IntegratedGradients(SeparablePower(2)).attribute(_x(), 0, steps=1, quadrature="riemann_trapezoid")
    for rule in RULES:
        with pytest.raises(ValueError):
            quadrature(rule, 0)
    with pytest.raises(ValueError):
        quadrature("simpson", 4)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6])
def test_gauss_legendre_exact_to_degree_2n_minus_1(steps):
    """With n nodes, Gauss–Legendre integrates every polynomial of degree ≤ 2n − 1 exactly."""
    n = steps
    alphas, weights = quadrature("gauss_legendre", n)
    rng = np.random.default_rng(n)
    coeffs = rng.standard_normal(2 * n)  # degree 2n − 1
    exact = sum(c / (j + 1) for j, c in enumerate(coeffs))
    approx = float((weights * torch.from_numpy(np.polynomial.polynomial.polyval(alphas.numpy(), coeffs))).sum())
    assert approx == pytest.approx(exact, rel=1e-13, abs=1e-14)
    # degree 2n is not integrated exactly: Q(α^(2n)) − ∫α^(2n) = −(n!)^4 / ((2n + 1) ((2n)!)^2)
    # (the Gauss–Legendre remainder (n!)^4 f^(2n)(ξ) / ((2n + 1) ((2n)!)^3) on [0, 1], with f^(2n) = (2n)!)
    err = float((weights * alphas ** (2 * n)).sum()) - 1 / (2 * n + 1)
    expected_err = -math.factorial(n) ** 4 / ((2 * n + 1) * math.factorial(2 * n) ** 2)
    assert err == pytest.approx(expected_err, rel=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_gauss_legendre_integrated_gradients_exact_on_polynomial_path(steps):
    """f(x) = Σ x_i^(2n) is separable, so IG_i = x_i^(2n) − x̄_i^(2n) for any baseline (fundamental theorem
    of calculus on each coordinate).  The path integrand 2n (x̄_i + α(x_i − x̄_i))^(2n−1) has degree 2n − 1
    in α, which n Gauss–Legendre nodes integrate exactly; the midpoint rule does not."""
    n = steps
    p = 2 * n
    x, baseline = _x(seed=1, scale=1.3), _x(seed=2, scale=0.7)
    model = SeparablePower(p)
    expected = x**p - baseline**p
    ig = tribute.IntegratedGradients(model).attribute(x, 0, steps=n, quadrature="gauss_legendre", baseline=baseline)
    torch.testing.assert_close(ig, expected, rtol=1e-12, atol=1e-14)
    if p >= 4:  # the midpoint rule is exact only to degree 1
        mid = tribute.IntegratedGradients(model).attribute(x, 0, steps=n, quadrature="riemann_middle",
                                                          baseline=baseline)
        assert (mid - expected).abs().max() > 1e-4 * expected.abs().max()
