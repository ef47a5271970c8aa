"""LRP on transformers and gated nets (issue 13): gates, bilinear products, softmax, normalisations, constant leaves.

Each rule's redistribution is worked by hand on three elements (tribute.lrp.gates, .attention, .epsilon_ops), for the
composites (relevance form) and lrp_epsilon (Ancona's gradient form) alike; then conservation on bias-free
transformers, counting the relevance constant leaves absorb (tribute.lrp.absorbed).  The models end in a sum, whose
Norm rule hands each summand its value as relevance: R_y = y · S / stab(S), within 1e-6 of y.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import OnEmbeddings, concurrently, realistic_state, text_batch, text_model
from torch import nn

import tribute
from tribute.core import UncoveredModelError

DT = torch.float64
TOL = {"rtol": 1e-5, "atol": 1e-8}  # the Norm rule's stabiliser is 1e-6 (tribute.lrp.rules.STABILIZER)
METHODS = {"lrp": {"composite": "epsilon", "epsilon": 1e-12}, "lrp_epsilon": {"epsilon": 1e-12}}


class Fn(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x).sum(-1, keepdim=True)


def _explain(f, x, method, **options):
    return tribute.explain(Fn(f), x, method, target=0, **{**METHODS[method], **options})


X = torch.tensor([[1.0, 2.0, 0.0, 0.5, -1.0, 2.0]], dtype=DT)


# -- gates: signal-take-all (Arras et al. 2017) -----------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_gate_takes_no_relevance(method):
    """y = a ⊙ (1 + tanh(g))/2, a = x[:3], g = x[3:]: the gate (tanh's output through 1 + · and ½·) gets nothing,
    a gets R_y = y: R_a = a (1 + tanh g)/2 = (1·0.7311, 2·0.1192, 0) = (0.7311, 0.2384, 0)."""
    r = _explain(lambda x: x[:, :3] * (1 + torch.tanh(x[:, 3:])) * 0.5, X, method)
    expected = torch.tensor([[0.7310586, 0.2384058, 0.0, 0.0, 0.0, 0.0]], dtype=DT)
    torch.testing.assert_close(r, expected, **TOL)
    assert (r[:, 3:] == 0).all()


def test_a_sigmoid_gate_hand_written_silu():
    """x ⊙ sigmoid(x) (SiLU written by hand; lrp_epsilon refuses sigmoid, f(0) ≠ 0): R_x = x σ(x) = SiLU(x)."""
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=DT)
    r = _explain(lambda v: v * torch.sigmoid(v), x, "lrp")
    torch.testing.assert_close(r, F.silu(x), **TOL)  # (0.7311, −0.2384, 0.3112)


def test_an_lstm_style_product_gives_all_to_the_candidate():
    """sigmoid(i) ⊙ tanh(c): the sigmoid is the gate, tanh the signal (tanh is a weak gate), R_c = R_y
    (then tanh's pass rule, f(0) = 0: R passes)."""
    r = _explain(lambda x: torch.sigmoid(x[:, :3]) * torch.tanh(x[:, 3:]), X, "lrp")
    y = torch.sigmoid(X[:, :3]) * torch.tanh(X[:, 3:])
    torch.testing.assert_close(r[:, 3:], y, **TOL)
    assert (r[:, :3] == 0).all()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_rmsnorm_by_hand_holds_the_reciprocal_constant(method):
    """x ⊙ rsqrt(mean(x²) + ε): rsqrt's output is a gate, R_x = y (lrp_epsilon refuses rsqrt: f(0) = ∞)."""
    x = torch.tensor([[1.0, -2.0, 3.0]], dtype=DT)
    f = lambda v: v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)  # noqa: E731
    if method == "lrp_epsilon":
        with pytest.raises(ValueError, match="rsqrt"):
            _explain(f, x, method)
        return
    torch.testing.assert_close(_explain(f, x, method), f(x), **TOL)  # (0.4629, −0.9258, 1.3887)


# -- bilinear products: AttnLRP's uniform rule (Achtibat et al. 2024) ------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("form", ["mul", "matmul", "einsum"])
def test_a_product_of_two_signals_splits_uniformly(method, form):
    """y = Σ a_i b_i (a = x[:3], b = x[3:]) as a ⊙ b, a @ b or einsum: each operand half of each term,
    R_a = R_b = ½ a ⊙ b = (0.25, −1, 0)."""
    products = {"mul": lambda a, b: a * b, "matmul": lambda a, b: (a[:, None, :] @ b[:, :, None])[:, 0],
                "einsum": lambda a, b: torch.einsum("ni,ni->n", a, b)[:, None]}
    r = _explain(lambda x: products[form](x[:, :3], x[:, 3:]), X, method)
    half = torch.tensor([0.25, -1.0, 0.0], dtype=DT)
    torch.testing.assert_close(r, torch.cat([half, half])[None], **TOL)


# -- softmax: CP-LRP (Ali et al. 2022) and AttnLRP (Achtibat et al. 2024) --------------------------------------------
def _attention(x):
    """softmax(s) · v with s = x[:3], v = x[3:]: one query attending to three keys."""
    return (torch.softmax(x[:, :3], -1)[:, None, :] @ x[:, 3:, None])[:, 0]


S_WEIGHTS = torch.softmax(X[0, :3], 0)  # (0.2447, 0.6652, 0.0900)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cp_lrp_holds_the_attention_weights_constant(method):
    """R_v = s ⊙ v = (0.1224, −0.6652, 0.1801), R_scores = 0: conserves (Σ = y = −0.3628)."""
    r = _explain(_attention, X, method)
    expected = torch.cat([torch.zeros(3, dtype=DT), S_WEIGHTS * X[0, 3:]])[None]
    torch.testing.assert_close(r, expected, **TOL)
    assert (r[:, :3] == 0).all()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_attnlrp_softmax_rule(method):
    """s·v uniform: R_s = R_v = ½ s ⊙ v = (0.0612, −0.3326, 0.0900); softmax rule R_x = x ⊙ (R_s − s ΣR_s):
    ΣR_s = −0.1814, R_x = (1·(0.0612 + 0.0444), 2·(−0.3326 + 0.1207), 0) = (0.1056, −0.4239, 0): not conserving."""
    r = _explain(_attention, X, method, attention="attnlrp")
    half = 0.5 * S_WEIGHTS * X[0, 3:]
    scores = X[0, :3] * (half - S_WEIGHTS * half.sum())
    torch.testing.assert_close(r, torch.cat([scores, half])[None], **TOL)
    torch.testing.assert_close(scores, torch.tensor([0.1056, -0.4239, 0.0], dtype=DT), rtol=0, atol=1e-4)


def test_attnlrp_softmax_gives_masked_scores_nothing():
    """−∞ (a masked key) has weight 0 and relevance 0, not −∞ · 0 = NaN."""
    def masked(x):
        scores = x[:, :3].masked_fill(torch.tensor([False, False, True]), float("-inf"))
        return (torch.softmax(scores, -1)[:, None, :] @ x[:, 3:, None])[:, 0]

    r = _explain(masked, X, "lrp", attention="attnlrp")
    assert torch.isfinite(r).all() and r[0, 2] == 0 and r[0, 5] == 0


# -- normalisations: 1/σ held constant (Ali et al. 2022) -------------------------------------------------------------
def _layer_norm_head(bias):
    """LayerNorm(3, ε = 0, γ = 1, β = bias) then w = (1, 0, 0) (no bias)."""
    norm, head = nn.LayerNorm(3, eps=0.0), nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        norm.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
    return nn.Sequential(norm, head).to(DT).eval()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_layer_norm_with_the_deviation_held_constant(method):
    """x = (1, 2, 4): μ = 7/3, σ = √14/3; y₁ = (1 − 7/3)/σ = −1.0690 = S.  With σ constant, ∂y₁/∂x_i = (δ₁ᵢ − ⅓)/σ,
    R_x = x ⊙ ∂y₁/∂x · R₁/y₁ = (⅔·1, −⅓·2, −⅓·4)/σ = (0.5345, −0.5345, −1.0690): sums to S (β = 0)."""
    x = torch.tensor([[1.0, 2.0, 4.0]], dtype=DT)
    r = tribute.explain(_layer_norm_head([0.0, 0.0, 0.0]), x, method, target=0, **METHODS[method])
    sigma = 14 ** 0.5 / 3
    torch.testing.assert_close(r, torch.tensor([[2 / 3, -2 / 3, -4 / 3]], dtype=DT) / sigma, **TOL)


def test_layer_norm_beta_is_counted_as_absorbed():
    """β₁ = 0.5: S = y₁ = −1.0690 + 0.5; R_x = x ⊙ ∂(y₁ − β₁)/∂x · S/S, β's share β₁ · S / S = 0.5."""
    x = torch.tensor([[1.0, 2.0, 4.0]], dtype=DT)
    explainer = tribute.LRP(_layer_norm_head([0.5, -3.0, 7.0]), composite="epsilon", epsilon=1e-12, absorbed=True)
    r = explainer.attribute(x, target=0)
    sigma = 14 ** 0.5 / 3
    torch.testing.assert_close(r, torch.tensor([[2 / 3, -2 / 3, -4 / 3]], dtype=DT) / sigma, **TOL)
    torch.testing.assert_close(explainer.absorbed, torch.tensor([0.5], dtype=DT), **TOL)


@pytest.mark.parametrize("kind", ["group_norm", "rms_norm"])
def test_group_and_rms_norm_conserve_with_the_scale_held(kind):
    """GroupNorm (2 groups of 2 channels) and RMSNorm, γ random, β = 0: the held map is linear, so the input's
    relevance sums to the score (Norm rule, x ⊙ Jᵀ(R/y) with Σ_i x_i ∂y_j/∂x_i = y_j)."""
    if kind == "rms_norm" and not hasattr(F, "rms_norm"):
        pytest.skip("torch has no F.rms_norm")
    g = torch.Generator().manual_seed(0)
    gamma = torch.rand(4, generator=g, dtype=DT) + 0.5
    norm = {"group_norm": lambda v: F.group_norm(v, 2, gamma), "rms_norm": lambda v: F.rms_norm(v, (4,), gamma)}[kind]
    x = torch.randn(3, 4, generator=g, dtype=DT)
    r = tribute.explain(Fn(norm), x, "lrp", target=0, **METHODS["lrp"])
    torch.testing.assert_close(r.sum(1), Fn(norm)(x)[:, 0], **TOL)


# -- constants joining the path --------------------------------------------------------------------------------------
_FILL_MASK = torch.tensor([False, True, False])
FILLS = {
    "masked_fill": lambda v: v.masked_fill(_FILL_MASK, 0.7),
    "torch.masked_fill": lambda v: torch.masked_fill(v, _FILL_MASK, 0.7),
    "masked_fill_": lambda v: v.clone().masked_fill_(_FILL_MASK, 0.7),  # in place
    "masked_fill_ twice": lambda v: v.clone().masked_fill_(_FILL_MASK, 0.7).masked_fill_(_FILL_MASK, 0.7),
}


@pytest.mark.parametrize("fill", list(FILLS))
def test_masked_fill_gives_the_filled_entries_to_the_constant(fill):
    """x = (1, 2, 3), entry 1 filled with 0.7: y = (1, 0.7, 3), S = 4.7; R_x = (1, 0, 3), the constant 0.7 (in place
    too, where the written tensor keeps its identity; filled twice, the second fill's constant takes it all)."""
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=DT)
    explainer = tribute.LRP(Fn(FILLS[fill]), composite="epsilon", absorbed=True)
    r = explainer.attribute(x, target=0)
    torch.testing.assert_close(r, torch.tensor([[1.0, 0.0, 3.0]], dtype=DT), **TOL)
    torch.testing.assert_close(explainer.absorbed, torch.tensor([0.7], dtype=DT), **TOL)


