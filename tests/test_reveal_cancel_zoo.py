"""DeepLIFT RevealCancel on the zoo's Hugging Face vision models (tests/test_zoo.py: tiny random configs in a
realistic state): summation-to-delta where its rules cover the model, an error naming the op where not."""

from __future__ import annotations

import pytest
import torch

import tribute
from tribute.core import UncoveredModelError

pytest.importorskip("transformers")
from test_zoo import TARGET, _images, _model, _score  # noqa: E402

COVERED = ("resnet", "mobilenet_v2", "efficientnet")  # efficientnet: squeeze-and-excitation gates (products)
REFUSED = {"convnext": "layer_norm", "vit": "layer_norm", "swin": "layer_norm"}


@pytest.mark.parametrize("name", COVERED)
def test_summation_to_delta(name):
    # measured: 6e-16 (ResNet), 3e-15 (MobileNetV2), 2e-15 (EfficientNet) relative; before the Linear rule of
    # §3.5.1, 1e-13 and 3e-12, and EfficientNet's gates were refused
    model, x = _model(name), _images()
    phi = tribute.explain(model, x, "deeplift_reveal_cancel", target=TARGET)
    delta = _score(model, x) - _score(model, torch.zeros_like(x))
    assert phi.shape == x.shape
    assert ((phi.flatten(1).sum(1) - delta).abs() <= 1e-10 * delta.abs()).all()
    if name != "efficientnet":  # Rescale refuses its gates (DeepLIFT's product rule is not registered by default)
        rescale = tribute.explain(model, x, "deeplift", target=TARGET)
        assert (phi - rescale).abs().max() > 1e-3 * phi.abs().max()  # evidence did cancel: not Rescale's answer


@pytest.mark.parametrize("name", REFUSED)
def test_an_op_without_a_rule_is_refused_by_name(name):
    with pytest.raises(UncoveredModelError, match=REFUSED[name]):
        tribute.explain(_model(name), _images(), "deeplift_reveal_cancel", target=TARGET)
