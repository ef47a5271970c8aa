"""Attacks on explanations (tribute.robust.explanation_attacks) on the committed Fashion-MNIST CNN.

Ghorbani et al. (2019): the top-k attack lowers the top-k intersection of the saliency map far more than a
random-sign perturbation of the same L∞ size, without changing the predicted class; the centre attack moves
the saliency's centre of mass far more than the random perturbation.  Dombrowski et al. (2019): the targeted
manipulation brings the map closer to a chosen target while the class probabilities hardly move; β-smoothing
(explaining the network with softplus_β ReLUs) keeps more of the top-k under the same attack.

Setting (the fixture's first 8 test images that are classified correctly and keep their class under the
random-sign perturbation; pixels in [0, 1]; saliency of the predicted class; ε = 0.02 ≈ 5/255, 20 steps of
2.5 ε / 20; k = 50 of 784 pixels; surrogate softplus β = 30, the default).  Measured (torch 2.13.0 CPU,
float32), per image and the mean; ``python tests/test_explanation_attacks.py`` prints them again:

==========================================  ==========================================  =====
measure                                     per image                                   mean
==========================================  ==========================================  =====
top-k ∩, random sign                        .50 .62 .40 .52 .50 .62 .62 .44             .527
top-k ∩, top-k attack                       .02 .26 .04 .04 .12 .14 .14 .10             .108
top-k ∩, random sign, β-smoothed (β = 5)    .82 .88 .86 .76 .76 .94 .88 .72             .827
top-k ∩, top-k attack, β-smoothed (β = 5)   .34 .54 .52 .26 .28 .58 .60 .18             .412
centre shift (px), random sign             .95 .62 .66 .36 .43 .71 .36 .43             .565
centre shift (px), centre attack            3.60 2.73 3.60 5.07 3.18 4.48 3.97 4.20     3.85
==========================================  ==========================================  =====

Every attacked image keeps its class.  The β-smoothed maps are explained and attacked on the softplus_5
network itself (the attacker knows the defence).

Targeted manipulation (ε = 0.03, 50 steps, γ = 1, target: the saliency map of the next image, maps of unit sum):
squared distance to the target ×10³ from 2.19 2.28 2.50 2.07 2.13 2.45 2.88 2.90 to
1.50 1.05 2.10 1.35 2.13 1.15 1.67 1.07 (mean ratio 0.632; for the fifth image no step paid for its change of
the output), largest change of a class probability 0.012; with γ = 0 the distance falls further (mean ratio
0.493) and probabilities move by up to 0.214.

The batch of 8 runs in one chunk: in float32 a different batch composition can change a conv's rounding, which
the sign steps may amplify (one image's β = 5 value was .14 in a batch of 16); in float64 the attack is
independent of batch-mates to the bit (tested below).  The thresholds leave margins of about 0.1
(intersections) or 0.7 px (shifts) against these numbers.  The module runs in about 10 s on one core.
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from conftest import fashion_fixture, fixture_module, mlp
from torch import nn

import tribute
from tribute.metrics.similarity import center_of_mass_shift, topk_intersection
from tribute.robust import explanation_attacks as ea

EPS, STEPS, K = 0.02, 20, 50
BOUNDS = (0.0, 1.0)
SMOOTH_BETA = 5.0

# -- thresholds (measured values in the module doc) ------------------------------------------------------------
ATTACK_MEAN_MAX = 0.22  # top-k attack: mean intersection 0.108
RANDOM_MEAN_MIN = 0.40  # random sign: 0.527
SMOOTHED_GAIN_MIN = 0.2  # β = 5 under the same attack: 0.412 − 0.108 = 0.30
CENTRE_ATTACK_MIN = 2.0  # px, every image: smallest 2.73
CENTRE_RANDOM_MAX = 1.2  # px, every image: largest 0.95
MANIPULATED_RATIO_MAX = 0.75  # mean of d(x_adv) / d(x): 0.632
PROBABILITY_CHANGE_MAX = 0.025  # γ = 1: largest 0.012


@functools.cache
def fashion():
    module = fixture_module("fashion")
    model = module.load()
    images, labels = module.samples()
    with torch.no_grad():
        pred = model(images).argmax(1)
        noisy = ea.random_sign_perturbation(images, eps=EPS, bounds=BOUNDS, seed=0)
        kept = model(noisy).argmax(1) == pred
    chosen = ((pred == labels) & kept).nonzero().flatten()[:8]
    return model, images[chosen], pred[chosen]


def saliency(model, x, cls, **options):
    return tribute.explain(model, x, "saliency", target=cls, **options)


@functools.cache
def topk_results(beta: float | None):
    """(intersection under the top-k attack, under the random sign, adversarial inputs) for the saliency map,
    plain (beta None) or β-smoothed."""
    model, x, cls = fashion()
    options = {} if beta is None else {"softplus_beta": beta}
    clean = saliency(model, x, cls, **options)
    adv = ea.topk_attack(model, x, k=K, eps=EPS, steps=STEPS, bounds=BOUNDS, method_options=options)
    noisy = ea.random_sign_perturbation(x, eps=EPS, bounds=BOUNDS, seed=0)
    attacked = topk_intersection(clean, saliency(model, adv, cls, **options), K)
    random = topk_intersection(clean, saliency(model, noisy, cls, **options), K)
    return attacked, random, adv


@functools.cache
def centre_results():
    model, x, cls = fashion()
    clean = saliency(model, x, cls)
    adv = ea.center_attack(model, x, eps=EPS, steps=STEPS, bounds=BOUNDS)
    noisy = ea.random_sign_perturbation(x, eps=EPS, bounds=BOUNDS, seed=0)
    attacked = center_of_mass_shift(clean, saliency(model, adv, cls))
    return attacked, center_of_mass_shift(clean, saliency(model, noisy, cls)), adv


def unit(m):
    f = m.flatten(1).abs()
    return f / f.sum(1, keepdim=True)


@functools.cache
def manipulation_results(gamma: float):
    """(distance² to the target before, after, largest probability change, adversarial inputs)."""
    model, x, cls = fashion()
    clean = saliency(model, x, cls)
    goal = clean.roll(1, dims=0)  # the map of another image
    adv = ea.manipulate_explanation(model, x, goal, eps=0.03, steps=50, gamma=gamma, bounds=BOUNDS)
    before = (unit(clean) - unit(goal)).pow(2).sum(1)
    after = (unit(saliency(model, adv, cls)) - unit(goal)).pow(2).sum(1)
    with torch.no_grad():
        change = (model(adv).softmax(1) - model(x).softmax(1)).abs().amax(1)
    return before, after, change, adv


def assert_admissible(model, x, adv, cls, eps):
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert float((adv - x).abs().max()) <= eps  # inside the ball in the inputs' own precision
    assert float(adv.min()) >= BOUNDS[0] and float(adv.max()) <= BOUNDS[1]
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), cls)


# -- Ghorbani et al. 2019 --------------------------------------------------------------------------------------
def test_topk_attack_beats_random_sign_noise_of_the_same_size():
    model, x, cls = fashion()
    attacked, random, adv = topk_results(None)
    assert_admissible(model, x, adv, cls, EPS)
    assert float(attacked.mean()) <= ATTACK_MEAN_MAX
    assert float(random.mean()) >= RANDOM_MEAN_MIN
    assert bool((attacked < random).all()), (attacked, random)


def test_beta_smoothing_keeps_more_of_the_top_k_under_the_same_attack():
    model, x, cls = fashion()
    plain, _, _ = topk_results(None)
    smoothed, _, adv = topk_results(SMOOTH_BETA)
    assert_admissible(model, x, adv, cls, EPS)
    assert float(smoothed.mean()) >= float(plain.mean()) + SMOOTHED_GAIN_MIN


def test_center_attack_moves_the_centre_of_mass():
    model, x, cls = fashion()
    attacked, random, adv = centre_results()
    assert_admissible(model, x, adv, cls, EPS)
    assert float(attacked.min()) >= CENTRE_ATTACK_MIN
    assert float(random.max()) <= CENTRE_RANDOM_MAX


def test_without_surrogate_a_relu_saliency_gives_no_direction():
    # ∂|∇S|/∂x = 0 almost everywhere on a ReLU network: the attack warns and leaves the inputs as they are
    model, x, _ = fashion()
    with pytest.warns(RuntimeWarning, match=r"zero gradient for samples \[0, 1\]"):
        adv = ea.topk_attack(model, x[:2], k=K, eps=EPS, steps=2, bounds=BOUNDS, surrogate_beta=None)
    assert torch.equal(adv, x[:2])


# -- Dombrowski et al. 2019 ------------------------------------------------------------------------------------
def test_manipulation_moves_the_map_towards_the_target_and_keeps_the_output():
    model, x, cls = fashion()
    before, after, change, adv = manipulation_results(1.0)
    assert_admissible(model, x, adv, cls, 0.03)
    # the iterate kept has L ≤ L(x) = d(x), and the output term is ≥ 0: never further from the target
    assert bool((after <= before).all())
    assert float((after / before).mean()) <= MANIPULATED_RATIO_MAX
    assert float(change.max()) <= PROBABILITY_CHANGE_MAX


def test_manipulation_output_term_matters():
    _, after_free, change_free, _ = manipulation_results(0.0)
    before, after, change, _ = manipulation_results(1.0)
    assert float((after_free / before).mean()) < float((after / before).mean())
    assert float(change_free.max()) > float(change.max())


# -- the surrogate is the engine's differentiable softplus network ----------------------------------------------
def test_softplus_saliency_is_differentiable_through_the_fashion_cnn():
    # conv, batch norm, ReLU → softplus_β: the derivative of the smoothed gradient against finite differences
    model, x, _ = fashion_fixture(2, torch.float64)
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(x.shape, generator=g, dtype=x.dtype), torch.randn(x.shape, generator=g, dtype=x.dtype)
    options = {"target": 3, "softplus_beta": 10.0}

    def weighted(z):
        return (tribute.explain(model, z, "gradient", **options) * u).sum()

    xr = x.clone().requires_grad_()
    smoothed = tribute.explain(model, xr, "gradient", differentiable=True, **options)
    (grad,) = torch.autograd.grad((smoothed * u).sum(), xr)
    h = 1e-6
    fd = (weighted(x + h * v) - weighted(x - h * v)) / (2 * h)
    assert float(fd.abs()) > 1.0  # a real second-order signal, not a vanishing one
    torch.testing.assert_close((grad * v).sum(), fd, rtol=1e-5, atol=1e-8)
    # and without smoothing the ReLU network's second derivative is exactly zero
    xr = x.clone().requires_grad_()
    (flat,) = torch.autograd.grad((tribute.explain(model, xr, "gradient", target=3, differentiable=True) * u).sum(), xr)
    assert float(flat.abs().max()) == 0.0


# -- batching, seeding, invariance ----------------------------------------------------------------------------
def test_samples_are_attacked_independently_of_batch_mates():
    model, x, _ = fashion_fixture(4, torch.float64)
    options = {"k": 30, "eps": EPS, "steps": 4, "bounds": BOUNDS}
    whole = ea.topk_attack(model, x, batch_size=4, **options)
    alone = ea.topk_attack(model, x, batch_size=1, **options)
    order = torch.tensor([2, 0, 3, 1])
    shuffled = ea.topk_attack(model, x[order], batch_size=3, **options)[order.argsort()]
    assert torch.equal(whole, alone) and torch.equal(whole, shuffled)


class Normalised(nn.Module):
    """The model behind a fixed normalisation, as one module."""

    def __init__(self, model, transform):
        super().__init__()
        self.model, self.transform = model, transform

    def forward(self, x):
        return self.model(self.transform(x))


def test_input_transform_equals_a_model_that_normalises_itself():
    model, x, _ = fashion_fixture(3, torch.float64)
    normalise = tribute.Normalize([0.3], [0.35])
    options = {"eps": EPS, "steps": 3, "bounds": BOUNDS}
    separate = ea.center_attack(model, x, input_transform=normalise, **options)
    together = ea.center_attack(Normalised(model, normalise), x, **options)
    assert torch.equal(separate, together) and not torch.equal(separate, x)


def test_an_explained_class_other_than_the_prediction():
    # the map of class 0 is attacked (the predicted classes are 0, 1, 2); the class that must not change is still
    # the predicted one.  Measured top-k ∩: .06 .12 .12
    model, x, cls = fashion()
    x, cls = x[:3], cls[:3]
    clean = saliency(model, x, 0)
    adv = ea.topk_attack(model, x, k=K, eps=EPS, steps=10, bounds=BOUNDS, target=0)
    assert_admissible(model, x, adv, cls, EPS)
    assert float(topk_intersection(clean, saliency(model, adv, 0), K).max()) < 0.4


def test_unbounded_budget_with_a_step_size():
    model, x, cls = fashion()
    adv = ea.center_attack(model, x[:2], eps=math.inf, step_size=0.01, steps=3)  # no ball, no range: 3 steps
    assert float((adv - x[:2]).abs().max()) <= 0.03 + 1e-7
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), cls[:2])


def test_random_sign_perturbation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 10, 10, generator=g, dtype=torch.float64)
    free = ea.random_sign_perturbation(x, eps=0.1, seed=4)
    assert torch.allclose((free - x).abs(), torch.full_like(x, 0.1))  # every feature moves by exactly ε
    assert 0.4 < float(((free - x) > 0).double().mean()) < 0.6  # a fair coin
    torch.testing.assert_close(free, ea.random_sign_perturbation(x, eps=0.1, seed=4))
    assert not torch.equal(free, ea.random_sign_perturbation(x, eps=0.1, seed=5))
    # a sample's signs do not depend on its batch-mates
    torch.testing.assert_close(free[1:2], ea.random_sign_perturbation(x[1:2], eps=0.1, seed=4))
    boxed = ea.random_sign_perturbation(x, eps=0.5, bounds=(0.0, 1.0), seed=4)
    assert float(boxed.min()) >= 0.0 and float(boxed.max()) <= 1.0
    torch.testing.assert_close(boxed, (x + 0.5 * (free - x).sign()).clamp(0, 1))


def test_model_and_inputs_are_left_as_they_were():
    model, x, _ = fashion()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    grads = [p.grad for p in model.parameters()]
    inputs = x[:2].clone()
    ea.center_attack(model, inputs, eps=EPS, steps=2, bounds=BOUNDS)
    ea.manipulate_explanation(model, inputs, torch.rand(2, 1, 28, 28), eps=EPS, steps=2, gamma=1.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [p.grad for p in model.parameters()] == grads
    assert not model.training and torch.equal(inputs, x[:2]) and not inputs.requires_grad


def test_other_methods_plug_in():
    # gradient × input (attacked through the default softplus surrogate) and Grad-CAM (no ReLU on the input's
    # derivative path of its map: attacked as it is).  Measured on the first 4 images, top-k ∩ attack vs random:
    # gradient × input .06 .42 .14 .10 vs .44 .78 .42 .46; Grad-CAM .40 .66 .00 .22 vs .88 .92 .74 .86
    model, x, cls = fashion()
    x, cls = x[:4], cls[:4]
    noisy = ea.random_sign_perturbation(x, eps=EPS, bounds=BOUNDS, seed=0)
    for method, options in (("input_x_gradient", {}), ("gradcam", {"layer": "features"})):
        clean = tribute.explain(model, x, method, target=cls, **options)
        adv = ea.topk_attack(model, x, k=K, eps=EPS, steps=STEPS, bounds=BOUNDS, method=method,
                             method_options=options)
        assert_admissible(model, x, adv, cls, EPS)
        attacked = topk_intersection(clean, tribute.explain(model, adv, method, target=cls, **options), K)
        random = topk_intersection(clean, tribute.explain(model, noisy, method, target=cls, **options), K)
        assert bool((attacked < random).all()), (method, attacked, random)
        assert float(attacked.mean()) <= float(random.mean()) - 0.2, (method, attacked, random)


def test_a_method_without_a_surrogate_warns():
    # SmoothGrad has no softplus option: on a ReLU network its map is piecewise constant in the input
    model, x, _ = fashion()
    with pytest.warns(RuntimeWarning, match="zero gradient"):
        adv = ea.topk_attack(model, x[:1], k=K, eps=EPS, steps=1, bounds=BOUNDS, method="smoothgrad",
                             method_options={"samples": 2, "seed": 0})
    assert torch.equal(adv, x[:1])


# -- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,error,match", [
    ({"eps": 0.0}, ValueError, "eps must be > 0"),
    ({"eps": -0.1}, ValueError, "eps must be > 0"),
    ({"step_size": 0.0}, ValueError, "step_size must be finite and > 0"),
    ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
    ({"k": 0}, ValueError, r"k must be an integer in \[1, 784\]"),
    ({"k": 785}, ValueError, r"k must be an integer in \[1, 784\]"),
    ({"k": 5.0}, TypeError, "k must be an integer"),
    ({"bounds": (0.0, 0.5)}, ValueError, "outside bounds"),
    ({"bounds": (1.0, 0.0)}, ValueError, "lo < hi"),
    ({"surrogate_beta": 0.0}, ValueError, "surrogate_beta must be finite and > 0"),
    ({"surrogate_beta": "big"}, ValueError, "surrogate_beta must be 'auto'"),
    ({"method": "guided_backprop", "surrogate_beta": 10.0}, ValueError, "no.*softplus_beta|has none"),
    ({"method": "layer_gradient"}, ValueError, "attributes to a layer"),
    ({"method": "saliencey"}, ValueError, "unknown method 'saliencey'"),
    ({"method_options": {"differentiable": True}}, TypeError, "may not set 'differentiable'"),
    ({"method_options": {"softplus_beta": -1.0}}, ValueError, "softplus_beta"),
    ({"reduce": "mean"}, ValueError, "reduce must be None or one of"),
    ({"target": lambda out: out[:, 0]}, TypeError, "class indices"),
    ({"target": 10}, IndexError, "out of range"),
])
def test_topk_attack_bad_input(kw, error, match):
    model, x, _ = fashion()
    options = {"k": K, "eps": EPS, "steps": 1, "bounds": BOUNDS, **kw}
    with pytest.raises(error, match=match):
        ea.topk_attack(model, x[:2], **options)


def test_other_bad_input():
    model, x, _ = fashion()
    with pytest.raises(ValueError, match="eps must be finite and > 0"):
        ea.random_sign_perturbation(x, eps=math.inf)
    with pytest.raises(ValueError, match="outside bounds"):
        ea.random_sign_perturbation(x * 2, eps=0.1, bounds=BOUNDS)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        ea.manipulate_explanation(model, x[:2], torch.rand(2, 1, 28, 28), eps=EPS, gamma=-1.0)
    with pytest.raises(ValueError, match="keep must be one of"):  # was output=: output= now picks the scores
        ea.manipulate_explanation(model, x[:2], torch.rand(2, 1, 28, 28), eps=EPS, gamma=1.0, keep="softmax")
    with pytest.raises(ValueError, match=r"shape of the maps, \(2, 1, 28, 28\)"):
        ea.manipulate_explanation(model, x[:2], torch.rand(2, 1, 14, 14), eps=EPS, gamma=1.0, steps=1)
    with pytest.raises(ValueError, match=r"zero everywhere for samples \[1\]"):
        goal = torch.rand(2, 1, 28, 28)
        goal[1] = 0
        ea.manipulate_explanation(model, x[:2], goal, eps=EPS, gamma=1.0, steps=1)
    with pytest.raises(ValueError, match="step_size must be given when eps is infinite"):
        ea.center_attack(model, x[:2], eps=math.inf)
    with pytest.raises(ValueError, match="train mode"):
        ea.center_attack(module_in_train_mode(), x[:2], eps=EPS)


def module_in_train_mode():
    module = fixture_module("fashion")
    return module.load().train()


def test_centre_attack_refuses_a_map_without_mass():
    # a ReLU network whose hidden units are all dead for sample 1: its saliency is zero, it has no centre
    net = mlp(nn.ReLU, sizes=(4, 3, 2), dtype=torch.float32)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.eye(3, 4))
        net.net[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0, 3.0, 0.5], [-1.0, -2.0, -3.0, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"undefined for samples \[1\]"):
            ea.center_attack(net, x, eps=0.1, steps=1, target=0)


def test_a_map_that_loses_its_mass_during_the_centre_attack_is_skipped_not_an_error():
    # the centre attack's objective and score at an iterate whose map is zero: no direction, never chosen
    m = torch.rand(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.full((3, 2), 1.5, dtype=torch.float64)
    d = ea._squared_shift(m * torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1), c0)
    assert d[1].item() == -math.inf and bool(torch.isfinite(d[[0, 2]]).all())
    (grad,) = torch.autograd.grad(torch.where(torch.isfinite(d), d, torch.zeros_like(d)).sum(), m)
    assert bool(torch.isfinite(grad).all()) and float(grad[1].abs().max()) == 0.0


def measure() -> str:
    """The numbers of the module doc."""
    def row(name, t):
        return f"{name:45s} {' '.join(f'{v:.2f}' for v in t.tolist())}   mean {float(t.mean()):.3f}"
    attacked, random, _ = topk_results(None)
    smoothed, smoothed_random, _ = topk_results(SMOOTH_BETA)
    shift, shift_random, _ = centre_results()
    lines = [row("top-k, random sign", random), row("top-k, top-k attack", attacked),
             row(f"top-k, attack, beta = {SMOOTH_BETA:g}", smoothed), row(f"top-k, random, beta = {SMOOTH_BETA:g}",
                                                                          smoothed_random),
             row("centre shift px, random", shift_random), row("centre shift px, attack", shift)]
    for gamma in (1.0, 0.0):
        before, after, change, _ = manipulation_results(gamma)
        lines += [row(f"gamma {gamma:g}: distance x1e3 before", before * 1e3),
                  row(f"gamma {gamma:g}: distance x1e3 after", after * 1e3),
                  row(f"gamma {gamma:g}: ratio", after / before), row(f"gamma {gamma:g}: prob change", change)]
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(measure())
