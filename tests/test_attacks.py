"""Attacks on models (tribute.robust.fgsm, tribute.robust.pgd): geometry, analytic cases, references, invariance.

- PGD never leaves the ε-ball or the input range, in L2 and L∞, on batches with the random start on; the
  check is exact in the input's dtype (no tolerance), in float32 and float64.
- The random start is uniform in the ball (Kolmogorov-Smirnov tests on the radius law (‖δ‖₂/ε)^d ∼ U(0, 1) and
  on the coordinates δ_i/ε ∼ U(−1, 1)), for every sample of a batch.
- On a two-class linear model (logits Wx + b) the minimal distance to the decision boundary is analytic,
  d* = |Δw·x + Δb| / ‖Δw‖_q with q the dual norm (2 for L2, 1 for L∞): PGD succeeds at ε = d*(1 + δ) and fails
  at d*(1 − δ).
- FGSM moves the cross-entropy up by ε‖∇L‖₁ to first order; Captum's default FGSM loss, −log(output), assumes
  probabilities, and on logits it can point the wrong way (the cross-entropy goes down).  With the
  cross-entropy as its loss Captum's FGSM and L∞ PGD give our points.
- Per-sample results do not depend on batch-mates, position or batch_size; the model's modes, flags,
  gradients and state are untouched; bad input raises errors naming the option.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import mlp, residual_cnns
from scipy import stats
from torch import nn

import tribute
from tribute.robust import fgsm, pgd


def cross_entropy(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def norms(d: torch.Tensor, norm: str) -> torch.Tensor:
    return d.flatten(1).abs().amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)


# ---------------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_pgd_never_leaves_the_ball_or_the_range(norm, eps, dtype):
    """Batch of 12 images in [0, 1] (many pixels near 0 and 1, so the range binds), random start, a step of
    half the radius: every iterate is projected; the result is within ε and [0, 1] exactly."""
    model = residual_cnns(dtype=dtype)["modules"]
    g = torch.Generator().manual_seed(3)
    x = torch.rand(12, 3, 8, 8, generator=g, dtype=torch.float64).pow(3).to(dtype)  # skewed towards 0
    x[:4] = 1 - x[:4]  # and some towards 1
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = pgd(model, x, y, norm=norm, eps=eps, step_size=eps / 2, steps=6, bounds=(0, 1), seed=0)
    assert adv.shape == x.shape and adv.dtype == dtype
    assert bool((norms(adv - x, norm) <= eps).all())
    assert bool((adv >= 0).all()) and bool((adv <= 1).all())
    # the constraints are active: the attack went to the boundary of the ball for most samples and the range
    # clipped some pixels (a test that passes because nothing moved would prove nothing)
    assert (norms(adv - x, norm) > 0.9 * eps).float().mean() > 0.5
    assert bool(((adv == 0) & (x > 0)).any()) and bool(((adv == 1) & (x < 1)).any())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_rounding_never_puts_the_point_outside(norm):
    """float32 inputs in [100, 101), where the grid spacing is 2⁻¹⁷ ≈ 7.6e-6, and a tiny ε: x + δ rounds to that
    grid, so the plain projection gives fl(x' − x) > ε for many samples (checked below); the result is inside."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4)).eval()
    x = 100 + torch.rand(8, 3, 4, 4)
    y = torch.arange(8) % 4
    eps = 1.2e-4 if norm == "linf" else 4e-4  # L∞: ε / spacing = 15.7 rounds up to 16 spacings
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    plain = x + (eps * g.sign() if norm == "linf" else eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    assert bool((norms(plain - x, norm) > eps).any())
    adv = pgd(model, x, y, norm=norm, eps=eps, step_size=eps, steps=3, seed=1)
    assert bool((norms(adv - x, norm) <= eps).all())
    assert bool((norms(adv - x, norm) > 0.5 * eps).all())


def zero_gradient_model(d: int, dtype=torch.float64) -> nn.Module:
    """Constant logits: the loss gradient is exactly 0, so PGD's steps do not move and it returns its start."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 3)).to(dtype).eval()
    with torch.no_grad():
        model[1].weight.zero_()
    return model


def test_random_start_is_uniform_in_the_l2_ball():
    """d = 5 elements, 1000 samples: (‖δ‖/ε)^d ∼ U(0, 1) (the radius law of the uniform ball) and the
    direction is isotropic (E u = 0, E u_i² = 1/d)."""
    d, n, eps = 5, 1000, 0.3
    x = torch.rand(n, 1, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = pgd(zero_gradient_model(d), x, torch.zeros(n, dtype=torch.long), norm="l2", eps=eps, step_size=0.1,
                steps=1, seed=7)
    delta = (start - x).flatten(1)
    r = delta.norm(dim=1)
    assert bool((r <= eps).all())
    assert stats.kstest((r / eps).pow(d).numpy(), "uniform").pvalue > 1e-3
    u = delta / r[:, None]
    assert u.mean(0).abs().max() < 4 / n**0.5
    assert (u.pow(2).mean(0) - 1 / d).abs().max() < 0.05


def test_random_start_is_uniform_in_the_linf_box():
    d, n, eps = 4, 500, 0.25
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start = pgd(zero_gradient_model(d), x, torch.zeros(n, dtype=torch.long), norm="linf", eps=eps, step_size=0.1,
                steps=1, seed=3)
    v = ((start - x) / eps).flatten()
    assert stats.kstest(v.numpy(), stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3
    # every sample of the batch has its own draw (a start shared across the batch would repeat rows)
    rows = (start - x).round(decimals=12)
    assert len(torch.unique(rows, dim=0)) == n


# ----------------------------------------------------------------------------------- analytic: linear classifier


def linear_pair(d=16, n=10, seed=0, distance=1.0, norm="l2"):
    """A two-class linear model and inputs all at distance ``distance`` (in ``norm``) from its boundary.

    Logit difference m(x) = Δw·x + Δb (Δw = w₁ − w₀); the nearest point of the boundary is at
    |m(x)| / ‖Δw‖_q (q = 2 for L2, q = 1 for L∞: the dual norms).  Random points are moved along Δw to
    margin ±distance·‖Δw‖_q (alternating sides, so both classes are attacked).
    """
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 2).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, d, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(2, generator=g, dtype=torch.float64))
    dw = (model.weight[1] - model.weight[0]).detach()
    db = (model.bias[1] - model.bias[0]).detach()
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    side = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(n // 2 + 1)[:n]
    target_margin = side * distance * dw.norm(p=2 if norm == "l2" else 1)
    x = x + ((target_margin - (x @ dw + db)) / dw.dot(dw))[:, None] * dw
    y = (x @ dw + db > 0).long()
    return model, x, y, dw, db


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_succeeds_just_beyond_and_fails_just_within_the_minimal_distance(norm, random_start):
    model, x, y, dw, db = linear_pair(norm=norm)
    dual = 2 if norm == "l2" else 1
    d_star = (x @ dw + db).abs() / dw.norm(p=dual)
    assert torch.allclose(d_star, torch.ones_like(d_star))
    delta = 0.05
    for factor, should_flip in ((1 + delta, True), (1 - delta, False)):
        eps = factor * 1.0
        adv = pgd(model, x, y, norm=norm, eps=eps, step_size=2.5 * eps / 40, steps=40, random_start=random_start,
                  seed=0)
        with torch.no_grad():
            flipped = model(adv).argmax(1) != y
        assert bool((flipped == should_flip).all()), (factor, flipped)
        assert bool((norms(adv - x, norm) <= eps).all())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_targeted_pgd_reaches_the_target_just_beyond_the_distance(norm):
    model, x, y, dw, db = linear_pair(norm=norm, seed=1)
    target = 1 - y
    adv = pgd(model, x, target, norm=norm, eps=1.05, step_size=2.5 * 1.05 / 30, steps=30, targeted=True, seed=0)
    with torch.no_grad():
        assert bool((model(adv).argmax(1) == target).all())
    adv = pgd(model, x, target, norm=norm, eps=0.95, step_size=2.5 * 0.95 / 30, steps=30, targeted=True, seed=0)
    with torch.no_grad():
        assert bool((model(adv).argmax(1) == y).all())


def test_l2_step_follows_the_normalised_gradient_not_its_sign():
    """One L2 step from x, ball large enough not to bind: x' = x + α ∇L / ‖∇L‖₂ (hand-computed gradient)."""
    model = mlp(act=nn.Tanh, sizes=(6, 8, 3))
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    leaf = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(model(leaf), y, reduction="sum"), leaf)
    alpha = 0.1
    expected = x + alpha * g / g.norm(dim=1, keepdim=True)
    adv = pgd(model, x, y, norm="l2", eps=10.0, step_size=alpha, steps=1, random_start=False)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-14)
    assert not torch.allclose(adv, x + alpha * g.sign() / 6**0.5)  # a sign step of the same length differs


