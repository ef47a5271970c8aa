"""The composite registry, the rule seam (one registry of rules by family and op) and LRP under threads."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import tribute
from tribute.core import OpRule, RuleKind, register_rule, rule_table, unregister_rule
from tribute.core.rule_registry import rules_of_kind
from tribute.lrp import (
    Composite,
    Epsilon,
    Flat,
    Gamma,
    PassRelevance,
    ZPlus,
    composite_parameters,
    register_composite,
    unregister_composite,
)

DT = torch.float64


def stab(d, e):
    return d + e * torch.where(d >= 0, 1.0, -1.0).to(d.dtype)


def _mlp(seed: int = 0, sizes=(4, 6, 5, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(DT).eval()


# -- the composite registry --------------------------------------------------------------------------------
def test_the_built_in_composites_are_registered_and_listed_at_the_top():
    names = tribute.composites()
    assert {"epsilon", "zplus", "alpha_beta", "gamma", "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1",
            "epsilon_gamma_box"} <= set(names)
    assert tribute.Composite is Composite and tribute.register_composite is register_composite


def test_a_composite_by_name_equals_the_same_composite_given():
    net, x = _mlp(), torch.randn(3, 4, dtype=DT)
    by_name = tribute.LRP(net, composite="epsilon_plus", epsilon=0.01)(x, target=1)
    given = tribute.LRP(net, composite=Composite(conv=ZPlus(), dense=Epsilon(0.01)))(x, target=1)
    torch.testing.assert_close(by_name, given, rtol=0, atol=0)


def test_a_users_composite_is_one_registration_and_reads_the_methods_options():
    net, x = _mlp(), torch.randn(3, 4, dtype=DT)
    register_composite("test_flat_gamma", lambda p: Composite(first=Flat(), conv=Gamma(p.gamma), dense=Gamma(p.gamma)),
                       parameters=("gamma",))
    try:
        assert "test_flat_gamma" in tribute.composites()
        assert composite_parameters("test_flat_gamma") == ("gamma",)
        got = tribute.LRP(net, composite="test_flat_gamma", gamma=0.5)(x, target=2)
        want = tribute.LRP(net, composite=Composite(first=Flat(), conv=Gamma(0.5), dense=Gamma(0.5)))(x, target=2)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        # γ = 0.5 was read: the default γ gives another relevance
        assert not torch.allclose(got, tribute.LRP(net, composite="test_flat_gamma")(x, target=2))
    finally:
        unregister_composite("test_flat_gamma")
    assert "test_flat_gamma" not in tribute.composites()
    with pytest.raises(ValueError, match="composite must be one of"):
        tribute.LRP(net, composite="test_flat_gamma")(x, target=2)


def test_a_users_composite_refuses_the_parameters_its_registration_does_not_declare():
    net, x = _mlp(), torch.randn(3, 4, dtype=DT)
    register_composite("test_undeclared", lambda p: Composite(conv=Gamma(p.gamma), dense=Gamma(p.gamma)))
    try:
        assert composite_parameters("test_undeclared") == ()
        with pytest.raises(TypeError, match=r"gamma= is not read by composite 'test_undeclared'.*parameters="):
            tribute.LRP(net, composite="test_undeclared", gamma=0.5)(x, target=2)
        # the factory still sees the default γ, so the composite itself runs
        want = tribute.LRP(net, composite=Composite(conv=Gamma(0.25), dense=Gamma(0.25)))(x, target=2)
        torch.testing.assert_close(tribute.LRP(net, composite="test_undeclared")(x, target=2), want, rtol=0, atol=0)
    finally:
        unregister_composite("test_undeclared")


def test_a_registration_declares_only_rule_parameters():
    factory = lambda p: Composite(conv=Epsilon(), dense=Epsilon())  # noqa: E731
    with pytest.raises(ValueError, match=r"\['delta'\], which are not rule parameters"):
        register_composite("test_bad_parameters", factory, parameters=("epsilon", "delta"))
    with pytest.raises(TypeError, match="sequence of names"):
        register_composite("test_bad_parameters", factory, parameters="epsilon")
    assert "test_bad_parameters" not in tribute.composites()


def test_a_duplicate_composite_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_composite("epsilon", lambda p: Composite(conv=Epsilon(), dense=Epsilon()))
    with pytest.raises(TypeError, match="callable"):
        register_composite("test_not_callable", Composite(conv=Epsilon(), dense=Epsilon()))
    assert "test_not_callable" not in tribute.composites()


def test_a_factory_that_returns_no_composite_is_an_error():
    register_composite("test_broken", lambda p: Epsilon())
    try:
        with pytest.raises(TypeError, match="not a Composite"):
            tribute.LRP(_mlp(), composite="test_broken")(torch.randn(1, 4, dtype=DT), target=0)
    finally:
        unregister_composite("test_broken")


# -- the rule seam -------------------------------------------------------------------------------------------
class _Marker(OpRule):
    name = "marker"


def test_registration_lookup_and_refusal_in_a_throwaway_family():
    family = "test_throwaway_family"
    rule = _Marker()
    register_rule(family, ("add", "__add__"), rule)
    try:
        table = rule_table(family)
        assert table["add"] is rule and table["__add__"] is rule
        with pytest.raises(ValueError, match="already has a rule at add"):
            register_rule(family, "add", _Marker())
        other = _Marker()
        register_rule(family, "add", other, replace=True)
        assert table["add"] is other  # the table a handler holds sees the change
        assert rules_of_kind(family, RuleKind.NARY) == {"add": other, "__add__": rule}
        with pytest.raises(TypeError, match="BackwardRule"):
            register_rule(family, "mul", lambda *a: None)
        with pytest.raises(TypeError):
            table["mul"] = rule  # read-only
    finally:
        for op in ("add", "__add__"):
            unregister_rule(family, op)
    assert dict(rule_table(family)) == {}


def test_the_families_register_their_rules_of_every_kind():
    lrp = rule_table("lrp")
    assert isinstance(lrp["*"], PassRelevance) and lrp["*"].kind is RuleKind.ELEMENTWISE
    assert lrp["conv2d"].kind is RuleKind.LINEAR and lrp["linear"].kind is RuleKind.LINEAR
    assert lrp["add"].kind is RuleKind.NARY and lrp["__iadd__"].inplace and lrp["__iadd__"].base == "add"
    reveal = rule_table("reveal_cancel")
    assert reveal["*"].kind is RuleKind.ELEMENTWISE and reveal["linear"].kind is RuleKind.LINEAR
    assert type(reveal["add"]) is type(reveal["__iadd__"])
    assert Epsilon().kind is RuleKind.LINEAR  # the LRP layer rules are the linear kind of the same seam


class _PassBackward(torch.autograd.Function):
    """y = sinh(x) forward; the relevance passes unchanged backward (LRP's pass rule, here at a sinh)."""

    @staticmethod
    def forward(ctx, x):
        return x.sinh()

    @staticmethod
    def backward(ctx, r):
        return r


class PassAtSinh(OpRule):
    """A new rule for an op LRP has no rule for: relevance passes through ``torch.sinh`` unchanged."""

    name = "pass_at_sinh"

    def apply(self, handler, func, args, kwargs, tagged, name):
        return _PassBackward.apply(args[0])


class Sinh(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2 = nn.Linear(3, 4).to(DT), nn.Linear(4, 2).to(DT)

    def forward(self, x):
        return self.fc2(torch.sinh(self.fc1(x)))


def test_a_rule_registered_for_a_new_op_is_used_by_lrp():
    net, eps = Sinh().eval(), 0.01
    x = torch.randn(1, 3, dtype=DT)
    explainer = tribute.LRP(net, composite="epsilon", epsilon=eps)
    with pytest.raises(ValueError, match="torch.sinh"):  # no rule at the sinh: refused by default
        explainer(x, target=1)
    with pytest.warns(UserWarning, match="torch.sinh"):
        without = explainer(x, target=1, strict=False)
    register_rule("lrp", "sinh", PassAtSinh())
    try:
        got = explainer(x, target=1)
    finally:
        unregister_rule("lrp", "sinh")
    # by hand: ε at fc2 from R = S_1 at the output, the relevance passed through the sinh, ε at fc1
    w1, b1, w2, b2 = (t.detach() for t in (net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias))
    z1 = x[0] @ w1.T + b1
    h = z1.sinh()
    z2 = h @ w2.T + b2
    r2 = torch.zeros(2, dtype=DT)
    r2[1] = z2[1]
    r_h = h * (w2.T @ (r2 / stab(z2, eps)))
    want = x[0] * (w1.T @ (r_h / stab(z1, eps)))
    torch.testing.assert_close(got[0], want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(without, got)  # without the rule the sinh's own gradient ran
    torch.testing.assert_close(explainer(x, target=1, strict=False), without, rtol=0, atol=0)  # and so it does again


# -- threads -------------------------------------------------------------------------------------------------
class _Waiting(nn.Linear):
    """A linear layer that, when armed, lets another thread enter a module before it computes."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.armed = False
        self.started, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()

    def forward(self, x):
        # only in the pass that propagates relevance (under the engine's torch-function mode), not in any other
        if not (self.armed and torch._C._len_torch_function_stack() > 0):
            return super().forward(x)
        self.started.set()
        assert self.entered.wait(10)
        try:
            return super().forward(x)
        finally:
            self.release.set()


class _Blocker(nn.Module):
    def __init__(self, layer: _Waiting):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        self.layer.entered.set()
        assert self.layer.release.wait(10)
        return x * 2


def test_a_by_name_rule_holds_while_another_thread_runs_modules():
    torch.manual_seed(0)
    first = _Waiting(4, 6).to(DT)
    net = nn.Sequential(first, nn.ReLU(), nn.Linear(6, 3).to(DT)).eval()
    composite = Composite(conv=Epsilon(), dense=Epsilon(), by_name={"0": Flat()})
    x = torch.randn(2, 4, dtype=DT)
    explainer = tribute.LRP(net, composite=composite)
    alone = explainer(x, target=1)
    assert not torch.allclose(alone, tribute.LRP(net, composite="epsilon")(x, target=1))  # Flat matters
    other = nn.Sequential(_Blocker(first), nn.Identity())
    first.armed = True
    background = threading.Thread(target=lambda: (first.started.wait(10), other(torch.ones(1))))
    background.start()
    try:
        # this thread's first layer runs while the other thread is inside one of its own modules
        together = explainer(x, target=1)
    finally:
        first.armed = False
        background.join(10)
    assert first.entered.is_set()
    torch.testing.assert_close(together, alone, rtol=0, atol=0)


def test_one_lrp_explainer_used_from_two_threads_at_once():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).to(DT)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    inputs = [torch.randn(2, 3, 6, 6, dtype=DT) for _ in range(2)]
    results: dict[tuple[int, int], torch.Tensor] = {}
    for composite in ("epsilon_plus", "epsilon"):  # the relevance form and the gradient form
        alone = [tribute.LRP(net, composite=composite)(x, target=i) for i, x in enumerate(inputs)]
        shared = tribute.LRP(net, composite=composite)
        start = threading.Barrier(2)

        def run(i, shared=shared, start=start):
            start.wait()
            for k in range(6):
                results[(i, k)] = shared(inputs[i], target=i)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for (i, _), got in results.items():
            torch.testing.assert_close(got, alone[i], rtol=1e-12, atol=1e-12)
        results.clear()
