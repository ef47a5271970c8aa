"""A trained model: the committed Fashion-MNIST CNN (tests/fixtures/fashion) and class sensitivity on it.

``cnn.pt`` and ``samples.pt`` were written once by ``tests/fixtures/fashion/train.py`` (seeded, from the
Debian package ``dataset-fashion-mnist``); nothing here trains or reads the data set, except one check that
runs only where the package is installed.

The class-sensitivity checks follow Nielsen et al. 2022, Fig 3: for each stored image, the Spearman rank correlation
between the map for the true class and the map for another class.  A method whose maps hardly change with
the class (guided backpropagation: its rectified backward pass reconstructs the image, Nie et al. 2018;
Adebayo et al. 2018) gives ρ near 1; a class-sensitive one (the plain gradient, gradient × input,
Grad-CAM) gives ρ near 0.  Every image is compared with all 9 other classes (64 × 9 = 576 pairs).

Measured on the committed fixture (torch 2.13.0, float32; float64 gives the same to 3 decimals).  ρ over
the 576 pairs, and the per-image mean of ρ over the 9 other classes:

=================  =======  =====  ======  ======  ==================
method             mean ρ   sd     min     max     per-image mean
=================  =======  =====  ======  ======  ==================
guided_backprop     0.837   0.053   0.648   0.972   0.728 … 0.901
gradient           −0.104   0.209  −0.714   0.475  −0.218 … −0.004
input_x_gradient   −0.094   0.220  −0.687   0.515  −0.180 … 0.007
gradcam            −0.042   0.306  −0.804   0.727  −0.183 … 0.122
=================  =======  =====  ======  ======  ==================

ρ(guided_backprop) > ρ(other method) in all 576 pairs for each of the other three; the smallest per-image
gap in mean ρ is 0.844 (gradient), 0.797 (gradient × input), 0.693 (Grad-CAM).  The thresholds below
leave a margin of about 0.1 or more against these numbers.  ``python tests/test_trained_fixture.py``
prints the table again (re-measure after retraining the fixture or changing a method).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib
import struct
import sys

import pytest
import torch

import tribute

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "fashion"
DATA_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
CLASSES = 10


def _module(name: str, file: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURE / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fashion = _module("fashion_fixture_model", "model.py")

# -- thresholds (measured values in the module doc) ------------------------------------------------------------
SAMPLE_ACCURACY_MIN = 0.85  # measured 61/64 = 0.953
INSENSITIVE_MEAN_MIN = 0.75  # guided backprop: mean ρ 0.837
INSENSITIVE_IMAGE_MIN = 0.60  # guided backprop: smallest per-image mean ρ 0.728
SENSITIVE_MEAN_MAX = 0.15  # gradient −0.104, gradient × input −0.094, Grad-CAM −0.042
SENSITIVE_IMAGE_MAX = 0.35  # largest per-image mean ρ: −0.004, 0.007, 0.122
GAP_IMAGE_MIN = 0.45  # smallest per-image mean of ρ(GBP) − ρ(method): 0.844, 0.797, 0.693
GBP_WINS_MIN = 0.95  # fraction of the 576 pairs with ρ(GBP) > ρ(method): 1.0 for each


# -- Spearman rank correlation, in torch ----------------------------------------------------------------------
def ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties given their average rank (as in Spearman's ρ with ties)."""
    _, inverse, counts = torch.unique(v, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    last = counts.cumsum(0)  # the rank of the last member of each group of equal values
    return (last - (counts - 1) / 2)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's ρ between a[i] and b[i] for each row i (flattened): Pearson's r of the average ranks.

    NaN for a row where either map is constant (no ranking to compare).
    """
    out = []
    for u, v in zip(a.detach().flatten(1), b.detach().flatten(1), strict=True):
        ru, rv = ranks(u), ranks(v)
        ru, rv = ru - ru.mean(), rv - rv.mean()
        norm = ru.norm() * rv.norm()
        out.append(ru @ rv / norm if norm > 0 else torch.tensor(float("nan"), dtype=torch.float64))
    return torch.stack(out)


# -- the fixture -----------------------------------------------------------------------------------------------
@functools.cache
def model_and_samples():
    return fashion.load(), *fashion.samples()


OPTIONS = {"gradcam": {"layer": "features"}}


@functools.cache
def class_correlations(method: str) -> torch.Tensor:
    """(64, 9): ρ between the method's map for the true class y and for the class (y + k) mod 10, k = 1 … 9."""
    model, images, labels = model_and_samples()
    options = OPTIONS.get(method, {})
    true_maps = tribute.explain(model, images, method, target=labels, **options)
    columns = []
    for k in range(1, CLASSES):
        other_maps = tribute.explain(model, images, method, target=(labels + k) % CLASSES, **options)
        columns.append(spearman(true_maps, other_maps))
    return torch.stack(columns, dim=1)


def measure(methods=("guided_backprop", "gradient", "input_x_gradient", "gradcam")) -> str:
    """The table of the module doc, for the methods registered now."""
    lines = [f"{'method':18s} {'mean':>7s} {'sd':>6s} {'min':>7s} {'max':>7s}   per-image mean   gap to GBP (min)"]
    gbp = class_correlations("guided_backprop")
    for method in methods:
        if method not in tribute.methods():
            lines.append(f"{method:18s} (not registered)")
            continue
        r = class_correlations(method)
        image = r.mean(dim=1)
        gap = (gbp - r).mean(dim=1).min()
        lines.append(
            f"{method:18s} {r.mean():7.3f} {r.std():6.3f} {r.min():7.3f} {r.max():7.3f}   "
            f"{image.min():6.3f} … {image.max():6.3f}   {gap:6.3f}, GBP higher in {(gbp > r).float().mean():.3f}"
        )
    return "\n".join(lines)


# -- the fixture files -----------------------------------------------------------------------------------------
def test_weights_are_small_float32_state_dict():
    state = torch.load(FIXTURE / "cnn.pt", map_location="cpu", weights_only=True)
    assert (FIXTURE / "cnn.pt").stat().st_size < 200_000
    assert (FIXTURE / "samples.pt").stat().st_size < 200_000
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert floats and all(v.dtype == torch.float32 for v in floats.values())
    assert set(state) == set(fashion.FashionCNN().state_dict())


def test_samples_are_balanced_images_in_unit_range():
    model, images, labels = model_and_samples()
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert torch.bincount(labels, minlength=CLASSES).tolist() == [7] * 4 + [6] * 6
    meta = fashion.metadata()
    assert len(set(meta["test_indices"].tolist())) == 64


def test_model_is_in_eval_mode_with_last_feature_map_7x7():
    model, images, _ = model_and_samples()
    assert not model.training and not any(m.training for m in model.modules())
    with torch.no_grad():
        assert model.features(images[:2]).shape == (2, 32, 7, 7)


def test_model_reproduces_stored_logits():
    """The loader and the architecture in model.py are the ones train.py saved the logits with."""
    model, images, _ = model_and_samples()
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(logits, fashion.metadata()["logits"], rtol=1e-4, atol=1e-4)


def test_accuracy_on_held_out_samples():
    model, images, labels = model_and_samples()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).double().mean().item()
    assert accuracy >= SAMPLE_ACCURACY_MIN, accuracy
    assert fashion.metadata()["test_accuracy"] > 0.85  # recorded by train.py on all 10000 test images


