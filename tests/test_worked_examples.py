"""Claims of the papers, worked by hand and checked in float64.

Each test states its expected value and how it was worked out in a comment; the method must reproduce it.
Ancona, Ceolini, Öztireli and Gross (2019), "Gradient-based attribution methods" (a chapter of *Explainable
AI*, Springer LNCS 11700, built on Ancona et al. 2018, ICLR), give the multiplicative counterexample (§3.2,
after Eq 19), the max(x₁, x₂) example (§4.2, Table 2) and the gradient form of ε-LRP (Prop 1); Sundararajan
et al. (2017) the saturation example f = 1 − ReLU(1 − x) (also Nielsen et al. 2022, §2.1); Adebayo et al.
(2018) the cascading randomisation check; Erion et al. (2021) expected gradients; Kindermans et al. (2019)
input invariance."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fashion_fixture
from torch import nn

import tribute
from tribute.core.randomness import SampleStreams, draw_references
from tribute.metrics import parameter_randomisation

DT = torch.float64


def tensor(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=DT)


# -- Ancona et al. (2019), §3.2: h(x₁, x₂) = ReLU(x₁ − 1) · ReLU(x₂) -----------------------------------------------
class Product(nn.Module):
    """h = ReLU(x₁ − 1) · ReLU(x₂), the product of two input-dependent units."""

    def forward(self, x):
        return torch.relu(x[:, 0:1] - 1) * torch.relu(x[:, 1:2])


X32 = tensor([3.0, 2.0])
# Integrated gradients at x = (3, 2) from x̄ = 0 (the paper states the function and that IG satisfies
# summation there; the point and values are worked here).  On the path αx = (3α, 2α), ReLU(3α − 1) is
# active for α > 1/3:
#   ∂h/∂x₁ = 2α · [α > 1/3]         →  φ₁ = 3 ∫_{1/3}^1 2α dα       = 3 (1 − 1/9)              = 8/3
#   ∂h/∂x₂ = (3α − 1) · [α > 1/3]   →  φ₂ = 2 ∫_{1/3}^1 (3α − 1) dα = 2 [3α²/2 − α]_{1/3}^1 = 4/3
# and φ₁ + φ₂ = 4 = h(3, 2) − h(0, 0) = 2 · 2.
IG_PRODUCT = tensor([8 / 3, 4 / 3])


def test_product_integrated_gradients_is_8_3_and_4_3():
    # three midpoint cells [0, 1/3], [1/3, 2/3], [2/3, 1] with midpoints 1/6, 1/2, 5/6: the kink at 1/3 is a
    # cell boundary and both integrands are linear on each cell, so the midpoint rule is exact:
    # φ₁ = 3 · (0 + 2·½ + 2·⅚)/3 = 8/3,   φ₂ = 2 · (0 + (3·½ − 1) + (3·⅚ − 1))/3 = 2 · (2/3) = 4/3
    a = tribute.explain(Product(), X32, "integrated_gradients", target=0, steps=3, quadrature="riemann_middle")
    torch.testing.assert_close(a, IG_PRODUCT, rtol=0, atol=1e-14)
    assert a.sum().item() == pytest.approx(4.0, abs=1e-14)


@pytest.mark.parametrize("steps", [8, 32, 128, 512])
def test_product_integrated_gradients_quadrature_error_shrinks_as_worked(steps):
    # midpoint rule with n cells, n ≡ 2 (mod 3): α = 1/3 lies at 2/3 of the cell [k/n, (k+1)/n], whose
    # midpoint is below 1/3, so that cell counts 0 where the integral is (with h = 1/n, (k+1)h = 1/3 + h/3)
    #   φ₁'s cell: 3 ∫_{1/3}^{1/3+h/3} 2α dα = 3((1/3 + h/3)² − 1/9) = 2h/3 + h²/3
    #   φ₂'s cell: 2 ∫_{1/3}^{1/3+h/3} (3α − 1) dα = 3 (h/3)² = h²/3
    # and every other cell is exact (linear integrand): the errors are −(2h/3 + h²/3) and −h²/3.  The jump
    # of ∂h/∂x₁ makes φ₁'s error O(1/n), the kink of ∂h/∂x₂ makes φ₂'s O(1/n²).
    h = 1 / steps
    a = tribute.explain(Product(), X32, "integrated_gradients", target=0, steps=steps, quadrature="riemann_middle")
    torch.testing.assert_close(a - IG_PRODUCT, tensor([-(2 * h / 3 + h * h / 3), -h * h / 3]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [32, 128, 512])
def test_product_integrated_gradients_gauss_legendre_converges_like_1_over_n(steps):
    # the default rule is no better than O(1/n) on a jump (its error is not monotone in n: 0.043 at 32,
    # 0.0023 at 128, 0.0025 at 512); bounded by 2/n here
    a = tribute.explain(Product(), X32, "integrated_gradients", target=0, steps=steps)
    assert (a - IG_PRODUCT).abs().max().item() < 2 / steps


def test_product_gradient_x_input_and_epsilon_lrp_are_6_and_4():
    # ∇h(3, 2) = (ReLU(x₂), ReLU(x₁ − 1)) = (2, 2), so gradient × input = (6, 4): sums to 10, not h = 4.
    gxi = tribute.explain(Product(), X32, "input_x_gradient", target=0)
    torch.testing.assert_close(gxi, tensor([6.0, 4.0]), rtol=0, atol=0)
    # ε-LRP replaces each ReLU's slope by z/(z + ε) = 2/(2 + ε) (both units have z = 2) and the product of the two
    # takes AttnLRP's uniform rule (tribute.lrp.epsilon_ops): each factor's gradient halved, ½·2 = 1, so
    # φ = (3 · 1 · 2/(2+ε), 2 · 1 · 2/(2+ε)) = (3, 2) · 2/(2+ε): each factor's relevance is h/2 = 2, of which
    # the unit x₁ − 1's bias −1 takes −1
    eps = 1e-3
    lrp = tribute.explain(Product(), X32, "lrp_epsilon", target=0, epsilon=eps)
    torch.testing.assert_close(lrp, tensor([3.0, 2.0]) * 2 / (2 + eps), rtol=1e-15, atol=0)
    # (DeepLIFT on this product needs a rule for products of two input-dependent tensors; not asserted here.)


# -- Ancona et al. (2019), §4.2 and Table 2: y = max(x₁, x₂) -------------------------------------------------------
class MaxOp(nn.Module):
    def forward(self, x):
        return x.max(dim=1, keepdim=True).values


class MaxPool(nn.Module):
    def forward(self, x):
        return F.max_pool1d(x[:, None, :], 2).flatten(1)


class MaxThreeReLU(nn.Module):
    """max(x₁, x₂) = ½(ReLU(x₁ − x₂) + ReLU(x₂ − x₁) + ReLU(x₁ + x₂)) for x₁ + x₂ ≥ 0 (the paper's footnote 4)."""

    def forward(self, x):
        a, b = x[:, 0:1], x[:, 1:2]
        return 0.5 * (torch.relu(a - b) + torch.relu(b - a) + torch.relu(a + b))


MAX_METHODS = ["input_x_gradient", "integrated_gradients", "lrp_epsilon", "deeplift"]


@pytest.mark.parametrize("net", [MaxOp(), MaxPool(), MaxThreeReLU()], ids=["max", "max_pool", "three_relus"])
@pytest.mark.parametrize("method", MAX_METHODS)
@pytest.mark.parametrize("e", [1e-3, 1e-6])
def test_max_attribution_jumps_from_x2_to_x1(net, method, e):
    # Table 2 (its caption says min(x₁, x₂); the text and the values are max's).  Baseline 0.  At (2, 2 + e)
    # the gradient is (0, 1) at the input and on the whole path α(2, 2 + e), and every ReLU of the three-ReLU
    # form has g = f(z)/z = f'(z) (ε-LRP) and (f(z) − f(0))/z = f'(z) (DeepLIFT, zero reference), so all four
    # give (0, 2 + e); at (2, 2 − e), (2, 0).  The output moves by e, the attribution by 2 on each feature.
    # ε-LRP's ratio z/(z + ε) at ReLU(x₂ − x₁), z = e, is 1 − ε/e: it moves about ε/e from x₂ to x₁ in the
    # three-ReLU form (tolerance 2ε/e with ε = 1e-12).
    options = {"epsilon": 1e-12} if method == "lrp_epsilon" else {}
    above = tribute.explain(net, tensor([2.0, 2.0 + e]), method, target=0, **options)
    below = tribute.explain(net, tensor([2.0, 2.0 - e]), method, target=0, **options)
    torch.testing.assert_close(above, tensor([0.0, 2.0 + e]), rtol=0, atol=2e-12 / e)
    torch.testing.assert_close(below, tensor([2.0, 0.0]), rtol=0, atol=2e-12 / e)


# -- Sundararajan et al. (2017): saturation, f = 1 − ReLU(1 − x) ---------------------------------------------------
class Saturating(nn.Module):
    def forward(self, x):
        return 1 - torch.relu(1 - x)


def test_saturation_gradient_is_zero_while_ig_and_deeplift_give_the_difference():
    x = tensor([2.0])
    # f(2) = 1, f(0) = 0; ReLU(1 − 2) = 0 is inactive: f'(2) = 0
    assert tribute.explain(Saturating(), x, "gradient", target=0).item() == 0.0
    assert tribute.explain(Saturating(), x, "input_x_gradient", target=0).item() == 0.0
    assert tribute.explain(Saturating(), x, "lrp_epsilon", target=0).item() == 0.0  # g = ReLU(−1)/(−1 − ε) = 0
    # IG: f'(2α) = [2α < 1], φ = 2 ∫_0^{1/2} dα = 1; with 4 midpoint cells the kink at ½ is a boundary: exact
    ig = tribute.explain(Saturating(), x, "integrated_gradients", target=0, steps=4, quadrature="riemann_middle")
    assert ig.item() == pytest.approx(1.0, abs=1e-15)
    # DeepLIFT (Rescale): the ReLU's input goes from z̄ = 1 to z = −1, g = (ReLU(−1) − ReLU(1))/(−1 − 1) = ½;
    # ∂^g f/∂x = −g · (−1) = ½, times x − x̄ = 2: 1 = f(2) − f(0)
    dl = tribute.explain(Saturating(), x, "deeplift", target=0)
    assert dl.item() == pytest.approx(1.0, abs=1e-15)


# -- Ancona et al. (2019), Prop 1: ε-LRP = x ⊙ ∂^g S/∂x with g = f(z)/(z + ε sign z), on sigmoid and softplus ------
def seeded_mlp(act: nn.Module) -> nn.Sequential:
    """4 → 6 → 5 → 3 with ``act`` after the two hidden layers; weights N(0, 1), biases N(0, 0.5²)."""
    net = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 5), act, nn.Linear(5, 3)).to(DT).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * (1.0 if name.endswith("weight") else 0.5))
    return net


