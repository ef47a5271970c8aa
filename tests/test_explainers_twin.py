"""The robust twin pipeline, steps 1–2 (Zeng et al. 2021, §3.2.1–3.2.2): presets, training, resumption, the
twin's SmoothGrad store, and the experiments' data sets."""

from __future__ import annotations

import json
import math
import os
import pathlib

import pytest
import torch
from conftest import train_interrupted_and_resumed
from torch import nn

import tribute
from tribute.data import load_digits, load_opencv_digits
from tribute.data.opencv_digits import OPENCV_DIGITS_PNG, stratified_test_mask
from tribute.explainers import (
    TWIN_PRESETS,
    StepDecay,
    TwinPreset,
    load_experiment_data,
    resnet18_cifar,
    robust_twin_targets,
    train_robust_twin,
    twin_attributions,
    twin_preset,
)
from tribute.robust import adversarial_train
from tribute.store import open_store

OPENCV = pytest.mark.skipif(not OPENCV_DIGITS_PNG.exists(), reason="needs the Debian package opencv-doc")
FASHION = pytest.mark.skipif(not pathlib.Path("/usr/share/datasets/fashion-mnist").exists(),
                             reason="needs the Debian package dataset-fashion-mnist")


def small_digits(n: int = 96):
    """scikit-learn's 8×8 digits in [0, 1]: n training images and 64 test images."""
    split = load_digits(seed=0)
    return (split.train[0][:n], split.train[1][:n]), (split.test[0][:64], split.test[1][:64])


def tiny_resnet(seed: int = 0) -> nn.Module:
    """A width-2 ResNet-18 for 1×8×8 images (8 → 4 → 2 → 1), batch norm and all."""
    return resnet18_cifar(10, in_channels=1, width=2, seed=seed)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# -- step 1: the presets and the training ----------------------------------------------------------------------


def test_the_presets_values():
    cifar, gray = TWIN_PRESETS["cifar10"], TWIN_PRESETS["gray28"]
    assert (cifar.norm, cifar.eps, cifar.steps, cifar.bounds) == ("l2", 1.5, 20, (0.0, 1.0))  # Zeng et al. §4.1
    assert (cifar.lr, cifar.momentum, cifar.batch_size) == (0.1, 0.9, 256)
    # the per-pixel RMS budget of CIFAR-10's ε kept on 784 pixels: 1.5·√(784/3072) = 0.7578
    assert gray.eps == round(1.5 * math.sqrt(784 / 3072), 2) == 0.76
    assert gray.eps / math.sqrt(784) == pytest.approx(cifar.eps / math.sqrt(3072), rel=0.01)
    assert gray.norm == "l2" and gray.steps == 7 and gray.bounds == (0.0, 1.0)
    assert twin_preset("gray28", eps=0.5).eps == 0.5 and TWIN_PRESETS["gray28"].eps == 0.76  # a copy is changed


def test_step_decay_by_hand():
    lr = StepDecay(0.1, (2, 3), 0.1)
    assert [lr(e) for e in range(5)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001], rel=1e-12)