class FilledLayer(nn.Module):
    """z = x Wᵀ (bias-free), written in place by masked_fill_ (z is what the layer's rule reads backward), summed."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3, bias=False).to(DT)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=DT))

    def forward(self, x):
        return self.lin(x).masked_fill_(_FILL_MASK, -0.5).sum(-1, keepdim=True)


def test_masked_fill_in_place_of_a_layer_output_counts_the_constant():
    """x = (1, 2, 3): z = (1, 3, 6), filled z = (1, −0.5, 6), S = 6.5; the fill takes −0.5; z₀ = x₀ gives R = 1 to
    x₀, z₂ = 2x₂ gives 6 to x₂, nothing reaches z₁ (so x₁ gets 0): Σ R + absorbed = 1 + 6 − 0.5 = S."""
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=DT)
    explainer = tribute.LRP(FilledLayer(), composite="epsilon", epsilon=1e-12, absorbed=True)
    r = explainer.attribute(x, target=0)
    torch.testing.assert_close(r, torch.tensor([[1.0, 0.0, 6.0]], dtype=DT), **TOL)
    torch.testing.assert_close(explainer.absorbed, torch.tensor([-0.5], dtype=DT), **TOL)


class TokenSum(nn.Module):
    """A class token concatenated before the tokens, position embeddings added, everything summed."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.tensor([[[2.0, -1.0]]], dtype=DT))
        self.pos = nn.Parameter(torch.tensor([[[0.5, 0.5], [1.0, -0.5], [0.0, 3.0]]], dtype=DT))

    def forward(self, x):
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return h.sum((1, 2))[:, None]


