"""Guided backprop and DeconvNet on models with attention-like products and LayerNorm (issue 13).

Springenberg et al. (2015) and Zeiler & Fergus (2014) modify the backward pass at rectifiers alone; every other op
keeps its derivative by definition.  So a product of two tensors on the path or a LayerNorm is no gap in their
rules (they run without ``strict=False``), while a model with no rectifier at all is still refused: their rules
would change nothing there.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute
from tribute.core import UncoveredModelError

DT = torch.float64


class GatedBlock(nn.Module):
    """relu(W1 x) → LayerNorm → a · sigmoid(a) (a product of two path tensors) → W2."""

    def __init__(self, act=F.relu):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.norm, self.fc2 = nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3)
        self.act = act

    def forward(self, x, relu=None):
        a = self.norm((relu or self.act)(self.fc1(x)))
        return self.fc2(a * torch.sigmoid(a))


class _GuidedRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g.clamp(min=0) * (z > 0)


class _DeconvRelu(_GuidedRelu):
    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


@pytest.mark.parametrize(("method", "relu"), [("guided_backprop", _GuidedRelu), ("deconvnet", _DeconvRelu)])
def test_only_the_rectifiers_change_and_the_rest_keeps_its_derivative(method, relu):
    model = GatedBlock().to(DT).eval()
    x = torch.randn(4, 5, dtype=DT)
    got = tribute.explain(model, x, method, target=2)
    leaf = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(model(leaf, relu=relu.apply)[:, 2].sum(), leaf)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(got, tribute.explain(model, x, "gradient", target=2))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_without_a_rectifier_they_are_still_refused(method):
    model = GatedBlock(act=F.gelu).to(DT).eval()
    with pytest.raises(UncoveredModelError, match="changed nothing"):
        tribute.explain(model, torch.randn(2, 5, dtype=DT), method, target=0)


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_an_unknown_one_input_op_may_hide_a_rectifier_and_is_still_refused(method):
    # clamp(min=0) is a ReLU in another spelling: its plain gradient would silently skip the method's rule there
    model = GatedBlock(act=lambda z: torch.relu(z) + torch.clamp(z, min=0)).to(DT).eval()
    with pytest.raises(UncoveredModelError, match="clamp"):
        tribute.explain(model, torch.randn(2, 5, dtype=DT), method, target=0)