def test_twin_training_is_adversarial_train_with_the_presets_settings():
    """train_robust_twin with a preset equals adversarial_train given the preset's values by hand, bit for bit:
    ε, the steps, α = 2.5·ε/steps, bounds [0, 1], SGD with momentum 0.9, weight decay, batch size, and the decay
    ×0.1 after 50 % and 75 % of 4 epochs (epochs 2 and 3)."""
    train, test = small_digits(64)
    twin = tiny_resnet()
    h = train_robust_twin(twin, train, epochs=4, preset="gray28", steps=2, batch_size=32, seed=3, eval_data=test)
    by_hand = tiny_resnet()
    h2 = adversarial_train(by_hand, train, norm="l2", eps=0.76, steps=2, step_size=2.5 * 0.76 / 2, bounds=(0, 1),
                           epochs=4, lr=lambda e: [0.1, 0.1, 0.01, 0.001][e], optimizer="sgd", momentum=0.9,
                           weight_decay=5e-4, batch_size=32, seed=3, eval_data=test, progress=False)
    assert same_weights(twin, by_hand)
    assert h["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.001], rel=1e-12)
    assert h["robust_accuracy"] == h2["robust_accuracy"] and h["loss"] == h2["loss"]
    assert not twin.training


def test_a_killed_twin_training_resumes_to_the_uninterrupted_weights(tmp_path):
    train, _ = small_digits(64)
    kw = {"epochs": 3, "steps": 2, "batch_size": 32, "seed": 1}
    path = train_interrupted_and_resumed(lambda model, **o: train_robust_twin(model, train, **o), tiny_resnet,
                                         tmp_path, **kw)  # batch-norm statistics included
    with pytest.raises(ValueError, match="config.eps"):  # another ε does not resume this run
        train_robust_twin(tiny_resnet(), train, checkpoint=path, **{**kw, "eps": 0.5})
    # more epochs move the decay's milestones (×0.1 after 50 % and 75 %): not the schedule the epochs done had
    with pytest.raises(ValueError, match="another learning-rate schedule"):
        train_robust_twin(tiny_resnet(), train, checkpoint=path, **{**kw, "epochs": 6})


@pytest.mark.parametrize("kwargs,error,match", [
    ({"preset": "mnist"}, ValueError, r"unknown twin preset 'mnist'; the presets are 'cifar10', 'gray28'"),
    ({"preset": 3}, TypeError, "preset must be a preset's name or a TwinPreset"),
    ({"eps": 0.0}, ValueError, "eps must be > 0"),
    ({"eps": -1.0}, ValueError, "eps must be > 0"),
    ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
    ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
    ({"optimiser": "adam"}, TypeError, "optimiser"),
    ({"lr_milestones": (0.5, 2.0)}, ValueError, "lr_milestones must be fractions of the epochs"),
    ({"lr_gamma": 0.0}, ValueError, r"lr_gamma in \(0, 1\]"),
])
def test_bad_settings_are_refused(kwargs, error, match):
    train, _ = small_digits(8)
    with pytest.raises(error, match=match):
        train_robust_twin(tiny_resnet(), train, **{"epochs": 1, **kwargs})


def test_images_outside_the_presets_range_are_refused_before_training():
    (x, y), _ = small_digits(8)
    model = tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"span \[0, 255\] but the gray28 preset's attack assumes images in \[0, 1\]"):
        train_robust_twin(model, (x * 255, y), epochs=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="given preset"):
        train_robust_twin(model, (x - 0.5, y), epochs=1, preset=TwinPreset(eps=1.0, steps=1))
    with pytest.raises(TypeError, match="wide is not a preset field"):
        twin_preset("cifar10", wide=1)


# -- step 2: the twin's SmoothGrad store -----------------------------------------------------------------------