# -- the idx reader of train.py --------------------------------------------------------------------------------
def _idx_bytes(code: int, fmt: str, values: list, shape: tuple[int, ...]) -> bytes:
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + struct.pack(
        f">{len(values)}{fmt}", *values
    )


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_big_endian_plain_and_gzipped(tmp_path, gz):
    train = _module("fashion_fixture_train", "train.py")
    cases = {
        "u8": (0x08, "B", list(range(24)), (2, 3, 4), torch.uint8),
        "i32": (0x0C, "i", [1, -2, 70000, -(2**31)], (4,), torch.int32),
        "f32": (0x0D, "f", [0.5, -1.25, 3.0, 1e-3, 2.0, -7.5], (3, 2), torch.float32),
    }
    for name, (code, fmt, values, shape, dtype) in cases.items():
        raw = _idx_bytes(code, fmt, values, shape)
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        got = train.read_idx(path)
        assert got.dtype == dtype and got.shape == shape
        assert torch.equal(got, torch.tensor(values, dtype=dtype).reshape(shape))
    (tmp_path / "bad").write_bytes(_idx_bytes(0x08, "B", [1], (1,))[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        train.read_idx(tmp_path / "bad")


@pytest.mark.skipif(not DATA_DIR.exists(), reason="needs the Debian package dataset-fashion-mnist")
def test_samples_are_the_recorded_test_set_images():
    train = _module("fashion_fixture_train", "train.py")
    test_x, test_y = train.load_split(DATA_DIR, "t10k")
    assert test_x.shape == (10000, 28, 28)
    stored = torch.load(FIXTURE / "samples.pt", map_location="cpu", weights_only=True)
    idx = stored["test_indices"]
    assert torch.equal(stored["images"], test_x[idx]) and torch.equal(stored["labels"], test_y[idx])


# -- Spearman's ρ ----------------------------------------------------------------------------------------------
def test_spearman_hand_worked_values():
    # ranks with ties: [1, 2.5, 2.5, 4] and [1, 3, 2, 4]; centred dot product 4.5, norms √4.5 · √5: ρ = 3/√10
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 3.0, 2.0, 4.0]])
    assert ranks(a[0]).tolist() == [1.0, 2.5, 2.5, 4.0]
    torch.testing.assert_close(spearman(a, b), torch.tensor([3 / 10**0.5], dtype=torch.float64))
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(spearman(x, x.pow(3) + 5 * x), torch.ones(3, dtype=torch.float64))  # monotone
    torch.testing.assert_close(spearman(x, -x.exp()), -torch.ones(3, dtype=torch.float64))
    assert spearman(x[:1], torch.zeros(1, 50)).isnan().all()


