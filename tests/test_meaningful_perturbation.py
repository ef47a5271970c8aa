"""Meaningful perturbation (Fong & Vedaldi 2017): the deletion game finds the one square a model responds to, its
objective decreases, its regulariser and its first step match the definitions worked by hand, a batch equals its
samples one at a time, and bad input gets a clear error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute
from tribute.attribution.perturbation.mask_games import total_variation
from tribute.core.baselines import gaussian_blur

H = 24  # image side
TOP, LEFT, SIDE = 8, 10, 8  # the planted square: rows 8..15, columns 10..17, aligned to cells of 2


class PlantedSquare(nn.Module):
    """Scores class 0 by s = 2 Σ_{u in the square} (x(u) − ½)² − 0.3·side², class 2 by −s, class 1 by 0: the
    model sees the square only, and blurring it (values towards ½) lowers s."""

    def __init__(self, top: int = TOP, left: int = LEFT, side: int = SIDE):
        super().__init__()
        self.top, self.left, self.side = top, left, side

    def forward(self, x):
        sq = x[:, :, self.top:self.top + self.side, self.left:self.left + self.side]
        s = 2 * ((sq - 0.5) ** 2).flatten(1).sum(1) - 0.3 * self.side**2
        return torch.stack([s, torch.zeros_like(s), -s], 1)


def planted_images(n: int = 3, seed: int = 0) -> torch.Tensor:
    """Binary noise of 0.1 and 0.9 over the whole image: every pixel of the square counts, and there is as much
    contrast outside the square as inside (only the model singles it out)."""
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * (torch.rand(n, 1, H, H, generator=g) < 0.5).double()


def square(dilation: int = 0) -> torch.Tensor:
    s = torch.zeros(H, H, dtype=torch.bool)
    s[max(TOP - dilation, 0):TOP + SIDE + dilation, max(LEFT - dilation, 0):LEFT + SIDE + dilation] = True
    return s


def top_pixels_inside(maps: torch.Tensor, k: int, region: torch.Tensor) -> torch.Tensor:
    """The fraction of each map's k largest pixels that lie in ``region``."""
    idx = maps.flatten(1).topk(k, dim=1).indices
    return region.flatten()[idx].double().mean(1)


MP = {"steps": 60, "cell": 2, "sigma": 3.0, "l1_weight": 1e-3, "tv_weight": 1e-3}


def test_the_top_pixels_of_the_deleted_region_lie_in_the_planted_square():
    x = planted_images()
    e = tribute.MeaningfulPerturbation(PlantedSquare(), **MP)
    a = e(x, target=0)
    assert a.shape == (3, 1, H, H) and a.dtype == x.dtype
    inside = top_pixels_inside(a, SIDE * SIDE, square(dilation=MP["cell"]))
    assert bool((inside >= 0.9).all()), inside
    # deleting the region drops the probability of class 0 from its clean value
    assert bool((e.objective[-1] < e.objective[0] - 0.3).all()), e.objective[[0, -1]]


def test_the_objective_decreases():
    x = planted_images(2, seed=3)
    e = tribute.MeaningfulPerturbation(PlantedSquare(), **{**MP, "steps": 40})
    e(x, target=0)
    j = e.objective
    assert j.shape == (40, 2)
    assert bool((j[-5:].max(0).values < j[0]).all())
    # mostly downhill: Adam's steps may overshoot, but no iteration climbs by more than a small amount
    assert float((j[1:] - j[:-1]).max()) < 0.02
    assert e.passes.forward_rows == 40 * 2 and e.passes.backward_rows == 40 * 2


def test_total_variation_worked_by_hand():
    m = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]], dtype=torch.float64)
    # horizontal pairs: |1 − 0|, |0.5 − 0.5|; vertical pairs: |0.5 − 0|, |0.5 − 1|
    assert float(total_variation(m, 2.0)) == pytest.approx(1.0 + 0.25 + 0.25)
    assert float(total_variation(m, 3.0)) == pytest.approx(1.0 + 0.125 + 0.125)
    ramp = torch.arange(4, dtype=torch.float64).view(1, 1, 1, 4) / 3  # 0, 1/3, 2/3, 1 in one row
    assert float(total_variation(ramp, 1.0)) == pytest.approx(1.0)
    assert float(total_variation(ramp, 3.0)) == pytest.approx(3 / 27)


def small_cnn(channels: int = 3, side: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * side * side, 3)).double().eval()


