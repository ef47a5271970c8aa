"""RevealCancel at multivariate ops (softmax, the normalisations) and at bilinear products (matmul, einsum):
hand-worked parts and multipliers on 3-element examples, the reduction to Shrikumar et al. (2017) §3.5.3 when the
op is elementwise, equality across equivalent spellings.  Summation-to-delta on the zoo: test_reveal_cancel_zoo.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tribute
from tribute.attribution.deeplift_multivariate import GroupedOp, Groups, grouped_op
from tribute.attribution.reveal_cancel_multivariate import multivariate_multipliers, multivariate_parts

DT = torch.float64
E = math.e


def _op(func, x, *rest, name):
    rows = torch.cat([x, x])  # grouped_op reads the call; the 2N-row layout is not needed here
    found = grouped_op(func, (rows, *rest), {}, lambda t: t is rows, name, 8)
    assert found is not None
    return found[1]


def _matrices(op, xbar, x):
    """(Δy⁺, Δy⁻, M⁺, M⁻) for one group of 3 entries, M^± read row by row as M^±ᵀ e_k."""
    d = x - xbar
    dp, dn = d.clamp(min=0), d.clamp(max=0)
    yp, yn = multivariate_parts(op, dp, dn, xbar, x, op.f(xbar), op.f(x))
    rows = [multivariate_multipliers(op, dp, dn, xbar, x, yp, yn, e[None], e[None])
            for e in torch.eye(3, dtype=DT)]
    return yp[0], yn[0], torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


def _averaged_jacobian(f, start, move, nodes=64):
    """∫₀¹ J(start + α·move) dα by Gauss–Legendre with 64 nodes, through autograd's full Jacobian (independent of
    the rule's VJPs and closed forms)."""
    a, w = np.polynomial.legendre.leggauss(nodes)
    return sum(float(wk) / 2 * torch.autograd.functional.jacobian(f, start + float(ak + 1) / 2 * move)
               for ak, wk in zip(a, w, strict=True))


def _broyden(m0, d, target):
    return m0 + torch.outer(target - m0 @ d, d) / (d @ d)


def _check_multipliers(f, xbar, x, yp, yn, mp, mn):
    d = x - xbar
    dp, dn = d.clamp(min=0), d.clamp(max=0)
    torch.testing.assert_close(mp @ dp, yp, rtol=0, atol=1e-14)  # M⁺Δx⁺ = Δy⁺
    torch.testing.assert_close(mn @ dn, yn, rtol=0, atol=1e-14)
    m0p = 0.5 * (_averaged_jacobian(f, xbar, dp) + _averaged_jacobian(f, xbar + dn, dp))
    m0n = 0.5 * (_averaged_jacobian(f, xbar, dn) + _averaged_jacobian(f, xbar + dp, dn))
    torch.testing.assert_close(mp, _broyden(m0p, dp, yp), rtol=0, atol=1e-7)
    torch.testing.assert_close(mn, _broyden(m0n, dn, yn), rtol=0, atol=1e-7)


def test_softmax_by_hand():
    # x̄ = 0, x = (1, −1, 0.5): Δx⁺ = (1, 0, 0.5), Δx⁻ = (0, −1, 0), softmax(v) = exp(v)/Σexp(v)
    xbar = torch.zeros(1, 3, dtype=DT)
    x = torch.tensor([[1.0, -1.0, 0.5]], dtype=DT)
    q = math.sqrt(E)
    f0 = torch.full((3,), 1 / 3, dtype=DT)
    f_plus = torch.tensor([E, 1, q], dtype=DT) / (E + 1 + q)  # softmax(1, 0, 0.5)
    f_minus = torch.tensor([1, 1 / E, 1], dtype=DT) / (2 + 1 / E)  # softmax(0, −1, 0)
    fx = torch.tensor([E, 1 / E, q], dtype=DT) / (E + 1 / E + q)  # softmax(1, −1, 0.5)
    op = _op(torch.softmax, xbar, -1, name="softmax")
    yp, yn, mp, mn = _matrices(op, xbar, x)
    torch.testing.assert_close(yp, 0.5 * (f_plus - f0) + 0.5 * (fx - f_minus), rtol=0, atol=1e-15)
    torch.testing.assert_close(yn, 0.5 * (f_minus - f0) + 0.5 * (fx - f_plus), rtol=0, atol=1e-15)
    _check_multipliers(lambda v: torch.softmax(v, -1), xbar[0], x[0], yp, yn, mp, mn)


