"""Linear layers in every form (tribute.lrp.linear_forms): ``F.linear``, ``torch.addmm`` (Hugging Face's Conv1D),
``x @ W.T + b``, ``mm``, ``bmm`` and ``einsum`` with a parameter operand are one dense layer to every LRP rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tribute
from tribute.lrp import Composite, Epsilon

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

DT = torch.float64
FORMS = ("linear", "addmm", "matmul", "einsum", "conv1d_hf", "mm_alpha")


def _dense(form: str, lin: nn.Linear) -> nn.Module:
    """``lin`` (same parameters) written as ``form``."""
    if form == "conv1d_hf":  # weight (in, out): the transpose of nn.Linear's
        c = Conv1D(lin.out_features, lin.in_features).to(DT)
        with torch.no_grad():
            c.weight.copy_(lin.weight.T)
            c.bias.copy_(lin.bias)
        return c
    return _Form(form, lin)


class _Form(nn.Module):
    def __init__(self, form, lin):
        super().__init__()
        self.form, self.lin = form, lin

    def forward(self, x):
        w, b = self.lin.weight, self.lin.bias
        if self.form == "linear":
            return self.lin(x)
        if self.form == "addmm":
            return torch.addmm(b, x, w.T)
        if self.form == "mm_alpha":  # α·(x (W/2)) + β·(2b) with α = 2, β = 0.5
            return torch.addmm(2 * b, x, w.T / 2, alpha=2, beta=0.5)
        if self.form == "matmul":
            return x @ w.T + b
        return torch.einsum("ni,oi->no", x, w) + b


class _MLP(nn.Module):
    def __init__(self, form: str, layers: list[nn.Linear]):
        super().__init__()
        self.a, self.b, self.c = (_dense(form, lin) for lin in layers)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _layers(seed=0, bias=True):
    torch.manual_seed(seed)
    return [nn.Linear(i, o, bias=bias).to(DT) for i, o in ((6, 5), (5, 4), (4, 3))]


class RelevanceForm(Composite):
    """The same rules; being a subclass, computed in the relevance form (not the ε gradient form)."""


def _explain(net, x, composite, target=1):
    kw = {"low": -4.0, "high": 4.0} if composite == "epsilon_gamma_box" else {}
    return tribute.explain(net, x, "lrp", composite=composite, target=target, **kw)


@pytest.mark.parametrize("composite", [*tribute.lrp.composites(), "relevance_form"])
def test_every_form_of_a_dense_layer_gives_the_same_relevance(composite):
    """Every layer of the MLP written as nn.Linear, addmm, x @ W.T + b, einsum + b, HF Conv1D or addmm with α, β:
    the first layer meets the composite's first-layer rule and the others its dense rule, in each form."""
    if composite == "relevance_form":
        composite = RelevanceForm(conv=Epsilon(0.1), dense=Epsilon(0.1))
    layers = _layers()
    x = torch.randn(4, 6, dtype=DT, generator=torch.Generator().manual_seed(3)).clamp(-3.9, 3.9)
    ref = _explain(_MLP("linear", layers), x, composite)
    assert ref.abs().sum() > 0
    for form in FORMS[1:]:
        got = _explain(_MLP(form, layers), x, composite)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12, msg=f"{form}")


def _no_bias_forms(w: torch.Tensor):
    """x ↦ x Wᵀ written seven ways (the last, W copied as (in, out)) (W of shape (out, in))."""
    return {
        "linear": lambda x: torch.nn.functional.linear(x, w),
        "matmul": lambda x: torch.matmul(x, w.T),
        "left": lambda x: (w @ x.T).T,
        "mm": lambda x: torch.mm(x, w.t()),
        "bmm": lambda x: torch.bmm(x.unsqueeze(1), w.T.expand(x.shape[0], *w.T.shape)).squeeze(1),
        "einsum_list": lambda x: torch.einsum("oi,ni->no", [w, x]),
        "einsum_in_out": lambda x: torch.einsum("ni,io->no", x, w.T.contiguous()),
    }


class _Net(nn.Module):
    def __init__(self, first, w2):
        super().__init__()
        self.first, self.w2 = first, nn.Parameter(w2)

    def forward(self, x):
        return torch.relu(self.first(x)) @ self.w2.T


