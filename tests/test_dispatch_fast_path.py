"""The speed paths of issue 13 give what the slow paths give: the rule mode's fast path for ops a family's pass runs
plainly (:attr:`tribute.core.family_rules.FamilyPass.plainly`), DeepLIFT's softmax VJPs with the quadrature nodes
stacked, and the norms' closed form with the sharp and smooth branches selected per group in one expression."""

import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tribute
import tribute.attribution.deeplift_multivariate as multivariate
from tribute.attribution.deeplift import FAMILY as DEEPLIFT
from tribute.attribution.deeplift_norms import NormParams, norm_averaged_vjps
from tribute.core.quadrature import quadrature
from tribute.core.rule_registry import OpRule, register_rule, unregister_rule

family_rules = importlib.import_module("tribute.core.family_rules")  # the module: tribute.core exports a function
DT = torch.float64
LAST = multivariate.Groups(lambda t: t.sum(2, keepdim=True), (2,))  # groups along the last of three dimensions


class Mixer(nn.Module):
    """Moves, residual additions, a LayerNorm and a softmax over tokens: ops of every kind the fast path sorts."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.norm, self.out = nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):  # x: (N, 4, 6)
        h = self.lin(x).transpose(1, 2).contiguous().transpose(1, 2)
        h = self.norm(h + x)
        a = torch.softmax(h @ h.transpose(1, 2), -1)
        y = (a @ h).reshape(x.shape[0], -1).view(x.shape[0], 4, 6).mean(1)
        return self.out(F.relu(y))


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(5, 4, 6, dtype=DT, generator=g), torch.randn(5, 4, 6, dtype=DT, generator=g) * 0.3


@pytest.mark.parametrize("method", ["deeplift", "lrp_epsilon", "saliency"])
def test_the_fast_path_gives_the_attribution_and_coverage_of_the_handler(method, monkeypatch):
    model = Mixer().to(DT).eval()
    x, base = _data()
    options = {"baseline": base} if method == "deeplift" else {}

    def run():
        e = tribute.get_method(method)(model, strict=True, **options)
        return e.attribute(x, target=1), e.coverage

    fast, fast_coverage = run()
    monkeypatch.setattr(family_rules, "plain_ops", lambda family, table: frozenset())  # every op asks the handler
    slow, slow_coverage = run()
    assert torch.equal(fast, slow)
    assert str(fast_coverage) == str(slow_coverage) and fast_coverage.linear  # the same ops, counted alike


class Spy(OpRule):
    """A rule at a linear op that leaves it plain (``NotImplemented``) and counts its calls."""

    name = "spy"

    def __init__(self):
        self.calls = 0

    def apply(self, handler, func, args, kwargs, tagged, name):
        self.calls += 1
        return NotImplemented


def test_a_rule_registered_at_a_linear_op_after_a_call_is_met():
    model = Mixer().to(DT).eval()
    x, base = _data()
    explainer = tribute.DeepLift(model, baseline=base)
    before = explainer.attribute(x, target=0)  # the fast path has taken transpose as plain
    spy = Spy()
    register_rule(DEEPLIFT, "transpose", spy)
    try:
        after = explainer.attribute(x, target=0)
    finally:
        unregister_rule(DEEPLIFT, "transpose")
    assert spy.calls == 3  # the model's two transposes and the one in h @ hᵀ
    assert torch.equal(before, after)  # NotImplemented: the op's own gradient, as the fast path gives
    explainer.attribute(x, target=0)
    assert spy.calls == 3  # removed: plain again


@pytest.mark.parametrize("kind", ["softmax", "log_softmax", "softmin"])
def test_stacked_softmax_nodes_equal_one_node_at_a_time_and_the_averaged_jacobian(kind, monkeypatch):
    g = torch.Generator().manual_seed(5)
    r, dx, grad = (torch.randn(3, 5, 7, dtype=DT, generator=g) for _ in range(3))
    f = getattr(F, kind)
    op = multivariate.GroupedOp(lambda t: f(t, -1), LAST, 8, softmax=kind)
    stacked = op.softmax_vjps(r, dx, [grad])[0]
    monkeypatch.setattr(multivariate, "NODE_BATCH", 1)  # one node per step
    assert torch.equal(op.softmax_vjps(r, dx, [grad])[0], stacked)
    # Σ_k w_k J(r + α_k Δx)ᵀ g by autograd at each node
    alphas, weights = quadrature("gauss_legendre", 8)
    expected = torch.zeros_like(r)
    for a, w in zip(alphas.tolist(), weights.tolist(), strict=True):
        point = (r + a * dx).requires_grad_()
        (vjp,) = torch.autograd.grad(f(point, -1), point, grad)
        expected += w * vjp
    torch.testing.assert_close(stacked, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("centred", [True, False])
def test_the_norm_closed_form_on_mixed_groups_equals_each_group_alone(centred):
    """Groups whose segment passes near zero variance (the sharp branch) beside others (the smooth one): computed
    together, each group's J̄ᵀg is exactly what it is computed alone (then one branch only runs)."""
    g = torch.Generator().manual_seed(7)
    n, t, d = 3, 4, 8
    dx = torch.randn(n, t, d, dtype=DT, generator=g)
    r = torch.randn(n, t, d, dtype=DT, generator=g)
    sharp = torch.rand(n, t, 1, generator=g) < 0.5
    # sharp: halfway along the segment a vector within 1e-5 of zero (of a constant, for the centred norms); smooth:
    # a spread 4× the segment's keeps the variance far from zero all along it
    r = torch.where(sharp, (0.7 if centred else 0.0) - 0.5 * dx + 1e-5 * r, 4 * r)
    grad = torch.randn(n, t, d, dtype=DT, generator=g)
    p = NormParams(centred, torch.randn(d, dtype=DT, generator=g), 1e-5)
    sums = LAST.sums
    together = norm_averaged_vjps(sums, p, r, dx, [grad])[0]
    for i in range(n):
        for j in range(t):
            alone = norm_averaged_vjps(sums, p, r[i:i + 1, j:j + 1], dx[i:i + 1, j:j + 1], [grad[i:i + 1, j:j + 1]])
            assert torch.equal(together[i, j], alone[0][0, 0])
    assert bool(sharp.any()) and not bool(sharp.all())
    # and J̄ᵀg is the averaged Jacobian's: summation along the segment, J̄ Δx = Δy (checked through ⟨J̄ᵀg, Δx⟩)
    norm = (lambda v: F.layer_norm(v, (d,), p.weight)) if centred else (lambda v: F.rms_norm(v, (d,), p.weight, 1e-5))
    dy = norm(r + dx) - norm(r)
    torch.testing.assert_close((together * dx).sum(-1), (grad * dy).sum(-1), rtol=1e-9, atol=1e-9)


