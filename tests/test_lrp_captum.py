"""tribute's LRP against Captum's (``captum.attr.LRP``, 0.9) in float64, and where and why the two part.

Captum is a test-only reference: it is called, never copied.  How its LRP works (read from its source):
every leaf module with a rule gets hooks; the rule's output hook turns the relevance R arriving at the
module's output z into R / stab(z), autograd applies the module's (rule-modified) transposed weights, and
the input hook multiplies the result by the module's input x.  ReLUs pass the signal unchanged.  The rules
modify weights only for the backward pass and the denominators: ``Alpha1_Beta0_Rule`` uses W⁺ (the bias kept
unless ``set_bias_to_zero``), ``GammaRule`` uses W + γW⁺ for every output (bias likewise).  Stabiliser:
z + ε·sign(z) with sign(0) = +1, as tribute's.

Where the definitions coincide the two agree to rounding (tolerance 1e-12 relative):

- ε rule: on dense and convolutional ReLU networks, with biases and signed inputs; with the stabilisers
  matched (Captum's ε on layers = tribute's ``epsilon``; tribute splits average pooling, residual additions
  and unmerged batch norm by the Norm rule with a fixed ε = 1e-6, so Captum's pooling/addition rule gets 1e-6).
- batch norm: Captum applies the ε rule to the BN module and again to the convolution before it; tribute
  merges BN into the convolution.  With BN's ε = tribute's ε and the convolution's ε negligible (1e-300) the
  two are the same map: R_z / z = scale·R_y / stab(y) either way.  (With ε on both, Captum's map carries an
  extra factor z/stab(z) per convolution output: a relative difference of order ε/|z|.)
- z⁺ = αβ(1, 0) against ``Alpha1_Beta0_Rule`` (its stabiliser set to tribute's 1e-6): tribute's denominator is
  Σ (x w)⁺ + b⁺ and it counts x⁻w⁻ as positive; Captum's is Σ x w⁺ + b.  Equal for x ≥ 0 and b ≥ 0 (Captum
  keeps b), or x ≥ 0 and b ≤ 0 with ``set_bias_to_zero=True``.  Mixed-sign biases match neither setting.
- γ against ``GammaRule``: tribute's generalisation uses W + γW⁺ and z + γ(Σ(xw)⁺ + b⁺) where z > 0, and
  W + γW⁻ with the negative parts where z < 0; Captum uses W + γW⁺ and Σ x(w + γw⁺) + b everywhere.  Equal
  for x ≥ 0, b ≤ 0 and relevance only at positive outputs (hidden layers feed ReLUs, so their relevance sits
  where z > 0; the target logit must be positive).  The two differences are pinned below as exact relations.

Where they part: **a residual addition written as a tensor op** (``f + g``, as every ResNet does).  Captum's
hooks see modules only, so autograd differentiates the addition: the relevance R_y at y = f + g is copied
unchanged to both summands instead of split as f/y and g/y.  Each branch's last rule then divides by the
branch's own output, so each branch redistributes all of R_y (relevance doubles at every addition, and
explodes where f ≈ 0 while y is not); an identity shortcut delivers R_y to the block's input a, where the
next layer's input hook multiplies it by a again (a ⊙ R_y instead of a ⊙ R_y / y).  With the addition written
as Captum's ``Addition_Module`` (an ε rule: R_f = f·R_y/stab(y)) Captum agrees with tribute to rounding, on a
ResNet with batch norm too; tribute needs no such rewrite.  In-place and reused ReLUs play no part (Captum is
given one non-in-place ReLU module per call anyway).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute
from tribute.lrp import Composite, Epsilon, Gamma

captum_attr = pytest.importorskip("captum.attr")
lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")
Addition_Module = pytest.importorskip("captum.attr._utils.custom_modules").Addition_Module

DT = torch.float64
EXACT = 1e-12  # the same float64 computation reordered
NORM_EPS = 1e-6  # tribute's stabiliser of the Norm rule (pooling, additions, unmerged BN) and of z⁺/γ


def norm_eps(epsilon: float) -> float:
    """The Norm rule's stabiliser under a composite with an ε rule: min(ε, 1e-6) (tribute.lrp.Composite)."""
    return min(epsilon, NORM_EPS)

