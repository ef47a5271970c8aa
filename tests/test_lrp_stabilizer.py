"""The Norm rule's stabiliser under the composites (R_i = x_i Σ_j ∂y_j/∂x_i R_j / stab_ε(y_j) at additions, pooling,
LayerNorm with σ held, unmerged batch norm): min(ε, 1e-6) for a registered composite with an ε rule, a Composite's
own ``stabilizer=`` otherwise (tribute.lrp.Composite).  Checked on a bias-free residual network worked by hand, and
by conservation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tribute
from tribute.lrp import Composite, Epsilon

DT = torch.float64


class Residual(nn.Module):
    """y = relu(x W₁ᵀ) + x W₂ᵀ (an addition the Norm rule splits), score = y W₃ᵀ; no biases: ε-LRP with every
    stabiliser → 0 conserves exactly."""

    def __init__(self, w1, w2, w3):
        super().__init__()
        self.a, self.b, self.head = (nn.Linear(w.shape[1], w.shape[0], bias=False).to(DT) for w in (w1, w2, w3))
        with torch.no_grad():
            for layer, w in zip((self.a, self.b, self.head), (w1, w2, w3), strict=True):
                layer.weight.copy_(w)

    def forward(self, x):
        return self.head(torch.relu(self.a(x)) + self.b(x))


def _net():
    w1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    w2 = torch.tensor([[-1.0, 0.0], [0.0, 0.5]], dtype=DT)
    w3 = torch.tensor([[1.0, 1.0]], dtype=DT)
    return Residual(w1, w2, w3)


X = torch.tensor([[0.5, 2.0]], dtype=DT)  # a = (0.5, 2), b = (−0.5, 1): y = (0, 3), score 3


def _by_hand(eps_head: float, eps_norm: float, eps_layer: float) -> torch.Tensor:
    """ε-LRP of the network written out: head y → score, Norm rule at y = relu(a) + b, ε rule at a and b."""
    a, b = torch.tensor([0.5, 2.0], dtype=DT), torch.tensor([-0.5, 1.0], dtype=DT)
    y = a + b
    score = y.sum()
    stab = lambda d, e: d + e * (1.0 if d >= 0 else -1.0)  # noqa: E731
    r_y = torch.stack([y[j] * score / stab(score, eps_head) for j in range(2)])
    s = torch.stack([r_y[j] / stab(y[j], eps_norm) for j in range(2)])
    r_a, r_b = a * s, b * s
    # a = x W₁ᵀ (identity), b = x W₂ᵀ (diagonal −1, 0.5): each input i feeds a_i and b_i only
    x = X[0]
    w2 = torch.tensor([-1.0, 0.5], dtype=DT)
    return (torch.stack([x[i] * r_a[i] / stab(a[i], eps_layer) for i in range(2)])
            + torch.stack([x[i] * w2[i] * r_b[i] / stab(b[i], eps_layer) for i in range(2)]))[None]


@pytest.mark.parametrize("epsilon", [1e-12, 1e-3])
def test_the_epsilon_composite_norm_rule_takes_min_of_epsilon_and_1e6(epsilon):
    # y₀ = 0.5 − 0.5 = 0: at the addition, stab(0) = ε_norm takes all of R_y₀ = 0 anyway; y₁ = 3 gives
    # R_a₁ = 2·3/(3 + ε_norm), so the map depends on ε_norm at the 1e-7 level for ε_norm = 1e-6
    net = _net()
    phi = tribute.explain(net, X, "lrp", composite="epsilon", epsilon=epsilon, target=0)
    torch.testing.assert_close(phi, _by_hand(epsilon, min(epsilon, 1e-6), epsilon), rtol=1e-13, atol=1e-15)
    if epsilon < 1e-6:  # the stabiliser held at 1e-6 would be another map, visible at this tolerance
        held = _by_hand(epsilon, 1e-6, epsilon)
        assert (phi - held).abs().max() > 1e-8


def test_a_composites_own_stabilizer_is_used_in_both_forms():
    net = _net()
    composite = Composite(conv=Epsilon(1e-12), dense=Epsilon(1e-12), stabilizer=0.5)
    expected = _by_hand(1e-12, 0.5, 1e-12)
    # the gradient form (ε everywhere) and the relevance form (absorbed=True takes it) give the same map
    fast = tribute.explain(net, X, "lrp", composite=composite, target=0)
    explainer = tribute.LRP(net, composite=composite, absorbed=True)
    slow = explainer.attribute(X, target=0)
    torch.testing.assert_close(fast, expected, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(slow, expected, rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="stabilizer must be > 0"):
        Composite(conv=Epsilon(), dense=Epsilon(), stabilizer=0.0)


def test_a_small_epsilon_conserves_with_default_stabilisers():
    # bias-free: Σ R = score up to what the stabilisers absorb, ε·(…) with ε = 1e-12 everywhere on the ε
    # composite's ops (measured 8.6e-12 relative); a Norm rule held at 1e-6 leaves 3.1e-6 on this example
    torch.manual_seed(0)
    net = Residual(torch.randn(6, 4, dtype=DT), torch.randn(6, 4, dtype=DT), torch.randn(3, 6, dtype=DT))
    x = torch.randn(5, 4, dtype=DT)
    phi = tribute.explain(net, x, "lrp", composite="epsilon", epsilon=1e-12, target=1)
    score = net(x)[:, 1].detach()
    torch.testing.assert_close(phi.sum(1), score, rtol=1e-10, atol=0)
