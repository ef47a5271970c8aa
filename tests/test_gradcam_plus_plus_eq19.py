"""Grad-CAM++'s closed form against Chattopadhay et al. (2018), Eq 19, computed with autograd.

Eq 19 weighs the pixels of feature map k by

    α_kij = ∂²Y/∂A_kij² / (2 ∂²Y/∂A_kij² + Σ_ab A_kab ∂³Y/∂A_kij³),    w_k = Σ_ij α_kij ReLU(∂Y/∂A_kij),

with Y = exp(S) for the class score S.  Writing g = ∂S/∂A, the exact derivatives are

    ∂²Y/∂A² = e^S (g² + ∂²S/∂A²),    ∂³Y/∂A³ = e^S (g³ + 3 g ∂²S/∂A² + ∂³S/∂A³),

and tribute's closed form α = g²/(2g² + g³ ΣA) keeps only the first terms: it is Eq 19 exactly where S is
piecewise linear in A (∂²S/∂A² = ∂³S/∂A³ = 0, a ReLU head), and an approximation elsewhere (a tanh head).
The reference below takes the second and third derivatives of exp(S) itself, one diagonal entry at a time.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import tribute

DT = torch.float64
CLASS = 1


class ConvHead(nn.Module):
    """A = ReLU(conv(x)) (3 × 4 × 4, the layer ``features``), S = Linear(act(Linear(flatten A))).

    Parameters are N(0, 0.5²), those of the head's first linear layer N(0, head_scale²)."""

    def __init__(self, act: nn.Module, head_scale: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(48, 6), act, nn.Linear(6, 3))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.head[1].weight.mul_(head_scale / 0.5)
        self.to(DT).eval()

    def forward(self, x):
        return self.head(self.features(x))


def eq19_map(net: ConvHead, x: torch.Tensor, c: int) -> torch.Tensor:
    """ReLU(Σ_k w_k A_k) by Eq 19 with autograd's derivatives of Y = exp(S), divided by e^S (the common factor
    of ∂Y/∂A that tribute leaves out; it is positive, so it commutes with the ReLU).  (N, 1, h, w)."""
    maps = []
    for row in x:
        a = net.features(row[None]).detach().requires_grad_(True)
        y = net.head(a)[0, c].exp()
        (dy,) = torch.autograd.grad(y, a, create_graph=True)
        d2, d3 = torch.zeros_like(a), torch.zeros_like(a)
        for k, i, j in itertools.product(*map(range, a.shape[1:])):
            (row2,) = torch.autograd.grad(dy[0, k, i, j], a, create_graph=True)
            (row3,) = torch.autograd.grad(row2[0, k, i, j], a, retain_graph=True)
            d2[0, k, i, j], d3[0, k, i, j] = row2[0, k, i, j], row3[0, k, i, j]
        a, dy, d2, d3 = a.detach(), dy.detach(), d2.detach(), d3.detach()
        den = 2 * d2 + a.sum(dim=(2, 3), keepdim=True) * d3
        alpha = torch.where(den != 0, d2 / torch.where(den != 0, den, 1), 0)
        w = (alpha * dy.clamp(min=0)).sum(dim=(2, 3), keepdim=True) / y.detach()
        maps.append((w * a).sum(1, keepdim=True).clamp(min=0))
    return torch.cat(maps)


def inputs() -> torch.Tensor:
    return torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=DT)


def closed_form(net: ConvHead, x: torch.Tensor) -> torch.Tensor:
    return tribute.explain(net, x, "gradcam_plus_plus", target=CLASS, layer="features", upsample=False)


def test_closed_form_is_eq_19_on_a_piecewise_linear_head():
    net, x = ConvHead(nn.ReLU()), inputs()
    reference = eq19_map(net, x, CLASS)
    assert reference.abs().amax() > 0.1  # a map with something in it, not 0 = 0
    torch.testing.assert_close(closed_form(net, x), reference, rtol=1e-10, atol=1e-10)


# Measured on this seeded tanh head (float64, head_scale 0.05: the first linear layer's part of the tanh's
# pre-activation is below 0.65 in magnitude): the relative L2 distance of the closed form's maps from Eq 19's is,
# per sample, 0.373, 0.367 and 0.460.  Small weights do not make the gap small: with W the first layer's
# weights and v the last's, ∂³S/∂A³ = Σ_m v_m tanh‴(u_m) W_mkij³ is of the same order in W as g³, so the
# term the closed form drops is as large as the one it keeps.  (With larger weights the exact denominator
# of Eq 19 comes near zero at some pixels and the two maps have nothing in common.)
TANH_GAP = (0.373, 0.367, 0.460)


def test_closed_form_differs_from_eq_19_on_a_tanh_head():
    net, x = ConvHead(nn.Tanh(), head_scale=0.05), inputs()
    reference, got = eq19_map(net, x, CLASS), closed_form(net, x)
    assert reference.flatten(1).norm(dim=1).amin() > 0.5  # no sample compared with an empty map
    gap = (got - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
    assert gap.tolist() == pytest.approx(TANH_GAP, abs=0.005)
