"""The engine's view of fused attention and of hand-written powers (issue 13): what the rules get to see.

``F.scaled_dot_product_attention`` is taken apart into QKᵀ, softmax and the product with V under an op handler,
and the parts must compute the kernel exactly; powers with a number as exponent are elementwise nonlinearities,
with a tensor exponent they are not; a division is linear in its numerator only, an ``einsum`` of two tensors on the
path is not linear.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute
from tribute.core.attention import attention_by_parts
from tribute.core.interception import Coverage, apply_rules
from tribute.core.nonlinearities import call_form
from tribute.core.rules import GRADIENT

DT = torch.float64


def _qkv(heads=2, kv_heads=2, t=5, s=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, heads, t, 4, generator=g, dtype=DT), torch.randn(2, kv_heads, s, 4, generator=g, dtype=DT),
            torch.randn(2, kv_heads, s, 4, generator=g, dtype=DT))


CASES = {
    "plain": ({}, {}),
    "causal": ({}, {"is_causal": True}),
    "causal_fewer_keys": ({"s": 3}, {"is_causal": True}),
    "causal_fewer_queries": ({"t": 3}, {"is_causal": True}),
    "bool_mask": ({}, {"attn_mask": torch.rand(5, 5, generator=torch.Generator().manual_seed(1)) > 0.3}),
    "float_mask": ({}, {"attn_mask": torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=DT)}),
    "scale": ({}, {"scale": 0.3}),
    "grouped_query": ({"heads": 4}, {"enable_gqa": True}),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_attention_by_parts_equals_the_fused_kernel(case):
    shape, options = CASES[case]
    q, k, v = _qkv(**shape)
    torch.testing.assert_close(attention_by_parts(q, k, v, **options),
                               F.scaled_dot_product_attention(q, k, v, **options), rtol=0, atol=1e-14)


def test_a_query_masked_from_every_key_attends_to_nothing():
    q, k, v = _qkv()
    keep = torch.ones(5, 5, dtype=torch.bool)
    keep[0] = False
    out = attention_by_parts(q, k, v, attn_mask=keep)
    assert float(out[:, :, 0].abs().max()) == 0.0
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=keep), rtol=0, atol=1e-14)


def test_attention_dropout_is_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="dropout_p=0.1.*model.eval"):
        attention_by_parts(q, k, v, dropout_p=0.1)


class _Recorder:
    """An op handler that handles nothing and records the ops it is shown (what a family's rules would see)."""

    def __init__(self):
        self.seen, self.unruled = [], []

    def key(self):
        return ("recorder",)

    def start(self):
        return self

    def handle(self, func, args, kwargs, tagged, name):
        self.seen.append(name.rsplit(".", 1)[-1])
        return NotImplemented

    def before_write(self, t, writer=None):
        pass

    def count_consumers(self, args, kwargs, tagged):
        pass


def _ops_seen(fn, *inputs):
    recorder = _Recorder()
    rules = type(GRADIENT)("recorder", {}, ops=recorder)
    leaf = inputs[0].clone().requires_grad_()
    with apply_rules(rules, coverage=Coverage()) as mode:
        mode.tag_input(leaf)
        out = fn(leaf, *inputs[1:])
    return recorder.seen, out


def test_an_op_handler_sees_the_parts_of_fused_attention():
    q, k, v = _qkv()
    seen, out = _ops_seen(lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True), q)
    assert "scaled_dot_product_attention" not in seen
    assert seen.count("matmul") == 2 and "softmax" in seen
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, q, q, is_causal=True), rtol=0, atol=1e-14)


