"""``differentiable=True``: attributions stay on the autograd graph, with correct derivatives.

Checked against independent derivatives: Hessian-vector products for the gradient, and central finite
differences in float64 for the rule methods (whose backward formulas must themselves be differentiable).
"""

from __future__ import annotations

import pytest
import torch
from conftest import mlp
from torch import nn

import tribute


def _directional_fd(fn, x, v, h=1e-6):
    return (fn(x + h * v) - fn(x - h * v)) / (2 * h)


def test_gradient_derivative_is_the_hessian_vector_product():
    net = mlp(nn.Tanh)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 6, dtype=torch.float64)
    a = tribute.explain(net, x, "gradient", target=1, differentiable=True)
    assert a.requires_grad
    (got,) = torch.autograd.grad((a * u).sum(), x)
    _, hvp = torch.autograd.functional.hvp(lambda z: net(z)[:, 1].sum(), x.detach(), u)
    torch.testing.assert_close(got, hvp)


@pytest.mark.parametrize("method,kw", [
    ("lrp_epsilon", {"epsilon": 1e-3}), ("deeplift", {}), ("integrated_gradients", {"steps": 8}),
    ("input_x_gradient", {}), ("gradient", {"softplus_beta": 2.0}),
])
def test_rule_methods_have_correct_derivatives(method, kw):
    net = mlp(nn.Tanh) if method != "gradient" else mlp(nn.ReLU)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, generator=g, dtype=torch.float64)
    u, v = torch.randn(2, 6, generator=g, dtype=torch.float64), torch.randn(2, 6, generator=g, dtype=torch.float64)

    def objective(z):
        return (tribute.explain(net, z, method, target=0, **kw) * u).sum()

    xr = x.clone().requires_grad_()
    a = tribute.explain(net, xr, method, target=0, differentiable=True, **kw)
    (grad,) = torch.autograd.grad((a * u).sum(), xr)
    torch.testing.assert_close((grad * v).sum(), _directional_fd(objective, x, v), rtol=1e-5, atol=1e-8)


def test_smoothgrad_derivative_on_a_quadratic_model():
    # S(x) = xᵀAx: each noisy gradient (A + Aᵀ)(x + ε) has derivative A + Aᵀ whatever the noise
    torch.manual_seed(0)
    a_mat = torch.randn(5, 5, dtype=torch.float64)

    class Quadratic(nn.Module):
        def forward(self, x):
            return ((x @ a_mat) * x).sum(1, keepdim=True)

    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 5, dtype=torch.float64)
    sg = tribute.explain(Quadratic(), x, "smoothgrad", target=0, samples=4, sigma=0.3, seed=1, differentiable=True)
    (got,) = torch.autograd.grad((sg * u).sum(), x)
    torch.testing.assert_close(got, u @ (a_mat + a_mat.T))


def test_guided_backprop_is_differentiable_with_respect_to_the_parameters():
    # attribution-regularised training needs d(attribution)/d(weights)
    net = mlp(nn.ReLU)
    x = torch.randn(4, 6, dtype=torch.float64)
    a = tribute.explain(net, x, "guided_backprop", target=2, differentiable=True)
    w = net.net[-1].weight
    (got,) = torch.autograd.grad(a.pow(2).sum(), w)
    # guided backprop is linear in the last layer's weights: d/dW Σ a² by finite differences
    e = torch.zeros_like(w)
    e[2, 3] = 1.0
    with torch.no_grad():
        w += 1e-6 * e
        up = tribute.explain(net, x, "guided_backprop", target=2).pow(2).sum()
        w -= 2e-6 * e
        down = tribute.explain(net, x, "guided_backprop", target=2).pow(2).sum()
        w += 1e-6 * e
    torch.testing.assert_close(got[2, 3], (up - down) / 2e-6, rtol=1e-5, atol=1e-9)


def test_not_differentiable_by_default():
    net = mlp(nn.Tanh)
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert not tribute.explain(net, x, "integrated_gradients", target=0, steps=4).requires_grad
