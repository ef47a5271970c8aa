"""Rules do not depend on how a model is written, and the user's model is never changed."""

from __future__ import annotations

import pytest
import torch
from conftest import RELU_STYLES, residual_cnns
from torch.overrides import _get_current_function_mode_stack

import tribute

# cam is defined only for a global-average-pooling + linear head, which these models lack (tests/test_cam.py)
# cam needs a GAP + linear head; a method that reads a model of its own kind ('aligned') has its own tests
GENERAL_METHODS = [m for m in tribute.methods()
                   if m != "cam" and getattr(tribute.get_method(m), "requires_model", None) is None]


def options_for(method: str, x: torch.Tensor) -> dict:
    o = dict(tribute.get_method(method).example_options)
    if method in ("expected_gradients", "layer_expected_gradients", "prediction_difference"):
        o["references"] = torch.rand(5, *x.shape[1:], dtype=x.dtype, generator=torch.Generator().manual_seed(9))
    return o


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_four_ways_of_writing_relu_give_identical_attributions(method, images):
    nets = residual_cnns()
    results = {s: tribute.explain(nets[s], images, method, target=2, **options_for(method, images))
               for s in RELU_STYLES}
    for style in RELU_STYLES[1:]:
        assert torch.equal(results[style], results["modules"]), style
    assert results["modules"].abs().sum() > 0


def test_rule_methods_really_change_the_backward_pass(images):
    net = residual_cnns()["inplace_reused"]
    grad = tribute.explain(net, images, "gradient", target=2)
    for m in ("guided_backprop", "deconvnet"):
        assert (tribute.explain(net, images, m, target=2) - grad).abs().max() > 1e-4, m


def snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "modes": len(_get_current_function_mode_stack()),
    }


def assert_same(a, b):
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for k in ("requires_grad", "training", "hooks", "modes"):
        assert a[k] == b[k], k
    assert all(g is None for g in b["grads"])


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_model_untouched_after_a_call(method, images):
    net = residual_cnns()["inplace_reused"]
    before = snapshot(net)
    tribute.explain(net, images, method, target=1, **options_for(method, images))
    assert_same(before, snapshot(net))


class Boom(Exception):
    pass


@pytest.mark.parametrize("method", ["guided_backprop", "deeplift", "integrated_gradients", "smoothgrad"])
def test_model_untouched_after_an_error_inside_forward(method, images):
    net = residual_cnns()["inplace_reused"]
    calls = {"n": 0}

    def explode(module, args, out):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Boom()

    h = net.conv3.register_forward_hook(explode)
    before = snapshot(net)
    with pytest.raises(Boom):
        tribute.explain(net, images, method, target=1, **options_for(method, images))
    assert_same(before, snapshot(net))
    h.remove()
    # and the model (and the engine) still work afterwards
    a = tribute.explain(net, images, method, target=1, **options_for(method, images))
    assert torch.isfinite(a).all()
    with torch.no_grad():
        torch.testing.assert_close(net(images), residual_cnns()["modules"](images))


def test_train_mode_is_refused_and_left_as_is(images):
    net = residual_cnns()["modules"].train()
    with pytest.raises(ValueError, match=r"train mode.*bn1.*model\.eval\(\)"):
        tribute.explain(net, images, "gradient", target=0)
    assert net.training and net.bn1.training


def test_train_mode_without_mode_dependent_layers_is_fine():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).double().train()
    x = torch.randn(2, 4, dtype=torch.float64)
    a = tribute.explain(net, x, "guided_backprop", target=0)
    assert a.shape == x.shape and net.training
