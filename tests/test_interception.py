"""The engine sees every calling form of every nonlinearity, and nothing it should not touch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import tribute
from tribute.core import apply_rules
from tribute.core.nonlinearities import call_form
from tribute.core.rules import sign0

EPS = 1e-6

# (nonlinearity name, params of the reference function, calling form)
FORMS = [
    ("relu", {}, torch.relu), ("relu", {}, torch.Tensor.relu), ("relu", {}, F.relu),
    ("relu", {}, lambda z: F.relu(z, inplace=True)), ("relu", {}, torch.relu_), ("relu", {}, torch.Tensor.relu_),
    ("relu", {}, nn.ReLU()), ("relu", {}, nn.ReLU(inplace=True)),
    ("relu6", {}, F.relu6), ("hardtanh", {"min_val": 0.0, "max_val": 6.0}, nn.ReLU6()),
    ("hardtanh", {"min_val": -0.5, "max_val": 0.5}, nn.Hardtanh(-0.5, 0.5)),
    ("hardtanh", {"min_val": -0.5, "max_val": 0.5}, lambda z: F.hardtanh_(z, -0.5, 0.5)),
    ("leaky_relu", {"negative_slope": 0.2}, lambda z: F.leaky_relu(z, 0.2)),
    ("leaky_relu", {"negative_slope": 0.2}, nn.LeakyReLU(0.2, inplace=True)),
    ("leaky_relu", {"negative_slope": 0.2}, lambda z: F.leaky_relu_(z, 0.2)),
    ("elu", {"alpha": 0.7}, nn.ELU(0.7)), ("elu", {"alpha": 1.0}, F.elu_),
    ("gelu", {}, nn.GELU()), ("gelu", {"approximate": "tanh"}, nn.GELU("tanh")),
    ("silu", {}, nn.SiLU()), ("silu", {}, nn.SiLU(inplace=True)),
    ("softplus", {"beta": 2.0}, nn.Softplus(beta=2.0)),
    ("sigmoid", {}, torch.sigmoid), ("sigmoid", {}, nn.Sigmoid()), ("sigmoid", {}, F.sigmoid),
    ("sigmoid", {}, torch.Tensor.sigmoid_),
    ("tanh", {}, torch.tanh), ("tanh", {}, nn.Tanh()), ("tanh", {}, torch.Tensor.tanh),
    ("tanh", {}, torch.tanh_),
    ("sqrt", {}, torch.sqrt), ("sqrt", {}, torch.Tensor.sqrt_),
    ("exp", {}, torch.exp), ("exp", {}, torch.Tensor.exp),
    ("log", {}, torch.log), ("log", {}, torch.Tensor.log_),
]
REFERENCE = {
    "relu": F.relu, "relu6": F.relu6, "hardtanh": F.hardtanh, "leaky_relu": F.leaky_relu, "elu": F.elu,
    "gelu": F.gelu, "silu": F.silu, "softplus": F.softplus, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log,
}


class OneLayer(nn.Module):
    """S(x) = w · f(Ax + b), with f applied in the form under test."""

    def __init__(self, f, positive: bool):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        a = torch.rand(7, 5, generator=g, dtype=torch.float64)
        self.A = nn.Parameter(a if positive else 2 * a - 1)
        self.b = nn.Parameter(torch.full((7,), 0.3 if positive else -0.1, dtype=torch.float64))
        self.w = nn.Parameter(torch.randn(7, generator=g, dtype=torch.float64))
        self.f = f

    def forward(self, x):
        return (self.f(x @ self.A.T + self.b) * self.w).sum(1, keepdim=True)


def _inputs(positive):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 5, generator=g, dtype=torch.float64)
    return x if positive else 3 * x - 1.5


@pytest.mark.parametrize("name,params,form", FORMS)
def test_epsilon_lrp_and_deeplift_match_their_definition_for_every_calling_form(name, params, form):
    positive = name in ("sqrt", "log")
    net, x = OneLayer(form, positive), _inputs(positive)
    f = REFERENCE[name]
    with torch.no_grad():
        z, zbar = x @ net.A.T + net.b, net.b.expand(4, 7)
        g_lrp = f(z, **params) / (z + EPS * sign0(z))
        g_dl = (f(z, **params) - f(zbar, **params)) / (z - zbar)
        lrp_expected = x * ((g_lrp * net.w) @ net.A)
        dl_expected = x * ((g_dl * net.w) @ net.A)
    # f(0) ≠ 0 makes Ancona's ratio unbounded: lrp_epsilon refuses it unless asked (tests/test_lrp_elementwise.py)
    unbounded = name in ("sigmoid", "softplus", "exp", "log")
    if unbounded:
        with pytest.raises(ValueError, match=f"refuses {name}"):
            tribute.explain(net, x, "lrp_epsilon", target=0, epsilon=EPS)
    got = tribute.explain(net, x, "lrp_epsilon", target=0, epsilon=EPS, **({"unbounded": True} if unbounded else {}))
    torch.testing.assert_close(got, lrp_expected)
    torch.testing.assert_close(tribute.explain(net, x, "deeplift", target=0), dl_expected)


@pytest.mark.parametrize("name,params,form", [f for f in FORMS if f[0] == "relu"])
def test_guided_backprop_and_deconvnet_match_their_definition_for_every_relu_form(name, params, form):
    net, x = OneLayer(form, False), _inputs(False)
    with torch.no_grad():
        z = x @ net.A.T + net.b
        up = net.w.expand(4, 7)  # the signal arriving at the ReLU from the score
        guided = (up.clamp(min=0) * (z > 0)) @ net.A
        deconv = up.clamp(min=0) @ net.A
    torch.testing.assert_close(tribute.explain(net, x, "guided_backprop", target=0), guided)
    torch.testing.assert_close(tribute.explain(net, x, "deconvnet", target=0), deconv)


def test_every_builtin_nonlinearity_has_call_forms():
    assert set(tribute.known_nonlinearities()) >= set(REFERENCE)
    for _, _, form in FORMS:
        fn = form.__class__ if isinstance(form, nn.Module) else form
        if not isinstance(form, nn.Module) and fn.__name__ != "<lambda>":
            assert call_form(form) is not None, form


class BareInplace(nn.Module):
    """Calls ``relu_`` for its side effect and ignores the returned tensor."""

    def __init__(self, bare: bool):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = nn.Linear(5, 6), nn.Linear(6, 2)
        self.bare = bare

    def forward(self, x):
        h = self.l1(x)
        if self.bare:
            h.relu_()
        else:
            h = torch.relu(h)
        return self.l2(h)


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "lrp_epsilon", "deeplift", "gradient"])
def test_an_inplace_call_whose_result_is_ignored_still_follows_the_rule(method):
    x = torch.randn(3, 5, dtype=torch.float64)
    a = tribute.explain(BareInplace(True).double().eval(), x, method, target=1)
    b = tribute.explain(BareInplace(False).double().eval(), x, method, target=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


class WithParameterTransform(nn.Module):
    """CLIP-style ``logit_scale.exp()`` and a ReLU of a parameter: computations off the input's path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 3)
        self.logit_scale = nn.Parameter(torch.tensor(0.7))
        self.offset = nn.Parameter(torch.tensor([-0.5, 0.2, 1.0]))

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.logit_scale.exp() + self.offset.relu()


