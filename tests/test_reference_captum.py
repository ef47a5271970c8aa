"""tribute against Captum where the two define the same quantity, in float64.

Captum is a test-only reference here: it is called, never copied.  Where the definitions differ the
tests say so and compare against mathematics instead:

- Captum's ``riemann_trapezoid`` weights are 1/n with halved ends at nodes k/(n−1): they sum to (n−1)/n,
  not 1, so Captum's trapezoid IG is (n−1)/n times the trapezoid rule (checked below).
- Captum multiplies the gradients by ``torch.tensor(step_sizes).float()`` and builds its Riemann nodes
  with a float32 ``torch.linspace``: in float64 its IG carries relative errors of order 2^-24 ≈ 6e-8.
  IG is therefore compared (a) tribute against a float64 reference computed here, to 1e-12, (b) Captum
  against the same reference built from Captum's own float32-rounded nodes and weights, to 1e-12, which
  shows that the rounding is the whole difference, and (c) tribute against Captum to 1e-6 relative.
- Captum's DeepLift hooks ``nn.Module`` nonlinearities only; tribute intercepts function calls.  On models
  whose nonlinearities are separate modules both implement Rescale and agree to rounding.
- Captum's NoiseTunnel draws from the global RNG, tribute from per-sample seeded streams: SmoothGrad and
  VarGrad are checked against closed forms and against tribute's own gradients at the reconstructed
  noisy inputs instead.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tribute
from tribute.core.randomness import SampleStreams

captum_attr = pytest.importorskip("captum.attr")
approximation_methods = pytest.importorskip("captum.attr._utils.approximation_methods")

DT = torch.float64
# Captum warns that it sets requires_grad and hooks on every call; the warnings carry no information here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients:UserWarning",
    "ignore:Setting forward, backward hooks:UserWarning",
    "ignore:Setting backward hooks on ReLU:UserWarning",
)

# Tolerances, relative to the largest magnitude of the reference (see assert_close).
EXACT = 1e-12  # the same float64 computation reordered: rounding differences are ~1e-16 relative
FLOAT32_NODES = 1e-6  # Captum's float32 weights/nodes: ≤ 2^-24 ≈ 6e-8 relative per term (observed ≤ 5e-8)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "") -> None:
    """max |actual − expected| ≤ rel · max |expected|, with a non-trivial (non-zero) reference."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype == DT, (what, actual.dtype, expected.dtype)
    scale = expected.abs().max().item()
    assert scale > 0, f"{what}: the reference is identically zero, the comparison would be vacuous"
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"{what}: max error {err:.3e} > {rel:g} × {scale:.3e}"


# ---------------------------------------------------------------------------------------------------
# Models and data (fixed seeds, float64, eval mode)


def make_cnn() -> nn.Module:
    """conv → batch norm (eval, non-trivial statistics) → ReLU → avg pool → conv → ReLU → avg pool → MLP head.

    Every ReLU is its own module (Captum's hook-based methods require that).
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 5),
    )
    g = torch.Generator().manual_seed(1)
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.copy_(0.3 * torch.randn(4, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(4, generator=g))
        bn.weight.copy_(1 + 0.3 * torch.randn(4, generator=g))
        bn.bias.copy_(0.2 * torch.randn(4, generator=g))
    return model.to(DT).eval()


def make_mlp(act1: type[nn.Module] = nn.Tanh, act2: type[nn.Module] = nn.Sigmoid, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), act1(), nn.Linear(10, 8), act2(), nn.Linear(8, 4)).to(DT).eval()


class TwoLayerReLU(nn.Module):
    """Linear → ReLU → Linear → ReLU → Linear, the ReLUs either as modules or as ``torch.relu`` calls."""

    def __init__(self, functional: bool):
        super().__init__()
        torch.manual_seed(3)
        self.l1, self.l2, self.l3 = nn.Linear(6, 10), nn.Linear(10, 8), nn.Linear(8, 4)
        self.functional = functional
        self.a1, self.a2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        a1 = torch.relu if self.functional else self.a1
        a2 = torch.relu if self.functional else self.a2
        return self.l3(a2(self.l2(a1(self.l1(x)))))


def _data(kind: str):
    g = torch.Generator().manual_seed(7)
    if kind == "cnn":
        x = torch.randn(4, 3, 8, 8, generator=g, dtype=DT)
        baseline = 0.3 * torch.randn(4, 3, 8, 8, generator=g, dtype=DT)
        target = torch.tensor([0, 3, 1, 4])
    else:
        x = torch.randn(5, 6, generator=g, dtype=DT)
        baseline = 0.5 * torch.randn(5, 6, generator=g, dtype=DT)
        target = torch.tensor([0, 3, 1, 2, 3])
    return x, baseline, target


MODELS = {
    "cnn": (make_cnn, "cnn"),
    "mlp_tanh_sigmoid": (make_mlp, "mlp"),
    "mlp_relu_tanh": (lambda: make_mlp(nn.ReLU, nn.Tanh, seed=1), "mlp"),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tensors here are tiny: one thread is fastest and immune to contention with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    make, data = MODELS[request.param]
    model = make()
    x, baseline, target = _data(data)
    return request.param, model, x, baseline, target


def scores(model, x, target):
    with torch.no_grad():
        return model(x).gather(1, target.view(-1, 1)).squeeze(1)


def captum_call(cls, model, x, **kw):
    """Captum on a copy of the inputs (it toggles requires_grad on what it is given)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model).attribute(x.clone(), **kw).detach()


