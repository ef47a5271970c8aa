"""Targets in every form, dtypes, transforms, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import mlp, residual_cnns
from test_model_invariance import assert_same, snapshot
from torch import nn

import tribute


def test_target_forms_agree(images):
    net = residual_cnns()["modules"]
    per_sample = torch.tensor([0, 3, 3, 1])
    a = tribute.explain(net, images, "gradient", target=per_sample)
    for i, c in enumerate(per_sample.tolist()):
        torch.testing.assert_close(a[i : i + 1], tribute.explain(net, images[i : i + 1], "gradient", target=c))
    b = tribute.explain(net, images, "gradient", target=lambda out: out[torch.arange(4), per_sample])
    torch.testing.assert_close(a, b)


def test_a_contrast_target_is_the_difference_of_attributions(images):
    net = residual_cnns()["modules"]
    for method in ("gradient", "integrated_gradients", "lrp_epsilon"):
        kw = {"steps": 8} if method == "integrated_gradients" else {}
        contrast = tribute.explain(net, images, method, target=lambda out: out[:, 2] - out[:, 4], **kw)
        p, q = (tribute.explain(net, images, method, target=c, **kw) for c in (2, 4))
        torch.testing.assert_close(contrast, p - q)


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "deeplift", "smoothgrad"])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_target_none_is_the_prediction_on_the_clean_input(method, batch_size, images):
    net = residual_cnns()["modules"]
    with torch.no_grad():
        predicted = net(images).argmax(1)
    kw = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3, "seed": 0}}.get(method, {})
    a = tribute.explain(net, images, method, batch_size=batch_size, **kw)
    torch.testing.assert_close(a, tribute.explain(net, images, method, target=predicted, **kw))


def test_a_regression_output_is_explained_with_a_callable_target():
    net = mlp(nn.Tanh, sizes=(6, 8, 1))
    x = torch.randn(3, 6, dtype=torch.float64)
    a = tribute.explain(net, x, "integrated_gradients", target=lambda out: out[:, 0], steps=32)
    with torch.no_grad():
        delta = net(x)[:, 0] - net(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(a.sum(1), delta, atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_has_the_inputs_shape_dtype_and_device(dtype, images):
    net = residual_cnns(dtype=dtype)["functional"]
    for method in tribute.methods():
        if tribute.get_method(method).returns != "input":
            continue  # CAM maps are (N, 1, H, W), layer methods have the layer's shape: tests/test_cam.py
        kw = dict(tribute.get_method(method).example_options)
        if method in ("expected_gradients", "prediction_difference"):
            kw["references"] = images[:2].to(dtype)
        a = tribute.explain(net, images.to(dtype), method, target=0, **kw)
        assert a.shape == images.shape and a.dtype == dtype and a.device == images.device, method


def test_normalize_transform_keeps_attributions_in_pixel_space(images):
    net = residual_cnns()["modules"]
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    norm = tribute.Normalize(mean, std)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    wrapped = nn.Sequential()
    wrapped.forward = lambda x: net((x - m) / s)  # the same composite written by hand
    a = tribute.explain(net, images, "integrated_gradients", target=1, input_transform=norm, steps=16)
    b = tribute.explain(wrapped, images, "integrated_gradients", target=1, steps=16)
    torch.testing.assert_close(a, b)
    # chain rule: ∂S/∂pixel = ∂S/∂normalised / std
    g = tribute.explain(net, images, "gradient", target=1, input_transform=norm)
    torch.testing.assert_close(g, tribute.explain(net, (images - m) / s, "gradient", target=1) / s)


def _errors_leave_model_intact(net, x, call, exc, match):
    before = snapshot(net)
    with pytest.raises(exc, match=match):
        call()
    assert_same(before, snapshot(net))
    assert torch.isfinite(tribute.explain(net, x, "gradient", target=0)).all()


BAD = [
    ("nan", lambda n, x: tribute.explain(n, x.clone().index_fill_(0, torch.tensor([1]), float("nan")), "gradient"),
     ValueError, r"NaN or inf \(samples \[1\]\)"),
    ("inf", lambda n, x: tribute.explain(n, x + float("inf"), "deeplift", target=0), ValueError, "NaN or inf"),
    ("target too big", lambda n, x: tribute.explain(n, x, "gradient", target=5), IndexError, "out of range.*5 outputs"),
    ("target negative", lambda n, x: tribute.explain(n, x, "gradient", target=-1), IndexError, ">= 0"),
    ("target length", lambda n, x: tribute.explain(n, x, "gradient", target=torch.tensor([0, 1])), ValueError,
     r"one class per sample: expected shape \(4,\)"),
    ("float target", lambda n, x: tribute.explain(n, x, "gradient", target=torch.tensor([0.0] * 4)), TypeError,
     "integers"),
    ("target type", lambda n, x: tribute.explain(n, x, "gradient", target="cat"), TypeError, "target must be"),
    ("callable shape", lambda n, x: tribute.explain(n, x, "gradient", target=lambda o: o), ValueError,
     "one score per row"),
    ("unknown method", lambda n, x: tribute.explain(n, x, "integrated_gradient"), ValueError,
     "did you mean 'integrated_gradients'"),
    ("steps < 1", lambda n, x: tribute.explain(n, x, "integrated_gradients", steps=0), ValueError,
     "steps must be an integer >= 1"),
    ("steps float", lambda n, x: tribute.explain(n, x, "integrated_gradients", steps=2.5), ValueError, "steps"),
    ("quadrature", lambda n, x: tribute.explain(n, x, "integrated_gradients", quadrature="simpson"), ValueError,
     "quadrature must be one of"),
    ("baseline shape", lambda n, x: tribute.explain(n, x, "integrated_gradients", baseline=torch.zeros(2, 3, 8, 8,
     dtype=torch.float64)), ValueError, "does not broadcast"),
    ("baseline name", lambda n, x: tribute.explain(n, x, "deeplift", baseline="black"), ValueError,
     "baseline must be"),
    ("unknown option", lambda n, x: tribute.explain(n, x, "integrated_gradients", step=3), TypeError,
     "no option 'step'.*did you mean steps"),
    ("dtype", lambda n, x: tribute.explain(n, x.float(), "gradient", target=0), TypeError,
     "inputs are torch.float32 but the model's parameters are torch.float64"),
    ("no batch dim", lambda n, x: tribute.explain(n, x[0, 0, 0], "gradient", target=0), ValueError, "batch"),
    ("empty", lambda n, x: tribute.explain(n, x[:0], "gradient", target=0), ValueError, "no samples"),
    ("integer input", lambda n, x: tribute.explain(n, x.long(), "gradient", target=0), TypeError, "floating point"),
    ("batch_size", lambda n, x: tribute.explain(n, x, "smoothgrad", batch_size=0), ValueError, "batch_size"),
    ("samples", lambda n, x: tribute.explain(n, x, "smoothgrad", samples=-2), ValueError, "samples"),
    ("sigma", lambda n, x: tribute.explain(n, x, "smoothgrad", sigma=-0.1), ValueError, "sigma must be >= 0"),
    ("epsilon", lambda n, x: tribute.explain(n, x, "lrp_epsilon", epsilon=0), ValueError, "epsilon must be > 0"),
    ("eg references", lambda n, x: tribute.explain(n, x, "expected_gradients"), ValueError, "needs references="),
    ("eg shape", lambda n, x: tribute.explain(n, x, "expected_gradients", references=torch.zeros(3, 3, 4, 4)),
     ValueError, "references must be a tensor of shape"),
    # the old spelling, one letter from IG's baseline=, is refused with the name of the new one
    ("eg baselines", lambda n, x: tribute.explain(n, x, "expected_gradients", baselines=x[:2]), TypeError,
     r"baselines= is not accepted here: expected_gradients takes its reference distribution as references="),
    ("base", lambda n, x: tribute.explain(n, x, "smoothgrad", base="grad"), ValueError, "unknown method 'grad'"),
]


@pytest.mark.parametrize("name,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_error_and_leaves_the_model_working(name, call, exc, match, images):
    net = residual_cnns()["inplace_reused"]
    _errors_leave_model_intact(net, images, lambda: call(net, images), exc, match)


def test_a_model_returning_an_ambiguous_tuple_is_refused_with_its_fields():
    # issue 12: a tuple is a structured output; with two tensors and no output= it is ambiguous
    class Pair(nn.Module):
        def forward(self, x):
            return x.sum(1, keepdim=True), x

    with pytest.raises(ValueError, match=r"0: tensor \(2, 1\), 1: tensor \(2, 3\).*output="):
        tribute.explain(Pair(), torch.randn(2, 3), "gradient", target=0)


def test_an_integer_target_needs_class_outputs():
    class Flat(nn.Module):
        def forward(self, x):
            return x.sum(1)

    with pytest.raises(ValueError, match=r"outputs of shape \(N, classes\).*callable target"):
        tribute.explain(Flat(), torch.randn(2, 3), "gradient", target=0)
    a = tribute.explain(Flat(), torch.randn(2, 3), "gradient", target=lambda out: out)
    assert torch.equal(a, torch.ones(2, 3))
