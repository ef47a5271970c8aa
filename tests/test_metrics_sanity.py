"""Sanity checks (Adebayo et al. 2018) and class sensitivity (Nielsen et al. 2022, Fig 3).

Adebayo's finding on the committed Fashion-MNIST CNN (tests/fixtures/fashion, all 64 stored images, their true
labels as targets, seed 0; torch 2.13.0, float32).  Cascading randomisation, top layer first; mean over the
64 images of the Spearman ρ between the trained model's map and the randomised model's map:

=============  ==========  ================  ===========================
randomised to  gradient    guided backprop   images with ρ(GBP) > ρ(grad)
=============  ==========  ================  ===========================
classifier     −0.026      0.875             64 / 64
features.7     −0.025      0.876             64 / 64
features.6     −0.033      0.788             64 / 64
features.4     −0.020      0.732             64 / 64
features.3     −0.015      0.595             64 / 64
features.1     −0.017      0.545             64 / 64
features.0     −0.004      0.188             62 / 64
=============  ==========  ================  ===========================

SSIM (maps scaled to [0, 1]) tells the same: gradient 0.006 … 0.042, guided backprop 0.811 … 0.367 and 0.079
once the first convolution is random too.  The gradient loses its structure as soon as the classifier is
random; guided backpropagation keeps most of it until the first layers go (its rectified backward pass
reconstructs the image, whatever the weights above).

Label randomisation on scikit-learn's 8 × 8 digits (an MLP 64-128-64-10 trained by tribute.training.fit,
30 epochs of Adam, 1400 training images, 0.969 accuracy on 64 held-out images, whose gradient maps are
compared): the model trained on permuted labels gives ρ = −0.018 ± 0.103 with the true-label model's maps,
a model retrained from a fresh initialisation on the true labels 0.886 ± 0.055 (higher for every one of the
64 images).  The permuted-label model reaches 0.40 training accuracy: 30 epochs memorise only part of the
noise.  ``pytest -m slow`` runs the paper's protocol, a permuted-label model that fits its labels (99.9 %),
with the same conclusion (numbers in that test's docstring).

Class sensitivity reproduces tests/test_trained_fixture.py: mean ρ 0.837 for guided backprop, −0.104 for the
gradient over the 64 × 9 (image, other class) pairs.
"""

from __future__ import annotations

import functools
import importlib
import json
import math

import pytest
import scipy.stats
import torch
from conftest import fixture_module
from torch import nn

import tribute
from tribute.metrics import similarity
from tribute.metrics.class_sensitivity import class_sensitivity, other_classes
from tribute.metrics.sanity import (
    label_randomisation,
    layer_generator,
    parameter_layers,
    parameter_randomisation,
    randomisation_steps,
    randomised_copy,
    reinitialise,
    unit_range,
)

fashion = fixture_module("fashion")

# -- thresholds (measured values in the module doc) ------------------------------------------------------------
GRADIENT_RHO_MAX = 0.10  # |mean ρ| of the gradient at every step: measured ≤ 0.033
GBP_RHO_MIN = 0.40  # guided backprop before the first layer goes: measured ≥ 0.545
GAP_MIN = 0.40  # mean ρ(GBP) − ρ(gradient) before the last step: measured ≥ 0.56
GAP_LAST_MIN = 0.08  # at full randomisation: measured 0.19
GBP_WINS_MIN = 0.90  # fraction of images with ρ(GBP) > ρ(gradient) at each step: measured ≥ 0.969
LABELS_PERMUTED_MAX = 0.25  # digits: gradient ρ with the permuted-label model, measured −0.018
LABELS_CONTROL_MIN = 0.70  # digits: gradient ρ with the true-label retrained model, measured 0.886


@functools.cache
def fixture():
    model = fashion.load()
    images, labels = fashion.samples()
    return model, images, labels


@functools.cache
def cascading(method: str):
    model, images, labels = fixture()
    return parameter_randomisation(model, images, method, labels)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model: nn.Module, reference: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, reference[k])}


def own_keys(model: nn.Module, layer: str) -> set[str]:
    return {f"{layer}.{n}" for n, _ in model.get_submodule(layer).named_parameters(recurse=False)}


