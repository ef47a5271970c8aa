"""LRP's z⁺, αβ and γ rules on inputs of both signs, computed from x and |x| (``(x w)^± = ½(x w ± |x||w|)``).

``Gamma._by_magnitudes`` and ``AlphaBeta._by_magnitudes`` take one layer on |x| and two transposed layers where
x⁺ and x⁻ apart take two and four.  Checked here: hand-worked values on two inputs, the matrix definitions
(tests/test_lrp.py) on layers wide enough for the αβ form to be taken, equality with the parts taken apart on a
model, and the condition under which αβ declines (an output whose contributions all have one sign).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_lrp import matrix_rule
from torch import nn

import tribute
import tribute.lrp.rules as lrp_rules
from tribute.lrp import AlphaBeta, Gamma, ZPlus
from tribute.lrp.layer_call import LayerCall, parse_linear

DT = torch.float64


def _layer(func, x, w, b, **kw):
    kind, _, _, _, op = parse_linear(func, (x, w, b), kw)
    return LayerCall(kind, op, w, b, 1, "", None), op


def _two_inputs():
    """x = (1, −2), one output with w = (3, 1), no bias: contributions x w = (3, −2), z = 1, z⁺ = 3, z⁻ = −2."""
    x = torch.tensor([[1.0, -2.0]], dtype=DT)
    w = torch.tensor([[3.0, 1.0]], dtype=DT)
    layer, op = _layer(F.linear, x, w, None)
    return layer, x, op(x, w, None)


def test_gamma_by_hand():
    # γ = 0.5, z > 0: numerators x w + γ(x w)⁺ = (3 + 1.5, −2), denominator z + γz⁺ = 1 + 1.5 = 2.5 (+ ε)
    layer, x, z = _two_inputs()
    got = Gamma(0.5).relevance(layer, x, z, torch.ones(1, 1, dtype=DT))
    torch.testing.assert_close(got, torch.tensor([[4.5 / 2.5, -2 / 2.5]], dtype=DT), rtol=1e-5, atol=0)


def test_alpha_beta_by_hand(monkeypatch):
    # α = 2, β = 1: R_i = 2 (x w)⁺ / z⁺ − (x w)⁻ / z⁻ = (2·3/3, −(−2)/(−2)) = (2, −1), summing to R = 1.
    # p = ½(|3| + |−2|) + ε = 2.5: z⁺ + ε = p + ½z = 3 (+ ε), −(z⁻ − ε) = p − ½z = 2 (+ ε), both ≥ p / 64
    monkeypatch.setattr(lrp_rules, "MAGNITUDES_MIN_FAN_IN", 0)  # two inputs: taken by magnitudes all the same
    layer, x, z = _two_inputs()
    r = torch.ones(1, 1, dtype=DT)
    taken = AlphaBeta(2, 1)._by_magnitudes(layer, x, z, r)
    assert taken is not None
    torch.testing.assert_close(taken, torch.tensor([[2.0, -1.0]], dtype=DT), rtol=1e-5, atol=0)
    torch.testing.assert_close(AlphaBeta(2, 1).relevance(layer, x, z, r), taken, rtol=0, atol=0)


WIDE = {  # fan-in ≥ MAGNITUDES_MIN_FAN_IN (64): the αβ form is tried
    "linear": (lambda g: (torch.randn(2, 80, generator=g), torch.randn(6, 80, generator=g),
                          torch.randn(6, generator=g)), F.linear, {}),
    "conv": (lambda g: (torch.randn(1, 8, 5, 5, generator=g), torch.randn(4, 8, 3, 3, generator=g),
                        torch.randn(4, generator=g)), F.conv2d, {"padding": 1}),
}


@pytest.mark.parametrize("kind", WIDE)
@pytest.mark.parametrize("rule", ["zplus", "alpha_beta", "gamma"])
@pytest.mark.parametrize("bias", [True, False])
def test_wide_layers_with_signed_inputs_equal_the_matrix_definition(kind, rule, bias):
    make, func, kw = WIDE[kind]
    g = torch.Generator().manual_seed(3)
    x, w, b = (t.to(DT) for t in make(g))
    x = x + 0.3  # mostly positive, some negative entries: every output mixes both signs of contribution
    b = b if bias else None
    layer, op = _layer(func, x, w, b, **kw)
    z = op(x, w, b)
    r = torch.randn(z.shape, dtype=DT, generator=g)
    obj, param = {"zplus": (ZPlus(), None), "alpha_beta": (AlphaBeta(2, 1), (2, 1)),
                  "gamma": (Gamma(0.3), 0.3)}[rule]
    if rule != "gamma":  # the form is taken, not declined (then it would be the parts apart, tested elsewhere)
        assert obj._by_magnitudes(layer, x, z, r) is not None
    got = obj.relevance(layer, x, z, r)
    for n in range(x.shape[0]):
        expected = matrix_rule(rule, x[n:n + 1], w, b, r[n:n + 1], op, param)
        torch.testing.assert_close(got[n].reshape(-1), expected, rtol=1e-10, atol=1e-12)


def test_alpha_beta_declines_an_output_whose_contributions_all_have_one_sign():
    # output 0: x ≥ 0 against a negative row, bias ≤ 0, so z⁺ = 0 and z⁺ + ε = p + ½z is a difference of numbers
    # ~p ≫ ε: the rounding of that difference could be as large as z⁺ + ε itself.  The rule takes x⁺ and x⁻ apart
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 70, dtype=DT, generator=g)
    x[0, -1] = -0.5  # one negative input: the signed path
    w = torch.randn(3, 70, dtype=DT, generator=g)
    w[0] = -w[0].abs()
    w[0, -1] = 0.0
    b = torch.tensor([-0.2, 0.1, 0.3], dtype=DT)
    layer, op = _layer(F.linear, x, w, b)
    z = op(x, w, b)
    r = torch.randn(z.shape, dtype=DT, generator=g)
    rule = AlphaBeta(2, 1)
    assert rule._by_magnitudes(layer, x, z, r) is None
    expected = matrix_rule("alpha_beta", x, w, b, r, op, (2, 1))
    torch.testing.assert_close(rule.relevance(layer, x, z, r).reshape(-1), expected, rtol=1e-10, atol=1e-12)


class _Signed(nn.Module):
    """Dense and convolutional layers whose inputs have both signs (no rectifier between them)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)  # fan-in 144
        self.fc1 = nn.Linear(16 * 6 * 6, 96)
        self.fc2 = nn.Linear(96, 5)

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        return self.fc2(self.fc1(x.flatten(1)))


@pytest.mark.parametrize("composite", ["alpha_beta", "zplus", "epsilon_plus"])
def test_by_magnitudes_equals_the_parts_apart_on_a_model(composite, monkeypatch):
    net = _Signed().to(DT).eval()
    x = torch.randn(3, 3, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(2))
    taken = []
    by_magnitudes = AlphaBeta._by_magnitudes

    def spy(self, *args):
        out = by_magnitudes(self, *args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(AlphaBeta, "_by_magnitudes", spy)
    got = tribute.LRP(net, composite=composite)(x, target=1)
    assert any(taken)  # the wide layers went by magnitudes
    monkeypatch.setattr(lrp_rules, "CONDITION", 0.0)  # every layer declines: x⁺ and x⁻ apart
    taken.clear()
    apart = tribute.LRP(net, composite=composite)(x, target=1)
    assert taken and not any(taken)
    torch.testing.assert_close(got, apart, rtol=1e-10, atol=1e-13 * apart.abs().max().item())