def test_layer_norm_by_hand():
    # x̄ = (1, 0, 0), x = (2, −1, 0), no ε: LN(v) = (v − v̄)/σ(v).  LN(2, 0, 0) = LN(1, 0, 0) = (√2, −1/√2, −1/√2)
    # (the positive part alone only rescales the centred vector: its first bracket is 0), LN(1, −1, 0) =
    # √(3/2)·(1, −1, 0), LN(2, −1, 0) = (5, −4, −1)/√14; then the weight w and bias b (b cancels).
    w, b = torch.tensor([0.5, 1.0, 2.0], dtype=DT), torch.tensor([0.3, -0.2, 0.1], dtype=DT)
    xbar, x = torch.tensor([[1.0, 0.0, 0.0]], dtype=DT), torch.tensor([[2.0, -1.0, 0.0]], dtype=DT)
    f0 = f_plus = torch.tensor([math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2)], dtype=DT)
    f_minus = math.sqrt(1.5) * torch.tensor([1.0, -1.0, 0.0], dtype=DT)
    fx = torch.tensor([5.0, -4.0, -1.0], dtype=DT) / math.sqrt(14)
    op = _op(F.layer_norm, xbar, (3,), w, b, 0.0, name="layer_norm")
    yp, yn, mp, mn = _matrices(op, xbar, x)
    torch.testing.assert_close(yp, w * 0.5 * (fx - f_minus), rtol=0, atol=1e-15)
    torch.testing.assert_close(yn, w * (0.5 * (f_minus - f0) + 0.5 * (fx - f_plus)), rtol=0, atol=1e-15)
    _check_multipliers(lambda v: F.layer_norm(v, (3,), w, b, 0.0), xbar[0], x[0], yp, yn, mp, mn)


@pytest.mark.parametrize("norm", ["layer_norm", "group_norm", "rms_norm"])
def test_the_method_gives_each_part_its_column_of_the_multiplier(norm):
    # a readout c·F(x) of one group with Δx⁺ = e₁ and Δx⁻ = −e₂: φ₁ = c·M⁺e₁ = c·Δy⁺ and φ₂ = c·(−M⁻e₂) = c·Δy⁻
    # (the correction fixes the column of the moving entry to the part's Δy), φ₃ = 0
    c = torch.tensor([0.7, -1.3, 0.4], dtype=DT)
    calls = {"layer_norm": lambda v: F.layer_norm(v, (3,)), "rms_norm": lambda v: F.rms_norm(v, (3,)),
             "group_norm": lambda v: F.group_norm(v[:, :, None], 1)[..., 0]}
    f = calls[norm]
    xbar, x = torch.tensor([[0.3, 0.9, -0.4]], dtype=DT), torch.tensor([[1.3, -0.1, -0.4]], dtype=DT)
    phi = tribute.explain(lambda v: (f(v) * c).sum(-1, keepdim=True), x, "deeplift_reveal_cancel", target=0,
                          baseline=xbar)
    f_plus, f_minus = f(xbar + torch.tensor([[1.0, 0, 0]], dtype=DT)), f(xbar - torch.tensor([[0, 1.0, 0]], dtype=DT))
    yp = 0.5 * (f_plus - f(xbar)) + 0.5 * (f(x) - f_minus)
    yn = f(x) - f(xbar) - yp
    torch.testing.assert_close(phi[0], torch.stack([(c * yp).sum(), (c * yn).sum(), torch.zeros((), dtype=DT)]),
                               rtol=0, atol=1e-14)


def _paper(f, xbar, dp, dn):
    """§3.5.3 entry by entry: Δy⁺, Δy⁻ and m^± = Δy^±/Δx^±."""
    x = xbar + dp + dn
    yp = 0.5 * (f(xbar + dp) - f(xbar)) + 0.5 * (f(x) - f(xbar + dn))
    yn = 0.5 * (f(xbar + dn) - f(xbar)) + 0.5 * (f(x) - f(xbar + dp))
    return yp, yn, yp / dp, yn / dn