@pytest.mark.parametrize("composite", ["epsilon", "zplus", "alpha_beta", "gamma", "epsilon_plus_flat"])
def test_bias_free_forms_agree_and_conserve(composite):
    """Without biases, every form gives the same relevance, and the ε and γ composites conserve it: Σ_i R_i = the
    target's output (the ReLU drops only relevance at h = 0, which these rules give none).  (z⁺ and αβ absorb an
    output's relevance where every contribution to it is ≤ 0, as happens here: they are compared, not summed.)"""
    torch.manual_seed(1)
    w1, w2 = torch.randn(5, 6, dtype=DT), torch.randn(3, 5, dtype=DT)
    x = torch.randn(4, 6, dtype=DT)
    results = {}
    for name, f in _no_bias_forms(nn.Parameter(w1)).items():
        net = _Net(f, w2)
        results[name] = tribute.explain(net, x, "lrp", composite=composite, target=2)
    ref = results.pop("linear")
    for name, r in results.items():
        torch.testing.assert_close(r, ref, rtol=0, atol=1e-12, msg=name)
    if composite in ("epsilon", "gamma"):
        out = (torch.relu(x @ w1.T) @ w2.T)[:, 2]
        torch.testing.assert_close(ref.sum(1), out, rtol=1e-5, atol=1e-5)


def test_epsilon_on_a_conv1d_mlp_equals_hand_worked_values():
    """x = (1, 2); Conv1D W₁ = [[1, −1], [2, 1]] (in, out), b₁ = (0, 1): z₁ = (5, 2); ReLU; W₂ = [[1], [−2]],
    b₂ = 1: out = 5 − 4 + 1 = 2.  ε (→ 0): R_h = h ⊙ W₂ (2 / 2) = (5, −4); s = R / z₁ = (1, −2);
    R_x = x ⊙ W₁ s = (1·(1 + 2), 2·(2 − 2)) = (3, 0)."""
    c1, c2 = Conv1D(2, 2).to(DT), Conv1D(1, 2).to(DT)
    with torch.no_grad():
        c1.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        c1.bias.copy_(torch.tensor([0.0, 1.0]))
        c2.weight.copy_(torch.tensor([[1.0], [-2.0]]))
        c2.bias.copy_(torch.tensor([1.0]))
    net = nn.Sequential(c1, nn.ReLU(), c2)
    x = torch.tensor([[1.0, 2.0]], dtype=DT)
    for composite in ("epsilon", RelevanceForm(conv=Epsilon(1e-12), dense=Epsilon(1e-12))):
        r = tribute.explain(net, x, "lrp", composite=composite, target=0, **(
            {"epsilon": 1e-12} if composite == "epsilon" else {}))
        torch.testing.assert_close(r, torch.tensor([[3.0, 0.0]], dtype=DT), rtol=0, atol=1e-9)


class _Recording(Composite):
    """Records (kind, module name) of every linear layer the pass meets."""

    def __init__(self):
        super().__init__(conv=Epsilon(), dense=Epsilon())
        self.seen: list[tuple[str, str]] = []

    def rule(self, layer):
        self.seen.append((layer.kind, layer.name))
        return super().rule(layer)


class _Embedded(nn.Module):
    """A GPT-2 classifier from its input embeddings (LRP attributes a float input)."""

    def __init__(self, gpt2):
        super().__init__()
        self.gpt2 = gpt2

    def forward(self, e):
        return self.gpt2(inputs_embeds=e).logits


def test_every_gpt2_projection_is_a_dense_layer():
    """A small random GPT-2: each block's c_attn, attn.c_proj, c_fc and mlp.c_proj (Conv1D: addmm) and the score
    head are dense layers under the composite; attention's two products of the input's path are not layers."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=12, n_embd=16, n_layer=2, n_head=2, n_positions=32, num_labels=3,
                                     pad_token_id=0)
    gpt2 = transformers.GPT2ForSequenceClassification(config).to(DT).eval()
    net = _Embedded(gpt2)
    e = torch.randn(1, 5, 16, dtype=DT)
    comp = _Recording()
    # layer norm, attention and gelu_new's products have rules of their own (tribute.lrp.attention, .gates): covered
    r = tribute.explain(net, e, "lrp", composite=comp, target=1)
    assert torch.isfinite(r).all() and r.abs().sum() > 0
    expected = [("dense", f"gpt2.transformer.h.{i}.{m}") for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")] + [("dense", "gpt2.score")]
    assert comp.seen == expected


@pytest.mark.parametrize("form", FORMS)
def test_the_epsilon_gradient_form_sees_every_form(form, fallbacks):
    """The fast ε form computes every form itself (no fallback) and equals the relevance form."""
    net = _MLP(form, _layers(2))
    x = torch.randn(3, 6, dtype=DT, generator=torch.Generator().manual_seed(4))
    fast = tribute.explain(net, x, "lrp", composite="epsilon", epsilon=0.05, target=0)
    assert fallbacks == []
    slow = tribute.explain(net, x, "lrp", composite=RelevanceForm(conv=Epsilon(0.05), dense=Epsilon(0.05)), target=0)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-13)


class _SelfProduct(nn.Module):
    """h = Wx; y = (h hᵀ) h: the second product has both operands on the input's path (as attention does)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4, bias=False).to(DT)

    def forward(self, x):
        h = self.lin(x)
        return torch.einsum("ni,nj,nj->ni", h, h, h).sum(1, keepdim=True) + (h @ h.T).diagonal()[:, None]


