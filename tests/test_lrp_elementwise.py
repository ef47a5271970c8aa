"""LRP at elementwise nonlinearities with f(0) ≠ 0: the composites count f(0) as an absorbed bias (bounded);
lrp_epsilon (Ancona's f(z)/(z + ε)) refuses such nonlinearities unless ``unbounded=True``."""

import pytest
import torch
from torch import nn

import tribute
from tribute.lrp.rules import STABILIZER

NONZERO_AT_ZERO = {"sigmoid": nn.Sigmoid(), "hardsigmoid": nn.Hardsigmoid(), "softplus": nn.Softplus()}
ZERO_AT_ZERO = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU(), "tanh": nn.Tanh(), "mish": nn.Mish(),
                "hardswish": nn.Hardswish(), "elu": nn.ELU()}


def _chain(act: nn.Module, w2: torch.Tensor) -> nn.Sequential:
    """x → identity layer (no bias) → act → w2·y (no bias): R_y and R_x worked by hand."""
    first, last = nn.Linear(3, 3, bias=False), nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.eye(3))
        last.weight.copy_(w2[None])
    return nn.Sequential(first, act, last).double().eval()


def test_sigmoid_three_elements_by_hand():
    # R_y = y ⊙ w (ε rule at the last layer, R = out); R_z = R_y (y − ½)/(y + 10⁻⁶); R_x = R_z (identity layer)
    w = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    x = torch.tensor([[1.5, -0.7, 0.0]], dtype=torch.float64)
    r = tribute.explain(_chain(nn.Sigmoid(), w), x, "lrp", composite="epsilon", epsilon=1e-12, target=0)
    y = torch.sigmoid(x[0])
    expected = w * y * (y - 0.5) / (y + STABILIZER)
    torch.testing.assert_close(r[0], expected, rtol=1e-9, atol=1e-12)
    assert r[0, 2] == 0  # z = 0: f(z) − f(0) = 0, all of it absorbed
    # the relevance sums to the score minus what f(0) (and the stabiliser) absorb: Σ_j R_y_j (½ + 10⁻⁶)/(y_j + 10⁻⁶)
    out = float(w @ y)
    absorbed = float((w * y * (0.5 + STABILIZER) / (y + STABILIZER)).sum())
    assert abs(float(r.sum()) - (out - absorbed)) < 1e-10  # ε = 1e-12 at the linear layers


@pytest.mark.parametrize("name", sorted(ZERO_AT_ZERO))
def test_zero_at_zero_passes_relevance_unchanged(name):
    # f(0) = 0: the rule is Zennit's pass, R_z = R_y, so R_x = w ⊙ f(x) (identity first layer)
    w = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    x = torch.tensor([[1.5, -0.7, 0.3]], dtype=torch.float64)
    act = ZERO_AT_ZERO[name]
    r = tribute.explain(_chain(act, w), x, "lrp", composite="epsilon", epsilon=1e-12, target=0)
    torch.testing.assert_close(r[0], w * act(x[0]), rtol=1e-9, atol=1e-12)


def _mlp(act: nn.Module, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16, bias=False), act, nn.Linear(16, 16, bias=False), act,
                         nn.Linear(16, 3, bias=False)).double().eval()


LIPSCHITZ = {"sigmoid": 0.25, "hardsigmoid": 1 / 6, "softplus": 1.0}


@pytest.mark.parametrize("name", sorted(NONZERO_AT_ZERO))
def test_relevance_bounded_where_f0_nonzero(name):
    """x → Wx + b → f → w·y (no bias), with b set so that several pre-activations z_j are ~1e-10 while (Wx)_j is
    not.  R_z_j = w_j (f(z_j) − f(0)) (stabiliser aside) and the ε rule gives Σ_i R_x_i = Σ_j R_z_j (Wx)_j / z_j,
    so |Σ R| ≤ L·Σ_j |w_j|·|(Wx)_j| with L f's Lipschitz constant (|f(z) − f(0)| ≤ L|z|).  Passing R_y unchanged
    (the old rule, = Ancona's ratio) gives Σ_j w_j f(z_j)(Wx)_j / z_j: ~f(0)·|(Wx)_j|/10⁻¹⁰ per such unit."""
    torch.manual_seed(0)
    first, last = nn.Linear(8, 16).double(), nn.Linear(16, 1, bias=False).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    with torch.no_grad():
        first.bias[:6] = -(x[0] @ first.weight[:6].T) + 1e-10  # z_j = 1e-10 for sample 0, j < 6
    net = nn.Sequential(first, NONZERO_AT_ZERO[name], last).eval()
    r = tribute.explain(net, x, "lrp", composite="epsilon", target=0)
    wx = x @ first.weight.T.detach()
    bound = LIPSCHITZ[name] * (last.weight[0].detach().abs() * wx.abs()).sum(1)
    assert (r.sum(1).abs() <= bound * (1 + 1e-5)).all(), (r.sum(1), bound)
    # the unbounded ratio on the same model: the blow-up the composites avoid
    u = tribute.explain(net, x, "lrp_epsilon", target=0, unbounded=True)
    assert u[0].sum().abs() > 1e6 * bound[0]