def test_class_token_and_position_embeddings_are_counted():
    """x = [[1, 2], [3, −4]]: h = [[2.5, −0.5], [2, 1.5], [3, −1]], S = 7.5.  Each entry of h takes R = h (sum), the
    addition splits it ∝ (token, position): R_x = x ⊙ h / h = x (entries (1, 2, 3, −4)), Σ = 2; the class token
    and the position embeddings take the rest, 5.5 (per sample: the second's too)."""
    x = torch.tensor([[[1.0, 2.0], [3.0, -4.0]], [[0.0, 1.0], [1.0, 1.0]]], dtype=DT)
    explainer = tribute.LRP(TokenSum(), composite="epsilon", absorbed=True)
    r = explainer.attribute(x, target=0)
    torch.testing.assert_close(r, x, **TOL)
    score = TokenSum()(x)[:, 0].detach()
    torch.testing.assert_close(explainer.absorbed, score - x.sum((1, 2)), **TOL)
    torch.testing.assert_close(explainer.absorbed[0], torch.tensor(5.5, dtype=DT), **TOL)


def test_absorbed_is_none_unless_asked():
    explainer = tribute.LRP(TokenSum(), composite="epsilon")
    explainer.attribute(torch.ones(1, 2, 2, dtype=DT), target=0)
    assert explainer.absorbed is None