# -- class sensitivity (Nielsen et al. 2022, Fig 3) --------------------------------------------------------
def test_guided_backprop_maps_barely_depend_on_the_class():
    r = class_correlations("guided_backprop")
    assert r.shape == (64, CLASSES - 1) and r.isfinite().all()
    assert r.mean() >= INSENSITIVE_MEAN_MIN, measure()
    assert r.mean(dim=1).min() >= INSENSITIVE_IMAGE_MIN, measure()


def _check_class_sensitive(method: str) -> None:
    r = class_correlations(method)
    gbp = class_correlations("guided_backprop")
    assert r.shape == (64, CLASSES - 1) and r.isfinite().all()
    assert r.mean() <= SENSITIVE_MEAN_MAX, measure()
    assert r.mean(dim=1).max() <= SENSITIVE_IMAGE_MAX, measure()
    assert (gbp - r).mean(dim=1).min() >= GAP_IMAGE_MIN, measure()
    assert (gbp > r).double().mean() >= GBP_WINS_MIN, measure()


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_gradient_maps_change_with_the_class_unlike_guided_backprop(method):
    _check_class_sensitive(method)


@pytest.mark.skipif("gradcam" not in tribute.methods(), reason="Grad-CAM is not registered in tribute yet")
def test_gradcam_maps_change_with_the_class_unlike_guided_backprop():
    _check_class_sensitive("gradcam")


@pytest.mark.skipif("gradcam" not in tribute.methods(), reason="Grad-CAM is not registered in tribute yet")
def test_gradcam_on_the_trained_model_is_relu_of_class_weighted_feature_maps():
    """Global average pooling + Linear head: ∂S_c/∂A_kij = W_ck/49, so Grad-CAM = ReLU(Σ_k W_ck A_k / 49).

    This is why its maps are class-sensitive here: two classes weigh the same 32 feature maps differently.
    """
    model, images, labels = model_and_samples()
    got = tribute.explain(model, images, "gradcam", target=labels, layer="features", upsample=False)
    with torch.no_grad():
        a = model.features(images)
        w = model.classifier.weight[labels][:, :, None, None] / (a.shape[-1] * a.shape[-2])
        expected = (w * a).sum(1, keepdim=True).clamp(min=0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(measure())