# ------------------------------------------------------------------------------------------- FGSM and the loss


def test_fgsm_raises_the_cross_entropy_by_eps_times_the_gradients_l1_norm():
    """First order: L(x + ε sign ∇L) − L(x) = ε ‖∇L‖₁ + O(ε²), for every sample (smooth tanh network)."""
    model = mlp(act=nn.Tanh, sizes=(6, 16, 16, 4))
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.arange(16) % 4
    leaf = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(model(leaf), y, reduction="sum"), leaf)
    eps = 1e-5
    adv = fgsm(model, x, y, eps=eps)
    # to the last bit but one: where fl(x + ε) − x rounds above ε the point is moved one ulp inwards
    torch.testing.assert_close(adv, x + eps * g.sign(), rtol=0, atol=1e-15)
    assert bool(((adv - x).abs() <= eps).all())
    rise = cross_entropy(model, adv, y) - cross_entropy(model, x, y)
    assert bool((rise > 0).all())
    torch.testing.assert_close(rise, eps * g.abs().sum(1), rtol=1e-3, atol=0)
    # larger budget, still up for every sample
    assert bool((cross_entropy(model, fgsm(model, x, y, eps=0.1), y) > cross_entropy(model, x, y)).all())


def wrong_way_model() -> nn.Module:
    """Logits z₀ = w·x + 5, z₁ = 3 w·x: at w·x = 1, z = (6, 3), class 0, both logits positive."""
    model = nn.Linear(2, 2).double().eval()
    with torch.no_grad():
        w = torch.tensor([0.5, 0.25], dtype=torch.float64)
        model.weight.copy_(torch.stack([w, 3 * w]))
        model.bias.copy_(torch.tensor([5.0, 0.0], dtype=torch.float64))
    return model


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_captums_default_fgsm_loss_points_the_wrong_way_on_logits():
    """Captum's default loss −log(output_y) ascends by lowering z_y; here z₁ falls three times as fast as z₀,
    so the margin z₀ − z₁ grows and the cross-entropy goes *down*.  tribute's FGSM (cross-entropy on the
    logits) raises it.  By hand: ε = 0.1, sign step −(1, 1) for Captum, w·x drops by 0.075, the margin
    by −2·0.075: it grows from 3 to 3.15."""
    captum_robust = pytest.importorskip("captum.robust")
    model = wrong_way_model()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)  # w·x = 1
    y = torch.tensor([0])
    captum_adv = captum_robust.FGSM(model).perturb(x, epsilon=0.1, target=0)
    torch.testing.assert_close(captum_adv, x - 0.1)
    ours = fgsm(model, x, y, eps=0.1)
    torch.testing.assert_close(ours, x + 0.1)
    before = cross_entropy(model, x, y)
    assert cross_entropy(model, captum_adv, y) < before < cross_entropy(model, ours, y)
    with torch.no_grad():
        margin = model(captum_adv)[0, 0] - model(captum_adv)[0, 1]
    assert abs(float(margin) - 3.15) < 1e-12


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_captum_with_the_cross_entropy_gives_our_fgsm_and_linf_pgd():
    captum_robust = pytest.importorskip("captum.robust")
    model = mlp(act=nn.Tanh, sizes=(6, 16, 4))
    g = torch.Generator().manual_seed(5)
    x = torch.rand(10, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=g)

    def ce(out, t):
        return F.cross_entropy(out, t, reduction="none")

    theirs = captum_robust.FGSM(model, loss_func=ce, lower_bound=0.0, upper_bound=1.0).perturb(x, 0.05, y)
    torch.testing.assert_close(fgsm(model, x, y, eps=0.05, bounds=(0, 1)), theirs, rtol=0, atol=1e-15)
    theirs = captum_robust.PGD(model, loss_func=ce, lower_bound=0.0, upper_bound=1.0).perturb(
        x, radius=0.1, step_size=0.03, step_num=7, target=y, random_start=False, norm="Linf")
    ours = pgd(model, x, y, norm="linf", eps=0.1, step_size=0.03, steps=7, random_start=False, bounds=(0, 1))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-15)


