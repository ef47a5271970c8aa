"""Every gradient-form method gets its rules from the rule registry by family name (tribute.core.family_rules).

The families' elementwise rules live beside their methods; a family with only elementwise rules gets no op
handler (the gradient methods' hot path is unchanged); a family that registers an n-ary rule gets the generic
handler, which the seam test shows with DeepLIFT's product rule (Shapley values of the two factors) on Ancona
et al.'s (2019, §3.2) multiplicative example f(x) = ReLU(x₁ − 1)·ReLU(x₂), and what DeepLIFT does without its
op rules (the fixture ``without_op_rules`` takes them out for a test).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute
from tribute.attribution.deeplift import FAMILY as DEEPLIFT
from tribute.attribution.deeplift import Rescale
from tribute.attribution.gradient import SoftplusRelu
from tribute.attribution.guided import DeconvRelu, GuidedRelu
from tribute.core import family_rules, register_rule, rule_table, unregister_rule
from tribute.core import rules as core_rules
from tribute.core.rule_registry import RuleKind, rules_of_kind
from tribute.lrp import ElementwiseEpsilon

DT = torch.float64


class Product(nn.Module):
    """f(x) = ReLU(x₁ − 1) · ReLU(x₂): both factors depend on the input."""

    def forward(self, x):
        return F.relu(x[:, :1] - 1) * F.relu(x[:, 1:2])


class RectifiedProduct(nn.Module):
    """g(x) = ReLU(f(x) − 1): a rule downstream of the product saves its output, so derivatives of the attribution
    pass through the product's node a second time."""

    def forward(self, x):
        return F.relu(Product()(x) - 1)


class InPlaceProduct(nn.Module):
    def forward(self, x):
        a = F.relu(x[:, :1] - 1)
        a *= F.relu(x[:, 1:2])
        return a


class KeywordProduct(nn.Module):
    def forward(self, x):
        return torch.mul(input=F.relu(x[:, :1] - 1), other=F.relu(x[:, 1:2]))


class TrilinearProduct(nn.Module):
    """a·b·c in one einsum of three tensors on the path: no DeepLIFT rule (the split of three factors differs)."""

    def forward(self, x):
        a, b = F.relu(x[:, :1] - 1), F.relu(x[:, 1:2])
        return torch.einsum("ni,ni,ni->ni", a, b, a + b)


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            h = F.relu(self.conv1(x))
            h = h + torch.tanh(self.conv2(h))  # a residual addition: linear, needs no rule
            return self.fc(F.max_pool2d(h, 1).flatten(1))

    return Net().to(DT).eval()


def _op_rules() -> dict:
    return {op: r for op, r in rule_table(DEEPLIFT).items() if r.kind is not RuleKind.ELEMENTWISE}


@pytest.fixture
def without_op_rules():
    """DeepLIFT with its rules at products, quotients and multivariate ops taken out, restored after the test."""
    taken = _op_rules()
    for op in taken:
        unregister_rule(DEEPLIFT, op)
    try:
        yield taken
    finally:
        for op, rule in taken.items():
            register_rule(DEEPLIFT, op, rule)
        assert _op_rules() == taken


# -- the families and their rules ---------------------------------------------------------------------------
def test_the_method_rules_live_with_their_families_and_core_keeps_only_machinery():
    expected = {"guided_backprop": GuidedRelu, "deconvnet": DeconvRelu, "deeplift": Rescale,
                "lrp_epsilon": ElementwiseEpsilon, "softplus": SoftplusRelu}
    for family, rule_type in expected.items():
        rules = family_rules(family)
        assert type(rules.rules["*"]) is rule_type, family
        if family == DEEPLIFT:  # rules at products, quotients, softmax and the normalisations: an op handler
            assert rules.ops is not None and {"mul", "matmul", "div", "softmax", "layer_norm"} <= set(_op_rules())
        elif family == "lrp_epsilon":  # rules at products, softmax, normalisations (tribute.lrp.epsilon_ops)
            assert rules.ops is not None
        else:
            assert rules.ops is None, f"{family} has elementwise rules only: it must get no op handler"
    for moved in ("GuidedRelu", "DeconvRelu", "Rescale", "SoftplusRelu", "ElementwiseEpsilon"):
        assert not hasattr(core_rules, moved)


