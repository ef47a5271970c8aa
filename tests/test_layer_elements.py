"""Layers whose module returns a tuple or a mapping (a Swin stage, a Hugging Face encoder): ``"name[k]"`` names the
element, for every layer method; the element is captured, differentiated at and replaced like a tensor output."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute
from tribute.core.layer_names import LayerError

DT = torch.float64
Pair = namedtuple("Pair", ["features", "skip"])


class Stage(nn.Module):
    """A conv stage that returns (features, skip, size) in the form ``kind`` asks for."""

    def __init__(self, kind: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.kind = kind

    def forward(self, x):
        h = F.silu(self.conv(x))
        if self.kind == "tuple":
            return h, x.mean(1, keepdim=True), h.shape[-1]
        if self.kind == "namedtuple":
            return Pair(h, x.mean(1, keepdim=True))
        return {"features": h, "skip": x.mean(1, keepdim=True)}


class Net(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.stage = Stage(kind)
        self.head = nn.Linear(5, 3)
        self.kind = kind

    def forward(self, x):
        out = self.stage(x)
        features, skip = (out[0], out[1]) if self.kind != "dict" else (out["features"], out["skip"])
        pooled = torch.cat([features.mean((2, 3)), skip.mean((2, 3))], 1)
        return self.head(pooled)


KEYS = {"tuple": 0, "namedtuple": 0, "dict": "features"}
X = torch.randn(2, 3, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(1))


def _by_hand(model, kind):
    """Grad-CAM (Selvaraju et al. 2017) at the stage's features, with a hook that reads the element itself."""
    seen = {}
    hook = model.stage.register_forward_hook(lambda m, a, out: seen.update(a=out[KEYS[kind]]))  # returns None
    try:
        score = model(X)[:, 1].sum()
    finally:
        hook.remove()
    (g,) = torch.autograd.grad(score, seen["a"])
    return F.relu((g.mean((2, 3), keepdim=True) * seen["a"]).sum(1, keepdim=True)).detach()


@pytest.mark.parametrize("kind", list(KEYS))
def test_gradcam_at_an_element_equals_its_definition(kind):
    model = Net(kind).to(DT).eval()
    cam = tribute.explain(model, X, "gradcam", layer=f"stage[{KEYS[kind]}]", target=1, upsample=False)
    torch.testing.assert_close(cam, _by_hand(model, kind), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", list(KEYS))
def test_layer_integrated_gradients_at_an_element_is_complete(kind):
    # the replaced element must reach the rest of the network: the path integral then sums to the score's change
    model = Net(kind).to(DT).eval()
    layer = f"stage[{KEYS[kind]}]"
    phi = tribute.explain(model, X, "layer_integrated_gradients", layer=layer, target=2, steps=64)
    with torch.no_grad():
        out = model.stage(X)
        features = out[KEYS[kind]]
        skip = out[1] if kind != "dict" else out["skip"]
        head = model.head

        def score(f):
            return head(torch.cat([f.mean((2, 3)), skip.mean((2, 3))], 1))[:, 2]

        # the path runs from the element's value at the zero input (the baseline's activation) to its value at X
        delta = score(features) - score(model.stage(torch.zeros_like(X))[KEYS[kind]])
    assert phi.shape == features.shape
    torch.testing.assert_close(phi.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)


def test_a_tuple_output_without_an_element_lists_the_elements():
    model = Net("tuple").to(DT).eval()
    with pytest.raises(LayerError, match=r"returns a tuple.*\[0\]: tensor \(2, 4, 6, 6\).*\[2\]: int.*'stage\[0\]'"):
        tribute.explain(model, X, "gradcam", layer="stage", target=1)


@pytest.mark.parametrize(("layer", "message"), [
    ("stage[7]", r"no element \[7\] \(its elements: \[0\], \[1\], \[2\]\)"),
    ("stage[2]", r"is a int, not a tensor"),
    ("stage[]", r"between '\[' and '\]'"),
])
def test_a_wrong_element_is_named(layer, message):
    model = Net("tuple").to(DT).eval()
    with pytest.raises(LayerError, match=message):
        tribute.explain(model, X, "layer_gradient", layer=layer, target=1)


def test_a_key_of_a_mapping_output():
    model = Net("dict").to(DT).eval()
    with pytest.raises(LayerError, match=r"no element \[feature\] \(its elements: \[features\], \[skip\]\)"):
        tribute.explain(model, X, "layer_gradient", layer="stage[feature]", target=1)
