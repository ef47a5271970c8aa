"""Axioms: completeness, sensitivity-n (Ancona et al. 2019, Eq 8-9), input invariance (Kindermans et al.
2017) and implementation invariance (Sundararajan et al. 2017).

- IG is complete on any model: the gap vanishes with the quadrature (exactly on a linear model).
- Sensitivity-n at n = N is the completeness statement, draw for draw; on a linear model with removal to
  IG's baseline, Σ_{i∈S} R_i equals the output drop for every subset, so the correlation is 1 for every n < N.
- Input invariance on the Fashion-MNIST fixture with the shift m = −1 (Kindermans et al.'s [0, 1] → [−1, 0]):
  the gradient and guided backprop are invariant, gradient × input, IG from a zero baseline and LRP are not,
  and IG from a baseline that moves with the input (the image mean) is (Kindermans et al. §4).
- Implementation invariance: the fixture with its batch norms folded into the convolutions gives the same
  gradients and IG; a ReLU network that writes a linear unit as relu(h) − relu(−h) gives the same gradients
  but not the same guided backprop (its rule drops the negative signal of one branch).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import fashion_fixture, fixture_module, mlp, residual_cnns
from torch import nn

import tribute
from tribute.metrics import (
    SensitivityN,
    absorb_shift,
    attribution_distance,
    completeness_gap,
    implementation_invariance,
    input_invariance,
    sensitivity_n,
)


def score_gap(model, x, base, target):
    with torch.no_grad():
        return (model(x) - model(base)).gather(1, target.view(-1, 1)).squeeze(1)


def score_scale(model, x, base, target):
    """|S(x)| + |S(x̄)|: the size of the scores the gap is made of (ΔS itself can be near 0)."""
    with torch.no_grad():
        return (model(x).abs() + model(base).abs()).gather(1, target.view(-1, 1)).squeeze(1)


def predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# -- completeness -----------------------------------------------------------------------------------------------
def test_completeness_gap_by_hand():
    """f(x) = w·x + b: the gap of any attribution a is Σa − w·(x − x̄)."""
    lin = nn.Linear(3, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        lin.bias.fill_(4.0)
    model = nn.Sequential(lin).eval()
    x = torch.tensor([[1.0, 1.0, 2.0], [0.0, 3.0, -2.0]], dtype=torch.float64)
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    gap = completeness_gap(model, x, a, 0)
    assert gap.tolist() == pytest.approx([0 - (1 - 2 + 1), 3 - (0 - 6 - 1)])
    gap = completeness_gap(model, x, a, 0, baseline=torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    assert gap.tolist() == pytest.approx([0 - 0.5, 3 - (-1 - 4 - 1.5)])  # x − x̄ = (0, 0, 1), (−1, 2, −3)


# relative completeness gap |Σ IG − ΔS| / (|S(x)| + |S(x̄)|) allowed: smooth models with 64 Gauss-Legendre nodes reach
# rounding (measured ≤ 1.4e-16 absolute); on ReLU models the path crosses kinks and the quadrature error
# falls slowly (measured with 256 nodes, zero / mean baseline: Fashion CNN 2.7e-3 / 1.2e-3, residual CNN
# 7e-5 / 1.1e-4; the Fashion CNN's 2.7e-3 falls to 3.3e-4 with 1024 nodes)
SMOOTH_GAP, RELU_GAP = 1e-12, 5e-3


@pytest.mark.parametrize("case", ["tanh_mlp", "softplus_mlp", "relu_residual_cnn", "fashion_cnn"])
def test_integrated_gradients_is_complete(case):
    """Σ IG = S(x) − S(x̄) up to the quadrature error, for the zero baseline and a per-sample mean baseline."""
    g = torch.Generator().manual_seed(0)
    if case.endswith("mlp"):
        model = mlp(act=nn.Tanh if case == "tanh_mlp" else nn.Softplus)
        x = torch.randn(5, 6, generator=g, dtype=torch.float64)
        steps, allowed = 64, SMOOTH_GAP
    elif case == "relu_residual_cnn":
        model = residual_cnns()["modules"]
        x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
        steps, allowed = 256, RELU_GAP
    else:
        model, x, _ = fashion_fixture(3, torch.float64)
        steps, allowed = 256, RELU_GAP
    t = predicted(model, x)
    for baseline in ("zero", "mean"):
        ig = tribute.explain(model, x, "integrated_gradients", target=t, baseline=baseline, steps=steps)
        gap = completeness_gap(model, x, ig, t, baseline=0 if baseline == "zero" else "mean")
        mean = x.mean(tuple(range(2, x.dim())) or 1, keepdim=True).expand_as(x)
        scale = score_scale(model, x, torch.zeros_like(x) if baseline == "zero" else mean, t)
        assert bool((gap.abs() <= allowed * scale).all()), (baseline, gap, scale)


def test_gradient_x_input_is_not_complete():
    """The metric tells methods apart: on a ReLU CNN with biases, gradient × input misses a large share."""
    model = residual_cnns()["modules"]
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = predicted(model, x)
    gap = completeness_gap(model, x, tribute.explain(model, x, "input_x_gradient", target=t), t)
    assert bool((gap.abs() > 0.05 * score_gap(model, x, torch.zeros_like(x), t).abs()).all())


# -- sensitivity-n ------------------------------------------------------------------------------------------------
def test_sensitivity_n_at_n_equals_features_is_completeness():
    """n = N: every draw is the full set, Σ R − drop is the completeness gap and the correlation is undefined."""
    model = residual_cnns()["modules"]
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = predicted(model, x)
    ig = tribute.explain(model, x, "integrated_gradients", target=t, steps=32)
    r = sensitivity_n(model, x, ig, t, ns=[1, 17, 192], samples=8, seed=0)
    gap = completeness_gap(model, x, ig, t)
    assert torch.allclose(r.attribution_sums[:, -1] - r.output_drops[:, -1], gap.view(-1, 1).expand(3, 8),
                          rtol=0, atol=1e-12)
    assert bool(r.correlation[:, -1].isnan().all()) and not bool(r.correlation[:, :-1].isnan().any())


@pytest.mark.parametrize("as_map", [False, True])
def test_sensitivity_n_is_one_for_every_n_on_a_linear_model(as_map):
    """Linear model, removal to IG's baseline x̄: Σ_{i∈S} R_i = Σ_{i∈S} w_i (x_i − x̄_i) = S(x) − S(x \\ x_S)
    for every subset, so the Pearson correlation is 1 for every n < N.  With a (N, 1, H, W) map (channels
    summed), features are pixels and the same holds."""
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double().eval()
    x = torch.rand(3, 3, 4, 4, generator=g, dtype=torch.float64)
    base = torch.rand(3, 4, 4, generator=g, dtype=torch.float64)
    ig = tribute.explain(model, x, "integrated_gradients", target=2, baseline=base, steps=4)
    if as_map:
        ig = ig.sum(1, keepdim=True)
    features = ig[0].numel()
    r = sensitivity_n(model, x, ig, 2, ns=list(range(1, features)), samples=12, baseline=base, seed=5)
    assert isinstance(r, SensitivityN) and r.correlation.shape == (3, features - 1)
    assert torch.allclose(r.attribution_sums, r.output_drops, rtol=0, atol=1e-12)
    assert torch.allclose(r.correlation, torch.ones_like(r.correlation), rtol=0, atol=1e-9)
    assert torch.allclose(r.score, torch.ones(3, dtype=torch.float64), atol=1e-9)


def test_sensitivity_n_subsets_have_size_n_and_are_uniform():
    """With R = 1 everywhere, Σ_{i∈S} R_i is |S| = n exactly; each feature is drawn with frequency n / N."""
    model = mlp(sizes=(10, 4, 3))
    x = torch.randn(2, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    r = sensitivity_n(model, x, torch.ones_like(x), 0, ns=[1, 3, 9], samples=400, seed=1)
    assert torch.equal(r.attribution_sums, torch.tensor([1.0, 3, 9]).view(1, 3, 1).expand(2, 3, 400).double())
    # frequency of feature 0 in the size-3 subsets: the sum over subsets with R = e_0
    e0 = torch.zeros_like(x)
    e0[:, 0] = 1
    f0 = sensitivity_n(model, x, e0, 0, ns=[1, 3, 9], samples=400, seed=1).attribution_sums.mean(2)
    assert torch.allclose(f0, torch.tensor([0.1, 0.3, 0.9], dtype=torch.float64).expand(2, 3), atol=0.06)


def test_sensitivity_n_batch_independence():
    model = residual_cnns()["modules"]
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a = tribute.explain(model, x, "input_x_gradient", target=1)
    kw = {"ns": [2, 30], "samples": 10, "seed": 9}
    together = sensitivity_n(model, x, a, 1, batch_size=64, **kw)
    alone = sensitivity_n(model, x[1:2], a[1:2], 1, batch_size=3, **kw)
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = sensitivity_n(model, x[perm], a[perm], 1, batch_size=7, **kw)
    for field in ("attribution_sums", "output_drops", "correlation"):
        assert torch.allclose(getattr(alone, field)[0], getattr(together, field)[1], rtol=0, atol=1e-10)
        assert torch.allclose(getattr(shuffled, field), getattr(together, field)[perm], rtol=0, atol=1e-10)


def test_default_subset_sizes():
    model = mlp(sizes=(6, 8, 3))
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    r = sensitivity_n(model, x, torch.randn(x.shape, generator=torch.Generator().manual_seed(8),
                                            dtype=torch.float64), 0, samples=5, seed=0)
    assert r.ns.tolist() == [1, 2, 3, 4, 5]  # log-spaced sizes in [1, N − 1], deduplicated


# -- input invariance ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion():
    return fashion_fixture(8)


def test_absorb_shift_is_exact_and_leaves_the_model_alone(fashion):
    """The copy computes on x + m what the model computes on x (conv with zero padding: the copy pads with m);
    the user's model keeps its parameters and gains no hooks."""
    model, x, _ = fashion
    before = copy.deepcopy(model.state_dict())
    shifted = absorb_shift(model, -1.0, x)
    with torch.no_grad():
        # float32: the absorbed bias b − W·m rounds differently from W·(x − m) + b; logits of size ~10 agree to a
        # few float32 ulps (1.5e-5 seen on this machine's convolution kernels)
        torch.testing.assert_close(shifted(x - 1.0), model(x), rtol=1e-5, atol=5e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
    # float64, per-channel shift, a residual CNN and an MLP behind a flatten
    net = residual_cnns()["modules"]
    xs = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64).view(3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(absorb_shift(net, m, xs)(xs + m), net(xs), rtol=0, atol=1e-12)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(12, 4, bias=False), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    xf = torch.rand(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mf = torch.rand(3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))  # any shift: dense
    with torch.no_grad():
        assert torch.allclose(absorb_shift(flat, mf, xf)(xf + mf), flat(xf), rtol=0, atol=1e-12)
    assert flat[1].bias is None


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_absorb_shift_other_padding_modes(padding_mode):
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode), nn.ReLU(), nn.Flatten()).double()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(absorb_shift(conv.eval(), 0.7, x)(x + 0.7), conv(x), rtol=0, atol=1e-12)