# -- conservation on bias-free transformers --------------------------------------------------------------------------
def _bias_free(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):  # linear biases and LayerNorm's β
                p.zero_()
    return model


def _vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=3))
    model = _bias_free(realistic_state(model))
    return (lambda x: model(x).logits), model, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1),
                                                          dtype=DT), {}


def _text(arch):
    model = OnEmbeddings(_bias_free(text_model(arch)))
    ids, mask = text_batch()
    return (lambda e: model(e, mask)), model, model.embed(ids), {"forward_args": (mask,)}


CONSERVING = {"vit": _vit, "bert": lambda: _text("bert"), "gpt2": lambda: _text("gpt2")}


@pytest.mark.parametrize("name", sorted(CONSERVING))
def test_cp_lrp_conserves_on_a_bias_free_transformer(name, tiny_stabilisers):
    """Σ input relevance + Σ constant leaves' (position and token-type embeddings, the class token) = S(x), with
    CP-LRP attention, ε rules and LayerNorm held constant; AttnLRP's softmax rule does not conserve."""
    f, model, x, options = CONSERVING[name]()
    score = f(x)[:, 1].detach()
    explainer = tribute.LRP(model, composite="epsilon", epsilon=1e-12, absorbed=True)
    r = explainer.attribute(x, target=1, **options)
    total = r.flatten(1).sum(1) + explainer.absorbed
    assert ((total - score).abs() <= 1e-6 * score.abs()).all(), (total, score)
    assert (explainer.absorbed.abs() > 1e-3).all()  # the embeddings and the class token took a part
    r = explainer.attribute(x, target=1, attention="attnlrp", **options)
    total = r.flatten(1).sum(1) + explainer.absorbed
    assert ((total - score).abs() > 1e-3 * score.abs()).any()


