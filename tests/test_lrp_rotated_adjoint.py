"""The transposed layer of a stride-1 convolution as a convolution with the rotated weight (LayerOp.rotated_adjoint).

LRP's rules take relevance back through a convolution's transpose with derived weights (W⁺, W + γW⁺, stacked
pairs).  Where the convolution has stride 1, dilation 1, one group and zero padding p ≤ k − 1, that transpose is the
convolution of the signal with the weight's channels swapped and kernel flipped, padded k − 1 − p; an explainer
that keeps weights keeps the rotated weight instead and runs that convolution (measured faster on CPU).  It must
be the same linear map, and every other geometry must keep the plain transposed layer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import tribute
from tribute.lrp.layer_call import LayerOp, parse_linear, rotate

DT = torch.float64
CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def vjp(func, x, w, s, **kw):
    xx = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(func(xx, w, None, **kw), xx, s)
    return g


@pytest.mark.parametrize(("dims", "kernel", "padding"), [
    (2, (3, 3), 1), (2, (3, 3), 0), (2, (1, 1), 0), (2, (5, 5), 2), (2, (5, 5), 4), (2, (3, 1), (1, 0)),
    (1, (4,), 2), (3, (3, 3, 3), 1),
])
def test_the_rotated_convolution_is_the_transposed_layer(dims, kernel, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *([7] * dims), dtype=DT, generator=g)
    w = torch.randn(5, 3, *kernel, dtype=DT, generator=g)
    func = CONVS[dims]
    op = parse_linear(func, (x, w, None), {"padding": padding})[4]
    s = torch.randn_like(func(x, w, None, padding=padding))
    conv = op.rotated_adjoint(w.shape)
    assert conv is not None
    torch.testing.assert_close(conv(s, rotate(w)), vjp(func, x, w, s, padding=padding), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"stride": 2, "padding": 1}, {"dilation": 2, "padding": 2},
                                    {"groups": 3, "padding": 1}, {"padding": "same"}, {"padding": 3}])
def test_other_geometries_keep_the_plain_transposed_layer(kwargs):
    w = torch.randn(6, 6 // kwargs.get("groups", 1), 3, 3)
    op = LayerOp(F.conv2d, "conv", (), kwargs)
    assert op.rotated_adjoint(w.shape) is None


def test_dense_and_transposed_layers_are_not_rotated():
    assert LayerOp(F.linear, "dense", (), {}).rotated_adjoint((4, 3)) is None
    assert LayerOp(F.conv_transpose2d, "conv_transpose", (), {}).rotated_adjoint((3, 4, 3, 3)) is None


class Mixed(nn.Module):
    """Convolutions of every geometry: stride 1 with padding 1, 0 and 2 (5×5), 1×1, stride 2, grouped."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([
            nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2), nn.Conv2d(8, 8, 3, padding=0),
            nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2),
        ])
        self.fc = nn.Linear(8 * 3 * 3, 5)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("composite", ["zplus", "gamma", "alpha_beta", "epsilon_plus"])
def test_lrp_with_rotated_weights_equals_lrp_with_transposed_layers(composite):
    net = Mixed().to(DT).eval()
    x = torch.randn(3, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
    ex = tribute.LRP(net, composite=composite)

    def rotated():
        return [k for e in ex.weights._entries.values() for k in e.derived if k[0] == "rotated"]

    first = ex(x, target=2)
    assert rotated() == []  # a first call derives no rotated weights: it would use each once
    got = ex(x, target=2)
    assert len(rotated()) == 3  # the stride-1, one-group convolutions after the first (its input is signed)
    expected = tribute.LRP(net, composite=composite, cache_weights=False)(x, target=2)  # keeps nothing: plain
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-13 * expected.abs().max().item())
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13 * expected.abs().max().item())
    torch.testing.assert_close(ex(x, target=2), expected, rtol=1e-10, atol=1e-13 * expected.abs().max().item())


class Kernels(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_epsilon_gradient_form_runs_rotated_convolutions_backward():
    """The ε composite's backward pass is autograd's, except at stride-1 convolutions: there the convolution with
    the rotated weight, which must give the same relevance."""
    net = Mixed().to(DT).eval()
    x = torch.randn(3, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(2))
    ex = tribute.LRP(net, composite="epsilon")
    with Kernels() as k:
        first = ex(x, target=1)
    assert sum(n.startswith("convolution_backward") for n in k.names) == 6  # a first call rotates nothing
    with Kernels() as k:
        got = ex(x, target=1)
    assert sum(n.startswith("convolution_backward") for n in k.names) == 2  # stride 2, and grouped
    expected = tribute.LRP(net, composite="epsilon", cache_weights=False)(x, target=1)
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-13 * expected.abs().max().item())
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13 * expected.abs().max().item())
