"""``register_nonlinearity`` works for every function that dispatches to torch-function modes (``F.hardswish`` is
missing from torch's overridable list but dispatches), keeps ``inplace=`` away from the rule, and refuses a plain
Python function that modes never see (issue 13)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tribute
from tribute.attribution.deeplift import FAMILY as DEEPLIFT
from tribute.attribution.deeplift import Rescale
from tribute.core.nonlinearities import (
    call_form,
    dispatches_to_modes,
    known_nonlinearities,
    register_nonlinearity,
    unregister_nonlinearity,
)
from tribute.core.rule_registry import register_rule, unregister_rule
from tribute.lrp.composites import composites

DT = torch.float64


@pytest.fixture
def hardswish():
    """A registered function with an ``inplace`` argument that the engine does not know: F.rrelu (in eval, a leaky
    ReLU of slope (lower + upper)/2). hardswish, the issue's example, has since become built in."""
    if "rrelu" in known_nonlinearities():  # a built-in rule landed: this test is about registering one
        pytest.skip("rrelu is built in")
    public = register_nonlinearity(F.rrelu)
    yield public
    unregister_nonlinearity("rrelu")


class Net(nn.Module):
    def __init__(self, inplace: bool):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.act, self.lin2 = nn.Linear(4, 8), nn.RReLU(inplace=inplace), nn.Linear(8, 2)
        self.inplace = inplace

    def forward(self, x):
        h = self.act(self.lin1(x))
        return self.lin2(F.rrelu(h * 2.0 - 1.0, inplace=self.inplace))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 4, dtype=DT, generator=g) * 3, torch.randn(6, 4, dtype=DT, generator=g)


def test_torch_functions_off_the_overridable_list_are_found_to_dispatch():
    assert F.hardswish not in {f for fs in torch.overrides.get_overridable_functions().values() for f in fs}
    assert dispatches_to_modes(F.hardswish) and dispatches_to_modes(F.silu) and dispatches_to_modes(torch.erf)
    assert not dispatches_to_modes(lambda z: z**3)


@pytest.mark.parametrize("inplace", [False, True])
def test_registered_hardswish_gives_deeplift_summation_to_delta(hardswish, inplace):
    assert hardswish is F.rrelu  # returned unchanged: models keep calling F.rrelu
    x, base = _data()
    net = Net(inplace).to(DT).eval()
    explainer = tribute.DeepLift(net, baseline=base, strict=True)
    phi = explainer.attribute(x, target=1)
    with torch.no_grad():
        delta = (net(x.clone()) - net(base.clone()))[:, 1]
    torch.testing.assert_close(phi.sum(1), delta, rtol=1e-10, atol=1e-10)
    assert explainer.coverage.ruled["rrelu"] == 2 and not explainer.coverage.unruled
    # in place and out of place agree exactly
    phi_other = tribute.DeepLift(Net(not inplace).to(DT).eval(), baseline=base, strict=True).attribute(x, target=1)
    torch.testing.assert_close(phi, phi_other, rtol=0, atol=0)


def test_without_the_registration_deeplift_misses_summation_to_delta():
    if "rrelu" in known_nonlinearities():
        pytest.skip("rrelu is built in")
    x, base = _data()
    net = Net(False).to(DT).eval()
    with pytest.raises(ValueError, match="rrelu"):
        tribute.DeepLift(net, baseline=base).attribute(x, target=1)
    with pytest.warns(UserWarning, match="rrelu"):
        phi = tribute.DeepLift(net, baseline=base, strict=False).attribute(x, target=1)
    with torch.no_grad():
        delta = (net(x) - net(base))[:, 1]
    assert (phi.sum(1) - delta).abs().max() > 1e-3  # the plain gradient at rrelu breaks it


