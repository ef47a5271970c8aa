"""LRP with rules at linear layers: definitions in matrix form, Zennit's outputs, conservation, invariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import fixture_module
from torch import nn

import tribute
from tribute.lrp import AlphaBeta, Box, Composite, Epsilon, Flat, Gamma, WSquare, ZPlus
from tribute.lrp.layer_call import LayerCall, parse_linear

FIXTURE = Path(__file__).parent / "fixtures" / "zennit"
E = 1e-6  # the stabiliser of every rule but ε


def stab(d, e=E):
    return d + e * torch.where(d >= 0, 1.0, -1.0).to(d.dtype)


# -- every rule against its definition in matrix form -----------------------------------------------------
def jacobian(op, x, w):
    """The matrix J (out × in) of the linear map x ↦ op(x, w) for one sample."""
    n_in = x[0].numel()
    eye = torch.eye(n_in, dtype=x.dtype).view(n_in, *x.shape[1:])
    return op(eye, w, None).reshape(n_in, -1).T


def matrix_rule(rule: str, x, w, b, r, op, param=None):
    """R_in of one sample by the rule's formula, with J the layer's matrix (w_ij = J[j, i])."""
    J = jacobian(op, x, w)
    xv, rv = x.reshape(-1), r.reshape(-1)
    bv = torch.zeros(J.shape[0], dtype=x.dtype) if b is None else torch.broadcast_to(
        b.view(-1, *([1] * (r.dim() - 2))), r.shape[1:]).reshape(-1)
    contrib = J * xv  # contrib[j, i] = x_i w_ij
    pos, neg = contrib.clamp(min=0), contrib.clamp(max=0)
    if rule == "epsilon":
        z = contrib.sum(1) + bv
        return (contrib * (rv / stab(z, param))[:, None]).sum(0)
    if rule in ("zplus", "alpha_beta"):
        alpha, beta = param if rule == "alpha_beta" else (1.0, 0.0)
        zp = pos.sum(1) + bv.clamp(min=0)
        zn = neg.sum(1) + bv.clamp(max=0)
        return (alpha * pos * (rv / stab(zp))[:, None] - beta * neg * (rv / stab(zn))[:, None]).sum(0)
    if rule == "gamma":
        z = contrib.sum(1) + bv
        up = (contrib + param * pos) * (rv * (z > 0) / stab(z + param * (pos.sum(1) + bv.clamp(min=0))))[:, None]
        down = (contrib + param * neg) * (rv * (z < 0) / stab(z + param * (neg.sum(1) + bv.clamp(max=0))))[:, None]
        return (up + down).sum(0)
    if rule == "box":
        lo, hi = (torch.broadcast_to(t, x.shape[1:]).reshape(-1) for t in param)
        c = contrib - J.clamp(min=0) * lo - J.clamp(max=0) * hi
        return (c * (rv / stab(c.sum(1)))[:, None]).sum(0)
    if rule == "flat":
        c = (jacobian(op, x, torch.ones_like(w)) != 0).to(x.dtype)
        return (c * (rv / stab(c.sum(1)))[:, None]).sum(0)
    if rule == "wsquare":
        c = J * J
        return (c * (rv / stab(c.sum(1) + bv * bv))[:, None]).sum(0)
    raise AssertionError(rule)


LAYERS = {
    "linear": (lambda: (torch.randn(1, 7), torch.randn(5, 7), torch.randn(5)), F.linear, {}),
    "conv": (lambda: (torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(3)), F.conv2d,
             {"padding": 1, "stride": 2}),
    "conv_transpose": (lambda: (torch.randn(1, 3, 3, 3), torch.randn(3, 2, 3, 3), torch.randn(2)),
                       F.conv_transpose2d, {"stride": 2}),
    "conv_grouped_dilated": (lambda: (torch.randn(1, 4, 7, 7), torch.randn(4, 2, 3, 3), torch.randn(4)), F.conv2d,
                             {"padding": 2, "dilation": 2, "groups": 2}),
    "conv_transpose_padded": (lambda: (torch.randn(1, 2, 3, 3), torch.randn(2, 3, 3, 3), torch.randn(3)),
                              F.conv_transpose2d, {"stride": 2, "padding": 1, "output_padding": 1}),
    "conv1d_same": (lambda: (torch.randn(1, 2, 6), torch.randn(3, 2, 3), torch.randn(3)), F.conv1d,
                    {"padding": "same"}),
}
RULES = {
    "epsilon": (lambda: Epsilon(0.1), 0.1), "zplus": (ZPlus, None), "alpha_beta": (lambda: AlphaBeta(2, 1), (2, 1)),
    "gamma": (lambda: Gamma(0.3), 0.3), "flat": (Flat, None), "wsquare": (WSquare, None),
}


@pytest.mark.parametrize("layer_kind", LAYERS)
@pytest.mark.parametrize("rule_name", [*RULES, "box"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("inputs", ["signed", "non_negative"])  # rules take a shorter path for x ≥ 0
def test_every_rule_equals_its_matrix_definition(layer_kind, rule_name, bias, inputs):
    g = torch.Generator().manual_seed(hash((layer_kind, rule_name, bias)) % 2**31)
    make, func, kw = LAYERS[layer_kind]
    torch.manual_seed(g.initial_seed())
    x, w, b = (t.double() for t in make())
    if inputs == "non_negative":
        x = x.abs()
    b = b if bias else None
    kind, _, _, _, op = parse_linear(func, (x, w, b), kw)
    layer = LayerCall(kind, op, w, b, 1, "", None)
    z = op(x, w, b)
    r = torch.randn(z.shape, dtype=torch.float64)
    if rule_name == "box":
        lo, hi = x.min() - 0.5 + torch.zeros(1), x.max() + 0.7 + torch.zeros(1)
        rule, param = Box(lo, hi), (lo.double(), hi.double())
    else:
        make_rule, param = RULES[rule_name]
        rule = make_rule()
    got = rule.relevance(layer, x, z, r)
    expected = matrix_rule(rule_name, x, w, b, r, op, param)
    torch.testing.assert_close(got.reshape(-1), expected, rtol=1e-10, atol=1e-12)


# -- agreement with Zennit (fixtures made once with Zennit 0.5.1, see tests/fixtures/zennit) -----------
ZENNIT_CONFIGS = {
    "epsilon_1e-6": {"composite": "epsilon", "epsilon": 1e-6},
    "epsilon_0.25": {"composite": "epsilon", "epsilon": 0.25},
    "alpha2_beta1": {"composite": "alpha_beta"},
    "alpha1_beta0": {"composite": "alpha_beta", "alpha": 1.0, "beta": 0.0},
    "zplus": {"composite": "zplus"},
    "gamma_0.25": {"composite": "gamma", "gamma": 0.25},
    "epsilon_gamma_box": {"composite": "epsilon_gamma_box"},
    "epsilon_plus_flat": {"composite": "epsilon_plus_flat"},
    "epsilon_plus_wsquare": {"composite": Composite(first=WSquare(), conv=ZPlus(), dense=Epsilon(1e-6))},
}


def _zennit():
    return fixture_module("zennit"), torch.load(FIXTURE / "reference.pt", weights_only=True)


@pytest.mark.parametrize("model_name", ["cnn", "cnn_maxpool"])
def test_agreement_with_zennit(model_name):
    zennit_model, ref = _zennit()
    m = ref["models"][model_name]
    net = zennit_model.build(m["spec"], m["state_dict"]).eval()
    x, t = m["inputs"], m["targets"]
    compared = 0
    for name, cfg in m["configs"].items():
        if name not in ZENNIT_CONFIGS:
            continue
        kw = dict(ZENNIT_CONFIGS[name])
        if name == "epsilon_gamma_box":
            kw.update(low=m["box_low"], high=m["box_high"])
        a = tribute.explain(net, x, "lrp", target=t, **kw)
        expected = cfg["relevance"]
        torch.testing.assert_close(a, expected, rtol=0, atol=1e-12 * expected.abs().max().item(), msg=name)
        sums = cfg["relevance_layer_sums"][0]
        torch.testing.assert_close(a.flatten(1).sum(1), sums, rtol=1e-12, atol=1e-12, msg=name)
        compared += 1
    assert compared >= 5


# -- conservation, residuals, batch norm ------------------------------------------------------------------
class Residual(nn.Module):
    """conv-BN-ReLU, a residual block whose addition is written as ``add``, and a linear head."""

    def __init__(self, add: str, relu: str, bias: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.fc = nn.Linear(4, 3, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.adder = Adder()
        self.add, self.relu_style = add, relu

    def act(self, x):
        return self.relu(x) if self.relu_style == "reused" else F.relu(x)

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        y = self.conv3(self.act(self.conv2(h)))
        if self.add == "plus":
            h = y + h
        elif self.add == "torch.add":
            h = torch.add(y, h)
        elif self.add == "module":
            h = self.adder(y, h)
        else:  # in place, as torchvision's blocks do
            y += h
            h = y
        return self.fc(self.act(h).mean((2, 3)))


class Adder(nn.Module):
    def forward(self, a, b):
        return a + b


def _residual(add, relu, bias=True):
    net = Residual(add, relu, bias).double()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 1.5)
        net.bn1.weight.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "alpha_beta", "gamma"])
def test_residual_network_written_every_way_gives_identical_relevance(composite):
    x = torch.rand(3, 3, 6, 6, dtype=torch.float64)
    results = {(a, r): tribute.explain(_residual(a, r), x, "lrp", target=1, composite=composite)
               for a in ("plus", "torch.add", "module", "inplace") for r in ("reused", "functional")}
    first = next(iter(results.values()))
    for key, value in results.items():
        assert torch.equal(value, first), key


def test_conservation_without_biases_and_with_small_epsilon():
    # large inputs keep every denominator far above the stabilisers (1e-6 outside the ε rule)
    x = 100 * torch.rand(3, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    net = _residual("plus", "reused", bias=False)
    with torch.no_grad():
        net.bn1.running_mean.zero_()
        net.bn1.bias.zero_()  # a bias-free network: nothing absorbs relevance but the stabilisers
        s = net(x)[:, 1]
    a = tribute.explain(net, x, "lrp", target=1, composite="epsilon", epsilon=1e-9)
    torch.testing.assert_close(a.flatten(1).sum(1), s, rtol=1e-4, atol=0)
    # z⁺ conserves per output unit too; on a chain of ReLU layers (no cancelling branches) it is exact
    torch.manual_seed(3)
    chain = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.ReLU(), nn.Conv2d(6, 6, 3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(24, 3, bias=False)).double().eval()
    with torch.no_grad():
        s = chain(x)[:, 1]
    for composite in ("epsilon_plus", "zplus", "alpha_beta"):
        a = tribute.explain(chain, x, "lrp", target=1, composite=composite)
        torch.testing.assert_close(a.flatten(1).sum(1), s, rtol=1e-6, atol=0, msg=composite)
    # with biases, the biases absorb relevance: the sum moves away from S
    biased = _residual("plus", "reused", bias=True)
    with torch.no_grad():
        s_b = biased(x)[:, 1]
    a = tribute.explain(biased, x, "lrp", target=1, composite="epsilon", epsilon=1e-9)
    assert ((a.flatten(1).sum(1) - s_b).abs() > 1e-3 * s_b.abs()).all()


def test_residual_addition_splits_in_proportion_to_contributions():
    class TwoBranches(nn.Module):
        def forward(self, x):
            return (x[:, :2] * 3.0 + x[:, 2:]).sum(1, keepdim=True)

    x = torch.tensor([[1.0, 2.0, 4.0, 0.5]], dtype=torch.float64)
    a = tribute.explain(TwoBranches(), x, "lrp", target=0)
    # S = (3 + 4) + (6 + 0.5) = 13.5; each input keeps exactly its own contribution
    torch.testing.assert_close(a, torch.tensor([[3.0, 6.0, 4.0, 0.5]], dtype=torch.float64), rtol=1e-6, atol=0)


def test_lrp_epsilon_composite_agrees_with_ancona_form_where_every_layer_feeds_a_nonlinearity():
    # Eq 15 with ε at every linear layer equals Prop 1's ratio at the nonlinearities when each linear layer
    # feeds one; they differ only at the logits, by z/(z + ε) there: with ε → 0 they coincide
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    eq15 = tribute.explain(net, x, "lrp", target=2, composite="epsilon", epsilon=1e-10)
    prop1 = tribute.explain(net, x, "lrp_epsilon", target=2, epsilon=1e-10)
    torch.testing.assert_close(eq15, prop1, rtol=1e-6, atol=1e-12)


def test_batch_norm_merges_only_into_a_layer_whose_output_it_alone_reads():
    class Shared(nn.Module):
        def __init__(self, share):
            super().__init__()
            torch.manual_seed(1)
            self.conv, self.bn, self.fc, self.share = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(3, 2), share

        def forward(self, x):
            z = self.conv(x)
            h = torch.relu(self.bn(z))
            if self.share:
                h = h + z
            return self.fc(h.mean((2, 3)))

    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    for share in (False, True):
        net = Shared(share).double()
        with torch.no_grad():
            net.bn.running_mean.uniform_(-1, 1)
            net.bn.bias.uniform_(-1, 1)
        net.eval()
        a = tribute.explain(net, x, "lrp", target=0, composite="epsilon")
        conv = net.conv
        # by hand: merged, the conv's rule sees W' = W γ/σ, b' = (b − μ)γ/σ + β and the BN passes relevance
        scale = net.bn.weight / torch.sqrt(net.bn.running_var + net.bn.eps)
        with torch.no_grad():
            z = conv(x)
            zbn = net.bn(z)
            h = torch.relu(zbn)
            total = h + z if share else h
            m = total.mean((2, 3))
            out = net.fc(m)
            s = out[:, 0]
            r_out = torch.zeros_like(out)
            r_out[:, 0] = s
            r_m = m * ((r_out / stab(out)) @ net.fc.weight)
            r_total = (total / stab(m)[:, :, None, None] / 9) * r_m[:, :, None, None]
            parts_h = h / stab(total) * r_total if share else r_total
            r_z_direct = z / stab(total) * r_total if share else 0
            if share:  # not merged: BN is an affine map with the Norm rule, and z's two reads add up
                r_z = z * scale.view(1, -1, 1, 1) * parts_h / stab(zbn) + r_z_direct
                w, b, zz = conv.weight, conv.bias, z
            else:
                r_z = parts_h
                w = conv.weight * scale.view(-1, 1, 1, 1)
                b = (conv.bias - net.bn.running_mean) * scale + net.bn.bias
                zz = zbn
            r_x = x * torch.nn.grad.conv2d_input(x.shape, w, r_z / stab(zz))
        torch.testing.assert_close(a, r_x, rtol=1e-9, atol=1e-12, msg=f"share={share}")
        assert b is not None


def test_composites_assign_rules_by_position_kind_and_name():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(36, 2)).double().eval()
    x = torch.rand(2, 1, 7, 7, dtype=torch.float64)
    seen = []

    class Recording(Composite):
        def rule(self, layer):
            seen.append((layer.index, layer.name, layer.kind, layer.first))
            return super().rule(layer)

    comp = Recording(first=Flat(), conv=ZPlus(), dense=Epsilon(1e-6), by_name={"2": Gamma(0.5)})
    tribute.explain(net, x, "lrp", target=0, composite=comp)
    assert seen == [(0, "0", "conv", True), (1, "2", "conv", False), (2, "5", "dense", False)]
    assert comp.rule(LayerCall("conv", None, None, None, 1, "2", None)).gamma == 0.5
    by_name = tribute.explain(net, x, "lrp", target=0, composite=comp)
    plain = tribute.explain(net, x, "lrp", target=0, composite=Composite(first=Flat(), conv=ZPlus(),
                                                                          dense=Epsilon(1e-6)))
    assert (by_name - plain).abs().max() > 1e-6


def test_box_bounds_live_in_pixel_space_with_an_input_transform():
    zennit_model, ref = _zennit()
    m = ref["models"]["cnn"]
    net = zennit_model.build(m["spec"], m["state_dict"]).eval()
    x, t = m["inputs"], m["targets"]
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.5, 0.6, 0.7])
    norm = tribute.Normalize(mean.tolist(), std.tolist())
    pixels = x * std.view(1, 3, 1, 1).double() + mean.view(1, 3, 1, 1).double()  # so that norm(pixels) = x
    low = m["box_low"].flatten() * std.double() + mean.double()
    high = m["box_high"].flatten() * std.double() + mean.double()
    a = tribute.explain(net, pixels, "lrp", target=t, composite="epsilon_gamma_box", low=low.tolist(),
                        high=high.tolist(), input_transform=norm)
    expected = m["configs"]["epsilon_gamma_box"]["relevance"]
    torch.testing.assert_close(a, expected, rtol=0, atol=1e-10 * expected.abs().max().item())


def test_lrp_bad_input():
    net = nn.Sequential(nn.Linear(3, 2)).double().eval()
    x = torch.rand(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="composite must be one of"):
        tribute.explain(net, x, "lrp", composite="zennit")
    with pytest.raises(ValueError, match="needs the input's bounds"):
        tribute.explain(net, x, "lrp", composite="epsilon_gamma_box")
    with pytest.raises(ValueError, match="alpha − beta = 1"):
        tribute.explain(net, x, "lrp", composite="alpha_beta", alpha=3.0, beta=1.0)
    with pytest.raises(ValueError, match="outside"):
        tribute.explain(net, x, "lrp", composite="epsilon_gamma_box", low=0.5, high=0.6)
    with pytest.raises(ValueError, match="differentiable"):
        tribute.explain(net, x, "lrp", differentiable=True)