@pytest.mark.parametrize("f", [torch.tanh, torch.sigmoid, F.gelu], ids=["tanh", "sigmoid", "gelu"])
def test_an_elementwise_op_gives_the_papers_parts_and_multipliers(f):
    g = torch.Generator().manual_seed(3)
    xbar = torch.randn(4, 6, generator=g, dtype=DT)
    dp, dn = torch.rand(4, 6, generator=g, dtype=DT) + 0.1, -torch.rand(4, 6, generator=g, dtype=DT) - 0.1
    x = xbar + dp + dn
    yp0, yn0, mp0, mn0 = _paper(f, xbar, dp, dn)
    ones = torch.ones_like(x)
    # groups of one entry: the vector rule *is* §3.5.3, multipliers included
    single = GroupedOp(f, Groups(lambda t: t), nodes=8)
    yp, yn = multivariate_parts(single, dp, dn, xbar, x, f(xbar), f(x))
    torch.testing.assert_close((yp, yn), (yp0, yn0), rtol=0, atol=1e-15)
    mp, mn = multivariate_multipliers(single, dp, dn, xbar, x, yp, yn, ones, ones)
    torch.testing.assert_close((mp, mn), (mp0, mn0), rtol=1e-13, atol=1e-15)
    # groups of six: the parts are still the paper's, entry by entry (F(x̄ + Δx⁺)_i reads entry i alone), and the
    # multipliers (matrices now) still carry each group's Δy^±
    rows = GroupedOp(f, Groups(lambda t: t.sum(-1, keepdim=True), (1,)), nodes=8)
    yp, yn = multivariate_parts(rows, dp, dn, xbar, x, f(xbar), f(x))
    torch.testing.assert_close((yp, yn), (yp0, yn0), rtol=0, atol=1e-15)
    mp, mn = multivariate_multipliers(rows, dp, dn, xbar, x, yp, yn, ones, ones)
    torch.testing.assert_close(((mp * dp).sum(-1), (mn * dn).sum(-1)), (yp0.sum(-1), yn0.sum(-1)), rtol=1e-13,
                               atol=1e-14)
    # and the method's elementwise rule gives the same attributions as the paper's multipliers
    c = torch.linspace(-1, 1, 6, dtype=DT)
    phi = tribute.explain(lambda v: (f(v) * c).sum(-1, keepdim=True), x, "deeplift_reveal_cancel", target=0,
                          baseline=xbar)
    torch.testing.assert_close(phi, c * (mp0 * dp + mn0 * dn), rtol=1e-12, atol=1e-14)


def test_a_group_without_positive_part_gives_all_of_its_difference_to_the_negative_part():
    xbar = torch.tensor([[0.5, 1.0, -0.2]], dtype=DT)
    x = xbar - torch.tensor([[0.4, 0.0, 1.1]], dtype=DT)
    op = _op(torch.softmax, xbar, -1, name="softmax")
    yp, yn, mp, mn = _matrices(op, xbar, x)
    assert bool((yp == 0).all())
    torch.testing.assert_close(yn, (torch.softmax(x, -1) - torch.softmax(xbar, -1))[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(mn @ (x - xbar)[0], yn, rtol=0, atol=1e-15)


def test_masked_scores_carry_no_difference():
    # the attention pattern: scores masked with −∞ (masked_fill), a softmax, a readout; the masked inputs get 0
    mask = torch.tensor([False, True, False, True])  # broadcast over the batch (input and reference rows alike)
    c = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=DT)

    def model(v):
        return (torch.softmax(v.masked_fill(mask, -math.inf), -1) * c).sum(-1, keepdim=True)

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, generator=g, dtype=DT)
    phi = tribute.explain(model, x, "deeplift_reveal_cancel", target=0)
    delta = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(phi.sum(1), delta, rtol=1e-13, atol=0)
    assert bool((phi[:, mask] == 0).all()) and bool((phi[:, ~mask] != 0).all())