def test_rules_only_touch_tensors_derived_from_the_input():
    net, x = WithParameterTransform().double().eval(), torch.randn(4, 5, dtype=torch.float64)
    m = tribute.DeepLift(net, strict=True)
    a = m.attribute(x, target=0)  # Rescale would fail on the 0-d logit_scale if it were ruled
    assert m.coverage.ruled == {"tanh": 1}
    with torch.no_grad():
        z, zbar = net.lin(x), net.lin.bias.expand(4, 3)
        g = (torch.tanh(z) - torch.tanh(zbar)) / (z - zbar)
        expected = x * ((g[:, 0:1] * net.logit_scale.exp()) * net.lin.weight[0])
    torch.testing.assert_close(a, expected)
    # the forward replacement of ReLU by softplus leaves the parameter's ReLU alone
    with torch.no_grad():
        out = net(x)
    s = tribute.Gradient(net, softplus_beta=1.0)
    with apply_rules(s.rule_set(s._namespace({}))) as mode:
        xi = x.clone().requires_grad_()
        mode.tag_input(xi)
        torch.testing.assert_close(net(xi).detach(), out)


class Unruled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        h = self.lin(x)
        return torch.erf(h) * h + torch.relu(h)


def test_strict_names_nonlinear_ops_without_a_rule():
    net, x = Unruled().double().eval(), torch.randn(2, 4, dtype=torch.float64)
    # erf(h) · h is a product under AttnLRP's uniform rule (tribute.lrp.gates); erf has no rule
    with pytest.raises(ValueError, match=r"strict.*erf"):
        tribute.explain(net, x, "lrp_epsilon", target=0, strict=True)
    with pytest.raises(ValueError, match=r"lrp_epsilon.*erf.*register_nonlinearity.*strict=False"):
        tribute.explain(net, x, "lrp_epsilon", target=0)  # the default refuses them too
    with pytest.warns(UserWarning, match=r"erf"):
        tribute.explain(net, x, "lrp_epsilon", target=0, strict=False)  # the plain gradient through them
    m = tribute.Gradient(net, strict=True)
    m.attribute(x, target=0)  # the gradient needs no rules
    assert "torch.erf" in m.coverage.unruled and m.coverage.linear["torch.nn.functional.linear"] == 1
    assert "erf" in str(m.coverage)