def modified_gradient_x_input(net: nn.Sequential, x: torch.Tensor, c: int, slope) -> torch.Tensor:
    """x ⊙ ∂^g S_c/∂x by the chain rule written out: δ ← (δ ⊙ slope(z)) W through each hidden layer (Ancona's
    Eq 16 with g = slope), in matrix products, no autograd."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    zs, a = [], x
    for lin in linears[:-1]:
        z = a @ lin.weight.T + lin.bias
        zs.append(z)
        a = net[1](z)
    delta = linears[-1].weight[c].expand(x.shape[0], -1)
    for lin, z in zip(reversed(linears[:-1]), reversed(zs), strict=True):
        delta = (delta * slope(z)) @ lin.weight
    return x * delta


def epsilon_ratio(act, eps):
    return lambda z: act(z) / (z + eps * torch.where(z >= 0, 1.0, -1.0))  # sign(0) = +1


def derivative(act):
    def slope(z):
        z = z.detach().requires_grad_(True)
        (d,) = torch.autograd.grad(act(z).sum(), z)
        return d
    return slope


# Measured on the seeded networks at the 8 seeded inputs: ‖ε-LRP − gradient × input‖ / ‖gradient × input‖ over
# the batch is 54.14 (sigmoid) and 32.60 (softplus); per sample it ranges over 3.0 … 72 (sigmoid) and 0.21 … 48
# (softplus), largest where a hidden pre-activation is near 0 (the smallest |z| is 0.026).  Neither function
# crosses the origin (σ(0) = ½, softplus(0) = log 2), so g = f(z)/z is no average slope and grows like f(0)/z
# near z = 0: Ancona et al.'s reason why ε-LRP "fails to produce meaningful attributions" on such networks.
EPSILON_GAP = {"sigmoid": (54.14, 3.0), "softplus": (32.60, 0.2)}  # (batch gap, lower bound of a sample's gap)


@pytest.mark.parametrize("act", [nn.Sigmoid(), nn.Softplus()], ids=["sigmoid", "softplus"])
def test_epsilon_lrp_is_its_modified_gradient_and_far_from_gradient_x_input(act):
    net = seeded_mlp(act)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(4), dtype=DT)
    eps = 1e-9
    # f(0) ≠ 0: Ancona's ratio is unbounded near z = 0, so lrp_epsilon computes it only when asked
    with pytest.raises(ValueError, match="unbounded=True"):
        tribute.explain(net, x, "lrp_epsilon", target=2, epsilon=eps)
    lrp = tribute.explain(net, x, "lrp_epsilon", target=2, epsilon=eps, unbounded=True)
    torch.testing.assert_close(lrp, modified_gradient_x_input(net, x, 2, epsilon_ratio(act, eps)), rtol=1e-12,
                               atol=1e-12)
    gxi = tribute.explain(net, x, "input_x_gradient", target=2)
    torch.testing.assert_close(gxi, modified_gradient_x_input(net, x, 2, derivative(act)), rtol=1e-12, atol=1e-12)
    batch_gap, sample_gap_min = EPSILON_GAP[type(act).__name__.lower()]
    assert ((lrp - gxi).norm() / gxi.norm()).item() == pytest.approx(batch_gap, abs=0.01)
    per_sample = (lrp - gxi).flatten(1).norm(dim=1) / gxi.flatten(1).norm(dim=1)
    assert per_sample.min().item() > sample_gap_min


def test_epsilon_lrp_on_one_sigmoid_unit_by_hand():
    # y = σ(2x − 1) at x = 1: z = 1.  ε-LRP = x · 2 · σ(1)/(1 + ε) = 2σ(1) = 1.4621171572600098 (ε = 1e-9 moves
    # the 9th digit), gradient × input = x · 2 · σ(1)(1 − σ(1)) = 0.39322386648296376: 3.7 times smaller.
    net = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid()).to(DT)
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[0].bias.fill_(-1.0)
    x = tensor([1.0])
    s1 = 1 / (1 + torch.exp(torch.tensor(-1.0, dtype=DT))).item()
    lrp = tribute.explain(net, x, "lrp_epsilon", target=0, epsilon=1e-9, unbounded=True)  # refused by default
    assert lrp.item() == pytest.approx(2 * s1 / (1 + 1e-9), rel=1e-15)
    assert lrp.item() == pytest.approx(1.4621171572600098, abs=2e-9)
    gxi = tribute.explain(net, x, "input_x_gradient", target=0)
    assert gxi.item() == pytest.approx(2 * s1 * (1 - s1), rel=1e-15)
    # near z = 0 the ratio is bounded only by ε: at x = ½ + 5e-7, z = 1e-6 and g = σ(1e-6)/(1e-6 + 1e-9)
    # ≈ 0.5/1.001e-6 = 499 500, so ε-LRP ≈ (½) · 2 · 499 500 ≈ 5.0e5 for an output below 1
    x = tensor([0.5 + 5e-7])
    z = 2 * x.item() - 1
    lrp = tribute.explain(net, x, "lrp_epsilon", target=0, epsilon=1e-9, unbounded=True)
    expected = x.item() * 2 * (1 / (1 + torch.exp(torch.tensor(-z, dtype=DT))).item()) / (z + 1e-9)
    assert lrp.item() == pytest.approx(expected, rel=1e-6)
    assert 4.9e5 < lrp.item() < 5.1e5


# -- Erion et al. (2021): expected gradients against a plain Monte Carlo of its definition -------------------------
def path_terms(net, x, refs, target, j, alpha):
    """(x − x̄) ⊙ ∂S(x̄ + α(x − x̄))/∂x for one draw (reference index j, α) per row, by autograd."""
    ref = refs[j]
    point = (ref + alpha[:, None] * (x - ref)).requires_grad_(True)
    (grad,) = torch.autograd.grad(net(point)[:, target].sum(), point)
    return (x - ref) * grad


def eg_setup():
    net = seeded_mlp(nn.Tanh())
    g = torch.Generator().manual_seed(5)
    return net, torch.randn(3, 4, generator=g, dtype=DT), torch.randn(5, 4, generator=g, dtype=DT)


def same_draws(x, refs, seed, samples):
    """The method's draws: per input, a stream seeded from ``seed`` and the input, one (x̄, α) per sample."""
    streams = SampleStreams(x, seed)
    return [draw_references(streams, torch.arange(len(x)), len(refs), dtype=DT, device="cpu") for _ in range(samples)]