class Affine(nn.Module):
    """Sums, differences and products with constants in every spelling, and a gate held in a product."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 2)
        self.scale = nn.Parameter(torch.randn(6))

    def forward(self, x):
        h = self.lin(x)
        h = 0.5 * h + 1.0
        h = 2.0 - (h * self.scale - 0.25)
        h = torch.mul(h, 3.0).sub(torch.ones(6)).add(0.1)
        h = h * torch.sigmoid(self.lin(x))  # signal times gate: the gate held, the signal takes all
        return self.out(torch.sub(1.5, h))


@pytest.mark.parametrize("composite", ["epsilon", "zplus", "alpha_beta"])
def test_the_closed_form_backward_of_sums_and_products_with_constants_equals_autograds(composite, monkeypatch,
                                                                                     tiny_stabilisers):
    nodes = importlib.import_module("tribute.lrp.nodes")
    propagation = importlib.import_module("tribute.lrp.propagation")
    model = Affine().to(DT).eval()
    x = torch.randn(5, 6, dtype=DT, generator=torch.Generator().manual_seed(2))

    def run():
        tiny = {"epsilon": 1e-12} if composite == "epsilon" else {}
        e = tribute.get_method("lrp")(model, composite=composite, absorbed=True, **tiny)
        return e.attribute(x, target=1), e.absorbed

    calls = []
    closed = nodes._closed_form
    monkeypatch.setattr(nodes, "_closed_form", lambda ctx, r: calls.append(1) or closed(ctx, r))
    fast, fast_absorbed = run()
    assert len(calls) >= 9  # every sum, difference and product above took the closed form
    monkeypatch.setattr(propagation, "elementwise_vjp", lambda *a: None)  # autograd's backward of each op
    slow, slow_absorbed = run()
    assert torch.equal(fast, slow) and torch.equal(fast_absorbed, slow_absorbed)
    # and relevance is conserved: the input's and the constants' shares make the score
    score = model(x)[:, 1]
    torch.testing.assert_close(fast.sum(1) + fast_absorbed, score, rtol=1e-9, atol=1e-9)
