"""bfloat16 and float16 inputs: every method runs, in the input's dtype, or says why it cannot.

- Per-sample streams key on a ``uint8`` view of the sample's bytes: for float32 and float64 these are the bytes
  numpy's ``tobytes`` gave (so every seeded result of those dtypes is unchanged), and bfloat16, which numpy
  lacks, works.
- Every registered method on a small CNN in bfloat16 returns bfloat16; deterministic ones agree with float64
  to bfloat16's precision, seeded ones give a sample the same attribution alone or in a batch.
- In float16 a method either agrees likewise or raises NonFiniteAttributionError naming the method and the
  dtype (ε-LRP's default ε = 1e-9 rounds to 0 in float16).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import residual_cnns
from test_model_invariance import options_for

import tribute
from tribute.attribution.perturbation.base import PerturbationMethod
from tribute.core.randomness import SampleStreams

METHODS = [m for m in tribute.methods() if m != "cam"]  # cam needs a GAP + linear head (tests/test_cam.py)
SEEDED = {"smoothgrad", "smoothgrad_squared", "vargrad", "expected_gradients", "layer_expected_gradients",
          "kernel_shap", "shapley_sampling", "lime",
          # their draws (coalitions, RISE's masks, prediction difference's references) are keyed by the sample's bytes
          # too, so a bfloat16 sample draws differently from its float64 original
          "rise", "prediction_difference"}


def numpy_seed(row: torch.Tensor, seed: int) -> int:
    """The streams' seed as first written: blake2b of numpy's bytes of the row, keyed by the seed."""
    h = hashlib.blake2b(row.numpy().tobytes(), digest_size=8, key=str(seed).encode()[:64])
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streams_of_float32_and_float64_samples_are_unchanged(dtype):
    x = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    streams = SampleStreams(x, 11)
    assert [g.initial_seed() for g in streams.generators] == [numpy_seed(x[i], 11) for i in range(3)]


def test_bfloat16_streams_hash_the_samples_bytes():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).bfloat16()
    streams = SampleStreams(x, 5)
    as_int16 = x.view(torch.int16)  # the same bytes, in a dtype numpy has
    assert [g.initial_seed() for g in streams.generators] == [numpy_seed(as_int16[i], 5) for i in range(3)]
    # a sample's stream is its own: the same sample in another batch draws the same values
    alone = SampleStreams(x[1:2], 5).draw("normal", torch.tensor([0]), (4,), dtype=torch.float64, device="cpu")
    both = streams.draw("normal", torch.tensor([1]), (4,), dtype=torch.float64, device="cpu")
    assert torch.equal(alone, both)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


@pytest.fixture(scope="module")
def reference():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return residual_cnns(dtype=torch.float64)["modules"], images


def check_method_in(dtype, method, reference):
    net64, images = reference
    net, x = residual_cnns(dtype=dtype)["modules"], images.to(dtype)
    a = tribute.explain(net, x, method, target=1, **options_for(method, x))
    assert a.dtype == dtype and torch.isfinite(a).all()
    if method in SEEDED:  # noise keyed on the bytes: compare a sample alone with its row in the batch
        alone = tribute.explain(net, x[2:3], method, target=1, **options_for(method, x))
        torch.testing.assert_close(alone, a[2:3], rtol=0.05, atol=0.05 * float(a.abs().max()))
    else:
        expected = tribute.explain(net64, images, method, target=1, **options_for(method, images))
        if issubclass(tribute.get_method(method), PerturbationMethod):
            # differences of two scores the model computed in the low precision: their error is a few units of the
            # scores' last place (eps × |S|), however small the differences themselves are
            scale = float(net64(images)[:, 1].detach().abs().max())
            assert float((a.double() - expected).abs().max()) < 4 * torch.finfo(dtype).eps * scale, method
            return
        assert relative_error(a, expected) < 0.05, method


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_in_bfloat16_and_returns_bfloat16(method, reference):
    check_method_in(torch.bfloat16, method, reference)


@pytest.mark.parametrize("method", METHODS)
def test_in_float16_a_method_agrees_or_names_the_dtype(method, reference):
    try:
        check_method_in(torch.float16, method, reference)
    except tribute.NonFiniteAttributionError as e:
        assert f"{method} produced NaN or inf" in str(e) and "in torch.float16" in str(e)
        assert method.startswith("lrp"), method  # only LRP's stabilised quotients leave float16's range here


def test_epsilon_lrp_in_float16_needs_an_epsilon_float16_can_hold(reference):
    net, images = residual_cnns(dtype=torch.float16)["modules"], reference[1].half()
    with pytest.raises(tribute.NonFiniteAttributionError, match="lrp_epsilon .* in torch.float16, whose range"):
        tribute.explain(net, images, "lrp_epsilon", target=1)  # ε = 1e-9 rounds to 0
    a = tribute.explain(net, images, "lrp_epsilon", target=1, epsilon=1e-4)
    expected = tribute.explain(reference[0], reference[1], "lrp_epsilon", target=1, epsilon=1e-4)
    assert a.dtype == torch.float16 and relative_error(a, expected) < 0.01


def test_cam_in_bfloat16_agrees_with_float32():
    torch.manual_seed(0)  # cam needs a global-average-pooling + linear head
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = tribute.explain(net, x, "cam", target=1)
    a = tribute.explain(net.to(torch.bfloat16), x.bfloat16(), "cam", target=1)
    assert a.dtype == torch.bfloat16 and relative_error(a, expected.double()) < 0.02