def test_expected_gradients_is_the_monte_carlo_of_its_definition_with_the_same_draws():
    # φ(x) = E_{x̄∼D, α∼U(0,1)}[(x − x̄) ⊙ ∂S(x̄ + α(x − x̄))/∂x], D uniform on the 5 references
    net, x, refs = eg_setup()
    mc = torch.stack([path_terms(net, x, refs, 1, j, a) for j, a in same_draws(x, refs, 7, 40)]).mean(0)
    eg = tribute.explain(net, x, "expected_gradients", target=1, references=refs, samples=40, seed=7)
    torch.testing.assert_close(eg, mc, rtol=1e-12, atol=1e-14)


#: expected gradients of eg_setup(), target 1, samples 6, seed 3, as computed under the old spelling ``baselines=``
#: (before the rename to ``references=``): the rename changes the name only, never the draws or the values
EG_BEFORE_RENAME = [
    [0.075998603472052, 0.009809087276663854, 0.22760321396234673, 0.03153575538154768],
    [0.13028150784113435, -1.2316849961623326, 0.01521690969708627, 0.502835352020461],
    [0.9306339050437565, -0.03828094458238887, -0.8509181780693783, -0.8664238809881808],
]


def test_expected_gradients_references_gives_the_values_of_the_old_baselines_spelling_which_is_refused():
    net, x, refs = eg_setup()
    eg = tribute.explain(net, x, "expected_gradients", target=1, references=refs, samples=6, seed=3)
    torch.testing.assert_close(eg, torch.tensor(EG_BEFORE_RENAME, dtype=DT), rtol=1e-13, atol=1e-15)
    # baselines= was one letter from integrated gradients' baseline= (one x̄): refused, naming the new spelling
    # and the difference, never taken as something else
    for method in ("expected_gradients", "layer_expected_gradients"):
        layer = {"layer": "0"} if method.startswith("layer") else {}
        refused = r"baselines= is not accepted here: .* references= .*baseline= \(singular\)"
        with pytest.raises(TypeError, match=refused):
            tribute.explain(net, x, method, target=1, baselines=refs, samples=6, seed=3, **layer)
    lay = tribute.explain(net, x, "layer_expected_gradients", target=1, references=refs, samples=6, seed=3, layer="0")
    # at the first (linear) layer, the layer's path is the image of the input's path and the chain rule moves the
    # sum: with the same draws, Σ_k (A − Ā)_k ∂S/∂A_k = Σ_i (x − x̄)_i ∂S/∂x_i per sample
    assert lay.shape == (3, net[0].out_features)
    torch.testing.assert_close(lay.sum(1), eg.sum(1), rtol=1e-12, atol=1e-14)


