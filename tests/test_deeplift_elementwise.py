"""DeepLIFT Rescale at every known elementwise nonlinearity: summation-to-delta in float64, and the f' limit."""

import pytest
import torch
from torch import nn

import tribute
from tribute.core.nonlinearities import known_nonlinearities

ACTIVATIONS = {
    "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "silu": nn.SiLU(), "sigmoid": nn.Sigmoid(),
    "tanh": nn.Tanh(), "softplus": nn.Softplus(), "elu": nn.ELU(), "hardswish": nn.Hardswish(),
    "hardsigmoid": nn.Hardsigmoid(), "mish": nn.Mish(), "selu": nn.SELU(), "celu": nn.CELU(0.7),
    "leaky_relu": nn.LeakyReLU(0.1), "relu6": nn.ReLU6(), "hardtanh": nn.Hardtanh(),
}


def test_listed_nonlinearities_are_known():
    for name in ("gelu", "silu", "sigmoid", "tanh", "softplus", "elu", "hardswish", "hardsigmoid", "mish", "selu",
                 "celu"):
        assert name in known_nonlinearities()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_summation_to_delta(name):
    torch.manual_seed(0)
    act = ACTIVATIONS[name]
    net = nn.Sequential(nn.Linear(6, 12), act, nn.Linear(12, 12), act, nn.Linear(12, 3)).double().eval()
    x = 2 * torch.randn(5, 6, dtype=torch.float64)
    base = torch.randn(5, 6, dtype=torch.float64)
    phi = tribute.explain(net, x, "deeplift", target=2, baseline=base)
    with torch.no_grad():
        delta = net(x)[:, 2] - net(base)[:, 2]
    torch.testing.assert_close(phi.sum(1), delta, rtol=0, atol=1e-10)


INPLACE = {
    "silu": (nn.SiLU(), nn.SiLU(inplace=True)), "elu": (nn.ELU(0.5), nn.ELU(0.5, inplace=True)),
    "hardswish": (nn.Hardswish(), nn.Hardswish(inplace=True)),
    "hardsigmoid": (nn.Hardsigmoid(), nn.Hardsigmoid(inplace=True)), "mish": (nn.Mish(), nn.Mish(inplace=True)),
    "selu": (nn.SELU(), nn.SELU(inplace=True)), "celu": (nn.CELU(0.7), nn.CELU(0.7, inplace=True)),
}


@pytest.mark.parametrize("name", sorted(INPLACE))
def test_inplace_calls_match(name):
    # the in-place forms (inplace=True) compute the same attribution, and it sums to the score's difference
    act, inplace = INPLACE[name]
    torch.manual_seed(1)
    lin1, lin2 = nn.Linear(4, 5).double(), nn.Linear(5, 2).double()
    x, base = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    net = nn.Sequential(lin1, act, lin2).eval()
    a = tribute.explain(net, x, "deeplift", target=1, baseline=base)
    b = tribute.explain(nn.Sequential(lin1, inplace, lin2).eval(), x, "deeplift", target=1, baseline=base)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(b.sum(1), net(x)[:, 1] - net(base)[:, 1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["hardswish", "mish", "selu"])
def test_equal_input_and_reference_take_the_derivative(name):
    """Where z = z̄ for a unit, Rescale's multiplier is its limit f'(z): one unit, x and x̄ differing only in an
    input whose weight into that unit is zero, so the multiplier there is f'(z) times the next weight."""
    act = ACTIVATIONS[name]
    lin1, lin2 = nn.Linear(2, 1, bias=True).double(), nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[0.0, 1.3]]))
        lin1.bias.fill_(0.4)
        lin2.weight.fill_(2.0)
    net = nn.Sequential(lin1, act, lin2).eval()
    x = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    base = torch.tensor([[-1.0, 0.5]], dtype=torch.float64)
    phi = tribute.explain(net, x, "deeplift", target=0, baseline=base)
    assert phi.abs().max() == 0  # no difference reaches the unit: no contribution, and no 0/0
    # a small difference: the multiplier approaches 2·f'(z)·1.3
    base = torch.tensor([[1.0, 0.5 - 1e-7]], dtype=torch.float64)
    phi = tribute.explain(net, x, "deeplift", target=0, baseline=base)
    z = torch.tensor(0.4 + 1.3 * 0.5, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(act(z), z)
    torch.testing.assert_close(phi[0, 1] / 1e-7, 2 * d.detach() * 1.3, rtol=1e-6, atol=0)
