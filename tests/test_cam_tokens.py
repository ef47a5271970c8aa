"""CAMs on token models (issue 13): ``reshape=`` lays a transformer layer's tokens (N, T, C) out as a map
(N, C, h, w); the default layer on a transformer is an error listing token layers; FullGrad refuses bias terms
whose rows are not the batch's (Swin's windows).  Hugging Face ViT and Swin with small random configs
(nothing downloaded).  The references are computed by hand here: A and ∂S/∂A from hooks, then the map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_layers import mini_resnet
from torch import nn

import tribute
from tribute.attribution.token_maps import token_grid
from tribute.core.engine import Forward
from tribute.core.layer_names import LayerError
from tribute.core.layers import find_default_layer

transformers = pytest.importorskip("transformers")

DT = torch.float64
VIT_LAYERS = ["vit.layers.1.layernorm_before", "vit.layers.0"]


def _vit(seed=0):
    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=5)
    return transformers.ViTForImageClassification(config).to(DT).eval()


def _swin(seed=0):
    torch.manual_seed(seed)
    config = transformers.SwinConfig(image_size=32, patch_size=4, num_channels=3, embed_dim=8, depths=[1, 1],
                                     num_heads=[2, 2], window_size=2, num_labels=5)
    return transformers.SwinForImageClassification(config).to(DT).eval()


@pytest.fixture
def x():
    return torch.rand(3, 3, 32, 32, dtype=DT, generator=torch.Generator().manual_seed(1))


def _tokens_and_grad(model, x, layer, target=None, score=None):
    """A (N, T, C) at ``layer`` and ∂S/∂A, by a forward hook and autograd (no tribute); S is the logit of
    ``target``, or ``score(logits)`` (one value per sample)."""
    held = {}

    def hook(module, args, out):
        out.retain_grad()
        held["a"] = out

    h = model.get_submodule(layer).register_forward_hook(hook)
    try:
        logits = model(x.clone().requires_grad_()).logits
    finally:
        h.remove()
    (logits[torch.arange(x.shape[0]), target] if score is None else score(logits)).sum().backward()
    return held["a"].detach(), held["a"].grad.detach()


def _grid(t, k, side):
    return t[:, k:].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


def _gradcam_by_hand(model, x, layer, target, k, side):
    a, g = _tokens_and_grad(model, x, layer, target)
    a, g = _grid(a, k, side), _grid(g, k, side)
    m = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp(min=0)
    return F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------------
# reshape="tokens": Grad-CAM on the reshaped activation, worked by hand


@pytest.mark.parametrize("layer", VIT_LAYERS)
def test_vit_gradcam_with_reshape_equals_the_hand_computation(x, layer):
    vit, target = _vit(), torch.tensor([0, 3, 4])
    got = tribute.explain(vit, x, "gradcam", target=target, layer=layer, reshape="tokens")
    want = _gradcam_by_hand(vit, x, layer, target, k=1, side=4)  # 17 tokens: the class token and 4 × 4 patches
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # prefix_tokens=1 says what the inference found; a batch is each sample alone
    torch.testing.assert_close(tribute.explain(vit, x, "gradcam", target=target, layer=layer, reshape="tokens",
                                               prefix_tokens=1), got, rtol=0, atol=0)
    for i in range(3):
        one = tribute.explain(vit, x[i:i + 1], "gradcam", target=int(target[i]), layer=layer, reshape="tokens")
        torch.testing.assert_close(one, got[i:i + 1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer", ["swin.layernorm", "swin.encoder.layers.1.blocks.0.layernorm_after",
                                   "swin.embeddings.norm"])
def test_swin_gradcam_with_reshape_equals_the_hand_computation(x, layer):
    swin, target = _swin(), torch.tensor([1, 2, 0])
    side = 8 if layer == "swin.embeddings.norm" else 4  # 64 tokens in the first stage, 16 after the merge
    got = tribute.explain(swin, x, "gradcam", target=target, layer=layer, reshape="tokens")
    want = _gradcam_by_hand(swin, x, layer, target, k=0, side=side)  # Swin has no class token
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_a_callable_rearrangement_equals_reshape_tokens(x):
    vit = _vit()
    got = tribute.explain(vit, x, "gradcam", target=2, layer="vit.layers.0", reshape=lambda t: _grid(t, 1, 4))
    torch.testing.assert_close(got, tribute.explain(vit, x, "gradcam", target=2, layer="vit.layers.0",
                                                    reshape="tokens"), rtol=0, atol=0)
    # on a CNN the identity rearrangement changes nothing
    net, xc = mini_resnet(), torch.rand(2, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tribute.explain(net, xc, "gradcam", target=1, reshape=lambda t: t),
                               tribute.explain(net, xc, "gradcam", target=1), rtol=0, atol=0)


def test_gradcam_plus_plus_with_reshape_equals_eq19_on_the_map(x):
    vit, target, layer = _vit(), torch.tensor([4, 0, 1]), "vit.layers.0"
    a, g = _tokens_and_grad(vit, x, layer, target)
    a, g = _grid(a, 1, 4), _grid(g, 1, 4)
    denom = 2 * g ** 2 + g ** 3 * a.sum(dim=(2, 3), keepdim=True)
    alpha = torch.where(denom == 0, torch.zeros_like(g), g ** 2 / torch.where(denom == 0, torch.ones_like(g), denom))
    w = (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    want = F.interpolate((w * a).sum(1, keepdim=True).clamp(min=0), size=(32, 32), mode="bilinear",
                         align_corners=False)
    got = tribute.explain(vit, x, "gradcam_plus_plus", target=target, layer=layer, reshape="tokens")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_cam_at_swins_last_norm_is_hw_times_gradcam(x):
    """Swin's head is average pooling over the tokens and a linear layer: Zhou et al.'s CAM applies exactly at
    the final layer norm, and CAM = h·w × Grad-CAM before the ReLU.  ViT's head reads the class token: refused."""
    swin, layer = _swin(), "swin.layernorm"
    cam = tribute.explain(swin, x, "cam", target=3, layer=layer, reshape="tokens", relu=False, upsample=False)
    grad = tribute.explain(swin, x, "gradcam", target=3, layer=layer, reshape="tokens", relu=False, upsample=False)
    assert cam.shape == (3, 1, 4, 4)
    torch.testing.assert_close(cam, 16 * grad, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="not constant over the positions"):
        tribute.explain(_vit(), x, "cam", target=3, layer="vit.layers.1.layernorm_before", reshape="tokens")