def test_expected_gradients_is_unbiased_within_its_standard_error():
    # The expectation itself: the mean over the 5 references of integrated gradients from each, the α integral
    # by 64-node Gauss–Legendre (the tanh network is analytic: exact to 1e-12).  The estimate with N draws
    # must be within 4 standard errors s/√N of it, s the sample standard deviation of the N draws' terms.
    net, x, refs = eg_setup()
    nodes, weights = (torch.as_tensor(v, dtype=DT) for v in np.polynomial.legendre.leggauss(64))
    alphas, weights = (nodes + 1) / 2, weights / 2
    exact = sum(w * path_terms(net, x, refs, 1, torch.full((3,), j), torch.full((3,), a.item(), dtype=DT))
                for j in range(5) for a, w in zip(alphas, weights, strict=True)) / 5
    with torch.no_grad():  # completeness of each path integral: Σ_i φ_i = S(x) − mean_j S(x̄_j)
        torch.testing.assert_close(exact.sum(1), net(x)[:, 1] - net(refs)[:, 1].mean(), rtol=1e-12, atol=1e-12)
    n = 400
    terms = torch.stack([path_terms(net, x, refs, 1, j, a) for j, a in same_draws(x, refs, 11, n)])
    eg = tribute.explain(net, x, "expected_gradients", target=1, references=refs, samples=n, seed=11)
    standard_error = terms.std(0) / n**0.5
    assert ((eg - exact).abs() <= 4 * standard_error).all()
    assert (eg - exact).abs().max() > 1e-6  # an estimate, not the expectation