def test_matmul_and_einsum_split_like_the_elementwise_product():
    # a·b summed, a @ bᵀ and einsum: one function, three spellings, the same Shapley split of Δ(ab)
    spellings = {
        "mul": lambda a, b: (a * b).sum(-1, keepdim=True),
        "matmul": lambda a, b: (a[:, None, :] @ b[:, :, None])[:, 0],
        "einsum": lambda a, b: torch.einsum("ni,ni->n", a, b)[:, None],
    }
    g = torch.Generator().manual_seed(6)
    x, base = torch.randn(3, 8, generator=g, dtype=DT), torch.randn(3, 8, generator=g, dtype=DT)
    phis = {k: tribute.explain(lambda v, f=f: f(torch.tanh(v[:, :4]), v[:, 4:] - 0.3), x, "deeplift_reveal_cancel",
                               target=0, baseline=base) for k, f in spellings.items()}
    torch.testing.assert_close(phis["matmul"], phis["mul"], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(phis["einsum"], phis["mul"], rtol=1e-13, atol=1e-15)
    delta = spellings["mul"](torch.tanh(x[:, :4]), x[:, 4:] - 0.3) - spellings["mul"](torch.tanh(base[:, :4]),
                                                                                      base[:, 4:] - 0.3)
    torch.testing.assert_close(phis["mul"].sum(1), delta[:, 0], rtol=1e-13, atol=0)


def test_a_product_with_a_parameter_is_the_linear_rule():
    # x @ Wᵀ + b, addmm(b, x, Wᵀ) (HF's Conv1D) and F.linear: the same layer, the same attributions
    g = torch.Generator().manual_seed(7)
    w, b, c = (torch.randn(*s, generator=g, dtype=DT) for s in ((5, 4), (5,), (5,)))
    x = torch.randn(3, 4, generator=g, dtype=DT)
    layers = {"linear": lambda v: F.linear(v, w, b), "matmul": lambda v: v @ w.T + b,
              "addmm": lambda v: torch.addmm(b, v, w.T)}
    phis = {k: tribute.explain(lambda v, f=f: (torch.tanh(f(v)) * c).sum(-1, keepdim=True), x,
                               "deeplift_reveal_cancel", target=0) for k, f in layers.items()}
    torch.testing.assert_close(phis["matmul"], phis["linear"], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(phis["addmm"], phis["linear"], rtol=1e-13, atol=1e-15)


def test_an_index_tensor_inside_a_tuple_selects_rows():
    # HF's sequence classifiers pool with logits[arange(N), last]: the index is not data to zero
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 4, 2, generator=g, dtype=DT)
    by_index = tribute.explain(lambda v: torch.tanh(v)[torch.arange(v.shape[0]), -1], x, "deeplift_reveal_cancel",
                               target=1)
    by_slice = tribute.explain(lambda v: torch.tanh(v)[:, -1], x, "deeplift_reveal_cancel", target=1)
    torch.testing.assert_close(by_index, by_slice, rtol=0, atol=0)
    assert bool((by_index[:, -1, 1] != 0).all())


def test_a_softmax_over_the_batch_is_refused_by_name():
    with pytest.raises(tribute.core.UncoveredModelError, match="softmax"):
        tribute.explain(lambda v: torch.softmax(v, 0), torch.randn(2, 3, dtype=DT), "deeplift_reveal_cancel",
                        target=0)


@pytest.mark.filterwarnings("error")  # the parts of the output must sum to its difference (else: a warning)
def test_where_and_masked_fill_write_no_difference():
    # one function in three spellings: the written constant 0.7 is the same in input and reference rows
    keep = torch.tensor([True, False, True, False, True])
    c = torch.linspace(-1, 2, 5, dtype=DT)
    spellings = {"where": lambda v: torch.where(keep, torch.tanh(v), 0.7),
                 "method": lambda v: torch.tanh(v).where(keep, torch.full((5,), 0.7, dtype=DT)),
                 "masked_fill": lambda v: torch.tanh(v).masked_fill(~keep, 0.7)}
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(9), dtype=DT)
    phis = {k: tribute.explain(lambda v, f=f: (f(v) * c).sum(-1, keepdim=True), x, "deeplift_reveal_cancel",
                               target=0) for k, f in spellings.items()}
    delta = ((torch.tanh(x) - torch.tanh(torch.zeros_like(x))) * c * keep).sum(1)
    for phi in phis.values():
        torch.testing.assert_close(phi.sum(1), delta, rtol=1e-13, atol=0)
        assert bool((phi[:, ~keep] == 0).all())
    torch.testing.assert_close(phis["method"], phis["where"], rtol=0, atol=0)
    torch.testing.assert_close(phis["masked_fill"], phis["where"], rtol=0, atol=0)