def test_every_gradient_form_method_reads_its_family_from_the_registry():
    model = _cnn()
    assert tribute.GuidedBackprop.rules == family_rules("guided_backprop")
    assert tribute.DeconvNet.rules == family_rules("deconvnet")
    assert tribute.DeepLift.rules == family_rules("deeplift")
    o = tribute.LRPEpsilon(model)._namespace({"epsilon": 0.25})
    # its elementwise rules from the registry, and its own op handler (the attention option: tribute.lrp.epsilon_ops)
    assert tribute.LRPEpsilon(model).rule_set(o).rules == family_rules("lrp_epsilon", epsilon=0.25).rules
    o = tribute.Gradient(model)._namespace({"softplus_beta": 3.0})
    assert tribute.Gradient(model).rule_set(o) == family_rules("softplus", beta=3.0)
    layer = tribute.LayerDeepLift(model, layer="conv1")
    assert layer.rule_set(layer._namespace({})) == family_rules("deeplift")


def test_options_configure_a_copy_of_the_registered_rule():
    rules = family_rules("lrp_epsilon", epsilon=0.5)
    assert rules.rules["*"].epsilon == 0.5
    assert rule_table("lrp_epsilon")["*"].epsilon == 1e-9  # the registered rule is left alone
    assert family_rules("lrp_epsilon", epsilon=0.5) is rules  # cached
    with pytest.raises(TypeError, match="takes no option beta"):
        family_rules("lrp_epsilon", beta=2.0)
    with pytest.raises(ValueError, match="no rules are registered for the family 'no_such_family'"):
        family_rules("no_such_family")


def test_the_epsilon_option_reaches_the_rule_worked_by_hand():
    # y = ReLU(2x) at x = 1: z = 2, ε-LRP's g = f(z)/(z + ε) = 2/(2 + ε); φ = x·2·g = 4/(2 + ε), = 1 at ε = 2
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU()).to(DT).eval()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    x = torch.ones(1, 1, dtype=DT)
    for eps in (2.0, 0.5):
        phi = tribute.LRPEpsilon(model, epsilon=eps).attribute(x, target=0)
        torch.testing.assert_close(phi, torch.full_like(x, 4 / (2 + eps)))
    softplus = tribute.Gradient(model, softplus_beta=1.0).attribute(x, target=0)  # d/dx softplus(2x) = 2σ(2x)
    torch.testing.assert_close(softplus, 2 * torch.sigmoid(2 * x))


def test_a_rule_set_is_rebuilt_when_the_family_changes():
    with_ops = family_rules(DEEPLIFT)
    taken = _op_rules()
    for op in taken:
        unregister_rule(DEEPLIFT, op)
    try:
        elementwise_only = family_rules(DEEPLIFT)
        assert elementwise_only.ops is None and elementwise_only != with_ops
        assert tribute.DeepLift.rules == elementwise_only
        assert set(rules_of_kind(DEEPLIFT, RuleKind.ELEMENTWISE)) == {"*"}
    finally:
        for op, rule in taken.items():
            register_rule(DEEPLIFT, op, rule)
    assert family_rules(DEEPLIFT) == with_ops and family_rules(DEEPLIFT).ops is not None


# -- the seam: an n-ary rule in a gradient-form family --------------------------------------------------
def test_without_a_product_rule_deeplift_misses_summation_to_delta_and_strict_refuses(without_op_rules):
    x = torch.tensor([[3.0, 2.0]], dtype=DT)
    # Rescale at the ReLUs: (2 − 0)/(2 − (−1)) = 2/3 and 1; the product's plain gradient at x: ∂y/∂a = b = 2,
    # ∂y/∂b = a = 2.  φ₁ = 3·(2/3)·2 = 4, φ₂ = 2·1·2 = 4: Σφ = 8, not f(x) − f(0) = 4
    with pytest.warns(UserWarning, match="deeplift.*mul"):
        phi = tribute.DeepLift(Product(), strict=False).attribute(x, target=0)
    torch.testing.assert_close(phi, torch.tensor([[4.0, 4.0]], dtype=DT))
    with pytest.raises(ValueError, match="mul"):
        tribute.DeepLift(Product()).attribute(x, target=0)
    with pytest.raises(ValueError, match="mul"):
        tribute.DeepLift(Product(), strict=True).attribute(x, target=0)