def test_scorecam_with_reshape_equals_the_hand_computation(x):
    vit, target, layer = _vit(), torch.tensor([0, 1, 2]), "vit.layers.0"
    a, _ = _tokens_and_grad(vit, x, layer, target)
    a = _grid(a, 1, 4)
    w = torch.zeros(3, 16, dtype=DT)
    with torch.no_grad():
        for k in range(16):
            up = F.interpolate(a[:, k:k + 1], size=(32, 32), mode="bilinear", align_corners=False)
            lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
            p = vit(x * (up - lo) / (hi - lo)).logits.softmax(dim=1)
            w[:, k] = p[torch.arange(3), target]
    m = (w[:, :, None, None] * a).sum(1, keepdim=True)  # unrectified: this random model's map is mostly < 0
    want = F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False)
    assert want.abs().max() > 0
    got = tribute.explain(vit, x, "scorecam", target=target, layer=layer, reshape="tokens", relu=False)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_guided_and_contrastive_gradcam_take_reshape(x):
    vit, layer = _vit(), "vit.layers.0"
    cam = tribute.explain(vit, x, "gradcam", target=1, layer=layer, reshape="tokens")
    # guided backprop keeps the derivative at layer norm and attention (its definition), but this ViT has no
    # rectifier for it to modify (GELU): refused by default, the plain gradient with strict=False, which warns
    with pytest.raises(ValueError, match="changed nothing.*gelu"):
        tribute.explain(vit, x, "guided_backprop", target=1)
    with pytest.warns(UserWarning, match="changed nothing"):
        guided = tribute.explain(vit, x, "guided_backprop", target=1, strict=False)
    assert cam.abs().max() > 0 and guided.abs().max() > 0
    with pytest.warns(UserWarning, match="changed nothing"):
        both = tribute.explain(vit, x, "guided_gradcam", target=1, layer=layer, reshape="tokens", strict=False)
    torch.testing.assert_close(both, guided * cam, rtol=1e-9, atol=1e-12)
    # contrastive Grad-CAM is Grad-CAM of J = −log softmax_Q: the hand Grad-CAM with that score
    a, g = _tokens_and_grad(vit, x, layer, score=lambda logits: -logits.log_softmax(dim=1)[:, 4])
    a, g = _grid(a, 1, 4), _grid(g, 1, 4)
    want = F.interpolate((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp(min=0), size=(32, 32),
                         mode="bilinear", align_corners=False)
    assert want.abs().max() > 0
    got = tribute.explain(vit, x, "contrastive_gradcam", target=torch.tensor([0, 1, 2]), contrast=4, layer=layer,
                          reshape="tokens")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# the grid, and what is refused


@pytest.mark.parametrize("layer", ["vit.layers.1", "vit.layernorm"])
def test_a_layer_after_the_last_attention_of_a_vit_is_refused(x, layer):
    """There the head reads the class token alone: ∂S/∂(patch tokens) = 0 and every map would be 0."""
    _, g = _tokens_and_grad(_vit(), x, layer, torch.tensor([0, 1, 2]))
    assert g[:, 1:].abs().max() == 0 and g[:, 0].abs().max() > 0
    for method in ("gradcam", "gradcam_plus_plus", "guided_gradcam", "cam"):
        with pytest.raises(LayerError, match="the map would be 0"):
            tribute.explain(_vit(), x, method, target=0, layer=layer, reshape="tokens")


def test_token_grid_infers_the_class_token_and_the_aspect_ratio():
    assert token_grid(17, (32, 32), None) == (1, 4, 4)
    assert token_grid(16, (32, 32), None) == (0, 4, 4)
    assert token_grid(9, (16, 32), None) == (1, 2, 4)  # 8 tokens on a grid of the image's 1:2 ratio
    assert token_grid(18, (32, 32), 2) == (2, 4, 4)  # DeiT's class and distillation tokens
    with pytest.raises(LayerError, match="prefix_tokens="):
        token_grid(18, (32, 32), None)  # neither 18 nor 17 tokens fill a square grid
    with pytest.raises(LayerError, match="prefix_tokens=3"):
        token_grid(17, (32, 32), 3)


def test_reshape_errors_name_the_way_out(x):
    vit = _vit()
    with pytest.raises(LayerError, match="reshape='tokens'"):  # tokens without reshape=
        tribute.explain(vit, x, "gradcam", layer="vit.layers.0")
    with pytest.raises(LayerError, match="prefix_tokens="):
        tribute.explain(vit, x, "gradcam", layer="vit.layers.0", reshape="tokens", prefix_tokens=2)
    with pytest.raises(ValueError, match="prefix_tokens= goes with reshape='tokens'"):
        tribute.explain(vit, x, "gradcam", layer="vit.layers.0", prefix_tokens=1)
    with pytest.raises(LayerError, match="needs a layer giving tokens"):
        tribute.explain(mini_resnet(), torch.rand(2, 3, 8, 8, dtype=DT), "gradcam", reshape="tokens")
    with pytest.raises(TypeError, match="reshape"):
        tribute.explain(vit, x, "gradcam", layer="vit.layers.0", reshape="grid")


@pytest.mark.parametrize("bad", [
    lambda t: F.interpolate(_grid(t, 1, 4), size=(8, 8), mode="bilinear", align_corners=False),  # combines
    lambda t: _grid(t, 1, 4).flip(0),  # mixes the samples
    lambda t: _grid(t, 1, 4) * 2,  # scales
    lambda t: _grid(t, 1, 4)[:, :, :1].expand(-1, -1, 4, -1),  # repeats entries
])
def test_a_callable_that_is_no_rearrangement_is_refused(x, bad):
    with pytest.raises(LayerError, match="only select and rearrange"):
        tribute.explain(_vit(), x, "gradcam", layer="vit.layers.0", reshape=bad)


def test_a_callable_must_give_a_map(x):
    with pytest.raises(LayerError, match=r"must give a map \(N, C, h, w\)"):
        tribute.explain(_vit(), x, "gradcam", layer="vit.layers.0", reshape=lambda t: t[:, 1:])


# ---------------------------------------------------------------------------------------------------
# the default layer


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_the_default_layer_on_a_transformer_is_an_error_listing_token_layers(x, arch):
    model = _vit() if arch == "vit" else _swin()
    last = "vit.layernorm" if arch == "vit" else "swin.layernorm"
    for method in ("gradcam", "scorecam", "guided_gradcam"):
        with pytest.raises(LayerError, match="layer= with a layer of tokens and reshape='tokens'") as e:
            tribute.explain(model, x, method, target=0)
        msg = str(e.value)
        assert f"'{last}' (1, {17 if arch == 'vit' else 16}, 16)" in msg and "transpose" not in msg
    # the first layer listed is named as the layer= it takes; on ViT the hint's layer before the last attention
    first = msg.split("first (one row's shapes): ")[1].split(" ")[0].strip("'")
    assert first == last
    layer = first if arch == "swin" else "vit.layers.1.layernorm_before"
    assert arch == "swin" or "layernorm_before" in msg
    m = tribute.explain(model, x, "gradcam", target=0, layer=layer, reshape="tokens")
    assert m.shape == (3, 1, 32, 32) and m.abs().max() > 0


def test_the_default_layer_skips_channels_last_views():
    """A 4-D tensor made by a permute (channels last) is no feature map: the default is the conv block before it."""

    class ChannelsLastHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.body(x).permute(0, 2, 3, 1).mean(dim=(1, 2)))

    net = ChannelsLastHead().to(DT)
    xc = torch.rand(2, 3, 6, 6, dtype=DT)
    assert str(find_default_layer(Forward(net), xc)) == "body"


