"""DeepLIFT RevealCancel on the zoo's Hugging Face models (tests/test_zoo.py: tiny random configs in a realistic
state): summation-to-delta on the CNNs, ConvNeXt (LayerNorm), ViT and Swin (attention, LayerNorm) and on BERT and
GPT-2 at their input embeddings (tests/conftest.py ``text_model``), with answers that are not Rescale's."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import OnEmbeddings, text_batch, text_model

import tribute

pytest.importorskip("transformers")
from test_zoo import TARGET, _images, _model, _score  # noqa: E402

# measured (float64, relative): 6e-16 ResNet, 3e-15 MobileNetV2, 2e-15 EfficientNet, 3e-15 ConvNeXt, 3e-15 ViT,
# 9e-16 Swin
VISION = ("resnet", "mobilenet_v2", "efficientnet", "convnext", "vit", "swin")


def _relative_gap(phi, delta):
    return ((phi.flatten(1).sum(1) - delta).abs() / delta.abs()).max().item()


@pytest.mark.parametrize("name", VISION)
def test_summation_to_delta(name):
    model, x = _model(name), _images()
    explainer = tribute.DeepLiftRevealCancel(model)
    phi = explainer.attribute(x, target=TARGET)
    delta = _score(model, x) - _score(model, torch.zeros_like(x))
    assert phi.shape == x.shape and delta.abs().min() > 1e-3
    assert _relative_gap(phi, delta) <= 1e-10
    assert not explainer.coverage.unruled
    if name != "efficientnet":  # Rescale refuses its gates (DeepLIFT's product rule is not registered by default)
        rescale = tribute.explain(model, x, "deeplift", target=TARGET)
        assert (phi - rescale).abs().max() > 1e-3 * phi.abs().max()  # evidence did cancel: not Rescale's answer


@pytest.mark.filterwarnings("ignore:.*inputs_embeds")  # GPT-2 cannot see padding in embeddings (pools the last)
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_summation_to_delta_on_text_models_at_the_embeddings(arch):
    # measured (float64, relative): 1.4e-15 BERT, 6.7e-15 GPT-2 (HF's Conv1D through addmm, gelu_new by parts)
    model = OnEmbeddings(text_model(arch)).eval()
    ids, mask = text_batch()
    emb = model.embed(ids)
    kw = {"target": 1, "forward_kwargs": {"attention_mask": mask}}
    phi = tribute.explain(model, emb, "deeplift_reveal_cancel", **kw)
    with torch.no_grad():
        delta = model(emb, mask)[:, 1] - model(torch.zeros_like(emb), mask)[:, 1]
    assert delta.abs().min() > 1e-3
    assert _relative_gap(phi, delta) <= 1e-10
    rescale = tribute.explain(model, emb, "deeplift", **kw)
    assert (phi - rescale).abs().max() > 1e-3 * phi.abs().max()


@pytest.mark.parametrize("name", ["convnext", "vit", "swin"])
def test_summation_to_delta_in_float32(name):
    # measured (relative): 6.4e-7 ConvNeXt, 6.5e-7 ViT, 2.4e-6 Swin
    model32, x32 = copy.deepcopy(_model(name)).float(), _images().float()  # a copy: the cache stays float64
    phi = tribute.explain(model32, x32, "deeplift_reveal_cancel", target=TARGET)
    delta = _score(model32, x32) - _score(model32, torch.zeros_like(x32))
    assert _relative_gap(phi.double(), delta.double()) <= 1e-4