NEGLIGIBLE = 1e-300  # an ε that changes no float64 denominator |z| > 1e-284

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def assert_close(actual, expected, rel=EXACT, what=""):
    """max |actual − expected| ≤ rel · max |expected|, with a non-vacuous reference."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == DT, what
    scale = expected.abs().max().item()
    assert scale > 0, f"{what}: the reference is identically zero"
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"{what}: max error {err:.3e} > {rel:g} × {scale:.3e}"


def rel_diff(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------------------------------------------
# Running Captum with per-layer rules on a copy


def captum_lrp(model: nn.Module, x: torch.Tensor, target, rules=None) -> torch.Tensor:
    """Captum's LRP on a deep copy of ``model``; ``rules(module)`` returns the rule for a module or None
    (Captum's default: ε = 1e-9 on conv, linear, BN, pooling and ``Addition_Module``)."""
    m = copy.deepcopy(model)
    if rules is not None:
        for module in m.modules():
            rule = rules(module)
            if rule is not None:
                module.rule = rule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return captum_attr.LRP(m).attribute(x.clone(), target=target).detach()


def with_stabiliser(rule, eps: float):
    """Captum's rules read the stabiliser from the instance attribute STABILITY_FACTOR (default 1e-9)."""
    rule.STABILITY_FACTOR = eps
    return rule


def rules_for(layer_rule, *, bn=None, norm_eps: float = NORM_EPS):
    """Rules by module kind: ``layer_rule()`` on conv/linear, ``bn()`` on batch norm, ε = tribute's Norm ε on
    pooling and additions (they are Norm-rule ops in tribute)."""

    def pick(module):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return layer_rule()
        if isinstance(module, nn.BatchNorm2d) and bn is not None:
            return bn()
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, Addition_Module)):
            return lrp_rules.EpsilonRule(norm_eps)
        return None

    return pick


def tribute_lrp(model, x, target, **options) -> torch.Tensor:
    return tribute.explain(model, x, "lrp", target=target, **options)


def scores(model, x, target) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, target.view(-1, 1))[:, 0]


# ---------------------------------------------------------------------------------------------------
# Models: every ReLU call its own non-in-place module (Captum's hooks need that); flatten functional
# (Captum has no rule for nn.Flatten)


class MLP(nn.Module):
    """Linear → ReLU → Linear."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.l1, self.relu, self.l2 = nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4)

    def forward(self, x):
        return self.l2(self.relu(self.l1(x)))


class ConvNet(nn.Module):
    """conv (→ BN) → ReLU → conv → ReLU → global average pool → linear."""

    def __init__(self, seed: int = 0, bn: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5) if bn else None
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(5, 6, 3, padding=1)
        self.r2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        z = self.c1(x)
        if self.bn is not None:
            z = self.bn(z)
        return self.fc(torch.flatten(self.pool(self.r2(self.c2(self.r1(z)))), 1))


def randomise_bn(model: nn.Module, seed: int = 3) -> nn.Module:
    """Non-trivial running statistics and affine parameters (positive and negative shifts)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=g, dtype=DT))
                m.bias.copy_(0.2 * torch.randn(c, generator=g, dtype=DT))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g, dtype=DT))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=DT))
    return model