# -- Adebayo's finding -----------------------------------------------------------------------------------------
def test_cascading_randomisation_drives_gradient_to_zero_but_not_guided_backprop():
    grad, gbp = cascading("gradient"), cascading("guided_backprop")
    model, images, _ = fixture()
    top_first = parameter_layers(model, images)[::-1]
    assert grad.steps == gbp.steps == tuple(top_first)
    assert grad.steps == ("classifier", "features.7", "features.6", "features.4", "features.3", "features.1",
                          "features.0")
    assert grad.similarities == ("spearman", "spearman_abs", "ssim", "hog")
    assert grad.scores.shape == (4, 7, 64) and grad.scores.isfinite().all() and gbp.scores.isfinite().all()
    summary = f"\n{grad}\n{gbp}"
    assert grad.curve("spearman").abs().max() <= GRADIENT_RHO_MAX, summary
    assert gbp.curve("spearman")[:-1].min() >= GBP_RHO_MIN, summary
    gap = gbp["spearman"] - grad["spearman"]  # (steps, images)
    assert gap.mean(1)[:-1].min() >= GAP_MIN, summary
    assert gap.mean(1)[-1] >= GAP_LAST_MIN, summary
    assert (gap > 0).double().mean(1).min() >= GBP_WINS_MIN, summary
    # SSIM agrees: the gradient's structure is gone from the first step, guided backprop's is not
    assert grad.curve("ssim").abs().max() <= GRADIENT_RHO_MAX, summary
    assert gbp.curve("ssim")[:-1].min() >= 0.3, summary


def test_the_curves_are_the_similarity_functions_of_the_maps():
    """Each row is similarity.<measure>(trained map, randomised map), recomputed here from the steps."""
    model, images, labels = fixture()
    x, y = images[:8], labels[:8]
    result = parameter_randomisation(model, x, "gradient", y, mode="independent", layers=["features.3", "classifier"])
    original = tribute.explain(model, x, "gradient", target=y)
    for k, (name, randomised) in enumerate(randomisation_steps(model, x, mode="independent",
                                                               layers=["features.3", "classifier"])):
        assert name == result.steps[k]
        maps = tribute.explain(randomised, x, "gradient", target=y)
        expected = {
            "spearman": similarity.spearman(original, maps),
            "spearman_abs": similarity.spearman(original, maps, absolute=True),
            "ssim": similarity.ssim(unit_range(original), unit_range(maps), data_range=1.0),
            "hog": similarity.hog_similarity(original, maps),
        }
        for s, values in expected.items():
            torch.testing.assert_close(result[s][k], values.double(), rtol=0, atol=1e-12)


def test_reduce_chooses_between_channel_maps_and_every_channel_as_a_feature(cnns, images):
    net = cnns["modules"]
    target = torch.tensor([0, 1, 2, 3])
    per_channel = parameter_randomisation(net, images, "gradient", target, reduce=None, layers=["fc"])
    summed = parameter_randomisation(net, images, "gradient", target, layers=["fc"])
    assert per_channel.similarities == summed.similarities == ("spearman", "spearman_abs")  # 8 × 8 maps
    original = tribute.explain(net, images, "gradient", target=target)
    randomised = tribute.explain(randomised_copy(net, ["fc"]), images, "gradient", target=target)
    torch.testing.assert_close(per_channel["spearman"][0], similarity.spearman(original, randomised))
    torch.testing.assert_close(summed["spearman_abs"][0],
                               similarity.spearman(original.sum(1), randomised.sum(1), absolute=True))
    with pytest.raises(ValueError, match="reduce must be None or one of"):
        parameter_randomisation(net, images, "gradient", target, reduce="mean")