# -- Kindermans et al. (2019): SmoothGrad is input-invariant when both inputs draw the same noise ------------------
def shifted(net: nn.Sequential, c: torch.Tensor) -> nn.Sequential:
    """f'(x) = f(x − c): the shift absorbed in the first bias, b' = b − W c."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        out[0].bias.sub_(out[0].weight @ c)
    return out


def test_smoothgrad_of_the_gradient_is_input_invariant_with_the_same_noise():
    # SG_f'(x + c) = (1/K) Σ_k ∇f'(x + c + σε_k) = (1/K) Σ_k ∇f(x + σε_k) = SG_f(x) when ε_k and σ are the same:
    # noise_key=x keys both calls' noise streams and σ = 0.15 · (max − min) on x.
    f = seeded_mlp(nn.ReLU())
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(6), dtype=DT)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)
    f2 = shifted(f, c)
    options = {"target": 1, "samples": 16, "seed": 0}
    sg = tribute.explain(f, x, "smoothgrad", noise_key=x, **options)
    sg_shifted = tribute.explain(f2, x + c, "smoothgrad", noise_key=x, **options)
    torch.testing.assert_close(sg_shifted, sg, rtol=1e-12, atol=1e-12)
    assert sg.abs().max() > 0.1
    # gradient × input is not invariant: (x + c) ⊙ ∇f(x) − x ⊙ ∇f(x) = c ⊙ ∇f(x)
    gxi = tribute.explain(f, x, "input_x_gradient", target=1)
    gxi_shifted = tribute.explain(f2, x + c, "input_x_gradient", target=1)
    grad = tribute.explain(f, x, "gradient", target=1)
    torch.testing.assert_close(gxi_shifted - gxi, c * grad, rtol=1e-12, atol=1e-12)
    assert (c * grad).abs().max() > 0.1
    # without the key, each input keys its own noise (and σ from its own range): the two are not equal
    own = tribute.explain(f2, x + c, "smoothgrad", **options)
    assert (own - sg).abs().max() > 1e-3


# -- Adebayo et al. (2018): Guided Grad-CAM fails the cascading randomisation check, Grad-CAM passes ---------------
# On the committed Fashion-MNIST CNN (tests/fixtures/fashion, float32, its 64 stored images and their labels),
# cascading randomisation of the four parameter layers from the top, re-initialised with seed 0, both at layer
# "features"; per image, Spearman's ρ between the signed maps of the trained and the randomised model.  Measured
# (mean over images; NaN where the randomised Grad-CAM map is all zero, 0/21/26/19 images per step):
#
#     step          classifier  features.6  features.3  features.0
#     gradcam          0.031      −0.143      −0.085      −0.004
#     guided_gradcam   0.608       0.515       0.567       0.153
#
# Guided Grad-CAM keeps the sign pattern of guided backpropagation, which reconstructs the image, so its maps
# stay correlated with the trained model's until the first convolution is randomised; Grad-CAM's do not.
# At the top step guided Grad-CAM's ρ is the larger in all 64 images (its smallest is 0.18).
RANDOMISED_LAYERS = ["classifier", "features.6", "features.3", "features.0"]
PASSES_BELOW = 0.2  # |mean ρ| of a method that passes, at every step
FAILS_ABOVE = 0.45  # mean ρ of guided Grad-CAM in the three top steps


def cascading_spearman(method: str) -> torch.Tensor:
    model, images, labels = fashion_fixture()
    result = parameter_randomisation(model, images, method, labels, mode="cascading", layers=RANDOMISED_LAYERS,
                                     similarities=["spearman"], seed=0, method_options={"layer": "features"})
    assert result.steps == tuple(RANDOMISED_LAYERS)
    return result["spearman"]


def test_guided_gradcam_fails_cascading_randomisation_where_gradcam_passes():
    gradcam, guided = cascading_spearman("gradcam"), cascading_spearman("guided_gradcam")
    assert (gradcam.nanmean(1).abs() < PASSES_BELOW).all()
    assert (guided.nanmean(1)[:3] > FAILS_ABOVE).all()
    assert (guided[0] > gradcam[0]).all()  # the classifier alone randomised: no map is empty