# ---------------------------------------------------------------------------------------------------
# Gradient, saliency, input × gradient


def test_gradient_and_saliency_match_captum(case):
    name, model, x, _, target = case
    grad = tribute.Gradient(model).attribute(x, target)
    ref = captum_call(captum_attr.Saliency, model, x, target=target, abs=False)
    assert_close(grad, ref, EXACT, f"{name} gradient")
    sal = tribute.Saliency(model).attribute(x, target)
    ref_abs = captum_call(captum_attr.Saliency, model, x, target=target, abs=True)
    assert_close(sal, ref_abs, EXACT, f"{name} saliency")
    # the per-sample targets matter: sample 0's gradient for its own class differs from class 1's
    other = tribute.Gradient(model).attribute(x, torch.ones_like(target))
    assert (other[0] - grad[0]).abs().max() > 1e-6


def test_input_x_gradient_matches_captum(case):
    name, model, x, _, target = case
    ixg = tribute.InputXGradient(model).attribute(x, target)
    assert_close(ixg, captum_call(captum_attr.InputXGradient, model, x, target=target), EXACT, f"{name} ixg")


# ---------------------------------------------------------------------------------------------------
# Integrated gradients


def reference_nodes(rule: str, n: int) -> tuple[list[float], list[float]]:
    """Exact float64 nodes and weights of each rule on [0, 1], written out from the definitions."""
    k = np.arange(n, dtype=np.float64)
    if rule == "riemann_left":
        return list(k / n), [1 / n] * n
    if rule == "riemann_right":
        return list((k + 1) / n), [1 / n] * n
    if rule == "riemann_middle":
        return list((k + 0.5) / n), [1 / n] * n
    if rule == "riemann_trapezoid":
        w = np.full(n, 1 / (n - 1))
        w[[0, -1]] /= 2
        return list(k / (n - 1)), list(w)
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return list((nodes + 1) / 2), list(weights / 2)


def captum_nodes(rule: str, n: int) -> tuple[list[float], list[float]]:
    """The nodes Captum evaluates at and the weights it multiplies by (after its ``.float()``)."""
    step_sizes, alphas = approximation_methods.approximation_parameters(CAPTUM_RULE[rule])
    weights = torch.tensor(step_sizes(n)).float().double().tolist()
    return alphas(n), weights


def ig_by_hand(model, x, baseline, target, alphas, weights) -> torch.Tensor:
    """(x − x̄) ⊙ Σ_k w_k ∇S_t(x̄ + α_k (x − x̄)): plain autograd at all nodes in one batch, float64 sums."""
    n = len(alphas)
    a = torch.tensor(alphas, dtype=DT).view(n, 1, *([1] * (x.dim() - 1)))
    w = torch.tensor(weights, dtype=DT).view(n, 1, *([1] * (x.dim() - 1)))
    points = (baseline + a * (x - baseline)).reshape(-1, *x.shape[1:]).requires_grad_()  # node-major rows
    score = model(points).gather(1, target.repeat(n).view(-1, 1)).sum()
    (g,) = torch.autograd.grad(score, points)
    return (x - baseline) * (w * g.view(n, *x.shape)).sum(0)


CAPTUM_RULE = {
    "riemann_left": "riemann_left", "riemann_right": "riemann_right", "riemann_middle": "riemann_middle",
    "gauss_legendre": "gausslegendre", "riemann_trapezoid": "riemann_trapezoid",
}