def test_linear_model_against_scipy():
    """f(x) = W x + b: the gradient for class c is W_c whatever x, so after re-initialising the layer every
    sample's ρ is scipy's Spearman ρ between the rows W_c and W̃_c of the old and new weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).double().eval()
    x = torch.rand(6, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    result = parameter_randomisation(model, x, "gradient", y, similarities=("spearman", "spearman_abs"), seed=7)
    assert result.steps == ("1",)
    new = randomised_copy(model, ["1"], seed=7)[1].weight.detach()
    old = model[1].weight.detach()
    for i, c in enumerate(y.tolist()):
        rho = scipy.stats.spearmanr(old[c].numpy(), new[c].numpy()).statistic
        rho_abs = scipy.stats.spearmanr(old[c].abs().numpy(), new[c].abs().numpy()).statistic
        assert math.isclose(result["spearman"][0, i].item(), rho, abs_tol=1e-12)
        assert math.isclose(result["spearman_abs"][0, i].item(), rho_abs, abs_tol=1e-12)


def test_randomising_a_layer_the_output_does_not_use_leaves_the_maps_identical():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Linear(3, 3)  # registered first, never called
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.head = nn.Linear(2 * 16 * 16, 3)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    assert parameter_layers(net, x) == ["conv", "head"]
    result = parameter_randomisation(net, x, "gradient", 0, layers=["unused"])
    torch.testing.assert_close(result.scores, torch.ones(4, 1, 3, dtype=torch.float64), rtol=0, atol=1e-12)


# -- what is randomised ----------------------------------------------------------------------------------------
def test_independent_randomisation_changes_exactly_one_layer_and_cascading_accumulates():
    model, images, _ = fixture()
    reference = state(model)
    layers = parameter_layers(model, images)[::-1]
    values = {}
    for name, randomised in randomisation_steps(model, images[:1], mode="independent"):
        assert changed(randomised, reference) == own_keys(model, name), name
        values[name] = {k: v.clone() for k, v in randomised.get_submodule(name).state_dict().items()}
    assert list(values) == layers
    expected: set[str] = set()
    for k, (name, randomised) in enumerate(randomisation_steps(model, images[:1], mode="cascading")):
        expected |= own_keys(model, name)
        assert name == layers[k] and changed(randomised, reference) == expected, name
        # a layer's new values depend on the seed and its name only, not on the other layers
        for key, v in randomised.get_submodule(name).state_dict().items():
            assert torch.equal(v, values[name][key])
    assert expected == {k for k, v in model.named_parameters()}  # every parameter, no buffer
    assert changed(model, reference) == set()


def test_a_block_name_randomises_every_layer_inside_it_in_one_step():
    model, images, _ = fixture()
    reference = state(model)
    steps = list(randomisation_steps(model, images[:1], layers=["features", "classifier"]))
    assert [name for name, _ in steps] == ["features", "classifier"]
    net = randomised_copy(model, ["features"])
    assert changed(net, reference) == {k for k in reference if k.startswith("features.") and "running" not in k
                                       and "num_batches" not in k}
    assert changed(randomised_copy(model, [""]), reference) == {k for k, _ in model.named_parameters()}


def test_reinitialisation_draws_pytorch_default_distributions_from_its_own_generator():
    linear, conv = nn.Linear(400, 300), nn.Conv2d(16, 40, 5)
    bn, emb, prelu = nn.BatchNorm2d(8), nn.Embedding(500, 40), nn.PReLU(6)
    with torch.no_grad():
        bn.weight.fill_(2.5), bn.bias.fill_(-1.5), bn.running_mean.fill_(5)
    global_state = torch.random.get_rng_state()
    for name, module in (("linear", linear), ("conv", conv), ("bn", bn), ("emb", emb), ("prelu", prelu)):
        reinitialise(name, module, layer_generator(0, name))
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the global generator was not used
    for module, fan_in in ((linear, 400), (conv, 16 * 25)):
        bound = 1 / math.sqrt(fan_in)
        for p in (module.weight, module.bias):
            v = p.detach().flatten().double().numpy()
            assert abs(v).max() <= bound
            # Kolmogorov–Smirnov against U(−1/√fan_in, 1/√fan_in), PyTorch's default for these layers
            assert scipy.stats.kstest(v, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3
    assert scipy.stats.kstest(emb.weight.detach().flatten().numpy(), "norm").pvalue > 1e-3
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    assert torch.equal(bn.running_mean, torch.full((8,), 5.0))  # statistics are buffers: kept
    assert torch.equal(prelu.weight, torch.full((6,), 0.25))
    # seeded: the same seed and name give the same values, another seed or name others
    a, b, c = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5)
    reinitialise("x", a, layer_generator(3, "x"))
    reinitialise("x", b, layer_generator(3, "x"))
    reinitialise("x", c, layer_generator(4, "x"))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert layer_generator(3, "x").initial_seed() != layer_generator(3, "y").initial_seed()


def test_reinitialisation_refuses_a_module_without_default_scale_and_takes_a_custom_init():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.gain

    net = nn.Sequential(nn.Linear(4, 3), Scale()).eval()
    x = torch.rand(2, 4)
    with pytest.raises(ValueError, match=r"layer '1' \(Scale\).*no weight matrix.*init="):
        parameter_randomisation(net, x, "gradient", 0)

    def init(name, module, generator):
        for p in module.parameters(recurse=False):
            with torch.no_grad():
                p.fill_(2.0 if name == "1" else 0.5)

    result = parameter_randomisation(net, x, "gradient", 0, init=init)
    assert result.steps == ("1", "0")
    randomised = randomised_copy(net, ["1"], init=init)
    assert torch.equal(randomised[1].gain, torch.full((3,), 2.0)) and torch.equal(randomised[0].weight, net[0].weight)


def test_the_users_model_is_unchanged():
    model, images, labels = fixture()
    reference = state(model)
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    parameter_randomisation(model, images[:4], "guided_backprop", labels[:4], mode="independent")
    parameter_randomisation(model, images[:4], "gradient", None)
    list(randomisation_steps(model, images[:1]))
    randomised_copy(model, ["features"])
    parameter_layers(model, images)

    def failing(m, x, t):
        if m is not model:
            raise RuntimeError("boom")
        return tribute.explain(m, x, "gradient", target=t)

    with pytest.raises(RuntimeError, match="boom"):
        parameter_randomisation(model, images[:2], failing, None)
    assert changed(model, reference) == set()
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_the_target_is_fixed_on_the_trained_model():
    model, images, _ = fixture()
    seen = []

    def record(m, x, t):
        seen.append(t.clone())
        return tribute.explain(m, x, "gradient", target=t)

    parameter_randomisation(model, images[:10], record, None)
    with torch.no_grad():
        predicted = model(images[:10]).argmax(1)
    assert len(seen) == 8 and all(torch.equal(t, predicted) for t in seen)


# -- label randomisation on digits -----------------------------------------------------------------------------
@functools.cache
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test][:64], y[test][:64]


DIGITS_TRAINING = {"epochs": 30, "lr": 3e-3, "optimizer": "adam"}


def digits_mlp(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    for name, module in net.named_modules():
        reinitialise(name, module, g)
    return net


@functools.cache
def digits_model() -> nn.Module:
    from tribute.training import fit

    train_x, train_y, test_x, test_y = digits()
    net = digits_mlp()
    fit(net, (train_x, train_y), seed=1, progress=False, **DIGITS_TRAINING)
    with torch.no_grad():
        assert (net(test_x).argmax(1) == test_y).double().mean() > 0.9
    return net.eval()


def test_label_randomisation_lowers_the_gradient_similarity_on_digits():
    train_x, train_y, test_x, test_y = digits()
    model = digits_model()
    reference = state(model)
    result = label_randomisation(model, test_x, "gradient", test_y, train_data=(train_x, train_y),
                                 train_options=DIGITS_TRAINING, control=True)
    assert result.test == "labels" and result.steps == ("true labels (retrained)", "permuted labels")
    assert result.similarities == ("spearman", "spearman_abs")  # 8 × 8 maps: too small for SSIM and HOG
    control, permuted = result.curve("spearman").tolist()
    assert permuted <= LABELS_PERMUTED_MAX and control >= LABELS_CONTROL_MIN, str(result)
    assert (result["spearman"][0] > result["spearman"][1]).double().mean() >= 0.9, str(result)
    assert result.info["training accuracy, true labels (retrained)"] >= 0.95
    assert result.info["training accuracy, permuted labels"] < 0.9  # nothing to learn, only to memorise
    assert changed(model, reference) == set()


def test_label_randomisation_trains_a_reinitialised_copy_on_permuted_labels():
    train_x, train_y, test_x, test_y = digits()
    model = digits_model()
    calls = []

    def train_fn(net, x, y):
        calls.append((state(net), x, y.clone()))
        return None  # "trained" in place: nothing changes, the fresh initialisation is compared

    result = label_randomisation(model, test_x[:5], "gradient", test_y[:5], train_data=(train_x, train_y),
                                 train_fn=train_fn, seed=3)
    (start, x, y), = calls
    assert x is train_x
    assert sorted(y.tolist()) == sorted(train_y.tolist()) and not torch.equal(y, train_y)  # a permutation
    fresh = randomised_copy(model, [""], seed=3)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in start.items())
    expected = similarity.spearman(tribute.explain(model, test_x[:5], "gradient", target=test_y[:5]),
                                   tribute.explain(fresh, test_x[:5], "gradient", target=test_y[:5]))
    torch.testing.assert_close(result["spearman"][0], expected.double(), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_label_randomisation_with_memorised_labels_as_in_the_paper():
    """Adebayo et al.'s protocol: the permuted-label model is trained until it fits its labels (> 95 %).

    A wider MLP (64-512-512-10), 80 epochs of Adam at 1e-3 (about 12 s per model on one core).  Measured:
    training accuracy 0.9993 on the permuted labels, 1.0 on the true ones; test accuracy of the reference
    model 0.969.  Spearman ρ with the reference model's maps (mean ± sd over 64 held-out images):

    ================  =======================  ================  ==========================
    method            retrained, true labels   permuted labels   permuted, |map| (abs)
    ================  =======================  ================  ==========================
    gradient          0.948 ± 0.020            0.011 ± 0.100     0.003 ± 0.117
    guided backprop   0.938 ± 0.015            0.267 ± 0.113     0.056 ± 0.120
    gradient × input  0.911 ± 0.052            0.040 ± 0.178     0.901 ± 0.031
    ================  =======================  ================  ==========================

    Gradient × input keeps its absolute-value ranking (0.90): the input's own structure dominates it, as
    Adebayo et al. observe for the methods that multiply by the input.
    """
    from tribute.training import fit

    train_x, train_y, test_x, test_y = digits()
    options = {"epochs": 80, "lr": 1e-3, "optimizer": "adam"}
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    for name, module in model.named_modules():
        reinitialise(name, module, g)
    fit(model, (train_x, train_y), seed=1, progress=False, **options)
    model.eval()
    trained: dict[bytes, dict] = {}

    def train_fn(net, x, y):  # the same start and labels give the same model: train each once
        key = y.numpy().tobytes()
        if key not in trained:
            fit(net, (x, y), seed=0, progress=False, **options)
            trained[key] = state(net)
        net.load_state_dict(trained[key])
        return net

    results = {m: label_randomisation(model, test_x, m, test_y, train_data=(train_x, train_y), train_fn=train_fn,
                                      control=True)
               for m in ("gradient", "guided_backprop", "input_x_gradient")}
    grad = results["gradient"]
    assert grad.info["training accuracy, permuted labels"] > 0.95, str(grad)
    for method, r in results.items():
        control, permuted = r.curve("spearman").tolist()
        assert control >= 0.85 and permuted <= 0.4, f"{method}\n{r}"
    assert abs(grad.curve("spearman")[1]) <= 0.1 and abs(grad.curve("spearman_abs")[1]) <= 0.1, str(grad)
    assert results["input_x_gradient"].curve("spearman_abs")[1] >= 0.8, str(results["input_x_gradient"])


# -- class sensitivity (Nielsen et al. 2022, Fig 3) --------------------------------------------------------
def loop_spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """scipy's Spearman ρ row by row: an independent implementation."""
    return torch.tensor([scipy.stats.spearmanr(u.flatten().numpy(), v.flatten().numpy()).statistic
                         for u, v in zip(a, b, strict=True)], dtype=torch.float64)