def test_products_of_two_tensors_on_the_path_are_not_layers(fallbacks):
    """(h hᵀ) and a three-operand einsum are not mapped to layers: one layer is seen; the ε gradient form refuses
    them by name and the relevance form, where they are products under AttnLRP's uniform rule
    (tribute.lrp.gates), gives the same result."""
    net = _SelfProduct()
    x = torch.randn(2, 4, dtype=DT, generator=torch.Generator().manual_seed(5))
    comp = _Recording()
    slow = tribute.explain(net, x, "lrp", composite=comp, target=0)
    assert comp.seen == [("dense", "lin")]
    fast = tribute.explain(net, x, "lrp", composite="epsilon", target=0)
    assert fallbacks and all("input's path" in f or "no rule" in f for f in fallbacks)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-13)


def test_batch_norm_over_another_axis_than_a_dense_layers_outputs_is_not_merged():
    """nn.Linear on (N, T, F) then BatchNorm1d(T) normalises T, not the layer's outputs F: merging it into W (as
    for (N, F) outputs) would scale W's rows by T's statistics.  It stays an affine map under the Norm rule: the
    same relevance as the batch norm written out as z·scale + shift (up to the stabiliser, 1e-6)."""
    torch.manual_seed(6)
    lin, bn = nn.Linear(4, 4).to(DT), nn.BatchNorm1d(4).to(DT).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach()
    shift = (bn.bias - bn.running_mean * scale).detach()

    class Net(nn.Module):
        def __init__(self, written_out):
            super().__init__()
            self.lin, self.bn, self.written_out = lin, bn, written_out

        def forward(self, x):
            z = self.lin(x)
            y = z * scale[:, None] + shift[:, None] if self.written_out else self.bn(z)
            return y.flatten(1)

    x = torch.randn(3, 4, 4, dtype=DT)
    for composite in ("epsilon", "zplus"):
        a = tribute.explain(Net(False), x, "lrp", composite=composite, target=5)
        b = tribute.explain(Net(True), x, "lrp", composite=composite, target=5)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("composite", ["gamma", "alpha_beta", "epsilon"])
def test_an_explainer_reused_on_conv1d_layers_keeps_its_answer_and_follows_a_weight_change(composite):
    """Conv1D's weight is a parameter: the weights rules derive from it are kept between calls (weight cache), and
    rederived after an in-place change; each call equals an explainer that keeps nothing."""
    net = _MLP("conv1d_hf", _layers(7))
    x = torch.randn(3, 6, dtype=DT, generator=torch.Generator().manual_seed(8))
    cached = tribute.LRP(net, composite=composite)
    fresh = tribute.LRP(net, composite=composite, cache_weights=False)
    first = cached(x, target=1)
    torch.testing.assert_close(cached(x, target=1), first, rtol=0, atol=0)
    torch.testing.assert_close(first, fresh(x, target=1), rtol=0, atol=1e-13)
    if composite != "epsilon":  # (ε's gradient form derives nothing from W)
        assert cached.weights.hits > 0
    with torch.no_grad():
        net.b.weight.mul_(-0.5)
    torch.testing.assert_close(cached(x, target=1), fresh(x, target=1), rtol=0, atol=1e-13)
    assert not torch.allclose(cached(x, target=1), first)


class _Tokens(nn.Module):
    """A dense layer on (N, T, F) tokens, written as ``form``, then ReLU and a dense readout of the flattened tokens."""

    def __init__(self, form, lin, head):
        super().__init__()
        self.form, self.lin, self.head = form, lin, head

    def forward(self, x):
        w, b = self.lin.weight, self.lin.bias
        if self.form == "linear":
            h = self.lin(x)
        elif self.form == "matmul":
            h = torch.matmul(x, w.T) + b
        elif self.form == "einsum":
            h = torch.einsum("bti,oi->bto", x, w) + b
        else:  # HF Conv1D's own reshaping: addmm on (N·T, F)
            h = torch.addmm(b, x.reshape(-1, x.shape[-1]), w.T).view(*x.shape[:-1], -1)
        return self.head(torch.relu(h).flatten(1))


@pytest.mark.parametrize("composite", ["gamma", "alpha_beta", "epsilon_plus_flat", "zplus"])
def test_forms_on_token_sequences_agree(composite):
    """On (N, T, F) inputs as in a transformer, the forms give nn.Linear's relevance."""
    torch.manual_seed(9)
    lin, head = nn.Linear(4, 5).to(DT), nn.Linear(15, 2).to(DT)
    x = torch.randn(2, 3, 4, dtype=DT)
    ref = tribute.explain(_Tokens("linear", lin, head), x, "lrp", composite=composite, target=1)
    for form in ("matmul", "einsum", "addmm"):
        got = tribute.explain(_Tokens(form, lin, head), x, "lrp", composite=composite, target=1)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12, msg=form)