def _objective_by_hand(net, x, m, target, lam1, lam2, beta, sigma):
    """λ₁‖1 − m‖₁ + λ₂ TV_β(m) + softmax(f(m ⊙ x + (1 − m) ⊙ blur(x)))_c, summed over the samples (Eq 4)."""
    up = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
    phi = up * x + (1 - up) * gaussian_blur(x, sigma)
    p = net(phi).softmax(1)[:, target]
    tv = ((up[..., :, 1:] - up[..., :, :-1]).abs().pow(beta).sum()
          + (up[..., 1:, :] - up[..., :-1, :]).abs().pow(beta).sum())
    return (p.sum() + lam1 * (1 - up).sum() + lam2 * tv), up


def test_the_first_step_is_adam_s_on_the_objective_of_eq_4():
    """One Adam step from m = 1: m₁ = clamp(1 − lr·g/(|g| + ε)) with g the gradient of Eq 4, computed here from
    the formula with autograd; the map is 1 − m₁ upsampled."""
    net = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = {"lam1": 1e-3, "lam2": 1e-2, "beta": 3.0, "sigma": 1.5}
    m = torch.ones(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(_objective_by_hand(net, x, m, 1, **kw)[0], m)
    m1 = (1 - 0.1 * g / (g.abs() + 1e-8)).clamp(0, 1)
    expected = 1 - F.interpolate(m1, size=(8, 8), mode="bilinear", align_corners=False)
    a = tribute.explain(net, x, "meaningful_perturbation", target=1, steps=1, cell=2, lr=0.1, l1_weight=kw["lam1"],
                        tv_weight=kw["lam2"], tv_beta=kw["beta"], sigma=kw["sigma"])
    torch.testing.assert_close(a, expected, rtol=1e-10, atol=1e-12)
    assert float(a.max()) > 0  # the step deleted something


@pytest.mark.parametrize("options", [{}, {"jitter": 2, "seed": 4}])
def test_a_batch_equals_its_samples_one_at_a_time(options):
    """Each row's mask follows its own objective: chunks of 2 cut across the 3 samples, and the result is each
    sample's alone (also with jitter, whose translations come from each sample's own stream)."""
    net, x = small_cnn(), torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = {"steps": 8, "cell": 2, "sigma": 1.5, "l1_weight": 1e-5, "tv_weight": 1e-5, **options}
    batched = tribute.explain(net, x, "meaningful_perturbation", target=1, batch_size=2, **kw)
    assert float(batched.std(0).max()) > 0.01  # the samples' maps differ
    for i in range(3):
        alone = tribute.explain(net, x[i:i + 1], "meaningful_perturbation", target=1, **kw)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-12)


def test_jitter_draws_from_the_seed_and_seed_without_jitter_is_refused():
    x = planted_images(2, seed=2)
    kw = {**MP, "steps": 5, "jitter": 2}
    run = lambda **o: tribute.explain(PlantedSquare(), x, "meaningful_perturbation", target=0, **kw, **o)  # noqa: E731
    torch.testing.assert_close(run(seed=1), run(seed=1), rtol=0, atol=0)
    assert not torch.equal(run(seed=1), run(seed=2))
    with pytest.raises(ValueError, match="seed= draws the jitter"):
        tribute.explain(PlantedSquare(), x, "meaningful_perturbation", target=0, steps=2, seed=1)


def test_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).double().eval()
    net[0].weight.requires_grad_(False)  # a mix of frozen and trainable parameters stays as it is
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tribute.explain(net, torch.rand(2, 1, 6, 6, dtype=torch.float64), "meaningful_perturbation", target=1, steps=3,
                    cell=2)
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, True]
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_bad_input_and_options_get_clear_errors():
    net = PlantedSquare()
    with pytest.raises(ValueError, match=r"explains images \(N, C, H, W\)"):
        tribute.explain(lambda t: t[:, :3], torch.rand(2, 5, dtype=torch.float64), "meaningful_perturbation", target=0)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 100000\]"):
        tribute.explain(net, planted_images(1), "meaningful_perturbation", target=0, steps=0)
    with pytest.raises(TypeError, match="differentiable= is not accepted here"):
        tribute.explain(net, planted_images(1), "meaningful_perturbation", target=0, differentiable=True)
    with pytest.raises(ValueError, match="cell must be an integer >= 1"):
        tribute.explain(net, planted_images(1), "meaningful_perturbation", target=0, cell=0)


def test_progress_over_the_iterations_leaves_the_values_as_they_are():
    x = planted_images(1)
    kw = {**MP, "steps": 3}
    plain = tribute.explain(PlantedSquare(), x, "meaningful_perturbation", target=0, **kw)
    shown = tribute.explain(PlantedSquare(), x, "meaningful_perturbation", target=0, progress="mask", **kw)
    torch.testing.assert_close(shown, plain, rtol=0, atol=0)
