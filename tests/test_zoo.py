"""The zoo (issue 13, first increment): third-party vision models from Hugging Face ``transformers``.

Tiny random configs (nothing downloaded), 32×32 images, float64, eval mode, in a *realistic state*: HF zeroes
every linear bias and makes every normalisation the identity at initialisation, and a bias-free ReLU net is
positively homogeneous, so a completeness check at the zero baseline would pass for almost any implementation.
:func:`_realistic` therefore randomises every bias, every normalisation's affine parameters and ConvNeXt's layer
scales, and measures batch-norm running statistics on random data (train-mode passes, then eval).

For each model × method: the method runs, gives the input's shape and finite values, and satisfies its own
identity (IG completeness, DeepLIFT summation-to-delta, gradient = autograd, Grad-CAM = its definition computed
by hand), or refuses with :class:`UncoveredModelError` naming the ops it has no rule for (the current
contract for LayerNorm, attention and squeeze-excitation gates).
"""

from __future__ import annotations

import pytest
import torch
from conftest import OnEmbeddings, realistic_state, text_batch, text_model
from zoo_support import gradcam_by_hand

import tribute
from tribute.core import UncoveredModelError

transformers = pytest.importorskip("transformers")

DT = torch.float64
N, LABELS, TARGET = 2, 3, 1


def _resnet():
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=LABELS))


def _convnext():
    return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=4, num_labels=LABELS))


def _mobilenet_v2():
    return transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(
        num_channels=3, image_size=32, depth_multiplier=0.25, num_labels=LABELS))


def _efficientnet():
    # hidden_dim must equal the top convolution's width, round_filters(1280) = 128 at width 0.1
    return transformers.EfficientNetForImageClassification(transformers.EfficientNetConfig(
        num_channels=3, image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128,
        num_labels=LABELS))


def _vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=LABELS))


def _swin():
    return transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=32, patch_size=4, num_channels=3, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
        num_labels=LABELS))


# model: (builder, Grad-CAM layer, Grad-CAM reshape).  The Grad-CAM layers keep a spatial grid larger than 1×1 at
# 32×32; a ViT's last block output is refused by tribute (the head reads only the class token there), hence the last
# block's layernorm_before.
ZOO = {
    "resnet": (_resnet, "resnet.encoder.stages.1", None),
    "convnext": (_convnext, "convnext.encoder.stages.1", None),
    "mobilenet_v2": (_mobilenet_v2, "mobilenet_v2.layer.5", None),
    "efficientnet": (_efficientnet, "efficientnet.encoder.blocks.1", None),
    "vit": (_vit, "vit.layers.1.layernorm_before", "tokens"),
    "swin": (_swin, "swin.layernorm", "tokens"),
}
# The ops each family's rules do not cover yet, per model (absent: covered); the method must refuse naming them.
DEEPLIFT_REFUSES: dict[str, tuple[str, ...]] = {}  # products, softmax and the norms have rules (deeplift_ops)
# LRP covers every zoo model (tribute.lrp.gates, .attention): layer norm, attention, squeeze-excitation gates
LRP_REFUSES: dict[str, tuple[str, ...]] = {}
PIECEWISE_LINEAR = {"resnet", "mobilenet_v2"}  # ReLU / ReLU6 nets: kinks along the IG path
_CACHE: dict = {}


def _model(name):
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = realistic_state(ZOO[name][0](), dtype=DT, images=(3, 32, 32))
    return _CACHE[name]


