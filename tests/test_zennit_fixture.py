"""The committed Zennit reference (tests/fixtures/zennit) is self-consistent and matches plain torch here.

``reference.pt`` was made by ``tests/fixtures/zennit/make_reference.py`` in a separate environment with
Zennit (see the README beside it).  These checks need no Zennit: the models rebuilt from the stored spec and
state dict give the stored logits, the stored gradient x input equals autograd's, and every stored map sums
to the stored layer sums, whose last row is the output relevance.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "zennit"
DT = torch.float64


def _load_model_module():
    spec = importlib.util.spec_from_file_location("zennit_fixture_model", FIXTURE / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


zmodel = _load_model_module()
REFERENCE = torch.load(FIXTURE / "reference.pt", weights_only=True)
MODELS = sorted(REFERENCE["models"])


def _target_logit(M):
    return M["logits"].gather(1, M["targets"][:, None])[:, 0]


def _expand(v, like):
    return v.reshape(-1, *[1] * (like.ndim - 1))


def test_fixture_metadata():
    meta = REFERENCE["metadata"]
    assert meta["zennit"] == "0.5.1"
    assert meta["dtype"] == "float64"
    assert meta["zplus_vs_alpha1_beta0_max_abs_diff"] == 0.0
    assert set(REFERENCE["models"]["cnn"]["configs"]) >= {
        "epsilon_1e-6",
        "epsilon_0.25",
        "alpha2_beta1",
        "alpha1_beta0",
        "zplus",
        "epsilon_gamma_box",
        "epsilon_plus_flat",
        "gradient_x_input",
    }


@pytest.mark.parametrize("name", MODELS)
def test_rebuilt_model_gives_stored_logits(name):
    M = REFERENCE["models"][name]
    assert M["spec"] == zmodel.SPECS[name]
    model = zmodel.build(M["spec"], M["state_dict"])
    with torch.no_grad():
        logits = model(M["inputs"])
    torch.testing.assert_close(logits, M["logits"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_gradient_x_input_matches_autograd(name):
    M = REFERENCE["models"][name]
    model = zmodel.build(M["spec"], M["state_dict"])
    x = M["inputs"].clone().requires_grad_()
    out = model(x)
    onehot = torch.nn.functional.one_hot(M["targets"], out.shape[1]).to(DT)
    (grad,) = torch.autograd.grad(out, x, onehot)
    gxi = (M["inputs"] * grad).detach()
    C = M["configs"]["gradient_x_input"]
    torch.testing.assert_close(C["relevance_onehot"], gxi, rtol=0, atol=1e-10 * gxi.abs().max().item())
    torch.testing.assert_close(C["relevance_onehot_sum"], gxi.flatten(1).sum(1), rtol=0, atol=1e-10)
    # attr_output = output * onehot: the gradient is scaled by S_c(x) per sample
    s_c = _target_logit(M)
    torch.testing.assert_close(C["relevance_sum"], s_c * gxi.flatten(1).sum(1), rtol=0, atol=1e-10)


def _lrp_configs():
    return [(m, c) for m in MODELS for c, C in REFERENCE["models"][m]["configs"].items() if c != "gradient_x_input"]


@pytest.mark.parametrize(("name", "config"), _lrp_configs())
def test_maps_sum_to_the_stored_layer_sums(name, config):
    M = REFERENCE["models"][name]
    C = M["configs"][config]
    s_c = _target_logit(M)
    for key, out_relevance in (("relevance", s_c), ("relevance_onehot", torch.ones_like(s_c))):
        sums = C[key + "_layer_sums"]
        assert sums.shape == (len(M["spec"]) + 1, M["inputs"].shape[0])
        # last row: the output relevance, S_c(x) or 1 at the target
        torch.testing.assert_close(sums[-1], out_relevance, rtol=0, atol=1e-12)
        if key in C:
            torch.testing.assert_close(C[key].flatten(1).sum(1), sums[0], rtol=0, atol=1e-12)
            assert C[key].shape == M["inputs"].shape
    # Zennit's rules are linear in the output relevance: the two variants differ by S_c(x)
    scaled_sums = C["relevance_onehot_layer_sums"] * s_c
    torch.testing.assert_close(C["relevance_layer_sums"], scaled_sums, rtol=1e-9, atol=1e-12)
    if "relevance_onehot" in C:
        scaled = C["relevance_onehot"] * _expand(s_c, C["relevance"])
        torch.testing.assert_close(scaled, C["relevance"], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", MODELS)
def test_epsilon_tiny_is_close_to_gradient_x_input(name):
    """LRP-ε with R_out = S_c·onehot is gradient × input as ε → 0 (ReLU network, Norm on average pooling)."""
    C = REFERENCE["models"][name]["configs"]
    eps = C["epsilon_1e-6"]["relevance"]
    gxi = C["gradient_x_input"]["relevance_onehot"]
    assert (eps - gxi).abs().max() < 1e-3 * gxi.abs().max()
    # ... and ε = 0.25 is not: the fixture tells the variants apart
    assert (C["epsilon_1e-6"]["relevance_layer_sums"][0] - gxi.flatten(1).sum(1)).abs().max() < 1e-3
    if "epsilon_0.25" in C:
        assert (C["epsilon_0.25"]["relevance"] - gxi).abs().max() > 0.1 * gxi.abs().max()