@pytest.mark.parametrize("composite", composites())
def test_registered_inplace_hardswish_under_every_lrp_composite_equals_out_of_place(hardswish, composite):
    # with a rule, the in-place call runs the rule out of place and the engine writes the result back
    x, _ = _data()
    kw = {"composite": composite, "target": 0, **({"low": -9.0, "high": 9.0} if "box" in composite else {})}
    got = tribute.explain(Net(True).to(DT).eval(), x, "lrp", **kw)
    expected = tribute.explain(Net(False).to(DT).eval(), x, "lrp", **kw)
    assert torch.isfinite(expected).all() and expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class Spy(Rescale):
    def __init__(self):
        super().__init__()
        self.params = []

    def apply(self, nl, z, params, phase):
        self.params.append(dict(params))
        return super().apply(nl, z, params, phase)


def test_the_rule_never_receives_inplace(hardswish):
    form = call_form(F.rrelu)
    z = torch.zeros(3)
    # F.rrelu(input, lower, upper, training, inplace): nn.RReLU passes inplace by position
    for args, kwargs, expected in (((z, 0.125, 1 / 3, False, True), {}, True), ((z,), {"inplace": True}, True),
                                   ((z,), {}, False)):
        got, params, inplace = form.parse(args, kwargs)
        assert got is z and "inplace" not in params and bool(inplace) == expected
    spy = Spy()
    register_rule(DEEPLIFT, "rrelu", spy)
    try:
        x, base = _data()
        tribute.DeepLift(Net(True).to(DT).eval(), baseline=base, strict=True).attribute(x, target=0)
    finally:
        unregister_rule(DEEPLIFT, "rrelu")
    assert len(spy.params) == 2 and all("inplace" not in p for p in spy.params)


def test_a_plain_python_function_is_refused_with_the_reason():
    def cube(z):
        return z**3

    with pytest.raises(TypeError, match=r"cube.*never reach torch-function modes.*wrap=True"):
        register_nonlinearity(cube)
    assert "cube" not in known_nonlinearities()
    wrapped = register_nonlinearity(cube, name="cube_wrapped", wrap=True)  # the way out: call the wrapper
    try:
        assert wrapped is not cube and dispatches_to_modes(wrapped)
        torch.testing.assert_close(wrapped(torch.tensor(2.0)), torch.tensor(8.0))
    finally:
        unregister_nonlinearity("cube_wrapped")
    with pytest.raises(KeyError, match="cube_wrapped"):
        unregister_nonlinearity("cube_wrapped")


def test_aliases_read_their_own_inplace_spelling():
    register_nonlinearity(F.hardswish, name="hardswish_aliases",
                          aliases=(torch._C._nn.hardswish, torch._C._nn.hardswish_))
    try:
        z = torch.zeros(2)
        assert call_form(torch._C._nn.hardswish).parse((z,), {})[1:] == ({}, False)
        assert call_form(torch._C._nn.hardswish_).parse((z,), {})[1:] == ({}, True)
        assert call_form(F.hardswish).parse((z, True), {})[1:] == ({}, True)
    finally:
        unregister_nonlinearity("hardswish_aliases")
    assert call_form(F.hardswish) is None or call_form(F.hardswish).nonlinearity.name != "hardswish_aliases"


def test_unregistering_restores_what_a_registration_covered_up():
    """Registering over a built-in (its function as an alias, or its own name) and unregistering gives the built-in
    back, with its in-place handling: later models are not left without a rule."""
    before = {f: call_form(f) for f in (F.hardswish, torch._C._nn.hardswish_, F.mish)}
    register_nonlinearity(F.hardswish, name="hardswish_cover", aliases=(torch._C._nn.hardswish_,))
    assert call_form(F.hardswish).nonlinearity.name == "hardswish_cover"
    unregister_nonlinearity("hardswish_cover")
    register_nonlinearity(F.mish)
    unregister_nonlinearity("mish")
    for f, form in before.items():
        assert call_form(f) == form
    assert "mish" in known_nonlinearities() and "hardswish" in known_nonlinearities()