@pytest.mark.parametrize("steps", [7, 50])
@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "gauss_legendre"])
def test_integrated_gradients_matches_captum(case, rule, steps):
    name, model, x, baseline, target = case
    what = f"{name} IG {rule} n={steps}"
    ours = tribute.IntegratedGradients(model).attribute(x, target, baseline=baseline, steps=steps, quadrature=rule)
    theirs = captum_call(captum_attr.IntegratedGradients, model, x, baselines=baseline, target=target,
                         n_steps=steps, method=CAPTUM_RULE[rule])
    # (a) tribute is the quadrature rule in float64
    assert_close(ours, ig_by_hand(model, x, baseline, target, *reference_nodes(rule, steps)), EXACT, what)
    # (b) Captum is the same rule with its nodes/weights rounded to float32: that explains all of the gap
    assert_close(theirs, ig_by_hand(model, x, baseline, target, *captum_nodes(rule, steps)), EXACT, what)
    # (c) hence tribute and Captum agree to the float32 rounding of the rule
    assert_close(ours, theirs, FLOAT32_NODES, what)


def test_captum_quadrature_internals_as_documented():
    """The two Captum facts the comparisons above rely on, checked on Captum's own builders."""
    for n in (3, 7, 10, 50):
        # the trapezoid weights sum to (n − 1)/n, not 1: a constant integrand comes out scaled by (n − 1)/n
        step_sizes, alphas = approximation_methods.approximation_parameters("riemann_trapezoid")
        assert math.fsum(step_sizes(n)) == pytest.approx((n - 1) / n, rel=1e-15)
        assert alphas(n)[0] == 0.0 and alphas(n)[-1] == 1.0  # nodes k/(n−1): spacing 1/(n−1), not 1/n
        # the weights are rounded to float32 when applied: 1/n for n not a power of two is not float32
        w = torch.tensor([1 / n]).float().double().item()
        assert w != 1 / n and abs(w - 1 / n) <= 2**-24 / n
        # the Riemann nodes come from a float32 linspace
        left = approximation_methods.approximation_parameters("riemann_left")[1](n)
        assert all(float(np.float32(a)) == a for a in left)
        assert max(abs(a - k / n) for k, a in enumerate(left)) > 0


@pytest.mark.parametrize("steps", [7, 50])
def test_trapezoid_is_captums_trapezoid_rescaled(case, steps):
    """tribute's trapezoid is the trapezoid rule; Captum's equals it times the sum of Captum's weights."""
    name, model, x, baseline, target = case
    what = f"{name} IG trapezoid n={steps}"
    ours = tribute.IntegratedGradients(model).attribute(
        x, target, baseline=baseline, steps=steps, quadrature="riemann_trapezoid")
    assert_close(ours, ig_by_hand(model, x, baseline, target, *reference_nodes("riemann_trapezoid", steps)),
                 EXACT, what)
    theirs = captum_call(captum_attr.IntegratedGradients, model, x, baselines=baseline, target=target,
                         n_steps=steps, method="riemann_trapezoid")
    captum_weight_sum = math.fsum(approximation_methods.approximation_parameters("riemann_trapezoid")[0](steps))
    assert_close(ours * captum_weight_sum, theirs, FLOAT32_NODES, what)


@pytest.mark.parametrize("steps", [2, 7, 50])
def test_trapezoid_completeness_on_linear_model(steps):
    """On a linear model the integrand is constant along the path, so every rule whose weights sum to 1 gives
    Σ_i φ_i = S(x) − S(x̄) exactly; Captum's trapezoid gives (Σ_k w_k) (S(x) − S(x̄)) = (n − 1)/n of it."""
    model = make_mlp()[0]
    x, baseline, _ = _data("mlp")
    target = torch.tensor([0, 9, 4, 2, 7])
    delta = scores(model, x, target) - scores(model, baseline, target)
    ours = tribute.IntegratedGradients(model).attribute(
        x, target, baseline=baseline, steps=steps, quadrature="riemann_trapezoid")
    assert_close(ours.sum(1), delta, EXACT, "tribute trapezoid completeness")
    theirs = captum_call(captum_attr.IntegratedGradients, model, x, baselines=baseline, target=target,
                         n_steps=steps, method="riemann_trapezoid")
    captum_weight_sum = math.fsum(approximation_methods.approximation_parameters("riemann_trapezoid")[0](steps))
    assert_close(theirs.sum(1), captum_weight_sum * delta, FLOAT32_NODES, "Captum trapezoid completeness")


# ---------------------------------------------------------------------------------------------------
# DeepLift (Rescale)


