"""The worked examples and propositions of Ancona et al. (2019)."""

from __future__ import annotations

import pytest
import torch
from conftest import mlp, residual_cnns
from torch import nn

import tribute


class Toy(nn.Module):
    """y = x₁ + √x₂ (Ancona et al. 2019, §3.2): contributions 4 and 2 at (4, 4)."""

    def forward(self, x):
        return x[:, 0:1] + torch.sqrt(x[:, 1:2])


X44 = torch.tensor([[4.0, 4.0]], dtype=torch.float64)


def test_toy_gradient_x_input_is_4_1():
    assert torch.equal(tribute.explain(Toy(), X44, "input_x_gradient", target=0), torch.tensor([[4.0, 1.0]]).double())


@pytest.mark.parametrize("method", ["deeplift", "lrp_epsilon"])
def test_toy_deeplift_and_epsilon_lrp_are_4_2_exactly(method):
    a = tribute.explain(Toy(), X44, method, target=0)
    # ε-LRP's ratio is √4 / (4 + ε): 2 up to ε = 1e-9
    torch.testing.assert_close(a, torch.tensor([[4.0, 2.0]], dtype=torch.float64), atol=1e-9, rtol=0)


def test_toy_integrated_gradients_within_0_01_with_256_gauss_legendre_steps():
    a = tribute.explain(Toy(), X44, "integrated_gradients", target=0, steps=256)
    assert a[0, 0].item() == pytest.approx(4.0, abs=1e-12)  # linear in x₁
    assert abs(a[0, 1].item() - 2.0) < 0.01  # ∫ 1/(2√(4α)) dα · 4 = 2; singular at α = 0


@pytest.mark.parametrize("quadrature", ["riemann_left", "riemann_trapezoid"])
def test_toy_rules_that_evaluate_alpha_zero_raise(quadrature):
    with pytest.raises(tribute.NonFiniteAttributionError, match="NaN or inf"):
        tribute.explain(Toy(), X44, "integrated_gradients", target=0, steps=8, quadrature=quadrature)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_prop3_epsilon_lrp_equals_gradient_x_input_on_relu_networks(kind, images):
    nets = residual_cnns() if kind == "cnn" else {"mlp": mlp(nn.ReLU)}
    for net in nets.values():
        x = images if kind == "cnn" else torch.randn(5, 6, dtype=torch.float64)
        lrp = tribute.explain(net, x, "lrp_epsilon", target=1, epsilon=1e-12)
        ixg = tribute.explain(net, x, "input_x_gradient", target=1)
        # g = z / (z + ε) = 1 − O(ε/z) at a unit with small pre-activation z
        torch.testing.assert_close(lrp, ixg, rtol=1e-6, atol=1e-10)


def test_prop3_epsilon_lrp_differs_from_gradient_x_input_with_tanh():
    # the premise of Prop 3(i) matters: with tanh, g = tanh(z)/z ≠ tanh'(z)
    net, x = mlp(nn.Tanh), torch.randn(5, 6, dtype=torch.float64)
    diff = tribute.explain(net, x, "lrp_epsilon", target=0) - tribute.explain(net, x, "input_x_gradient", target=0)
    assert diff.abs().max() > 1e-3


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
def test_prop3_deeplift_zero_baseline_equals_epsilon_lrp_without_biases(act):
    net = mlp(act, bias=False, sizes=(6, 10, 10, 10, 4))
    x = torch.randn(7, 6, dtype=torch.float64)
    dl = tribute.explain(net, x, "deeplift", target=2)
    lrp = tribute.explain(net, x, "lrp_epsilon", target=2, epsilon=1e-12)
    torch.testing.assert_close(dl, lrp, rtol=1e-8, atol=1e-12)


def test_deeplift_with_biases_differs_from_epsilon_lrp():
    net, x = mlp(nn.Tanh, bias=True), torch.randn(5, 6, dtype=torch.float64)
    diff = tribute.explain(net, x, "deeplift", target=0) - tribute.explain(net, x, "lrp_epsilon", target=0)
    assert diff.abs().max() > 1e-3