def test_a_linear_twins_smoothgrad_is_its_weight_row_of_each_label(tmp_path):
    """f(x) = Wx + b has ∂f_c/∂x = W_c at every point, so SmoothGrad over any noise is W_c exactly."""
    torch.manual_seed(0)
    twin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    x, y = torch.rand(10, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 1])
    store = twin_attributions(twin, (x, y), tmp_path / "sg", samples=5, chunk_size=4)
    expected = twin[1].weight.detach()[y].reshape(10, 1, 4, 4)
    torch.testing.assert_close(store.attributions(), expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(store.targets(), y)


def test_the_store_holds_smoothgrad_of_each_label_as_the_method_gives_it(tmp_path):
    (x, y), _ = small_digits(20)
    twin = tiny_resnet().double()
    x = x.double()
    store = twin_attributions(twin, (x, y), tmp_path / "sg", samples=6, noise_level=0.2, seed=4, chunk_size=8)
    direct = tribute.explain(twin, x, "smoothgrad", target=y, samples=6, noise_level=0.2, seed=4)
    torch.testing.assert_close(store.attributions(), direct, rtol=1e-9, atol=1e-12)
    one = tribute.explain(twin, x[13:14], "smoothgrad", target=y[13:14], samples=6, noise_level=0.2, seed=4)
    torch.testing.assert_close(store[13:14], one, rtol=1e-9, atol=1e-12)  # a sample alone: the same map
    assert store.attributions().shape == (20, 1, 8, 8) and torch.equal(store.targets(), y)
    manifest = json.loads((tmp_path / "sg" / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert manifest["method"]["name"] == "smoothgrad" and '"samples": 6' in text and '"noise_level": 0.2' in text


def test_the_default_settings_are_the_papers_samples_and_smilkovs_sigma(tmp_path):
    (x, y), _ = small_digits(4)
    twin_attributions(tiny_resnet(), (x, y), tmp_path / "sg", chunk_size=4)
    text = (tmp_path / "sg" / "manifest.json").read_text()
    assert '"samples": 50' in text and '"noise_level": 0.15' in text and '"seed": 0' in text


def test_a_rerun_resumes_computing_only_the_missing_shards(tmp_path):
    (x, y), _ = small_digits(20)
    twin, out = tiny_resnet(), tmp_path / "sg"
    first = twin_attributions(twin, (x, y), out, samples=3, chunk_size=8).attributions()
    os.unlink(out / "shards" / "shard-00001.safetensors")  # as if killed before this shard was written
    again = twin_attributions(twin, (x, y), out, samples=3, chunk_size=8)
    assert torch.equal(again.attributions(), first)
    runs = open_store(out).run_log["runs"]
    assert len(runs) == 2 and [s["status"] for s in runs[-1]["shards"]] == ["kept", "computed", "kept"]


def test_bad_store_input_is_refused(tmp_path):
    (x, y), _ = small_digits(4)
    twin = tiny_resnet()
    with pytest.raises(TypeError, match=r"explains each image's label: give data as \(images, labels\)"):
        twin_attributions(twin, x, tmp_path / "a")
    with pytest.raises(ValueError, match="noise_level must be > 0"):
        twin_attributions(twin, (x, y), tmp_path / "b", noise_level=0)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        twin_attributions(twin, (x, y), tmp_path / "c", samples=0)
    with pytest.raises(ValueError, match="the twin is in training mode"):
        twin_attributions(twin.train(), (x, y), tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")  # refused before anything is written


# -- steps 1–2 in one call ------------------------------------------------------------------------------------


def test_the_pipeline_killed_in_either_step_ends_as_an_uninterrupted_run(tmp_path):
    train, _ = small_digits(40)
    kw = {"epochs": 2, "steps": 1, "batch_size": 20, "seed": 2, "samples": 3, "chunk_size": 16}
    straight = robust_twin_targets(tiny_resnet(), train, tmp_path / "a", **kw)

    def stop_after_first_epoch(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):  # killed in step 1
        robust_twin_targets(tiny_resnet(), train, tmp_path / "b", log=stop_after_first_epoch, **kw)
    assert not (tmp_path / "b" / "twin_smoothgrad").exists()
    resumed = robust_twin_targets(tiny_resnet(seed=5), train, tmp_path / "b", **kw)
    assert same_weights(straight.twin, resumed.twin)
    assert torch.equal(straight.store.attributions(), resumed.store.attributions())
    os.unlink(tmp_path / "b" / "twin_smoothgrad" / "shards" / "shard-00002.safetensors")  # killed in step 2
    again = robust_twin_targets(tiny_resnet(seed=6), train, tmp_path / "b", **kw)
    assert same_weights(straight.twin, again.twin)  # the finished training is loaded, not repeated
    assert [r["epoch"] for r in again.history.records] == [1, 2]
    assert torch.equal(straight.store.attributions(), again.store.attributions())
    runs = again.store.run_log["runs"]
    assert [s["status"] for s in runs[-1]["shards"]] == ["kept", "kept", "computed"]


# -- the experiments' data sets --------------------------------------------------------------------------------


@OPENCV
def test_opencv_digits_are_the_png_cells_padded_with_their_labels():
    import numpy as np
    from PIL import Image

    split = load_opencv_digits(seed=3, pad=0)
    (xt, yt), (xs, ys) = split
    assert xt.shape == (4000, 1, 20, 20) and xs.shape == (1000, 1, 20, 20)
    assert torch.bincount(yt).tolist() == [400] * 10 and torch.bincount(ys).tolist() == [100] * 10
    labels = torch.arange(10).repeat_interleave(500)
    mask = stratified_test_mask(labels, 0.2, 3)
    full = torch.empty(5000, 1, 20, 20)
    full[~mask], full[mask] = xt, xs
    assert torch.equal(labels[~mask], yt) and torch.equal(labels[mask], ys)
    with Image.open(OPENCV_DIGITS_PNG) as im:
        png = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float64))
    assert png.shape == (1000, 2000)
    # cell k is grid row k // 100, column k % 100; the label is the grid row // 5
    for k in (0, 99, 100, 777, 2501, 4999):
        r, c = divmod(k, 100)
        assert torch.equal(full[k, 0], (png[20 * r:20 * r + 20, 20 * c:20 * c + 20] / 255).float())
        assert labels[k] == r // 5
    padded = load_opencv_digits(seed=3)
    assert padded.train[0].shape == (4000, 1, 28, 28)
    assert torch.equal(padded.train[0][:, :, 4:24, 4:24], xt)
    border = padded.train[0].clone()
    border[:, :, 4:24, 4:24] = 0
    assert float(border.abs().max()) == 0.0


@OPENCV
def test_the_split_is_seeded():
    a, b, c = load_opencv_digits(seed=1), load_opencv_digits(seed=1), load_opencv_digits(seed=2)
    assert torch.equal(a.test[0], b.test[0]) and not torch.equal(a.test[0], c.test[0])


def test_missing_or_wrong_digits_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Debian package opencv-doc"):
        load_opencv_digits(path=tmp_path / "digits.png")
    pil = pytest.importorskip("PIL.Image")
    pil.new("L", (40, 20)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="a 40×20 image; OpenCV's digits.png is 2000×1000"):
        load_opencv_digits(path=tmp_path / "small.png")
    with pytest.raises(ValueError, match="test_fraction must be in"):
        load_opencv_digits(test_fraction=1.0)


@OPENCV
def test_experiment_subsets_are_seeded_in_order_and_in_range():
    full = load_experiment_data("opencv-digits", seed=5)
    sub = load_experiment_data("opencv-digits", seed=5, train_size=300, test_size=50)
    assert sub.train[0].shape == (300, 1, 28, 28) and sub.test[0].shape == (50, 1, 28, 28)
    assert 0 <= float(sub.train[0].min()) and float(sub.train[0].max()) <= 1
    # each kept image is one of the full set's, in the full set's order
    pos = [int((full.train[0] == img).flatten(1).all(1).nonzero()[0]) for img in sub.train[0][:20]]
    assert pos == sorted(pos) and torch.equal(full.train[1][pos], sub.train[1][:20])
    again = load_experiment_data("opencv-digits", seed=5, train_size=300, test_size=50)
    assert torch.equal(sub.train[0], again.train[0]) and torch.equal(sub.test[1], again.test[1])


@FASHION
def test_fashion_mnist_is_its_own_split_in_the_unit_range():
    split = load_experiment_data("fashion-mnist", train_size=100, test_size=10)
    assert split.train[0].shape == (100, 1, 28, 28) and split.test[0].shape == (10, 1, 28, 28)
    assert 0 <= float(split.train[0].min()) and float(split.train[0].max()) <= 1


def test_bad_experiment_data_arguments():
    with pytest.raises(ValueError, match="unknown experiment data set 'cifar10'"):
        load_experiment_data("cifar10")
    if OPENCV_DIGITS_PNG.exists():
        with pytest.raises(ValueError, match=r"train_size must be an integer in \[1, 4000\]"):
            load_experiment_data("opencv-digits", train_size=5000)


# -- at a real scale (slow: run with -m slow) ------------------------------------------------------------------


@pytest.mark.slow
@OPENCV
def test_the_gray28_twin_is_more_robust_than_the_same_network_trained_clean():
    """On 1,000 OpenCV digits, 4 epochs each: under PGD-L2 at the preset's ε = 0.76 (20 steps) the twin keeps a
    higher accuracy on 300 held-out digits than the same width-8 ResNet-18 trained on clean images, by at least
    0.15; both learn (clean accuracy > 0.6)."""
    from tribute.robust import pgd
    from tribute.training import accuracy, fit

    data = load_experiment_data("opencv-digits", seed=0, train_size=1000, test_size=300)
    twin, clean = (resnet18_cifar(10, in_channels=1, width=8, seed=0) for _ in range(2))
    train_robust_twin(twin, data.train, epochs=4, batch_size=64)
    fit(clean, data.train, epochs=4, lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=64, progress=False)

    def attack(m, x, y):
        return pgd(m, x, y, norm="l2", eps=0.76, steps=20, step_size=2.5 * 0.76 / 20, bounds=(0, 1), seed=0)
    robust = {name: accuracy(m, data.test, perturb=attack) for name, m in (("twin", twin), ("clean", clean))}
    plain = {name: accuracy(m, data.test) for name, m in (("twin", twin), ("clean", clean))}
    assert min(plain.values()) > 0.6, plain
    assert robust["twin"] > robust["clean"] + 0.15, (robust, plain)