# ---------------------------------------------------------------------------------------------------
# FullGrad


def test_fullgrad_on_swin_refuses_bias_terms_of_windows(x):
    swin = _swin()
    with pytest.raises(LayerError, match="whose first dimension is not the 3 rows") as e:
        tribute.explain(swin, x, "fullgrad", target=0)
    assert "window" in str(e.value)
    with pytest.raises(LayerError, match="not the 3 rows"):
        tribute.get_method("fullgrad")(swin).full_gradient(x, 0)


def test_fullgrad_on_vit_keeps_the_batch_in_every_bias_term(x):
    d = tribute.get_method("fullgrad")(_vit()).full_gradient(x, 1)
    assert len(d.bias_terms) > 10 and all(t.shape[0] == 3 for t in d.bias_terms)
    one = tribute.get_method("fullgrad")(_vit()).full_gradient(x[1:2], 1)
    for t, u in zip(d.bias_terms, one.bias_terms, strict=True):
        torch.testing.assert_close(t[1:2], u, rtol=1e-9, atol=1e-12)


def test_the_default_layer_of_a_text_transformer_names_no_grid():
    """BERT's 7 tokens fill no square grid: the error says so and asks for layer=."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    bert = transformers.BertForSequenceClassification(config).to(DT).eval()
    ids = torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(0))
    with pytest.raises(LayerError, match="no layer's tokens fill a square grid"):
        find_default_layer(Forward(bert), ids)


def test_swin_on_a_wide_image_lays_the_tokens_out_at_its_aspect_ratio():
    """A 32 × 64 image: 8 × 16 patches in Swin's first stage, 4 × 8 after the merge (h/w = H/W)."""
    swin, target = _swin(), torch.tensor([2, 4])
    x = torch.rand(2, 3, 32, 64, dtype=DT, generator=torch.Generator().manual_seed(3))
    for layer, (h, w) in {"swin.embeddings.norm": (8, 16), "swin.layernorm": (4, 8)}.items():
        a, g = _tokens_and_grad(swin, x, layer, target)
        a, g = (t.reshape(2, h, w, t.shape[2]).permute(0, 3, 1, 2) for t in (a, g))
        m = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
        got = tribute.explain(swin, x, "gradcam", target=target, layer=layer, reshape="tokens", relu=False,
                              upsample=False)
        assert got.shape == (2, 1, h, w) and m.abs().max() > 0
        torch.testing.assert_close(got, m, rtol=1e-9, atol=1e-12)
