"""DeepLIFT on modern networks: products, quotients, softmax and the normalisations (issue 13).

Each rule is checked by hand on 3-element examples (its multipliers against values worked out on paper, and
M Δx = Δy through summation-to-delta), against an independent dense implementation (the averaged Jacobian formed
entry by entry), by the identity d/dx Σφ(x) = ∇S(x) for derivatives of the attribution (Σφ = S(x) − S(x̄) for
every x, so its gradient is the score's), and by summation-to-delta on the zoo: Hugging Face ConvNeXt,
EfficientNet (a squeeze-and-excitation gate: a product of two tensors on the path), ViT and Swin (attention by
parts: products and a softmax; LayerNorm), BERT and GPT-2 (on input embeddings with a mask, and at the
embedding layer on token ids), to 1e-10 relative in float64 and 1e-4 in float32.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import OnEmbeddings, text_batch, text_model
from torch import nn

import tribute
from tribute.core import register_rule, rule_table
from tribute.core.quadrature import quadrature

DT = torch.float64


class Fn(nn.Module):
    """A model f(x) = fn(x) whose output rows are the scores."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _deeplift(fn, x, base, target=0, **options):
    return tribute.DeepLift(Fn(fn), baseline=base, strict=True, **options).attribute(x, target=target)


def _delta(fn, x, base, target=0):
    with torch.no_grad():
        return fn(x)[:, target] - fn(base)[:, target]