def _images(seed=1):
    return torch.randn(N, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _score(model, x):
    with torch.no_grad():
        return model(x).logits[:, TARGET]


def _check(attribution, x):
    assert attribution.shape == x.shape
    assert torch.isfinite(attribution).all()
    assert attribution.abs().sum() > 0


NAMES = list(ZOO)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_the_realistic_state_is_not_the_initialisation(name):
    # what the completeness checks rely on: the zero image does not score zero and f is not positively homogeneous
    model, x = _model(name), _images()
    zero = _score(model, torch.zeros_like(x))
    assert zero.abs().min() > 1e-3
    gap = (_score(model, 2 * x) - zero) - 2 * (_score(model, x) - zero)
    assert gap.abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_integrated_gradients_is_complete(name):
    model, x = _model(name), _images()
    if name == "mobilenet_v2":
        pytest.skip("16 ReLU6 blocks: midpoint refinement does not reach even 1e-1·|Δ| within 3000 steps (measured); "
                    "checked against Captum and by DeepLIFT's exact summation-to-delta instead")
    if name in PIECEWISE_LINEAR:
        # Gauss–Legendre's error bound needs a smooth integrand; across ReLU kinks only the refined midpoint rule
        # has a guarantee: each sample's gap at most tolerance × |Δ|, which tribute checks before it returns
        phi = tribute.explain(model, x, "integrated_gradients", target=TARGET, steps=16, tolerance=1e-4)
        rtol = 1e-4
    else:
        # smooth nets (GELU, SiLU, LayerNorm, softmax): the path integrand is analytic, and 64 Gauss–Legendre
        # nodes (exact to degree 127) leave a gap far below 1e-6 · |Δ| here (measured: see the report)
        phi = tribute.explain(model, x, "integrated_gradients", target=TARGET, steps=64)
        rtol = 1e-6
    _check(phi, x)
    delta = _score(model, x) - _score(model, torch.zeros_like(x))
    gap = phi.flatten(1).sum(1) - delta
    assert (gap.abs() <= rtol * delta.abs() + 1e-12).all(), (gap, delta)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_gradient_equals_autograd(name):
    model, x = _model(name), _images()
    phi = tribute.explain(model, x, "gradient", target=TARGET)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf).logits[:, TARGET].sum(), leaf)
    _check(phi, x)
    torch.testing.assert_close(phi, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_deeplift_sums_to_delta_or_names_the_ops_it_cannot_cover(name):
    model, x, uncovered = _model(name), _images(), DEEPLIFT_REFUSES.get(name)
    if uncovered is not None:
        with pytest.raises(UncoveredModelError, match="no deeplift rule") as refused:
            tribute.explain(model, x, "deeplift", target=TARGET)
        assert all(op in str(refused.value) for op in uncovered)
        return
    phi = tribute.explain(model, x, "deeplift", target=TARGET)
    _check(phi, x)
    delta = _score(model, x) - _score(model, torch.zeros_like(x))
    torch.testing.assert_close(phi.flatten(1).sum(1), delta, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_lrp_epsilon_runs_or_names_the_ops_it_cannot_cover(name):
    model, x, uncovered = _model(name), _images(), LRP_REFUSES.get(name)
    if uncovered is not None:
        with pytest.raises(UncoveredModelError, match=r"no lrp\[epsilon\] rule") as refused:
            tribute.explain(model, x, "lrp", target=TARGET, composite="epsilon")
        assert all(op in str(refused.value) for op in uncovered)
        return
    phi = tribute.explain(model, x, "lrp", target=TARGET, composite="epsilon")
    _check(phi, x)


TEXT = ("bert", "gpt2")


def _lrp_case(name):
    """(model, input, call options) for a vision model of the zoo or a text model from its embeddings."""
    if name in TEXT:
        model = _CACHE.setdefault(name, OnEmbeddings(text_model(name)))
        ids, mask = text_batch()
        return model, model.embed(ids), {"forward_args": (mask,)}
    return _model(name), _images(), {}


def _first_layer_bounds(name, model, x, options):
    """zᴮ's bounds: of the input where the first linear layer reads it (the vision models' first convolution, BERT's
    query, which CP-LRP gives no relevance); GPT-2's first layer (Conv1D, addmm on (N·T, C)) reads ln_1's output, so
    its bounds are that output's range per feature (one value per input feature, placed on what the layer reads)."""
    if name != "gpt2":
        return float(x.min()), float(x.max())
    seen = []
    hook = model.model.transformer.h[0].ln_1.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(x, *options["forward_args"])
    hook.remove()
    first = seen[0].flatten(0, -2)
    return first.min(0).values, first.max(0).values


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_gpt2_box_rule_conserves_and_refuses_bounds_its_first_layer_input_exceeds(tiny_stabilisers):
    # zᴮ at GPT-2's first layer (Conv1D: addmm on (N·T, C)) with per-feature bounds: the relevance the inputs do
    # not receive (zᴮ's bias term and stabiliser) and every other constant leaf's share sum with the input's to
    # the score; bounds of the embeddings alone do not bound ln_1's output, which that layer reads: refused
    model, x, options = _lrp_case("gpt2")
    low, high = _first_layer_bounds("gpt2", model, x, options)
    explainer = tribute.LRP(model, composite="epsilon_gamma_box", epsilon=1e-12, absorbed=True, low=low, high=high)
    phi = explainer.attribute(x, target=TARGET, **options)
    score = model(x, *options["forward_args"])[:, TARGET].detach()
    total = phi.flatten(1).sum(1) + explainer.absorbed
    assert ((total - score).abs() <= 1e-8 * score.abs()).all(), (total, score)
    with pytest.raises(ValueError, match=r"first linear layer.* lies outside \[low, high\].*LayerNorm"):
        tribute.explain(model, x, "lrp", target=TARGET, composite="epsilon_gamma_box", low=float(x.min()),
                        high=float(x.max()), **options)


@pytest.mark.filterwarnings("ignore::UserWarning")  # GPT-2 from embeddings cannot detect padding (transformers says)
@pytest.mark.parametrize("composite", tribute.lrp.composites())
@pytest.mark.parametrize("name", NAMES + list(TEXT), ids=NAMES + list(TEXT))
def test_every_lrp_composite_runs_on_every_zoo_model(name, composite):
    model, x, options = _lrp_case(name)
    if composite == "epsilon_gamma_box":
        low, high = _first_layer_bounds(name, model, x, options)
        options = {**options, "low": low, "high": high}
    phi = tribute.explain(model, x, "lrp", target=TARGET, composite=composite, **options)
    _check(phi, x)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus"])
@pytest.mark.parametrize("name", NAMES + list(TEXT), ids=NAMES + list(TEXT))
def test_lrp_conserves_counting_every_constant_leaf(name, composite, tiny_stabilisers):
    # Σ R_input + what biases, β, batch norm's shift, embeddings, the class token and f(0) at squeeze-excitation's
    # sigmoid absorbed (explainer.absorbed, each share computed at its constant) = the score, biases included
    model, x, options = _lrp_case(name)
    explainer = tribute.LRP(model, composite=composite, epsilon=1e-12, absorbed=True)
    phi = explainer.attribute(x, target=TARGET, **options)
    score = model(x, *options.get("forward_args", ()))
    score = (score if name in TEXT else score.logits)[:, TARGET].detach()
    total = phi.flatten(1).sum(1) + explainer.absorbed
    assert ((total - score).abs() <= 1e-8 * score.abs()).all(), (total, score)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", NAMES + list(TEXT), ids=NAMES + list(TEXT))
def test_lrp_epsilon_runs_or_refuses_a_nonlinearity_with_f0_nonzero(name):
    # Ancona's ratio f(z)/(z + ε) is unbounded where f(0) ≠ 0: EfficientNet's squeeze-excitation sigmoid is refused
    model, x, options = _lrp_case(name)
    if name == "efficientnet":
        with pytest.raises(ValueError, match="lrp_epsilon refuses sigmoid"):
            tribute.explain(model, x, "lrp_epsilon", target=TARGET, **options)
        return
    _check(tribute.explain(model, x, "lrp_epsilon", target=TARGET, **options), x)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_integrated_gradients_equals_captums(name):
    captum = pytest.importorskip("captum.attr")
    model, x = _model(name), _images()
    theirs = captum.IntegratedGradients(lambda v: model(v).logits).attribute(
        x, baselines=torch.zeros_like(x), target=TARGET, n_steps=16, method="gausslegendre")
    ours = tribute.explain(model, x, "integrated_gradients", target=TARGET, steps=16)
    # Captum's Gauss–Legendre nodes and weights are float32 (see test_reference_captum): agreement to their rounding
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_gradcam_equals_its_definition(name):
    model, x = _model(name), _images()
    _, layer, reshape = ZOO[name]
    options = {"layer": layer} if reshape is None else {"layer": layer, "reshape": reshape}
    cam = tribute.explain(model, x, "gradcam", target=TARGET, upsample=False, **options)
    expected = gradcam_by_hand(model, x, layer, TARGET, reshape is not None, logits=lambda out: out.logits)
    assert expected.shape[-1] > 1 and expected.flatten(1).amax(1).min() > 0  # a map, not a scalar or all zeros
    torch.testing.assert_close(cam, expected, rtol=1e-10, atol=1e-12)
    full = tribute.explain(model, x, "gradcam", target=TARGET, **options)
    assert full.shape == (N, 1, 32, 32) and torch.isfinite(full).all()


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_a_batch_equals_one_sample_at_a_time(name):
    # eval mode: no batch statistics, so each sample's attribution must not depend on the other samples
    model, x = _model(name), _images()
    methods = ["gradient", "integrated_gradients"] + (["deeplift"] if name not in DEEPLIFT_REFUSES else []) + (
        ["lrp"] if name not in LRP_REFUSES else [])
    for method in methods:
        options = {"lrp": {"composite": "epsilon"}, "integrated_gradients": {"steps": 8}}.get(method, {})
        batch = tribute.explain(model, x, method, target=TARGET, **options)
        for i in range(N):
            alone = tribute.explain(model, x[i:i + 1], method, target=TARGET, **options)
            torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-9, atol=1e-12, msg=f"{method}, sample {i}")