def test_deeplift_uses_its_product_rule_worked_by_hand():
    x = torch.tensor([[3.0, 2.0]], dtype=DT)
    # a = ReLU(x₁ − 1): ā = 0, Δa = 2; b = ReLU(x₂): b̄ = 0, Δb = 2.  Δy = 4 splits as Δa·(b̄ + Δb/2) = 2 and
    # Δb·(ā + Δa/2) = 2; through Rescale (2/3 and 1): φ₁ = 3·(2/3)·(b̄ + Δb/2) = 2, φ₂ = 2·1·(ā + Δa/2) = 2
    explainer = tribute.DeepLift(Product(), strict=True)
    phi = explainer.attribute(x, target=0)
    torch.testing.assert_close(phi, torch.tensor([[2.0, 2.0]], dtype=DT))
    assert any(name.endswith("mul__") or name.endswith("mul") for name in explainer.coverage.ruled)


def test_layer_deeplift_reads_the_same_family():
    class Layered(nn.Module):  # an identity layer first, so the layer's activation is the input
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2, bias=False).to(DT)
            with torch.no_grad():
                self.lin.weight.copy_(torch.eye(2, dtype=DT))

        def forward(self, x):
            return Product()(self.lin(x))

    x = torch.tensor([[3.0, 2.0]], dtype=DT)
    phi = tribute.LayerDeepLift(Layered().eval(), layer="lin", strict=True).attribute(x, target=0)
    torch.testing.assert_close(phi, torch.tensor([[2.0, 2.0]], dtype=DT))  # as at the input, worked above


def test_the_product_rule_keeps_summation_to_delta_and_its_derivative():
    torch.manual_seed(0)
    x = torch.rand(12, 2, dtype=DT) * 3 + torch.tensor([1.2, 0.2], dtype=DT)  # both factors active at x
    base = torch.rand(12, 2, dtype=DT) * 4 - 1
    model = Product()
    phi = tribute.DeepLift(model, baseline=base).attribute(x, target=0)
    torch.testing.assert_close(phi.sum(1), (model(x) - model(base)).squeeze(1))
    # with g = ReLU(f − 1) and f(x) > 1: Σφ(x) = g(x) − g(x̄) near x, so its gradient is ∇g(x) = (x₂, x₁ − 1):
    # the product's later backward calls (derivatives of the attribution) must take the true derivatives b and a
    x = x[model(x).squeeze(1) > 1.5]
    assert len(x) >= 4
    xs = x.clone().requires_grad_()
    phi = tribute.DeepLift(RectifiedProduct(), baseline=base[: len(x)], differentiable=True).attribute(xs, target=0)
    (grad,) = torch.autograd.grad(phi.sum(), xs)
    torch.testing.assert_close(grad, torch.stack([x[:, 1], x[:, 0] - 1], 1))


def test_a_family_with_an_op_rule_leaves_linear_ops_to_their_gradient():
    model = _cnn()
    x = torch.randn(3, 2, 6, 6, dtype=DT)
    with_handler = tribute.DeepLift(model, strict=True).attribute(x, target=1)
    taken = _op_rules()
    for op in taken:
        unregister_rule(DEEPLIFT, op)
    try:
        assert family_rules(DEEPLIFT).ops is None
        plain = tribute.DeepLift(model, strict=True).attribute(x, target=1)
    finally:
        for op, rule in taken.items():
            register_rule(DEEPLIFT, op, rule)
    torch.testing.assert_close(with_handler, plain, rtol=0, atol=0)


def test_every_spelling_of_the_product_takes_the_rule_and_three_factors_are_refused():
    x = torch.tensor([[3.0, 2.0]], dtype=DT)
    # ``a *= b`` (Tensor.__imul__, computed out of place and written back) and torch.mul(input=, other=): the
    # split worked by hand above, φ = (2, 2)
    for model in (InPlaceProduct(), KeywordProduct()):
        explainer = tribute.DeepLift(model, strict=True)
        torch.testing.assert_close(explainer.attribute(x, target=0), torch.tensor([[2.0, 2.0]], dtype=DT))
        assert not explainer.coverage.unruled
    # three factors on the path in one einsum: the two-factor split does not apply, refused by name
    with pytest.raises(ValueError, match="einsum"):
        tribute.DeepLift(TrilinearProduct(), strict=True).attribute(x, target=0)