@pytest.mark.parametrize(("method", "mean", "low", "high"), [("guided_backprop", 0.837, 0.728, 0.901),
                                                              ("gradient", -0.104, -0.218, -0.004)])
def test_class_sensitivity_reproduces_the_fixture(method, mean, low, high):
    model, images, labels = fixture()
    pairs = class_sensitivity(model, images, method, labels, aggregate=None)
    assert pairs.shape == (64, 9) and pairs.dtype == torch.float32
    assert abs(pairs.mean().item() - mean) < 0.01
    per_image = class_sensitivity(model, images, method, labels)
    torch.testing.assert_close(per_image, pairs.mean(1))
    assert abs(per_image.min().item() - low) < 0.01 and abs(per_image.max().item() - high) < 0.01
    # column k − 1 is class (y + k) mod 10; a few columns against scipy's Spearman ρ
    own = tribute.explain(model, images, method, target=labels)
    for k in (1, 5, 9):
        other = tribute.explain(model, images, method, target=(labels + k) % 10)
        torch.testing.assert_close(pairs[:, k - 1].double(), loop_spearman(own, other), rtol=0, atol=1e-6)


def test_class_sensitivity_choices_of_other_classes():
    model, images, labels = fixture()
    x, y = images[:6], labels[:6]
    full = class_sensitivity(model, x, "gradient", y, aggregate=None)
    versus = other_classes(y, 10)
    # a list: the same classes for every sample; a pair whose class is the sample's own is NaN and left out
    listed = class_sensitivity(model, x, "gradient", y, others=[3, 7], aggregate=None)
    for j, c in enumerate((3, 7)):
        for i in range(6):
            if c == y[i]:
                assert listed[i, j].isnan()
            else:
                k = int((versus[i] == c).nonzero())
                torch.testing.assert_close(listed[i, j], full[i, k])
    mean = class_sensitivity(model, x, "gradient", y, others=[3, 7])
    torch.testing.assert_close(mean, listed.nanmean(1))
    # an (N, K) tensor: per-sample classes
    per_sample = versus[:, [4, 0]]
    torch.testing.assert_close(class_sensitivity(model, x, "gradient", y, others=per_sample, aggregate=None),
                               full[:, [4, 0]])
    # random: one other class per sample, seeded per sample
    drawn = other_classes(y, 10, "random", inputs=x, seed=5)
    assert drawn.shape == (6, 1) and (drawn[:, 0] != y).all()
    random = class_sensitivity(model, x, "gradient", y, others="random", seed=5, aggregate=None)
    for i in range(6):
        k = int((versus[i] == drawn[i, 0]).nonzero())
        torch.testing.assert_close(random[i, 0], full[i, k])
    # target None: the prediction
    with torch.no_grad():
        predicted = model(x).argmax(1)
    torch.testing.assert_close(class_sensitivity(model, x, "gradient"), class_sensitivity(model, x, "gradient",
                                                                                          predicted))