@pytest.mark.parametrize("kind", ["cnn", "mlp_tanh_sigmoid", "mlp_relu_tanh"])
def test_deeplift_matches_captum(kind):
    make, data = MODELS[kind]
    model = make()
    x, baseline, target = _data(data)
    ours = tribute.DeepLift(model).attribute(x, target, baseline=baseline)
    theirs = captum_call(captum_attr.DeepLift, model, x, baselines=baseline, target=target)
    assert_close(ours, theirs, 1e-10, f"{kind} deeplift")
    # both satisfy summation-to-delta exactly (linear layers, avg pooling, elementwise nonlinearities)
    delta = scores(model, x, target) - scores(model, baseline, target)
    assert_close(ours.flatten(1).sum(1), delta, 1e-10, f"{kind} summation-to-delta")
    # and DeepLift is not the gradient × Δ here (the Rescale multipliers matter on these inputs)
    grad_delta = tribute.Gradient(model).attribute(x, target) * (x - baseline)
    assert (grad_delta - ours).abs().max() > 1e-3 * ours.abs().max()


def test_deeplift_functional_relu_matches_captum_on_module_relu():
    """tribute intercepts ``torch.relu`` calls, so the functional model gets the same Rescale multipliers
    as the module model Captum can hook (Captum itself cannot see the functional calls)."""
    x, baseline, target = _data("mlp")
    functional, modules = TwoLayerReLU(functional=True).to(DT), TwoLayerReLU(functional=False).to(DT)
    ours = tribute.DeepLift(functional).attribute(x, target, baseline=baseline)
    theirs = captum_call(captum_attr.DeepLift, modules, x, baselines=baseline, target=target)
    assert_close(ours, theirs, 1e-10, "functional relu deeplift")


# ---------------------------------------------------------------------------------------------------
# Guided backprop and DeconvNet


def test_guided_backprop_matches_captum(case):
    name, model, x, _, target = case
    # on the tanh/sigmoid MLP guided backprop changes nothing (refused by default): Captum's answer is the gradient
    ours = tribute.GuidedBackprop(model, strict=False).attribute(x, target)
    assert_close(ours, captum_call(captum_attr.GuidedBackprop, model, x, target=target), EXACT, f"{name} guided")


def test_deconvnet_matches_captum(case):
    name, model, x, _, target = case
    ours = tribute.DeconvNet(model, strict=False).attribute(x, target)
    assert_close(ours, captum_call(captum_attr.Deconvolution, model, x, target=target), EXACT, f"{name} deconv")


def test_guided_and_deconv_differ_from_gradient_on_relu_models():
    """Guard against a vacuous comparison: on the CNN the ReLU rules change the result."""
    model = make_cnn()
    x, _, target = _data("cnn")
    grad = tribute.Gradient(model).attribute(x, target)
    for cls in (tribute.GuidedBackprop, tribute.DeconvNet):
        assert (cls(model).attribute(x, target) - grad).abs().max() > 1e-2 * grad.abs().max()


# ---------------------------------------------------------------------------------------------------
# SmoothGrad, SmoothGrad², VarGrad: closed forms and reconstructed noise (no Captum: its noise is global)


class SumOut(nn.Module):
    """f(x) = Σ x: gradient 1, so input × gradient at x + σε is x + σε itself (it reveals the noise)."""

    def forward(self, x):
        return x.flatten(1).sum(1, keepdim=True)


class SquaresOut(nn.Module):
    """f(x) = Σ x²: gradient 2x."""

    def forward(self, x):
        return (x.flatten(1) ** 2).sum(1, keepdim=True)


def tribute_noise(x: torch.Tensor, seed: int, samples: int) -> torch.Tensor:
    """tribute's noise ε_{i,k} (shape (N, K, ...)) for a one-chunk call: each sample's K rows in one draw."""
    n = x.shape[0]
    streams = SampleStreams(x, seed)
    sample = torch.arange(n).repeat_interleave(samples)
    return streams.draw("normal", sample, tuple(x.shape[1:]), dtype=x.dtype, device=x.device).view(
        n, samples, *x.shape[1:])


def test_smoothgrad_of_linear_model_is_its_gradient():
    model = make_mlp()[0]  # nn.Linear(6, 10): the gradient of logit t is W[t] whatever the noise
    x, _, _ = _data("mlp")
    target = torch.tensor([0, 9, 4, 2, 7])
    w = model.weight.detach()[target]
    kw = dict(samples=20, noise_level=0.2, seed=11)
    assert_close(tribute.SmoothGrad(model).attribute(x, target, **kw), w, 1e-13, "smoothgrad linear")
    assert_close(tribute.SmoothGradSquared(model).attribute(x, target, **kw), w**2, 1e-13, "smoothgrad² linear")
    var = tribute.VarGrad(model).attribute(x, target, **kw)
    assert var.abs().max() <= 1e-13 * (w**2).max()  # population variance of K equal values


