"""DeepLIFT's linear layer (tribute.attribution.deeplift_linear): the gradient, with the references' zero rows skipped.

The rule must be autograd's gᵀW exactly where it applies: checked on a hand-worked 2×3 example, on DeepLIFT through
linear layers and multi-head attention (the rule forced on every layer against the rule off), and on the fallbacks
(a non-zero reference half, a non-finite weight)."""

import pytest
import torch
from torch import nn

import tribute
from tribute.attribution import deeplift_linear
from tribute.attribution.deeplift_linear import _PairedLinearFn  # noqa: PLC2701 (the node itself under test)


def _backward(x, w, g):
    x = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(_PairedLinearFn.apply(x, w, None), x, g)
    return gx


def test_zero_half_is_skipped_and_the_product_is_the_gradient():
    w = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], dtype=torch.float64)  # 2 outputs, 3 inputs
    x = torch.zeros(2, 3, dtype=torch.float64)
    g = torch.tensor([[2.0, 4.0], [0.0, 0.0]], dtype=torch.float64)  # the reference's row carries nothing
    # gᵀW by hand: row 0 = 2·[1, 2, 3] + 4·[−1, 0.5, 0] = [−2, 6, 6]; row 1 = 0
    expected = torch.tensor([[-2.0, 6.0, 6.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(_backward(x, w, g), expected)


def test_a_non_zero_reference_half_and_a_non_finite_weight_take_the_full_product():
    w = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], dtype=torch.float64)
    x = torch.zeros(2, 3, dtype=torch.float64)
    g = torch.tensor([[2.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(_backward(x, w, g), torch.tensor([[-2.0, 6.0, 6.0], [1.0, 2.0, 3.0]], dtype=torch.float64))
    w_inf = w.clone()
    w_inf[0, 0] = float("inf")
    g0 = torch.tensor([[2.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    got = _backward(x, w_inf, g0)
    full = g0 @ w_inf
    assert torch.isnan(got[1, 0]) and torch.equal(torch.isnan(got), torch.isnan(full))  # 0·∞ = NaN, as autograd
    assert torch.equal(got.nan_to_num(0.0), full.nan_to_num(0.0))


class _Attention(nn.Module):
    """Linear layers around nn.MultiheadAttention in its (L, N, E) layout, and a GELU MLP: every linear on the path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(6, 8)
        self.att = nn.MultiheadAttention(8, 2)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x: (N, 5, 6)
        h = self.inp(x).transpose(0, 1)
        h = (h + self.att(h, h, h, need_weights=False)[0]).transpose(0, 1)  # its parts run batch first
        h = h + self.mlp(h)
        return self.head(h.mean(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deeplift_with_the_rule_on_every_layer_equals_deeplift_without(monkeypatch, dtype):
    model = _Attention().to(dtype).eval()
    x = torch.randn(4, 5, 6, dtype=dtype, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(deeplift_linear, "MIN_MACS", 1 << 62)  # never: autograd's product
    m_off = tribute.DeepLift(model)
    off = m_off.attribute(x, target=1)
    assert "torch.nn.functional.linear" not in m_off.coverage.ruled
    monkeypatch.setattr(deeplift_linear, "MIN_MACS", 0)  # every layer
    dims, zero_half = [], deeplift_linear._zero_half  # noqa: SLF001
    monkeypatch.setattr(deeplift_linear, "_zero_half", lambda g: dims.append(zero_half(g)) or dims[-1])
    m_on = tribute.DeepLift(model)
    on = m_on.attribute(x, target=1)
    assert 0 in dims and None not in dims  # every reference half skipped
    assert m_on.coverage.linear["torch.nn.functional.linear"] >= 5  # ran, and counted as the gradient
    assert "torch.nn.functional.linear" not in m_on.coverage.ruled
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(on, off, rtol=tol, atol=tol)
    with torch.no_grad():  # summation-to-delta against the zero reference
        delta = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(on.flatten(1).sum(1), delta, rtol=tol * 10, atol=tol * 10)


def test_differentiable_attributions_keep_the_plain_op(monkeypatch):
    model = _Attention().double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(deeplift_linear, "MIN_MACS", 0)
    m = tribute.DeepLift(model, differentiable=True)
    m.attribute(x, target=0)
    assert m.coverage.linear["torch.nn.functional.linear"] >= 5


def test_products_skip_the_references_half_with_the_same_multipliers(monkeypatch):
    """Attention's QKᵀ and AV and the elementwise products: the written-out VJPs on the inputs' rows alone equal
    the full 2N-row ones (the references' rows get zeros either way)."""
    from tribute.attribution import deeplift_ops

    class Gated(_Attention):
        def forward(self, x):
            return super().forward(x) * torch.sigmoid(self.head(self.inp(x).mean(1)))  # a product of two paths

    model = Gated().double().eval()
    x = torch.randn(3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    calls, silent = [], deeplift_ops._references_silent  # noqa: SLF001
    monkeypatch.setattr(deeplift_ops, "_references_silent", lambda g, ts: calls.append(silent(g, ts)) or calls[-1])
    fast = tribute.DeepLift(model).attribute(x, target=2)
    assert calls and all(calls)  # every product took the half
    monkeypatch.setattr(deeplift_ops, "_references_silent", lambda g, ts: False)
    full = tribute.DeepLift(model).attribute(x, target=2)
    torch.testing.assert_close(fast, full, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    torch.testing.assert_close(fast.flatten(1).sum(1), delta, rtol=1e-10, atol=1e-10)


class _Products(nn.Module):
    """Linear layers written as Hugging Face's Conv1D (addmm on (N·T, C)), as x @ W and as torch.matmul, and one
    addmm with α and β: the left factor alone on the path."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.w1, self.b1 = torch.randn(6, 8, generator=g), torch.randn(8, generator=g)
        self.w2, self.w3, self.w4 = (torch.randn(8, 8, generator=g) for _ in range(3))
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # x: (N, 5, 6)
        n = x.shape[0]
        h = torch.addmm(self.b1, x.reshape(-1, 6), self.w1).view(n, 5, 8)
        h = torch.tanh(h) @ self.w2
        h = torch.matmul(torch.sigmoid(h).reshape(-1, 8), self.w3)
        h = torch.addmm(self.b1, torch.tanh(h), self.w4, beta=0.5, alpha=2.0).view(n, 5, 8)
        return self.head(h.mean(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_products_with_a_constant_factor_skip_the_references_half(monkeypatch, dtype):
    model = _Products().to(dtype).eval()
    for name in ("w1", "b1", "w2", "w3", "w4"):
        setattr(model, name, getattr(model, name).to(dtype))
    x = torch.randn(3, 5, 6, dtype=dtype, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(deeplift_linear, "MIN_MACS", 1 << 62)  # never: autograd's product
    off = tribute.DeepLift(model).attribute(x, target=2)
    monkeypatch.setattr(deeplift_linear, "MIN_MACS", 0)
    dims, zero_half = [], deeplift_linear._zero_half  # noqa: SLF001
    monkeypatch.setattr(deeplift_linear, "_zero_half", lambda g: dims.append(zero_half(g)) or dims[-1])
    m_on = tribute.DeepLift(model)
    on = m_on.attribute(x, target=2)
    assert len(dims) == 5 and set(dims) == {0}  # four products and the head, every reference half skipped
    assert m_on.coverage.linear["torch.addmm"] == 2 and m_on.coverage.linear["torch.matmul"] == 1
    assert not any("addmm" in k or "mm" in k for k in m_on.coverage.ruled)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(on, off, rtol=tol, atol=tol)
    with torch.no_grad():  # summation-to-delta against the zero reference
        delta = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    torch.testing.assert_close(on.flatten(1).sum(1), delta, rtol=tol * 10, atol=tol * 10)