def test_class_sensitivity_is_the_same_when_the_classes_are_explained_in_several_calls(monkeypatch):
    module = importlib.import_module("tribute.metrics.class_sensitivity")  # the attribute is the function

    model, images, labels = fixture()
    x, y = images[:5], labels[:5]
    calls = []

    def counting(m, inputs, t):
        calls.append(len(inputs))
        return tribute.explain(m, inputs, "gradient", target=t)

    one = class_sensitivity(model, x, counting, y, aggregate=None)
    assert calls == [5 * 10]  # the batch once per class (own + 9 others), in one call
    monkeypatch.setattr(module, "_ELEMENTS_PER_CALL", 3 * 5 * 784)
    calls.clear()
    several = class_sensitivity(model, x, counting, y, aggregate=None)
    assert calls == [15, 15, 15, 5]
    torch.testing.assert_close(several, one, rtol=0, atol=1e-6)


def test_class_sensitivity_random_draws_cover_the_other_classes_uniformly():
    x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(2000, dtype=torch.int64)
    drawn = other_classes(t, 5, "random", inputs=x, seed=1)[:, 0]
    counts = torch.bincount(drawn, minlength=5)
    assert counts[0] == 0
    assert scipy.stats.chisquare(counts[1:].numpy()).pvalue > 1e-3