def test_an_op_handler_sees_inside_nn_multihead_attention():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=True).to(DT).eval()
    x = torch.randn(2, 5, 4, dtype=DT)
    seen, out = _ops_seen(lambda t: attention(t, t, t, need_weights=False)[0], x)
    assert "multi_head_attention_forward" not in seen and "softmax" in seen and "linear" in seen
    with torch.no_grad():
        torch.testing.assert_close(out, attention(x, x, x, need_weights=False)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("spelling", ["torch.pow", "method", "operator", "in_place"])
def test_a_power_with_a_number_exponent_is_an_elementwise_nonlinearity(spelling):
    fn = {"torch.pow": lambda t: torch.pow(t, 3), "method": lambda t: t.pow(3), "operator": lambda t: t ** 3,
          "in_place": lambda t: t.clone().pow_(3)}[spelling]
    coverage = Coverage()
    leaf = torch.randn(4, dtype=DT, requires_grad=True)
    with apply_rules(GRADIENT, coverage=coverage) as mode:
        mode.tag_input(leaf)
        out = fn(leaf)
    assert dict(coverage.plain) == {"pow": 1} and not coverage.unruled
    torch.testing.assert_close(out, leaf.detach() ** 3)


def test_a_power_with_a_tensor_exponent_is_not_one():
    form = call_form(torch.pow)
    assert form.accepts({"exponent": 2.5}) and not form.accepts({"exponent": torch.tensor(2.0)})
    coverage = Coverage()
    leaf = torch.rand(4, dtype=DT, requires_grad=True)
    with apply_rules(GRADIENT, coverage=coverage) as mode:
        mode.tag_input(leaf)
        torch.pow(leaf, leaf)
    assert not coverage.plain and list(coverage.unruled) == ["torch.pow"]


@pytest.mark.parametrize(("fn", "linear"), [
    (lambda x, c: x / c, True), (lambda x, c: c / (x + 2), False), (lambda x, c: torch.div(x, x + 2), False),
    (lambda x, c: torch.einsum("i,i->i", x, c), True), (lambda x, c: torch.einsum("i,i->i", x, x), False),
], ids=["numerator", "divisor", "both", "einsum_one", "einsum_two"])
def test_division_is_linear_in_its_numerator_only_and_einsum_in_one_operand(fn, linear):
    coverage = Coverage()
    leaf = torch.rand(4, dtype=DT, requires_grad=True)
    with apply_rules(GRADIENT, coverage=coverage) as mode:
        mode.tag_input(leaf)
        fn(leaf, torch.rand(4, dtype=DT) + 1)
    names = [n.rsplit(".", 1)[-1] for n in coverage.unruled]
    assert (not any(n in ("div", "__truediv__", "__rtruediv__", "einsum") for n in names)) == linear, names


MHA_CASES = {
    "self": ({}, {}),
    "separate_key_value_widths": ({"kdim": 3, "vdim": 5}, {}),
    "no_bias": ({"bias": False}, {}),
    "key_padding": ({}, {"key_padding_mask": torch.tensor([[False] * 5, [False, False, False, True, True]])}),
    "bool_mask": ({}, {"attn_mask": torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)}),
    "float_mask_per_head": ({}, {"attn_mask": torch.randn(4, 5, 5, generator=torch.Generator().manual_seed(3),
                                                          dtype=DT)}),
    "weights_per_head": ({}, {"need_weights": True, "average_attn_weights": False}),
    "unbatched": ({}, {"unbatched": True}),
}


@pytest.mark.parametrize("case", list(MHA_CASES), ids=list(MHA_CASES))
def test_multi_head_attention_by_parts_equals_nn_multihead_attention(case):
    build, call = MHA_CASES[case]
    call = dict(call)
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=True, **build).to(DT).eval()
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 5, 4, generator=g, dtype=DT)
    k = torch.randn(2, 5, build.get("kdim", 4), generator=g, dtype=DT)
    v = torch.randn(2, 5, build.get("vdim", 4), generator=g, dtype=DT)
    if call.pop("unbatched", False):
        q, k, v = q[0], k[0], v[0]
    call.setdefault("need_weights", False)
    with torch.no_grad():
        want = attention(q, k, v, **call)
        seen, got = _ops_seen(lambda t, kk, vv: attention(t, kk, vv, **call), q, k, v)
    assert "multi_head_attention_forward" not in seen
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-12)


class _Encoder(nn.Module):
    """torch's TransformerEncoderLayer (nn.MultiheadAttention inside, batch first) with a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


@pytest.mark.parametrize("method", ["deeplift", "deeplift_reveal_cancel"])
def test_nn_multihead_attention_runs_batch_first_for_rules_that_pair_rows(method):
    # F.multi_head_attention_forward takes (L, N, E); its parts run as (N, L, E), so rules that pair each input row
    # with its reference row along dimension 0 find them (summation-to-delta to rounding)
    model = _Encoder().to(DT).eval()
    x = torch.randn(3, 5, 8, dtype=DT, generator=torch.Generator().manual_seed(4))
    phi = tribute.explain(model, x, method, target=2)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
    torch.testing.assert_close(phi.flatten(1).sum(1), delta, rtol=1e-10, atol=1e-12)