def set_biases(model: nn.Module, sign: int, scale: float = 0.05) -> nn.Module:
    """Biases of conv/linear layers ≥ 0 (sign=+1) or ≤ 0 (sign=−1), small so that units stay alive."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(sign * scale * m.bias.abs())
    return model


def make(kind: str, seed: int = 0) -> nn.Module:
    return (MLP(seed) if kind == "mlp" else ConvNet(seed)).to(DT).eval()


def data(kind: str, signed: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    shape = (5, 6) if kind == "mlp" else (3, 3, 6, 6)
    return torch.randn(shape, generator=g, dtype=DT) if signed else torch.rand(shape, generator=g, dtype=DT)


def positive_targets(model, x) -> torch.Tensor:
    """The top class of every sample; the γ comparison needs its logit > 0 (checked)."""
    with torch.no_grad():
        out = model(x)
    target = out.argmax(1)
    assert bool((out.gather(1, target[:, None]) > 0).all()), "precondition: positive target logits"
    return target


# ---------------------------------------------------------------------------------------------------
# ε rule: the definitions coincide


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_epsilon_matches_captum_on_relu_networks(kind):
    """Signed inputs, biases, targets of both signs; ε = 1e-9 (Captum's default) on both sides."""
    model, x = make(kind), data(kind)
    target = torch.arange(x.shape[0]) % 4
    ours = tribute_lrp(model, x, target, composite="epsilon", epsilon=1e-9)
    theirs = captum_lrp(model, x, target, rules_for(lambda: lrp_rules.EpsilonRule(1e-9), norm_eps=1e-9))
    assert_close(ours, theirs, what=kind)
    assert bool((scores(model, x, target) < 0).any())
    # the ε composite's Norm rule follows ε below 1e-6: Captum's default layout (ε = 1e-9 at the pooling too) is
    # the same map; the tolerance resolves the stabilisers, so a Norm rule held at 1e-6 shows (observed 8e-6)
    if kind == "conv":
        assert_close(ours, captum_lrp(model, x, target), what="Captum's default rules")
        held = Composite(conv=Epsilon(1e-9), dense=Epsilon(1e-9), stabilizer=NORM_EPS)
        assert rel_diff(tribute_lrp(model, x, target, composite=held), ours) > 1e-7


def test_batch_norm_merged_equals_captums_two_epsilon_rules():
    """conv → BN: Captum's ε on BN then ε on the conv (ε negligible there) = tribute's merged conv+BN."""
    model = randomise_bn(ConvNet(seed=1, bn=True)).to(DT).eval()
    x, target = data("conv"), torch.tensor([0, 2, 3])
    eps = 1e-9
    ours = tribute_lrp(model, x, target, composite="epsilon", epsilon=eps)
    layers = rules_for(lambda: lrp_rules.EpsilonRule(eps), bn=lambda: lrp_rules.EpsilonRule(eps),
                       norm_eps=norm_eps(eps))

    def rules(module):  # c1 (3 → 5 channels) feeds the BN: its own ε must vanish
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return lrp_rules.EpsilonRule(NEGLIGIBLE)
        return layers(module)

    assert_close(ours, captum_lrp(model, x, target, rules), what="merged BN")
    # ε on the convolution too (Captum's default layout): the only difference is the factor z/stab(z)
    # on the conv outputs, a relative change of order ε/|z|, so it scales with ε
    for e in (1e-9, 1e-11):
        both = captum_lrp(model, x, target, rules_for(lambda e=e: lrp_rules.EpsilonRule(e), bn=lambda e=e:
                                                      lrp_rules.EpsilonRule(e), norm_eps=norm_eps(e)))
        d = rel_diff(tribute_lrp(model, x, target, composite="epsilon", epsilon=e), both)
        assert 0 < d < 1e4 * e, (e, d)


# ---------------------------------------------------------------------------------------------------
# z⁺ and γ: where Captum's rules are the same definitions


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("bias_sign", [+1, -1])
def test_zplus_matches_captum_alpha1_beta0(kind, bias_sign):
    """x ≥ 0; b ≥ 0 ↔ Captum keeps the bias (Σ x w⁺ + b = Σ x w⁺ + b⁺); b ≤ 0 ↔ set_bias_to_zero (b⁺ = 0)."""
    model = set_biases(make(kind, seed=2), bias_sign)
    x = data(kind, signed=False)
    target = torch.arange(x.shape[0]) % 4
    assert scores(model, x, target).abs().min() > 0
    ours = tribute_lrp(model, x, target, composite="zplus")
    rule = lambda: with_stabiliser(lrp_rules.Alpha1_Beta0_Rule(set_bias_to_zero=bias_sign < 0), NORM_EPS)  # noqa: E731
    assert_close(ours, captum_lrp(model, x, target, rules_for(rule)), what=f"{kind} b sign {bias_sign}")
    # the other bias setting is a different rule here (the biases are not zero)
    other = lambda: with_stabiliser(lrp_rules.Alpha1_Beta0_Rule(set_bias_to_zero=bias_sign > 0), NORM_EPS)  # noqa: E731
    assert rel_diff(ours, captum_lrp(model, x, target, rules_for(other))) > 1e-3


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_gamma_matches_captum_gamma_rule(kind):
    """x ≥ 0, b ≤ 0 and positive target logits: tribute's sign-dependent γ is Captum's W + γW⁺."""
    model = set_biases(make(kind, seed=0), -1)
    x = data(kind, signed=False)
    target = positive_targets(model, x)
    ours = tribute_lrp(model, x, target, composite="gamma", gamma=0.25)
    rule = lambda: with_stabiliser(lrp_rules.GammaRule(gamma=0.25), NORM_EPS)  # noqa: E731
    assert_close(ours, captum_lrp(model, x, target, rules_for(rule)), what=kind)
    # composites mix rules the same way on both sides: γ on convolutions, ε on the dense layers
    if kind == "conv":
        mixed = Composite(conv=Gamma(0.25), dense=Epsilon(1e-9), name="gamma_conv")
        ours = tribute_lrp(model, x, target, composite=mixed)

        def rules(module):
            if isinstance(module, nn.Linear):
                return lrp_rules.EpsilonRule(1e-9)
            return rules_for(rule)(module)

        assert_close(ours, captum_lrp(model, x, target, rules), what="gamma conv + epsilon dense")


class _GammaNegativeRule(lrp_rules.PropagationRule):
    """Captum's rule mechanism with W + γW⁻ (what tribute's γ uses at negative outputs); written here."""

    def __init__(self, gamma: float):
        self.gamma = gamma
        self.STABILITY_FACTOR = NORM_EPS

    def _manipulate_weights(self, module, inputs, outputs):
        module.weight.data = module.weight.data + self.gamma * module.weight.data.clamp(max=0)


def test_gamma_differences_from_captum_are_the_sign_rule_and_the_positive_bias():
    """One linear layer, x ≥ 0, γ = 0.25.  (a) At a negative output, tribute's γ is Captum's mechanism with
    W + γW⁻ and z + γΣ x w⁻ (b = 0 here), not GammaRule's W + γW⁺.  (b) With b ≥ 0, tribute's denominator is
    z + γ(Σ x w⁺ + b): Captum's GammaRule on the layer with bias (1 + γ)b has output z̃ = z + γb and the same
    denominator, so tribute = Captum · z / z̃ (Captum starts from z̃)."""
    torch.manual_seed(4)
    layer = nn.Sequential(nn.Linear(6, 3)).to(DT).eval()  # Captum looks for rules among children only
    x = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    g = 0.25
    with torch.no_grad():
        layer[0].bias.zero_()
        out = layer(x)
    neg = out.argmin(1)
    assert bool((out.gather(1, neg[:, None]) < 0).all())
    ours = tribute_lrp(layer, x, neg, composite="gamma", gamma=g)
    assert_close(ours, captum_lrp(layer, x, neg, lambda m: _GammaNegativeRule(g) if isinstance(m, nn.Linear)
                                  else None), what="negative output")
    captum_plus = captum_lrp(layer, x, neg, lambda m: with_stabiliser(lrp_rules.GammaRule(g), NORM_EPS)
                             if isinstance(m, nn.Linear) else None)
    assert rel_diff(ours, captum_plus) > 1e-2

    with torch.no_grad():
        layer[0].bias.copy_(torch.tensor([0.3, 0.1, 0.2], dtype=DT))
        out = layer(x)
    pos = out.argmax(1)
    assert bool((out.gather(1, pos[:, None]) > 0).all())
    ours = tribute_lrp(layer, x, pos, composite="gamma", gamma=g)
    scaled = copy.deepcopy(layer)
    with torch.no_grad():
        scaled[0].bias.mul_(1 + g)
    theirs = captum_lrp(scaled, x, pos, lambda m: with_stabiliser(lrp_rules.GammaRule(g), NORM_EPS)
                        if isinstance(m, nn.Linear) else None)
    z, z_tilde = scores(layer, x, pos), scores(scaled, x, pos)
    assert_close(ours, theirs * (z / z_tilde)[:, None], what="positive bias")


# ---------------------------------------------------------------------------------------------------
# Residual additions: the first point of divergence


class DenseResidual(nn.Module):
    """x → Linear → ReLU = a;  f = Linear(ReLU(Linear(a)));  g = a or P a (projection);  y = f + g (a tensor op,
    or Captum's Addition_Module);  out = Linear(ReLU(y))."""

    def __init__(self, projection: bool, module_add: bool = False, bias: bool = True, seed: int = 5):
        super().__init__()
        torch.manual_seed(seed)
        self.l0, self.r0 = nn.Linear(5, 6, bias=bias), nn.ReLU()
        self.l1, self.r1, self.l2 = nn.Linear(6, 6, bias=bias), nn.ReLU(), nn.Linear(6, 6, bias=bias)
        self.proj = nn.Linear(6, 6, bias=False) if projection else None
        self.add = Addition_Module() if module_add else None
        self.r2, self.head = nn.ReLU(), nn.Linear(6, 3, bias=bias)

    def forward(self, x):
        a = self.r0(self.l0(x))
        f = self.l2(self.r1(self.l1(a)))
        g = a if self.proj is None else self.proj(a)
        y = self.add(f, g) if self.add is not None else f + g
        return self.head(self.r2(y))


def _stab(d, e):
    return d + e * torch.where(d >= 0, 1.0, -1.0).to(d.dtype)


def dense_residual_lrp(model: DenseResidual, x, target, eps: float, split: str) -> torch.Tensor:
    """ε-LRP of DenseResidual written out in matrix form.

    split="proportional": the addition is a layer with unit weights, R_f = f ⊙ R_y / stab(y), R_g likewise
    (ε = min(eps, 1e-6), tribute's Norm rule under an ε composite).  split="copy": what autograd does to Captum's
    relevance at a tensor op, R_f = R_g = R_y; and for an identity shortcut the copy lands on a, whose input hook
    (from l1) multiplies the summed signal by a: a ⊙ R_y.
    """
    W = {n: getattr(model, n).weight.detach() for n in ("l0", "l1", "l2", "head")}
    b = {n: (getattr(model, n).bias.detach() if getattr(model, n).bias is not None else 0) for n in W}
    z0 = x @ W["l0"].T + b["l0"]
    a = z0.clamp(min=0)
    z1 = a @ W["l1"].T + b["l1"]
    h = z1.clamp(min=0)
    f = h @ W["l2"].T + b["l2"]
    g = a if model.proj is None else a @ model.proj.weight.detach().T
    y = f + g
    o = y.clamp(min=0)
    out = o @ W["head"].T + b["head"]
    onehot = F.one_hot(target, out.shape[1]).to(DT)
    r_out = onehot * out  # the target score
    r_y = o * ((r_out / _stab(out, eps)) @ W["head"])  # ReLU passes relevance unchanged
    if split == "proportional":
        s_y = r_y / _stab(y, norm_eps(eps))
        r_f, r_g = f * s_y, g * s_y
    else:
        r_f, r_g = r_y, r_y
    r_h = h * ((r_f / _stab(f, eps)) @ W["l2"])
    r_a = a * ((r_h / _stab(z1, eps)) @ W["l1"])
    if model.proj is not None:
        r_a = r_a + a * ((r_g / _stab(g, eps)) @ model.proj.weight.detach())
    else:
        r_a = r_a + (r_g if split == "proportional" else a * r_g)
    return x * ((r_a / _stab(z0, eps)) @ W["l0"])


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
def test_residual_add_where_captum_parts_from_tribute(projection):
    """The exact relation: Captum copies R_y to both summands of a functional addition; tribute splits it."""
    eps = 1e-9
    model = DenseResidual(projection).to(DT).eval()
    x = data("mlp")[:, :5]
    target = torch.tensor([0, 1, 2, 0, 1])
    ours = tribute_lrp(model, x, target, composite="epsilon", epsilon=eps)
    theirs = captum_lrp(model, x, target, rules_for(lambda: lrp_rules.EpsilonRule(eps), norm_eps=norm_eps(eps)))
    assert_close(ours, dense_residual_lrp(model, x, target, eps, "proportional"), what="tribute = split")
    assert_close(theirs, dense_residual_lrp(model, x, target, eps, "copy"), what="captum = copy")
    assert rel_diff(ours, theirs) > 0.1
    # the same network with the addition as Captum's Addition_Module (ε at the sum): Captum = tribute
    as_module = DenseResidual(projection, module_add=True).to(DT).eval()
    as_module.load_state_dict(model.state_dict())
    assert_close(captum_lrp(as_module, x, target, rules_for(lambda: lrp_rules.EpsilonRule(eps),
                                                            norm_eps=norm_eps(eps))), ours,
                 what="Addition_Module")


def test_captum_functional_add_doubles_relevance():
    """Bias-free network, projection shortcut: every layer conserves relevance, so tribute's map sums to the
    score and Captum's, which hands all of R_y to each branch, to twice the score.  Up to what the stabilisers
    absorb: Σ_j R_j ε/(|y_j| + ε) at the addition (tribute's Norm ε = min(ε, 1e-6) = 1e-9 here)."""
    model = DenseResidual(projection=True, bias=False, seed=6).to(DT).eval()
    x = data("mlp")[:, :5]
    target = torch.tensor([0, 1, 2, 0, 1])
    s = scores(model, x, target)
    assert s.abs().min() > 1e-3
    ours = tribute_lrp(model, x, target, composite="epsilon", epsilon=1e-9).sum(1)
    theirs = captum_lrp(model, x, target, rules_for(lambda: lrp_rules.EpsilonRule(1e-9))).sum(1)
    torch.testing.assert_close(ours, s, rtol=1e-7, atol=0)
    torch.testing.assert_close(theirs, 2 * s, rtol=1e-6, atol=0)


class Block(nn.Module):
    """torchvision's BasicBlock at toy size.  ``form``: "torchvision" (one reused in-place ReLU,
    ``out += identity``; given to tribute), "op" (one ReLU module per call, ``out + identity``) or "module"
    (one ReLU module per call, Captum's Addition_Module).  The parameters are the same in all three."""

    def __init__(self, cin: int, cout: int, stride: int, form: str):
        super().__init__()
        self.form = form
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        if form == "torchvision":
            self.relu = nn.ReLU(inplace=True)
        else:
            self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
            self.add = Addition_Module() if form == "module" else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        if self.form == "torchvision":
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            out += identity
            return self.relu(out)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + identity if self.add is None else self.add(out, identity))