# -- batch independence ----------------------------------------------------------------------------------------
def test_a_samples_scores_do_not_depend_on_its_batch_mates():
    model, images, labels = fixture()
    pick = torch.tensor([11, 3, 40])
    x, y = images[:48], labels[:48]
    full = parameter_randomisation(model, x, "gradient", y, layers=["classifier", "features.6"])
    alone = parameter_randomisation(model, x[pick], "gradient", y[pick], layers=["classifier", "features.6"])
    torch.testing.assert_close(alone.scores, full.scores[:, :, pick], rtol=0, atol=1e-5)
    cs_full = class_sensitivity(model, x, "guided_backprop", y, others="random", seed=2)
    cs_alone = class_sensitivity(model, x[pick], "guided_backprop", y[pick], others="random", seed=2)
    torch.testing.assert_close(cs_alone, cs_full[pick], rtol=0, atol=1e-5)


# -- the result ------------------------------------------------------------------------------------------------
def test_result_prints_as_a_table_and_converts_to_json():
    result = cascading("gradient")
    text = str(result)
    assert "cascading" in text and "gradient" in text and "64 samples" in text
    lines = text.splitlines()
    assert lines[1].split() == ["step", "spearman", "spearman_abs", "ssim", "hog"]
    for name, line in zip(result.steps, lines[2:], strict=True):
        cells = line.split()
        assert cells[0] == name
        assert float(cells[1]) == pytest.approx(result.curve("spearman")[result.steps.index(name)].item(), abs=5e-4)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["steps"] == list(result.steps)
    assert data["scores"]["hog"]["features.3"] == pytest.approx(result["hog"][4].tolist())
    with pytest.raises(KeyError, match="no similarity 'pearson'"):
        result["pearson"]