@pytest.mark.parametrize("sigma", [None, 0.3])  # None: σ_i = noise_level × (max − min of sample i)
def test_smoothgrad_closed_forms_on_sum_and_squares(sigma):
    x, _, _ = _data("mlp")
    samples, seed, level = 12, 4, 0.15
    kw = dict(samples=samples, seed=seed, sigma=sigma, noise_level=level, batch_size=samples * x.shape[0])
    eps = tribute_noise(x, seed, samples)
    s = torch.full((x.shape[0],), sigma, dtype=DT) if sigma is not None else level * (x.amax(1) - x.amin(1))
    noisy = x[:, None] + s.view(-1, 1, 1) * eps  # (N, K, 6)
    mean, mean_sq = noisy.mean(1), (noisy**2).mean(1)

    # f = Σ x with input × gradient: the mean, mean square and variance of the noisy inputs themselves
    ixg = dict(base="input_x_gradient", **kw)
    assert_close(tribute.SmoothGrad(SumOut()).attribute(x, 0, **ixg), mean, 1e-13, "Σx smoothgrad")
    assert_close(tribute.SmoothGradSquared(SumOut()).attribute(x, 0, **ixg), mean_sq, 1e-13, "Σx smoothgrad²")
    var = noisy.var(1, correction=0)
    assert_close(tribute.VarGrad(SumOut()).attribute(x, 0, **ixg), var, 1e-10, "Σx vargrad")

    # f = Σ x² with the gradient 2x: smoothgrad 2x + 2σ·mean ε, smoothgrad² 4·mean (x+σε)², vargrad 4σ²·var ε
    assert_close(tribute.SmoothGrad(SquaresOut()).attribute(x, 0, **kw), 2 * x + 2 * (mean - x), 1e-13,
                 "Σx² smoothgrad")
    assert_close(tribute.SmoothGradSquared(SquaresOut()).attribute(x, 0, **kw), 4 * mean_sq, 1e-13,
                 "Σx² smoothgrad²")
    assert_close(tribute.VarGrad(SquaresOut()).attribute(x, 0, **kw), 4 * var, 1e-10, "Σx² vargrad")
    # the noise is really there: the mean of 12 draws is not the clean input
    assert (mean - x).abs().max() > 1e-2


def test_smoothgrad_is_mean_of_gradients_at_reconstructed_noisy_inputs():
    model = make_cnn()
    x, _, target = _data("cnn")
    samples, seed, sigma = 6, 5, 0.4
    kw = dict(samples=samples, seed=seed, sigma=sigma, batch_size=samples * x.shape[0])
    noisy = x[:, None] + sigma * tribute_noise(x, seed, samples)  # (N, K, 3, 8, 8)
    flat = noisy.reshape(-1, *x.shape[1:])
    grads = tribute.Gradient(model).attribute(flat, target.repeat_interleave(samples)).view_as(noisy)
    mean = grads.mean(1)
    assert_close(tribute.SmoothGrad(model).attribute(x, target, **kw), mean, 1e-12, "cnn smoothgrad")
    assert_close(tribute.SmoothGradSquared(model).attribute(x, target, **kw), (grads**2).mean(1), 1e-12,
                 "cnn smoothgrad²")
    assert_close(tribute.VarGrad(model).attribute(x, target, **kw), grads.var(1, correction=0), 1e-9,
                 "cnn vargrad")
    # base options reach the base method: smoothing guided backprop is the mean of guided backprop
    guided = tribute.GuidedBackprop(model).attribute(flat, target.repeat_interleave(samples)).view_as(noisy)
    assert_close(tribute.SmoothGrad(model).attribute(x, target, base="guided_backprop", **kw), guided.mean(1),
                 1e-12, "cnn smoothgrad of guided backprop")


@pytest.mark.parametrize("features", [16, 6, 3])  # torch's CPU randn takes another path below 16 values
def test_smoothgrad_noise_does_not_depend_on_batch_size(features):
    """randomness.py promises each sample the same noise "with any chunk size"."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, features, generator=g, dtype=DT)
    kw = dict(base="input_x_gradient", samples=10, sigma=1.0, seed=0)
    one_chunk = tribute.SmoothGrad(SumOut()).attribute(x, 0, batch_size=30, **kw)
    for batch_size in (1, 4, 7):
        chunked = tribute.SmoothGrad(SumOut()).attribute(x, 0, batch_size=batch_size, **kw)
        assert_close(chunked, one_chunk, 1e-13, f"batch_size={batch_size}")