def test_custom_loss_and_targeted_are_the_same_descent():
    """loss = −CE ascended is CE descended: pgd(loss=−CE) equals pgd(targeted=True), and a custom loss must
    give one value per sample."""
    model = mlp(act=nn.Tanh, sizes=(6, 16, 4))
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.tensor([3, 2, 1, 0, 3, 2])
    kw = {"norm": "l2", "eps": 0.5, "step_size": 0.1, "steps": 5, "seed": 2}
    a = pgd(model, x, t, loss=lambda out, lab: -F.cross_entropy(out, lab, reduction="none"), **kw)
    b = pgd(model, x, t, targeted=True, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert bool((cross_entropy(model, b, t) < cross_entropy(model, x, t)).all())
    with pytest.raises(ValueError, match="one loss per sample"):
        pgd(model, x, t, loss=lambda out, lab: F.cross_entropy(out, lab), **kw)


def test_input_transform_keeps_eps_in_pixel_space():
    """pgd(model, x, input_transform=Normalize) equals pgd(Normalize-then-model, x): the budget and the bounds
    are in pixels, whatever the model sees."""
    model = residual_cnns()["modules"]
    normalize = tribute.Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(normalize(x))

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    kw = {"norm": "linf", "eps": 0.03, "step_size": 0.01, "steps": 4, "bounds": (0, 1), "seed": 5}
    a = pgd(model, x, y, input_transform=normalize, **kw)
    b = pgd(Wrapped().eval(), x, y, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert bool(((a - x).abs() <= 0.03).all())


def test_a_zero_gradient_sample_does_not_move():
    model = zero_gradient_model(4)
    x = torch.rand(3, 4, dtype=torch.float64)
    adv = pgd(model, x, torch.zeros(3, dtype=torch.long), norm="l2", eps=0.5, step_size=0.2, steps=3,
              random_start=False)
    assert torch.equal(adv, x)


# --------------------------------------------------------------------------------- per sample; model untouched


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_results_do_not_depend_on_batch_mates(norm):
    model = mlp(sizes=(6, 16, 16, 4))
    g = torch.Generator().manual_seed(9)
    x = torch.rand(7, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    kw = {"norm": norm, "eps": 0.2, "step_size": 0.05, "steps": 5, "bounds": (0, 1), "seed": 11}
    full = pgd(model, x, y, **kw)
    alone = torch.cat([pgd(model, x[i:i + 1], y[i:i + 1], **kw) for i in range(7)])
    chunked = pgd(model, x, y, batch_size=3, **kw)
    perm = torch.tensor([6, 2, 0, 5, 1, 3, 4])
    permuted = pgd(model, x[perm], y[perm], **kw)
    for other in (alone, chunked, permuted[perm.argsort()]):
        torch.testing.assert_close(other, full, rtol=0, atol=1e-12)
    # the seed matters: same seed, same points; another seed, another random start
    torch.testing.assert_close(pgd(model, x, y, **kw), full, rtol=0, atol=0)
    assert not torch.allclose(pgd(model, x, y, **{**kw, "seed": 12}), full)


class ModalNet(nn.Module):
    """Batch norm and dropout (their outputs depend on the mode), one frozen parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_model_modes_flags_gradients_and_state_are_untouched():
    torch.manual_seed(0)
    model = ModalNet().double().train()
    model.bn.eval()  # mixed modes must survive (restoring only the top flag would set bn to train)
    model.conv.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    a = pgd(model, x, y, norm="l2", eps=0.5, step_size=0.1, steps=3, seed=0, bounds=(0, 1))
    b = pgd(model, x, y, norm="l2", eps=0.5, step_size=0.1, steps=3, seed=0, bounds=(0, 1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # dropout off during the attack: eval mode
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert not model.conv.bias.requires_grad and model.conv.weight.requires_grad
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running statistics not updated
    with pytest.raises(ValueError, match="out of range"):
        pgd(model, x, torch.tensor([0, 1, 2, 9]), norm="l2", eps=0.5, step_size=0.1, steps=3)
    assert {n: m.training for n, m in model.named_modules()} == modes  # restored on error too


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,error,match", [
    ({"eps": 0.0}, ValueError, "eps must be > 0"),
    ({"eps": -0.1}, ValueError, "eps must be > 0"),
    ({"eps": float("nan")}, TypeError, "eps must be a real number"),
    ({"eps": float("inf")}, ValueError, "eps must be finite"),
    ({"norm": "l1"}, ValueError, "norm must be one of 'linf', 'l2'"),
    ({"step_size": 0.0}, ValueError, "step_size must be > 0"),
    ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
    ({"steps": 2.5}, ValueError, "steps must be an integer"),
    ({"bounds": (1, 0)}, ValueError, "lo < hi"),
    ({"bounds": (0.2, 1)}, ValueError, "outside bounds"),
    ({"bounds": 1.0}, TypeError, "pair"),
    ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
    ({"random_start": 1}, TypeError, "random_start must be True or False"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
])
def test_bad_options_raise_clear_errors(kwargs, error, match):
    model = mlp(sizes=(6, 8, 3))
    x = torch.linspace(0, 1, 12, dtype=torch.float64).view(2, 6)
    y = torch.tensor([0, 1])
    options = {"norm": "linf", "eps": 0.1, "step_size": 0.05, "steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        pgd(model, x, y, **options)


@pytest.mark.parametrize("labels,error,match", [
    (torch.tensor([0]), ValueError, r"shape \(2,\)"),
    (torch.tensor([[0, 1]]), ValueError, r"shape \(2,\)"),
    (torch.tensor([0, 3]), ValueError, "label 3 is out of range for a model with 3 outputs"),
    (torch.tensor([0, -1]), ValueError, ">= 0"),
    (torch.tensor([0.0, 1.0]), TypeError, "integers"),
    ([0, 1], TypeError, "tensor"),
])
def test_bad_labels_raise_clear_errors(labels, error, match):
    model = mlp(sizes=(6, 8, 3))
    x = torch.rand(2, 6, dtype=torch.float64)
    with pytest.raises(error, match=match):
        fgsm(model, x, labels, eps=0.1)


def test_bad_inputs_raise_clear_errors():
    model = mlp(sizes=(6, 8, 3))
    y = torch.tensor([0, 1])
    with pytest.raises(TypeError, match="float64"):
        fgsm(model, torch.rand(2, 6), y, eps=0.1)  # float32 inputs, float64 model
    with pytest.raises(ValueError, match="NaN or inf"):
        fgsm(model, torch.tensor([[float("nan")] * 6, [0.0] * 6], dtype=torch.float64), y, eps=0.1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        fgsm(model, torch.rand(2, 6, dtype=torch.float64), y, eps=0)


def test_the_engine_counts_an_attacks_passes():
    """One forward and one backward row per sample and step: PGD's cost shows in tribute.count_passes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3)).eval()
    x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
    with tribute.count_passes() as passes:
        pgd(model, x, y, norm="l2", eps=0.1, step_size=0.05, steps=4, seed=0)
    assert (passes.forward_rows, passes.backward_rows) == (5 * 4, 5 * 4)
    with tribute.count_passes() as passes:
        fgsm(model, x, y, eps=0.1)
    assert (passes.forward_rows, passes.backward_rows) == (5, 5)