INVARIANT_MAX, VARIANT_MIN = 1e-3, 0.3  # measured: 0 (gradient, guided), ≤ 4.9e-5 (IG mean); ≥ 0.94 otherwise


@pytest.mark.parametrize("method, options, invariant", [
    ("gradient", {}, True),
    ("guided_backprop", {}, True),
    ("integrated_gradients", {"baseline": "mean", "steps": 16}, True),
    ("input_x_gradient", {}, False),
    ("integrated_gradients", {"steps": 16}, False),
    ("lrp_epsilon", {}, False),
    ("lrp", {}, False),
])
def test_input_invariance_on_fashion(fashion, method, options, invariant):
    model, x, y = fashion
    d = input_invariance(model, x, method, -1.0, target=y, **options)
    assert d.shape == (8,)
    if invariant:
        assert float(d.max()) < INVARIANT_MAX
    else:
        assert float(d.min()) > VARIANT_MIN


def test_input_invariance_refuses_what_a_bias_cannot_absorb(fashion):
    model, x, _ = fashion
    with pytest.raises(ValueError, match="constant over positions"):
        input_invariance(model, x, "gradient", torch.linspace(0, 1, 28).view(1, 1, 28))
    with pytest.raises(ValueError, match="broadcast"):
        input_invariance(model, x, "gradient", torch.ones(2, 1, 1))

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, z):
            return self.fc(2 * z)

    with pytest.raises(ValueError, match="raw input"):
        input_invariance(Scaled().eval(), torch.rand(3, 4), "gradient", 1.0)