# -- refusals --------------------------------------------------------------------------------------------------------
def test_a_reciprocal_of_the_path_used_alone_is_refused():
    """c / b with only the divisor on the path is no linear map of it: no rule (never the Norm rule's −R)."""
    with pytest.raises(UncoveredModelError, match="div"):
        _explain(lambda x: torch.div(torch.ones_like(x), x * x + 1.0), X, "lrp")


# -- second order --------------------------------------------------------------------------------------------------
class GatedNorm(nn.Module):
    """A dense layer, LayerNorm, a tanh gate and a product of two signals, a dense head."""

    def __init__(self):
        super().__init__()
        self.inner, self.norm, self.head = nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.norm(self.inner(x))
        gated = h[:, :3] * (1 + torch.tanh(h[:, 3:])) * 0.5
        return self.head(torch.cat([gated, h[:, :3] * h[:, 3:]], 1))


def test_lrp_epsilon_differentiated_sees_the_true_derivatives():
    """Gates, halves and 1/σ are held in the attribution's backward pass only (tribute.lrp.epsilon_ops): the
    derivative of the attribution a(x) with differentiable=True equals its central finite differences."""
    torch.manual_seed(0)
    model = GatedNorm().to(DT).eval()
    x = torch.randn(2, 6, dtype=DT, generator=torch.Generator().manual_seed(1))
    weights = torch.arange(1.0, 7.0, dtype=DT)

    def attribution(v, differentiable=False):
        return tribute.explain(model, v, "lrp_epsilon", target=0, differentiable=differentiable)

    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad((attribution(leaf, True) * weights).sum(), leaf)
    h, fd = 1e-6, torch.zeros_like(x)
    for i in range(2):
        for j in range(6):
            e = torch.zeros_like(x)
            e[i, j] = h
            fd[i, j] = ((attribution(x + e) - attribution(x - e)) * weights).sum() / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-7, atol=1e-8)


def test_absorbed_is_per_call_and_per_thread():
    """Two threads share one explainer on ReLU(x + c), c = (0.5, 1, −1): the constant's share is c where the ReLU is
    on, so x = (1, −3, 0.5) gives 0.5 and x = (−1, 2, 3) gives 1 − 1 = 0; each thread reads its own."""
    offset = torch.tensor([0.5, 1.0, -1.0], dtype=DT)
    explainer = tribute.LRP(Fn(lambda v: F.relu(v + offset)), composite="epsilon", absorbed=True)
    inputs = [torch.tensor([[1.0, -3.0, 0.5]], dtype=DT), torch.tensor([[-1.0, 2.0, 3.0]] * 2, dtype=DT)]
    expected = [torch.tensor([0.5], dtype=DT), torch.tensor([0.0, 0.0], dtype=DT)]

    def call(i):
        explainer.attribute(inputs[i], target=0)
        return explainer.absorbed.clone()

    results = concurrently(call, rounds=5)
    for i in (0, 1):
        for got in results[i]:  # the stabiliser 1e-6 shifts c's share c·R/(y + 1e-6) by ~1e-7
            torch.testing.assert_close(got, expected[i], rtol=0, atol=1e-6)


class TwoBranches(nn.Module):
    """a = A x, b = B x, then a gated by 1 + tanh(b), a times b, or a over sqrt(b² + 1); in place or not."""

    def __init__(self, mode: str, inplace: bool):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(3, 2)
        self.mode, self.inplace = mode, inplace

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        other = {"gate": lambda: 1 + torch.tanh(b), "uniform": lambda: b, "div": lambda: torch.sqrt(b * b + 1)}
        op = "div" if self.mode == "div" else "mul"
        if self.inplace:
            getattr(a, op + "_")(other[self.mode]())
        else:
            a = getattr(torch, op)(a, other[self.mode]())
        return self.head(a)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("mode", ["gate", "uniform", "div"])
def test_products_written_in_place_give_the_same_relevance(method, mode):
    x = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(2))
    apart = tribute.explain(TwoBranches(mode, False).to(DT).eval(), x, method, target=0, **METHODS[method])
    in_place = tribute.explain(TwoBranches(mode, True).to(DT).eval(), x, method, target=0, **METHODS[method])
    torch.testing.assert_close(in_place, apart, rtol=1e-10, atol=1e-12)