# -- bad input -------------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    model, images, labels = fixture()
    x, y = images[:4], labels[:4]
    with pytest.raises(ValueError, match=r"no module named 'classifer'; did you mean 'classifier'"):
        parameter_randomisation(model, x, "gradient", y, layers=["classifer"])
    with pytest.raises(ValueError, match=r"'features.2' \(ReLU\) has no parameters"):
        parameter_randomisation(model, x, "gradient", y, layers=["features.2"])
    with pytest.raises(ValueError, match="named twice"):
        parameter_randomisation(model, x, "gradient", y, layers=["classifier", "classifier"])
    with pytest.raises(ValueError, match="no module named 'nope'"):
        randomisation_steps(model, x, layers=["nope"])  # checked at the call, before any step is asked for
    with pytest.raises(ValueError, match="layers is empty"):
        parameter_randomisation(model, x, "gradient", y, layers=[])
    with pytest.raises(TypeError, match="sequence of module names"):
        parameter_randomisation(model, x, "gradient", y, layers="classifier")
    with pytest.raises(ValueError, match="inputs is empty"):
        parameter_randomisation(model, x[:0], "gradient", y[:0])
    with pytest.raises(ValueError, match="inputs is empty"):
        class_sensitivity(model, x[:0], "gradient")
    with pytest.raises(ValueError, match="mode must be one of 'cascading', 'independent'"):
        parameter_randomisation(model, x, "gradient", y, mode="bottom_up")
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        parameter_randomisation(model, x, "gradient", y, seed=-1)
    with pytest.raises(ValueError, match="unknown similarity 'ssmi'"):
        parameter_randomisation(model, x, "gradient", y, similarities=["ssmi"])
    with pytest.raises(ValueError, match="unknown method"):
        parameter_randomisation(model, x, "gradeint", y)
    wrong_shape = lambda m, inp, t: torch.zeros(inp.shape[0], 28, 28)  # noqa: E731
    with pytest.raises(ValueError, match=r"attributions have shape \(4, 28, 28\)"):
        parameter_randomisation(model, x, wrong_shape, y)
    with pytest.raises(ValueError, match=r"attributions have shape"):
        class_sensitivity(model, x, wrong_shape, y)
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 9\]"):
        class_sensitivity(model, x, "gradient", y, others=[10])
    with pytest.raises(ValueError, match="others must be"):
        class_sensitivity(model, x, "gradient", y, others="some")
    with pytest.raises(ValueError, match=r"\(K,\) or \(N, K\)"):
        class_sensitivity(model, x, "gradient", y, others=torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="aggregate must be"):
        class_sensitivity(model, x, "gradient", y, aggregate="median")
    with pytest.raises(IndexError, match="out of range"):
        class_sensitivity(model, x, "gradient", 12)
    train = (images[4:], labels[4:])
    with pytest.raises(ValueError, match="train_data is empty"):
        label_randomisation(model, x, "gradient", y, train_data=(images[:0], labels[:0]), train_fn=lambda *a: None)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        label_randomisation(model, x, "gradient", y, train_data=(images[4:], labels[4:].float()),
                            train_fn=lambda *a: None)
    with pytest.raises(TypeError, match="pair of tensors"):
        label_randomisation(model, x, "gradient", y, train_data=images[4:], train_fn=lambda *a: None)
    with pytest.raises(TypeError, match="train_options with epochs and lr"):
        label_randomisation(model, x, "gradient", y, train_data=train)
    with pytest.raises(TypeError, match="train_options are options of the built-in trainer"):
        label_randomisation(model, x, "gradient", y, train_data=train, train_fn=lambda *a: None,
                            train_options={"epochs": 1})