# -- implementation invariance ------------------------------------------------------------------------------------
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A functionally equal copy of the Fashion CNN with each batch norm folded into the convolution before it."""
    folded = copy.deepcopy(model)
    layers = list(folded.features)
    kept = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d):
            conv = kept[-1]
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            with torch.no_grad():
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias.copy_((conv.bias - layer.running_mean) * scale + layer.bias)
        else:
            kept.append(layer)
    folded.features = nn.Sequential(*kept)
    return folded.eval()


class LinearThroughRelus(nn.Module):
    """relu(W₂ (relu(h) − relu(−h)) + b₂) with h = W₁x + b₁: the same function as relu(W₂ h + b₂), written
    with two ReLU branches."""

    def __init__(self, plain: nn.Sequential):
        super().__init__()
        self.first, self.second, self.head = copy.deepcopy(plain[0]), copy.deepcopy(plain[1]), copy.deepcopy(plain[3])

    def forward(self, x):
        h = self.first(x)
        return self.head(torch.relu(self.second(torch.relu(h) - torch.relu(-h))))


def test_implementation_invariance():
    module = fixture_module("fashion")
    model = module.load().double()
    x = module.samples()[0][:4].double()
    folded = fold_batch_norm(model)
    for method, opts in (("gradient", {}), ("integrated_gradients", {"steps": 16})):
        assert float(implementation_invariance(model, folded, x, method, **opts).max()) < 1e-10
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    branches = LinearThroughRelus(plain).eval()
    xs = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(implementation_invariance(plain, branches, xs, "gradient").max()) < 1e-12
    assert float(implementation_invariance(plain, branches, xs, "guided_backprop").min()) > 0.1


def test_implementation_invariance_refuses_different_functions():
    a, b = mlp(seed=0), mlp(seed=1)
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="differ"):
        implementation_invariance(a, b, x, "gradient")


def test_attribution_distance_by_hand():
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[3.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert attribution_distance(a, b).tolist() == [4 / 5, 0.0]
    assert attribution_distance(a, b, "l2").tolist() == [4.0, 0.0]
    assert attribution_distance(a, b, "max_abs").tolist() == [4.0, 0.0]
    with pytest.raises(ValueError, match="distance"):
        attribution_distance(a, b, "cosine")


# -- bad input ------------------------------------------------------------------------------------------------------
def test_bad_input_is_refused():
    model = mlp()
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for fn in (completeness_gap, sensitivity_n):
        with pytest.raises(ValueError, match="shape"):
            fn(model, x, a[:, :5], 0)
        with pytest.raises(ValueError, match="NaN"):
            fn(model, x, a * float("nan"), 0)
        with pytest.raises(ValueError, match="no samples"):
            fn(model, x[:0], a[:0], 0)
        with pytest.raises(IndexError, match="out of range"):
            fn(model, x, a, 7)
    with pytest.raises(ValueError, match="ns"):
        sensitivity_n(model, x, a, 0, ns=[0, 3])
    with pytest.raises(ValueError, match="ns"):
        sensitivity_n(model, x, a, 0, ns=[3, 7])
    with pytest.raises(ValueError, match="strictly increasing"):
        sensitivity_n(model, x, a, 0, ns=[3, 2])
    with pytest.raises(ValueError, match="samples"):
        sensitivity_n(model, x, a, 0, samples=1)
    with pytest.raises(ValueError, match="baseline"):
        completeness_gap(model, x, a, 0, baseline="black")
    with pytest.raises(ValueError, match="probability"):
        completeness_gap(model, x, a, lambda out: out[:, 0], score="probability")