def _input_and_reference(seed: int, n: int, features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """(n, features) inputs and references drawn from one seeded generator, which is returned for further draws."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g, dtype=DT), torch.randn(n, features, generator=g, dtype=DT), g


def _sums_to_delta(fn, x, base, targets: int) -> None:
    """Summation-to-delta, Σφ = S_t(x) − S_t(x̄), for every output t < ``targets``, to float64 rounding."""
    for target in range(targets):
        phi = _deeplift(fn, x, base, target=target)
        torch.testing.assert_close(phi.sum(1), _delta(fn, x, base, target), rtol=1e-12, atol=1e-14)


# -- products: the Shapley split, worked by hand -----------------------------------------------------------------
A, A_REF = torch.tensor([1.0, 2.0, 3.0], dtype=DT), torch.tensor([0.0, 1.0, -1.0], dtype=DT)
B, B_REF = torch.tensor([2.0, -1.0, 1.0], dtype=DT), torch.tensor([1.0, 1.0, 1.0], dtype=DT)
PAIR, PAIR_REF = torch.cat([A, B])[None], torch.cat([A_REF, B_REF])[None]


def _inner(spelling):
    """Σᵢ aᵢbᵢ of the two halves of a 6-entry row, written as ``spelling``."""
    def fn(x):
        a, b = x[:, :3], x[:, 3:]
        if spelling == "mul":
            return (a * b).sum(1, keepdim=True)
        if spelling == "imul":
            a = a.clone()
            a *= b
            return a.sum(1, keepdim=True)
        if spelling == "matmul":
            return torch.matmul(a[:, None, :], b[:, :, None])[:, 0]
        if spelling == "@":
            return (a[:, None, :] @ b[:, :, None])[:, 0]
        if spelling == "bmm":
            return torch.bmm(a[:, None, :], b[:, :, None])[:, 0]
        if spelling == "einsum":
            return torch.einsum("ni,ni->n", a, b)[:, None]
        if spelling == "einsum_list":
            return torch.einsum("ni,ni->n", [a, b])[:, None]
        raise ValueError(spelling)

    return fn


@pytest.mark.parametrize("spelling", ["mul", "imul", "matmul", "@", "bmm", "einsum", "einsum_list"])
def test_the_product_rule_worked_by_hand(spelling):
    # Δa = (1, 1, 4), Δb = (1, −2, 0); multipliers m_a = (b + b̄)/2 = (1.5, 0, 1), m_b = (a + ā)/2 = (0.5, 1.5, 1):
    # φ_a = m_a·Δa = (1.5, 0, 4), φ_b = m_b·Δb = (0.5, −3, 0); Σφ = 3 = Σab − Σāb̄ = 3 − 0
    phi = _deeplift(_inner(spelling), PAIR, PAIR_REF)
    torch.testing.assert_close(phi, torch.tensor([[1.5, 0.0, 4.0, 0.5, -3.0, 0.0]], dtype=DT), rtol=0, atol=1e-15)
    # the multipliers themselves: φ/Δx where Δx ≠ 0
    m = phi / (PAIR - PAIR_REF)
    torch.testing.assert_close(m[0, [0, 1, 2, 3, 4]], torch.tensor([1.5, 0.0, 1.0, 0.5, 1.5], dtype=DT))


def test_a_square_is_the_product_of_a_tensor_with_itself():
    # a·a: m = 2·(a + ā)/2 = a + ā, the secant of a²: φ = (a + ā)Δa = a² − ā² = (1, 3, 8)
    phi = _deeplift(lambda x: x * x, A[None], A_REF[None], target=2)
    torch.testing.assert_close(phi, torch.tensor([[0.0, 0.0, 8.0]], dtype=DT))


def test_matrix_products_of_two_path_tensors_sum_to_delta():
    x, base, g = _input_and_reference(0, 4, 12)

    def attention_like(t):  # (N, 2, 3) @ (N, 3, 2), then the product with a third matrix of the same row
        q, k = t[:, :6].reshape(-1, 2, 3), t[:, 6:].reshape(-1, 3, 2)
        s = torch.tanh(q @ k)
        return torch.einsum("nij,njk->nik", s, torch.sigmoid(k.transpose(1, 2))).flatten(1)

    _sums_to_delta(attention_like, x, base, 6)


def test_affine_products_of_two_path_tensors_sum_to_delta():
    # addmm(c, a, W) = c + a @ W with c and a on the path (separately affine: the rule holds), baddbmm(c, q, k)
    x, base, g = _input_and_reference(9, 4, 6)
    w = torch.randn(3, 3, generator=g, dtype=DT)

    def affine(t):
        a, c = torch.tanh(t[:, :3]), torch.sigmoid(t[:, 3:])
        h = torch.addmm(c, a, w, beta=0.5, alpha=2.0)
        return torch.baddbmm(c[:, :, None], h[:, :, None], a[:, None, :]).flatten(1)

    _sums_to_delta(affine, x, base, 9)


# -- quotients ----------------------------------------------------------------------------------------------------
DEN, DEN_REF = torch.tensor([2.0, 4.0, 1.0], dtype=DT), torch.tensor([1.0, 2.0, 1.0], dtype=DT)


def test_the_quotient_rule_worked_by_hand():
    # a/b: m_a = (1/b + 1/b̄)/2 = (0.75, 0.375, 1), m_b = −(a + ā)/2/(b·b̄) = (−0.25, −0.1875, −1);
    # Δa = (1, 1, 4), Δb = (1, 2, 0): φ_a = (0.75, 0.375, 4), φ_b = (−0.25, −0.375, 0), Σ per entry = Δ(a/b)
    x, base = torch.cat([A, DEN])[None], torch.cat([A_REF, DEN_REF])[None]
    expected = {0: [0.75, 0, 0, -0.25, 0, 0], 1: [0, 0.375, 0, 0, -0.375, 0], 2: [0, 0, 4.0, 0, 0, 0]}

    def divide(t):
        return t[:, :3] / t[:, 3:]

    def divide_in_place(t):
        a = t[:, :3].clone()
        a /= t[:, 3:]
        return a

    for fn in (divide, divide_in_place, lambda t: torch.div(t[:, :3], t[:, 3:])):
        for target, phi_hand in expected.items():
            phi = _deeplift(fn, x, base, target=target)
            torch.testing.assert_close(phi, torch.tensor([phi_hand], dtype=DT), rtol=0, atol=1e-15)


def test_a_reciprocal_takes_the_secant_of_one_over_b():
    # 1/b: m = −1/(b·b̄) = (−0.5, −0.125, −1): φ = (−0.5, −0.25, 0) = Δ(1/b)
    for target, value in enumerate([-0.5, -0.25, 0.0]):
        phi = _deeplift(lambda t: 1 / t, DEN[None], DEN_REF[None], target=target)
        torch.testing.assert_close(phi[0, target], torch.tensor(value, dtype=DT))
        assert phi.sum() == phi[0, target]


def test_a_constant_divided_in_place_by_a_path_tensor_and_forms_without_a_rule():
    # c /= b with c off the path: c's copy is kept for the rule, the write goes into c; φ as for 1/b above
    def constant_over(t):
        c = torch.full_like(t, 2.0)
        c /= t
        return c

    phi = _deeplift(constant_over, DEN[None], DEN_REF[None], target=0)
    torch.testing.assert_close(phi, torch.tensor([[-1.0, 0.0, 0.0]], dtype=DT))  # 2·(−1/(2·1))·1 = Δ(2/b₁)
    # a floor division of two path tensors (piecewise constant) has no rule: refused by name
    with pytest.raises(ValueError, match="div"):
        _deeplift(lambda t: torch.div(t, t.flip(1), rounding_mode="floor"), DEN[None], DEN_REF[None])


def test_a_hand_written_layer_norm_and_gelu_sum_to_delta():
    # ConvNeXt's channels-first LayerNorm and GPT-2's gelu_new, written with mean, pow, sqrt, a quotient and products
    def hand(t):
        c = t - t.mean(1, keepdim=True)
        h = c / torch.sqrt(c.pow(2).mean(1, keepdim=True) + 1e-6)
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))

    x, base, g = _input_and_reference(2, 5, 4)
    _sums_to_delta(hand, x, base, 4)


# -- multivariate ops: worked by hand ----------------------------------------------------------------------------
def test_softmax_multipliers_worked_by_hand_with_a_masked_entry():
    # softmax of (x₁, x₂, −∞): the masked entry stays at 0 and counts as no difference (−∞ − (−∞) is no NaN).
    # On the other two the softmax is σ(x₁ − x₂): its Jacobian is k(u)·[[1, −1], [−1, 1]] with k = σ'(u), so the
    # averaged Jacobian is the secant k̄ = (σ(u) − σ(ū))/(u − ū) times the same matrix and M Δx = Δy already.
    # x = (1, −1), x̄ = (0, 0.5): u = 2, ū = −0.5; φ for y₁ = Δx ⊙ k̄(1, −1, 0) = k̄·(1, 1.5, 0)
    x = torch.tensor([[1.0, -1.0, 3.0]], dtype=DT)
    base = torch.tensor([[0.0, 0.5, 0.0]], dtype=DT)
    masked = torch.tensor([False, False, True])
    k = (torch.sigmoid(torch.tensor(2.0, dtype=DT)) - torch.sigmoid(torch.tensor(-0.5, dtype=DT))) / 2.5
    phi = _deeplift(lambda t: torch.softmax(t.masked_fill(masked, -math.inf), -1), x, base)
    # (8-node Gauss–Legendre on σ'(u) over u ∈ [−0.5, 2]: 1e-11 relative, measured)
    torch.testing.assert_close(phi, torch.tensor([[k, 1.5 * k, 0.0]], dtype=DT), rtol=1e-10, atol=0)


def test_softmax_of_a_shift_takes_the_jacobian_worked_by_hand():
    # a shift by (1, 1, 1) leaves the softmax s = (1/4, 1/2, 1/4) unchanged along the whole segment: M = J(x) =
    # diag(s) − s sᵀ and for y₂ its row (−1/8, 1/4, −1/8); φ = Δx ⊙ that, summing to Δy₂ = 0
    base = torch.tensor([[0.0, math.log(2.0), 0.0]], dtype=DT)
    phi = _deeplift(lambda t: F.softmax(t, dim=1), base + 1, base, target=1)
    torch.testing.assert_close(phi, torch.tensor([[-1 / 8, 1 / 4, -1 / 8]], dtype=DT), rtol=1e-14, atol=1e-15)


def test_layer_norm_multipliers_worked_by_hand():
    # LayerNorm without eps on 3 entries, x̄ = (−1, 0, 1): σ̄ = √(2/3), ĉ = √(3/2)·(−1, 0, 1), and its Jacobian
    # J = (I − 11ᵀ/3 − ĉĉᵀ/3)/σ has third row √(3/2)·(1/6, −1/3, 1/6).
    # a shift x = x̄ + 1: LN is unchanged along the segment, M = J: φ = Δx ⊙ row = √(3/2)·(1/6, −1/3, 1/6)
    # a scaling x = 2x̄: along x̄(1 + α), J = J(x̄)/(1 + α) and J̄ = J(x̄)·ln 2, while J̄ Δx = 0 = Δy:
    # φ = Δx ⊙ ln 2·row = ln 2·√(3/2)·(−1/6, 0, 1/6)
    base = torch.tensor([[-1.0, 0.0, 1.0]], dtype=DT)
    row = math.sqrt(1.5) * torch.tensor([[1 / 6, -1 / 3, 1 / 6]], dtype=DT)

    def norm(t):
        return F.layer_norm(t, (3,), eps=0.0)

    torch.testing.assert_close(_deeplift(norm, base + 1, base, target=2), row, rtol=1e-12, atol=1e-15)
    scaled = math.log(2) * (base * row)
    torch.testing.assert_close(_deeplift(norm, 2 * base, base, target=2), scaled, rtol=1e-9, atol=1e-15)


# -- multivariate ops: against a dense implementation ------------------------------------------------------------
def _dense_multiplier(f, x, base, nodes):
    """M = J̄ + (Δy − J̄Δx)Δxᵀ/‖Δx‖² for f of one group per row, J̄ by Gauss–Legendre, formed entry by entry."""
    alphas, weights = quadrature("gauss_legendre", nodes)
    out = []
    for xi, ri in zip(x, base, strict=True):
        dx = xi - ri
        jbar = sum(w * torch.autograd.functional.jacobian(lambda t: f(t[None])[0], ri + a * dx)
                   for a, w in zip(alphas.tolist(), weights.tolist(), strict=True))
        dy = f(xi[None])[0] - f(ri[None])[0]
        out.append(jbar + torch.outer(dy - jbar @ dx, dx) / (dx @ dx))
    return torch.stack(out)


WEIGHT = torch.linspace(0.5, 1.5, 5, dtype=DT)
BIAS = torch.linspace(-0.3, 0.4, 5, dtype=DT)
ONE_GROUP = {
    "softmax": lambda t: torch.softmax(2 * t, 1),
    "log_softmax": lambda t: F.log_softmax(2 * t, dim=1),
    "softmin": lambda t: F.softmin(2 * t, dim=1),
    "softmax_dtype": lambda t: torch.softmax(2 * t, 1, dtype=DT),  # a dtype: autograd's VJPs at the nodes
    "layer_norm": lambda t: F.layer_norm(t, (5,), WEIGHT, BIAS),
    "rms_norm": lambda t: F.rms_norm(t, (5,), WEIGHT),
    "group_norm": lambda t: F.group_norm(t[:, :, None], 1, WEIGHT, BIAS)[:, :, 0],
    "normalize": lambda t: F.normalize(t, dim=1),
}


# the normalisations' averaged Jacobian is exact (closed form, deeplift_norms): against 128 dense nodes, converged
CLOSED_FORM = {"layer_norm", "rms_norm", "group_norm"}


@pytest.mark.parametrize("name", sorted(ONE_GROUP))
def test_multivariate_multipliers_equal_the_dense_formula(name):
    f = ONE_GROUP[name]
    x, base, g = _input_and_reference(3, 3, 5)
    dense = _dense_multiplier(f, x, base, 128 if name in CLOSED_FORM else rule_table("deeplift")["softmax"].nodes)
    for target in range(5):
        phi = _deeplift(f, x, base, target=target)
        torch.testing.assert_close(phi, (x - base) * dense[:, target], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(phi.sum(1), _delta(f, x, base, target), rtol=1e-12, atol=1e-14)


def test_the_rule_is_exact_for_any_number_of_nodes_and_converges_to_the_integral():
    f = ONE_GROUP["softmax"]
    x, base, g = _input_and_reference(4, 3, 5)
    original = rule_table("deeplift")["softmax"]
    phis = {}
    try:
        for nodes in (1, 2, 64, 128):
            register_rule("deeplift", "softmax", type(original)(nodes=nodes), replace=True)
            phis[nodes] = _deeplift(f, x, base, target=1)
            torch.testing.assert_close(phis[nodes].sum(1), _delta(f, x, base, 1), rtol=1e-12, atol=1e-14)
    finally:
        register_rule("deeplift", "softmax", original, replace=True)
    assert (phis[1] - phis[128]).abs().max() > 1e-2  # one node is a different, coarser J̄
    torch.testing.assert_close(phis[64], phis[128], rtol=1e-10, atol=1e-12)  # converged: J̄ is the integral
    # the default 8 nodes: 4e-7 of the largest φ off the integral here (measured); scores spread twice as far,
    # 1.6e-3, and 16 nodes 4e-7 (a sharper softmax along the segment needs more nodes; summation holds regardless)
    phi = _deeplift(f, x, base, target=1)
    assert (phi - phis[128]).abs().max() <= 1e-6 * phis[128].abs().max()


def _node_counts(monkeypatch) -> list[int]:
    """The node counts of every softmax quadrature the rule computes from now on (spied)."""
    from tribute.attribution import deeplift_multivariate as multivariate

    counts, sums = [], multivariate.softmax_sums
    monkeypatch.setattr(multivariate, "softmax_sums", lambda kind, r, dx, gs, a, w, d: counts.append(len(a))
                        or sums(kind, r, dx, gs, a, w, d))
    return counts


def _with_nodes(nodes, fn, *args, **kwargs):
    original = rule_table("deeplift")["softmax"]
    register_rule("deeplift", "softmax", type(original)(nodes=nodes), replace=True)
    try:
        return fn(*args, **kwargs)
    finally:
        register_rule("deeplift", "softmax", original, replace=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_softmax_takes_its_first_nodes_where_they_integrate_to_rounding(monkeypatch, dtype):
    # scores barely moving along the segment (float64) or within float32's resolution: 4 nodes meet the check, and φ is
    # the integral's (128 nodes, float64) as closely as the rule's fixed 8 nodes make it
    from tribute.attribution import deeplift_multivariate as multivariate

    scale = 0.01 if dtype == torch.float64 else 0.3
    x, base, _ = _input_and_reference(7, 16, 40)

    def f(t):
        return torch.softmax(scale * t, 1)

    integral = _with_nodes(128, _deeplift, f, x, base, target=1)
    counts = _node_counts(monkeypatch)
    phi = _deeplift(f, x.to(dtype), base.to(dtype), target=1)
    assert counts == [multivariate.FIRST_NODES]  # every row accepted the first nodes
    monkeypatch.setattr(multivariate, "FIRST_NODES", 8)  # the fixed rule: the rule's 8 nodes throughout
    fixed = _deeplift(f, x.to(dtype), base.to(dtype), target=1)
    assert counts[1:] == [8]
    top = integral.abs().max()
    fixed_err = float((fixed.double() - integral).abs().max() / top)
    err = float((phi.double() - integral).abs().max() / top)
    # float64: both at 1e-16 (measured 0 and 2e-16); float32: 6.3e-8 and 5.9e-8 (measured)
    assert err <= 2 * max(fixed_err, 10 * torch.finfo(dtype).eps)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(phi.double().sum(1), _delta(f, x, base, 1), rtol=tol, atol=tol)


def test_a_sharpening_softmax_takes_the_rules_nodes_and_its_accuracy(monkeypatch):
    # scores spread twice as far as above's 2·t: 4 nodes leave the residual far above rounding in every row, which
    # then take the rule's 8 nodes: φ is the fixed rule's exactly (1.6e-3 off the integral, as the module doc says),
    # and 16 nodes bring it to 4e-7
    from tribute.attribution import deeplift_multivariate as multivariate

    x, base, _ = _input_and_reference(4, 3, 5)

    def f(t):
        return torch.softmax(4 * t, 1)

    counts = _node_counts(monkeypatch)
    phi = _deeplift(f, x, base, target=1)
    assert counts == [multivariate.FIRST_NODES, 8]
    monkeypatch.setattr(multivariate, "FIRST_NODES", 8)
    assert torch.equal(_deeplift(f, x, base, target=1), phi)
    monkeypatch.undo()
    integral = _with_nodes(128, _deeplift, f, x, base, target=1)
    top = integral.abs().max()
    assert 1e-3 < (phi - integral).abs().max() / top < 2e-3
    assert (_with_nodes(16, _deeplift, f, x, base, target=1) - integral).abs().max() / top < 1e-6
    torch.testing.assert_close(phi.sum(1), _delta(f, x, base, 1), rtol=1e-12, atol=1e-14)


def test_a_layer_norm_whose_segment_passes_near_zero_variance_is_integrated_exactly():
    # the segment from x̄ = (1, −1, 0) to x = (−1, 1 + 1e-3, 0) passes within 1e-3 of constant entries, where
    # LayerNorm's 1/σ peaks (ε = 1e-5): J̄ against dense Gauss–Legendre nodes on pieces graded towards the peak
    x, base = torch.tensor([[-1.0, 1.001, 0.0]], dtype=DT), torch.tensor([[1.0, -1.0, 0.0]], dtype=DT)
    w = torch.tensor([0.5, 1.0, 1.5], dtype=DT)

    def f(t):
        return F.layer_norm(t, (3,), w)

    dx = (x - base)[0]
    star = float(-(base[0] - base[0].mean()) @ (dx - dx.mean()) / ((dx - dx.mean()) @ (dx - dx.mean())))
    jbar = 0
    cuts = sorted({0.0, 1.0, *(min(1.0, max(0.0, star + s * d)) for s in (-1, 1) for d in (0, 1e-1, 1e-2, 1e-3, 1e-4))})
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        alphas, weights = quadrature("gauss_legendre", 48)
        for a, wt in zip(alphas.tolist(), weights.tolist(), strict=True):
            jbar = jbar + (hi - lo) * wt * torch.autograd.functional.jacobian(
                lambda t: f(t[None])[0], base[0] + (lo + (hi - lo) * a) * dx)
    for target in range(3):
        phi = _deeplift(f, x, base, target=target)
        torch.testing.assert_close(phi[0], dx * jbar[target], rtol=1e-10, atol=1e-12)


GROUPED = {
    "softmax over a middle dim": lambda t: torch.softmax(t.reshape(-1, 2, 3, 4), dim=2).flatten(1),
    "layer_norm over two dims": lambda t: F.layer_norm(t.reshape(-1, 2, 3, 4), (3, 4)).flatten(1),
    "group_norm, 2 groups": lambda t: F.group_norm(t.reshape(-1, 4, 6), 2, WEIGHT[:4], BIAS[:4]).flatten(1),
    "instance_norm": lambda t: F.instance_norm(t.reshape(-1, 4, 6)).flatten(1),
    "normalize dim 1": lambda t: F.normalize(t.reshape(-1, 4, 6), dim=1).flatten(1),
}


@pytest.mark.parametrize("name", sorted(GROUPED))
def test_grouped_multivariate_ops_sum_to_delta(name):
    f = GROUPED[name]
    x, base, g = _input_and_reference(5, 3, 24)
    head = torch.randn(24, 2, generator=g, dtype=DT)

    def model(t):
        return torch.tanh(f(t)) @ head

    _sums_to_delta(model, x, base, 2)


def test_a_group_that_does_not_move_takes_the_jacobian():
    # rows equal to their reference: Δx = 0 in every group, φ = 0 and no NaN from the correction's quotient
    x = torch.randn(2, 5, dtype=DT, generator=torch.Generator().manual_seed(6))
    phi = _deeplift(ONE_GROUP["layer_norm"], x, x.clone(), target=3)
    assert torch.equal(phi, torch.zeros_like(x))


def test_a_softmax_over_the_batch_is_refused():
    x = torch.randn(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="softmax"):
        _deeplift(lambda t: torch.softmax(t, 0), x, torch.zeros_like(x))


# -- max pooling ---------------------------------------------------------------------------------------------------
def test_max_pooling_multipliers_worked_by_hand():
    # one window of 3: x = (1, 3, 2), x̄ = (2, 0, 1), Δy = 3 − 2 = 1.  Along x̄ + αΔx = (2 − α, 3α, 1 + α) the first
    # entry is the largest for α < 1/2, the second after: J̄ = (1/2, 1/2, 0), which both the default (the mean of
    # the selections at the two ends) and 8 Gauss–Legendre nodes (4 on each side of 1/2) find; J̄Δx = (−1 + 3)/2 =
    # 1 = Δy, so φ = Δx ⊙ J̄ = (−1/2, 3/2, 0).  The gradient at x alone would give (0, 3, 0), summing to 3
    x, base = torch.tensor([[1.0, 3.0, 2.0]], dtype=DT), torch.tensor([[2.0, 0.0, 1.0]], dtype=DT)
    original = rule_table("deeplift")["max_pool2d"]
    try:
        for rule in (original, type(original)(nodes=8)):
            register_rule("deeplift", "max_pool2d", rule, replace=True)
            phi = _deeplift(lambda t: F.max_pool2d(t[:, None, None], (1, 3)).flatten(1), x, base)
            torch.testing.assert_close(phi, torch.tensor([[-0.5, 1.5, 0.0]], dtype=DT), rtol=0, atol=1e-15)
    finally:
        register_rule("deeplift", "max_pool2d", original, replace=True)


@pytest.mark.parametrize("pool", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=3, stride=2, ceil_mode=True)], ids=["2x2", "3x3 s2 p1", "ceil"])
def test_max_pooling_sums_to_delta_where_input_and_reference_select_unlike_entries(pool):
    x, base, g = _input_and_reference(11, 3, 2 * 49)
    head = torch.randn(2 * 16, 2, generator=g, dtype=DT)

    def model(t):
        h = F.max_pool2d(torch.tanh(t.reshape(-1, 2, 7, 7)), **pool).flatten(1)
        return F.relu(h @ head[: h.shape[1]])  # 18 or 32 pooled entries

    assert not torch.equal(F.max_pool2d(x.reshape(-1, 2, 7, 7), **pool, return_indices=True)[1],
                           F.max_pool2d(base.reshape(-1, 2, 7, 7), **pool, return_indices=True)[1])
    _sums_to_delta(model, x, base, 2)


def test_the_derivative_of_a_max_pooling_attribution_is_the_scores_gradient():
    x, base, g = _input_and_reference(12, 2, 32)
    w = torch.randn(8, 2, generator=g, dtype=DT)

    def model(t):
        return torch.tanh(F.max_pool2d(F.softplus(t.reshape(-1, 2, 4, 4)), 3, 2, 1).flatten(1)) @ w

    xs = x.clone().requires_grad_()
    phi = tribute.DeepLift(Fn(model), baseline=base, differentiable=True, strict=True).attribute(xs, target=0)
    (grad,) = torch.autograd.grad(phi.sum(), xs)
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-11)


# -- derivatives of the attribution ---------------------------------------------------------------------------------
class TinyBlock(nn.Module):
    """Attention, LayerNorm, a quotient and a gate on (N, 3, 4) tokens: every rule of this file in one model."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.qkv = nn.Linear(4, 12).to(DT)
        self.head = nn.Linear(12, 2).to(DT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.7)

    def forward(self, x):
        t = x.reshape(-1, 3, 4)
        q, k, v = self.qkv(t).chunk(3, -1)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        h = F.layer_norm(t + a, (4,)) * torch.sigmoid(v)
        h = h / (1.5 + torch.tanh(q))
        return self.head(h.flatten(1))


def test_the_derivative_of_the_attribution_is_the_scores_gradient():
    # Σφ(x) = S(x) − S(x̄) for every x: its gradient, through the rules' backward pass (create_graph), is ∇S(x)
    model = TinyBlock().eval()
    x, base, g = _input_and_reference(8, 3, 12)
    xs = x.clone().requires_grad_()
    phi = tribute.DeepLift(model, baseline=base, differentiable=True, strict=True).attribute(xs, target=1)
    (grad,) = torch.autograd.grad(phi.sum(), xs)
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(leaf)[:, 1].sum(), leaf)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(phi.detach().sum(1), _delta(model, x, base, 1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_torchs_transformer_encoder_with_a_padding_mask_sums_to_delta(norm_first):
    # nn.MultiheadAttention taken apart (core/attention.py): its products, the softmax with −∞ at padded keys
    torch.manual_seed(10)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first,
                                       activation="gelu")

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.head = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(8, 3)

        def forward(self, x, mask):
            return self.head(self.enc(x, src_key_padding_mask=mask).mean(1))

    model = Encoder().to(DT).eval()
    x = torch.randn(3, 5, 8, dtype=DT)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[1, 3:] = True
    explainer = tribute.DeepLift(model, strict=True)
    phi = explainer.attribute(x, target=1, forward_kwargs={"mask": mask})
    with torch.no_grad():
        delta = model(x, mask)[:, 1] - model(torch.zeros_like(x), mask)[:, 1]
    torch.testing.assert_close(phi.flatten(1).sum(1), delta, rtol=1e-10, atol=1e-13)
    assert {"torch.softmax", "torch.matmul", "torch.nn.functional.layer_norm"} <= set(explainer.coverage.ruled)


# -- the zoo -------------------------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def _zoo(name, dtype):
    import test_zoo  # the zoo's models in their realistic state (cached there, in float64)

    model = test_zoo._model(name)
    return (model if dtype == DT else copy.deepcopy(model).to(dtype)), test_zoo._images().to(dtype)


def _relative_gap(phi, delta):
    return ((phi.flatten(1).sum(1).double() - delta.double()).abs() / delta.double().abs()).max().item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", ["convnext", "efficientnet", "vit", "swin"])
def test_deeplift_sums_to_delta_on_the_vision_zoo(name, dtype):
    model, x = _zoo(name, dtype)
    explainer = tribute.DeepLift(model, strict=True)
    phi = explainer.attribute(x, target=1)
    with torch.no_grad():
        delta = model(x).logits[:, 1] - model(torch.zeros_like(x)).logits[:, 1]
    assert torch.isfinite(phi).all() and delta.abs().min() > 1e-3
    assert _relative_gap(phi, delta) <= RTOL[dtype]
    assert not explainer.coverage.unruled


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_deeplift_sums_to_delta_on_text_models_at_the_embeddings(arch, dtype):
    model = OnEmbeddings(text_model(arch)).to(dtype).eval()
    ids, mask = text_batch()
    emb = model.embed(ids)
    phi = tribute.DeepLift(model, strict=True).attribute(emb, target=1, forward_kwargs={"attention_mask": mask})
    with torch.no_grad():
        delta = model(emb, mask)[:, 1] - model(torch.zeros_like(emb), mask)[:, 1]
    assert _relative_gap(phi, delta) <= RTOL[dtype]


EMBEDDINGS = {"bert": "bert.embeddings.word_embeddings", "gpt2": "transformer.wte"}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_layer_deeplift_sums_to_delta_at_the_embedding_layer(arch):
    model = text_model(arch)
    ids, mask = text_batch()
    unk = 1
    per_token = tribute.explain(model, ids, "layer_deeplift", layer=EMBEDDINGS[arch], target=2, baseline_token=unk,
                                keep_tokens=(0,), forward_kwargs={"attention_mask": mask}, reduce="sum", strict=True)
    assert per_token.shape == ids.shape
    reference = torch.where(ids == 0, ids, torch.full_like(ids, unk))  # padding kept: GPT-2 reads the same position
    with torch.no_grad():
        delta = model(ids, attention_mask=mask).logits[:, 2] - model(reference, attention_mask=mask).logits[:, 2]
    assert _relative_gap(per_token, delta) <= 1e-10