class TinyResNet(nn.Module):
    """Stem conv-BN-ReLU, an identity block and a projection block, global average pool, linear head."""

    def __init__(self, form: str):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=form == "torchvision")
        self.layer1 = nn.Sequential(Block(4, 4, 1, form), Block(4, 6, 2, form))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_resnet_with_batch_norm_agrees_once_the_addition_is_a_module():
    """tribute on the torchvision-style model (in-place reused ReLU, ``+=``) = Captum on the same weights with
    separate ReLUs and Addition_Module (ε on BN and the head, negligible on the convolutions that BN follows,
    the Norm ε on the addition and the pooling).  With the addition written ``out + identity`` tribute gives
    the same map and Captum one that differs by the order of the map."""
    torch.manual_seed(8)
    model = randomise_bn(TinyResNet("torchvision")).to(DT).eval()
    forms = {}
    for form in ("op", "module"):
        forms[form] = TinyResNet(form).to(DT).eval()
        forms[form].load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=DT)
    target = torch.tensor([0, 3, 4])
    eps = 1e-9
    ours = tribute_lrp(model, x, target, composite="epsilon", epsilon=eps)
    layers = rules_for(lambda: lrp_rules.EpsilonRule(NEGLIGIBLE), bn=lambda: lrp_rules.EpsilonRule(eps),
                       norm_eps=norm_eps(eps))

    def rules(module):  # every convolution here feeds a batch norm; the head carries ε
        return lrp_rules.EpsilonRule(eps) if isinstance(module, nn.Linear) else layers(module)

    assert_close(captum_lrp(forms["module"], x, target, rules), ours, what="Addition_Module ResNet")
    assert_close(tribute_lrp(forms["op"], x, target, composite="epsilon", epsilon=eps), ours, what="tribute")
    assert rel_diff(captum_lrp(forms["op"], x, target, rules), ours) > 0.1