def _delta(net, x, base, t):
    with torch.no_grad():
        return net(x)[:, t] - net(base)[:, t]


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.GELU, nn.SiLU])
def test_deeplift_summation_to_delta_is_exact_with_random_baselines(act):
    net = mlp(act, sizes=(6, 12, 12, 3))
    g = torch.Generator().manual_seed(3)
    x, base = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = tribute.explain(net, x, "deeplift", target=1, baseline=base)
    torch.testing.assert_close(a.sum(1), _delta(net, x, base, 1), rtol=0, atol=1e-12)


def test_deeplift_and_ig_summation_to_delta_on_a_residual_cnn(images):
    g = torch.Generator().manual_seed(5)
    base = torch.rand(images.shape, generator=g, dtype=torch.float64)
    for net in residual_cnns().values():
        dl = tribute.explain(net, images, "deeplift", target=3, baseline=base)
        torch.testing.assert_close(dl.flatten(1).sum(1), _delta(net, images, base, 3), rtol=0, atol=1e-12)
        ig = tribute.explain(net, images, "integrated_gradients", target=3, baseline=base, steps=128)
        gap = (ig.flatten(1).sum(1) - _delta(net, images, base, 3)).abs()
        # the integrand is piecewise constant in α (ReLU kinks): quadrature error O(1/steps)
        assert gap.max() < 1e-2 * _delta(net, images, base, 3).abs().max()


def test_integrated_gradients_gap_shrinks_with_steps():
    net, x = mlp(nn.Tanh), torch.randn(4, 6, dtype=torch.float64)
    gaps = []
    for steps in (2, 4, 8):
        ig = tribute.explain(net, x, "integrated_gradients", target=0, steps=steps)
        gaps.append((ig.sum(1) - _delta(net, x, torch.zeros_like(x), 0)).abs().max().item())
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-6  # Gauss–Legendre on a smooth path: spectral convergence


class MaxPoolFirst(nn.Module):
    """Max pooling straight on the input, then ReLU layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(nn.functional.max_pool2d(x, 2).flatten(1))))


def test_deeplift_max_pooling_summation_to_delta_when_selection_agrees():
    """The documented promise: max pooling routes through the entry selected at the input, so
    summation-to-delta holds when input and baseline select the same entries (here x̄ = x / 2, x > 0)."""
    net = MaxPoolFirst().double().eval()
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64) + 0.1
    a = tribute.explain(net, x, "deeplift", target=0, baseline=x / 2)
    torch.testing.assert_close(a.flatten(1).sum(1), _delta(net, x, x / 2, 0), rtol=0, atol=1e-12)
    # and attribution only lands on the selected entries
    selected = nn.functional.max_pool2d(x, 2, return_indices=True)[1]
    mask = torch.zeros(3, 3, 16, dtype=torch.bool)
    mask.scatter_(2, selected.flatten(2), True)
    assert (a.flatten(2)[~mask] == 0).all()


def test_integrated_gradients_tolerance_refines_nested_nodes_until_converged():
    net, x = mlp(nn.Tanh), torch.randn(3, 6, dtype=torch.float64)
    m = tribute.IntegratedGradients(net, steps=2, tolerance=1e-7)
    a = m.attribute(x, target=0)
    delta = _delta(net, x, torch.zeros_like(x), 0)
    assert ((a.sum(1) - delta).abs() <= 1e-7 * delta.abs()).all()
    torch.testing.assert_close(a, tribute.explain(net, x, "integrated_gradients", target=0, steps=64), rtol=0,
                               atol=1e-7 * delta.abs().max().item())
    # every level reuses the nodes before it: rows = 2·3^L per sample (+ one clean pass of x and x̄)
    rows = m.passes.backward_rows
    per_sample = rows // 3
    assert rows % 3 == 0 and per_sample % 2 == 0
    levels = 0
    while per_sample > 2:
        assert per_sample % 3 == 0
        per_sample //= 3
        levels += 1
    assert levels >= 2 and m.passes.forward_rows == rows + 2 * 3


def test_integrated_gradients_tolerance_errors():
    with pytest.raises(RuntimeError, match="did not reach tolerance"):
        tribute.explain(Toy(), X44, "integrated_gradients", target=0, steps=2, tolerance=1e-9, max_steps=500)
    with pytest.raises(ValueError, match="cannot be combined with quadrature='gauss_legendre'"):
        tribute.explain(Toy(), X44, "integrated_gradients", target=0, tolerance=1e-3, quadrature="gauss_legendre")