def test_registered_nonlinearities_get_rules():
    # softsign is no built-in (mish, which this test used, is one now)
    softsign = tribute.register_nonlinearity(F.softsign)
    assert softsign is F.softsign
    net, x = OneLayer(nn.Softsign(), False), _inputs(False)
    with torch.no_grad():
        z = x @ net.A.T + net.b
        expected = x * ((F.softsign(z) / (z + EPS * sign0(z)) * net.w) @ net.A)
    torch.testing.assert_close(tribute.explain(net, x, "lrp_epsilon", target=0, epsilon=EPS), expected)
    cube = tribute.register_nonlinearity(lambda z: z**3, name="cube3", wrap=True)  # a plain function: wrapped
    net = OneLayer(cube, False)
    with torch.no_grad():
        z = x @ net.A.T + net.b
        expected = x * ((z**3 / (z + EPS * sign0(z)) * net.w) @ net.A)
    torch.testing.assert_close(tribute.explain(net, x, "lrp_epsilon", target=0, epsilon=EPS), expected)


def _small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double().eval()


def test_torchscript_and_data_parallel_are_refused_with_a_way_out():
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="TorchScript.*original nn.Module"):
        tribute.explain(torch.jit.script(_small()), x, "gradient", target=0)
    with pytest.raises(TypeError, match=r"DataParallel.*\.module"):
        tribute.explain(nn.DataParallel(_small()), x, "guided_backprop", target=0)


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.block, self.head, self.reentrant = _small()[:2], nn.Linear(5, 2).double(), reentrant

    def forward(self, x):
        return self.head(checkpoint(self.block, x, use_reentrant=self.reentrant))


def test_reentrant_checkpointing_is_an_error_not_a_silent_plain_gradient():
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="use_reentrant"):
        tribute.explain(Checkpointed(True).eval(), x, "guided_backprop", target=0)


@pytest.mark.parametrize("method", ["guided_backprop", "deeplift", "lrp_epsilon"])
def test_non_reentrant_checkpointing_is_an_error_too(method):
    # its recomputation in the backward pass would replace the rule's saved tensors with plain ones
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="checkpoint"):
        tribute.explain(Checkpointed(False).eval(), x, method, target=0)
    # the plain gradient is right through any checkpointing
    net = Checkpointed(False).eval()
    plain = nn.Sequential(net.block, net.head)
    torch.testing.assert_close(tribute.explain(net, x, "gradient", target=0),
                               tribute.explain(plain, x, "gradient", target=0))


def test_nesting_the_same_rules_composes_and_different_rules_conflict():
    net, x = _small(), torch.randn(3, 4, dtype=torch.float64)
    expected = tribute.explain(net, x, "guided_backprop", target=0)
    with apply_rules(tribute.GuidedBackprop.rules):
        torch.testing.assert_close(tribute.explain(net, x, "guided_backprop", target=0), expected)
        with pytest.raises(RuntimeError, match="conflicting rule sets"):
            tribute.explain(net, x, "deconvnet", target=0)
    torch.testing.assert_close(tribute.explain(net, x, "guided_backprop", target=0), expected)


def test_softplus_beta_equals_the_gradient_of_the_softplus_network():
    torch.manual_seed(0)
    relu_net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    soft_net = nn.Sequential(nn.Linear(4, 6), nn.Softplus(3.0), nn.Linear(6, 6), nn.Softplus(3.0), nn.Linear(6, 2))
    soft_net.load_state_dict(relu_net.state_dict())
    relu_net, soft_net = relu_net.double().eval(), soft_net.double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    a = tribute.explain(relu_net, x, "gradient", target=1, softplus_beta=3.0)
    torch.testing.assert_close(a, tribute.explain(soft_net, x, "gradient", target=1))
    ig = tribute.explain(relu_net, x, "integrated_gradients", target=1, softplus_beta=3.0, steps=16)
    torch.testing.assert_close(ig, tribute.explain(soft_net, x, "integrated_gradients", target=1, steps=16))


@pytest.mark.parametrize("form", [nn.ReLU6(), F.relu6, nn.Hardtanh(0.0, 6.0)])
def test_guided_backprop_and_deconvnet_treat_relu6_as_a_rectifier(form):
    net, x = OneLayer(form, False), 4 * _inputs(False)
    with torch.no_grad():
        z = x @ net.A.T + net.b
        assert ((z > 6) | (z < 0)).any() and ((z > 0) & (z < 6)).any()
        up = net.w.expand(4, 7)
        guided = (up.clamp(min=0) * ((z > 0) & (z < 6))) @ net.A
    torch.testing.assert_close(tribute.explain(net, x, "guided_backprop", target=0), guided)
    torch.testing.assert_close(tribute.explain(net, x, "deconvnet", target=0), up.clamp(min=0) @ net.A)


def test_strict_refuses_rules_that_change_nothing():
    net, x = OneLayer(nn.Tanh(), False), _inputs(False)
    with pytest.raises(ValueError, match=r"guided_backprop rules changed nothing.*tanh"):
        tribute.explain(net, x, "guided_backprop", target=0, strict=True)
    tribute.explain(OneLayer(nn.ReLU(), False), x, "guided_backprop", target=0, strict=True)