def test_composite_matches_absorbed_bias_formulation():
    """The rule equals Epsilon LRP on the same net with f(0) moved out as a bias: y = f(0) + g(z)·z where
    g = (f(z) − f(0))/z, i.e. the next layer gets a bias W·f(0) and the nonlinearity becomes f − f(0)."""
    torch.manual_seed(1)
    first, last = nn.Linear(5, 4, bias=False).double(), nn.Linear(4, 2, bias=False).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    net = nn.Sequential(first, nn.Sigmoid(), last).eval()
    shifted_last = nn.Linear(4, 2).double()
    with torch.no_grad():
        shifted_last.weight.copy_(last.weight)
        shifted_last.bias.copy_(last.weight.sum(1) * 0.5)

    centred = tribute.register_nonlinearity(lambda z: torch.sigmoid(z) - 0.5, name="test_centred_sigmoid", wrap=True)

    class Shifted(nn.Module):  # sigmoid − ½ : f(0) = 0, so its rule is the pass rule
        def forward(self, z):
            return centred(z)

    shifted = nn.Sequential(first, Shifted(), shifted_last).eval()
    torch.testing.assert_close(net(x), shifted(x))
    a = tribute.explain(net, x, "lrp", composite="epsilon", epsilon=1e-12, target=1)
    b = tribute.explain(shifted, x, "lrp", composite="epsilon", epsilon=1e-12, target=1)
    # same up to the stabiliser 10⁻⁶ at the sigmoid's output, (y − ½)/(y + 10⁻⁶) for (y − ½)/y: relative ≤ 10⁻⁵
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("name", sorted(NONZERO_AT_ZERO))
def test_lrp_epsilon_refuses_f0_nonzero(name):
    net = _mlp(NONZERO_AT_ZERO[name], 0)
    x = torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"refuses {name}.*f\\(0\\).*composites.*unbounded=True"):
        tribute.explain(net, x, "lrp_epsilon", target=0)


def test_lrp_epsilon_unbounded_opt_in_is_anconas_ratio():
    net = _mlp(nn.Sigmoid(), 0)
    x = torch.randn(2, 8, dtype=torch.float64)
    eps = 1e-3
    r = tribute.explain(net, x, "lrp_epsilon", target=0, epsilon=eps, unbounded=True)
    # by hand: gradient with f' replaced by f(z)/(z + ε sign z), times x
    xx = x.clone().requires_grad_()
    z1 = net[0](xx)
    g1 = (torch.sigmoid(z1) / (z1 + eps * torch.where(z1 >= 0, 1.0, -1.0))).detach()
    h1 = torch.sigmoid(z1).detach() + g1 * (z1 - z1.detach())
    z2 = net[2](h1)
    g2 = (torch.sigmoid(z2) / (z2 + eps * torch.where(z2 >= 0, 1.0, -1.0))).detach()
    h2 = torch.sigmoid(z2).detach() + g2 * (z2 - z2.detach())
    (grad,) = torch.autograd.grad(net[4](h2)[:, 0].sum(), xx)
    torch.testing.assert_close(r, x * grad)


@pytest.mark.parametrize("name", sorted(ZERO_AT_ZERO))
def test_lrp_epsilon_keeps_f0_zero(name):
    net = _mlp(ZERO_AT_ZERO[name], 0)
    x = torch.randn(2, 8, dtype=torch.float64)
    assert torch.isfinite(tribute.explain(net, x, "lrp_epsilon", target=0)).all()


def test_inplace_sigmoid_matches_out_of_place():
    class Net(nn.Module):
        def __init__(self, inplace):
            super().__init__()
            torch.manual_seed(3)
            self.a, self.b, self.inplace = nn.Linear(6, 5), nn.Linear(5, 2, bias=False), inplace

        def forward(self, x):
            h = self.a(x)
            return self.b(h.sigmoid_() if self.inplace else torch.sigmoid(h))

    x = torch.randn(3, 6, dtype=torch.float64)
    a = tribute.explain(Net(False).double().eval(), x, "lrp", composite="epsilon", target=0)
    b = tribute.explain(Net(True).double().eval(), x, "lrp", composite="epsilon", target=0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.abs().sum() > 0


def test_log_has_no_composite_rule():
    class Net(nn.Module):
        def forward(self, x):
            return torch.log(x.exp() + 1.0).sum(1, keepdim=True)

    with pytest.raises(ValueError, match="no rule at log: f\\(0\\) = -inf"):
        tribute.explain(Net(), torch.rand(2, 3, dtype=torch.float64), "lrp", composite="epsilon", target=0)


def test_layer_lrp_epsilon_refuses_and_takes_unbounded():
    net = _mlp(nn.Sigmoid(), 0)
    x = torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="refuses sigmoid"):
        tribute.LayerAttribution("lrp_epsilon", net, layer="2").attribute(x, target=0)
    a = tribute.LayerAttribution("lrp_epsilon", net, layer="2", unbounded=True).attribute(x, target=0)
    # at the layer's output h: h ⊙ the ratio-modified gradient above it (one sigmoid between h and the score)
    with torch.no_grad():
        h = net[2](net[1](net[0](x)))
        g = torch.sigmoid(h) / (h + 1e-9 * torch.where(h >= 0, 1.0, -1.0))
    torch.testing.assert_close(a, h * g * net[4].weight[0])
