"""RISE (Petsiuk et al. 2018): Eq 6 by hand, its closed form on a linear model, the standard error's calibration,
the planted square, per-sample streams, tolerance rounds and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_alone_and_in_any_batch
from torch import nn

import tribute
from tribute.attribution.perturbation.rise import MaskSampler

DT = torch.float64


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).to(DT).eval()


def images(n: int = 3, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=DT)


class Linear(nn.Module):
    """f(x) = Σ w ⊙ x + c for class 0 (class 1 is its negative)."""

    def __init__(self, shape, seed: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(*shape, generator=g, dtype=DT))
        self.c = nn.Parameter(torch.tensor(0.3, dtype=DT))

    def forward(self, x):
        f = (x * self.w).flatten(1).sum(1) + self.c
        return torch.stack([f, -f], 1)


class Square(nn.Module):
    """Responds only to the square rows 8–11, columns 14–17 (all channels) of a 24 × 24 image."""

    top, left, side = 8, 14, 4

    def forward(self, x):
        s = x[:, :, self.top:self.top + self.side, self.left:self.left + self.side].mean((1, 2, 3))
        return torch.stack([F.softplus(4 * s), -s], 1)


class RowCounter(nn.Module):
    """Records the most rows the model saw in one call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.most = net, 0

    def forward(self, x):
        self.most = max(self.most, x.shape[0])
        return self.net(x)


def test_eq6_by_hand_with_the_sampler_s_masks_and_the_sample_standard_deviation():
    """S = 1/(p K) Σ_i f(I ⊙ M_i + b ⊙ (1 − M_i)) M_i, its standard error sd_i(f_i M_i / p) / √K, with the masks the
    sample's stream gives one after another and a baseline other than 0."""
    net, x, k, p = small_cnn(), images(2), 40, 0.4
    baseline = torch.full_like(x, 0.25)
    explainer = tribute.Rise(net, masks=k, p=p, cell=3, seed=7, baseline=0.25, batch_size=13)
    s = explainer.attribute(x, target=2)
    for i in range(2):
        masks = MaskSampler(x[i:i + 1], (3, 3), p, 7).draw(torch.zeros(k, dtype=torch.long))  # sample i's stream
        m = masks[:, None]
        with torch.no_grad():
            f = net(x[i] * m + baseline[i] * (1 - m))[:, 2]
        y = f.view(-1, 1, 1) * masks / p
        torch.testing.assert_close(s[i, 0], y.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(explainer.standard_error[i, 0], y.std(0) / k ** 0.5, rtol=1e-9, atol=1e-12)
    assert explainer.passes.forward_rows == 2 * (1 + k)


def test_the_masks_are_the_paper_s_construction():
    """Values in [0, 1]; E[M(λ)] = p at every pixel (a convex combination of the cells); one cell per image: a
    constant mask; p = 1: all ones."""
    x = images(1, size=9)
    masks = MaskSampler(x, (3, 3), 0.3, 0).draw(torch.zeros(20_000, dtype=torch.long))
    assert masks.shape == (20_000, 9, 9) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    se = masks.std(0) / 20_000 ** 0.5
    assert float(((masks.mean(0) - 0.3).abs() / se).max()) < 4.5
    one_cell = MaskSampler(x, (9, 9), 0.5, 0).draw(torch.zeros(50, dtype=torch.long))
    assert torch.equal(one_cell, one_cell[:, :1, :1].expand_as(one_cell))
    assert set(one_cell[:, 0, 0].tolist()) <= {0.0, 1.0} and len(set(one_cell[:, 0, 0].tolist())) == 2
    assert torch.equal(MaskSampler(x, (3, 3), 1.0, 0).draw(torch.zeros(5, dtype=torch.long)), torch.ones(5, 9, 9))
    # the bilinear upsampling is torch's (align_corners=False), cropped at the drawn shift
    sampler = MaskSampler(x, (3, 3), 0.5, 2)
    u = sampler.streams.draw("uniform", torch.zeros(4, dtype=torch.long), (11,), dtype=DT, device="cpu")
    grid = (u[:, :9] < 0.5).to(DT).view(4, 1, 3, 3)
    up = F.interpolate(grid, size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    shifts = (u[:, 9:] * 3).long()
    by_torch = torch.stack([up[r, dy:dy + 9, dx:dx + 9] for r, (dy, dx) in enumerate(shifts.tolist())])
    masks = MaskSampler(x, (3, 3), 0.5, 2).draw(torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(masks, by_torch, rtol=0, atol=1e-15)


def test_p_one_keeps_every_pixel_the_map_is_the_clean_score():
    net, x = small_cnn(), images()
    explainer = tribute.Rise(net, masks=12, p=1.0, seed=0)
    s = explainer.attribute(x, target=1)
    with torch.no_grad():
        f = net(x)[:, 1]
    torch.testing.assert_close(s, f.view(-1, 1, 1, 1).expand_as(s), rtol=1e-12, atol=1e-12)
    # the sums are shifted by f(I): terms that all equal f(I) leave no rounding residue in the standard error
    assert float(explainer.standard_error.abs().max()) <= 1e-14 * float(f.abs().max())


def closed_form(w: torch.Tensor, c: float, image: torch.Tensor, baseline: torch.Tensor, cell: int, p: float):
    """E[S(λ)] for f = Σ w ⊙ x + c: with a(μ) = Σ_channels w (I − b) at pixel μ and M(λ) = Σ_c φ_c(λ) B_c (B_c ∼
    Bernoulli(p), Σ_c φ_c = 1), E[M(μ) M(λ)] = p² + p(1 − p) K(μ, λ), K = E_shift ⟨φ(μ), φ(λ)⟩, so
    E[S(λ)] = f(b) + p Σ_μ a(μ) + (1 − p) Σ_μ a(μ) K(μ, λ)."""
    h, w_ = image.shape[-2:]
    gh, gw = -(-h // cell), -(-w_ // cell)
    basis = torch.eye(gh * gw, dtype=DT).view(-1, 1, gh, gw)
    phi = F.interpolate(basis, size=((gh + 1) * cell, (gw + 1) * cell), mode="bilinear", align_corners=False)[:, 0]
    kernel = torch.zeros(h * w_, h * w_, dtype=DT)
    for dy in range(cell):
        for dx in range(cell):
            crop = phi[:, dy:dy + h, dx:dx + w_].reshape(gh * gw, -1)
            kernel += crop.T @ crop / cell ** 2
    a = (w * (image - baseline)).sum(0).flatten()
    f_b = float((w * baseline).sum()) + c
    return (f_b + p * a.sum() + (1 - p) * a @ kernel).view(h, w_)


def test_on_a_linear_model_the_expected_map_has_the_closed_form():
    x = images(1, size=7, seed=4)
    net = Linear(x.shape[1:]).eval()
    p, cell = 0.6, 3
    baseline = torch.full_like(x, 0.1)
    expected = closed_form(net.w.detach(), 0.3, x[0], baseline[0], cell, p)
    explainer = tribute.Rise(net, masks=30_000, p=p, cell=cell, baseline=0.1, seed=3, batch_size=1024)
    s = explainer.attribute(x, target=0)[0, 0]
    z = (s - expected) / explainer.standard_error[0, 0]
    assert float(z.abs().max()) < 4.5, z
    # the test has power: the kernel term, which varies over the image, is far above the noise
    flat = float(expected.mean())
    assert float(((expected - flat) / explainer.standard_error[0, 0]).abs().max()) > 20


def test_the_standard_error_is_calibrated_against_a_reference_run():
    """Over 100 seeds, the 95 % interval of a 64-mask run holds the value of a 100 000-mask run (whose own error is
    40 times smaller) for 90–99 % of the pixels × seeds."""
    net, x = small_cnn(3), images(1, size=8, seed=5)
    reference = tribute.Rise(net, masks=100_000, cell=3, seed=12345, batch_size=2048)
    ref = reference.attribute(x, target=0)
    explainer = tribute.Rise(net, masks=64, cell=3, batch_size=2048)
    covered = []
    for seed in range(100):
        s = explainer.attribute(x, target=0, seed=seed)
        covered.append(((s - ref).abs() <= 1.96 * explainer.standard_error).flatten())
    rate = float(torch.cat(covered).to(DT).mean())
    assert 0.90 <= rate <= 0.99, rate
    assert float((reference.standard_error / explainer.standard_error).max()) < 0.04


def test_the_top_pixels_lie_in_the_planted_square_dilated_by_the_cell():
    x = 0.5 + 0.5 * torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0), dtype=DT)
    cell, sq = 4, Square
    s = tribute.explain(Square(), x, "rise", target=0, masks=3000, cell=cell, seed=0)
    inside = torch.zeros(24, 24, dtype=torch.bool)
    inside[max(0, sq.top - cell):sq.top + sq.side + cell, max(0, sq.left - cell):sq.left + sq.side + cell] = True
    k = sq.side ** 2
    for i in range(2):
        top = s[i, 0].flatten().topk(k).indices
        assert float(inside.flatten()[top].to(DT).mean()) >= 0.9


def test_a_sample_gets_the_same_masks_alone_or_in_any_batch_at_any_position():
    assert_same_alone_and_in_any_batch(small_cnn(), images(4), "rise", torch.tensor([2, 0, 3, 1]),
                                       batch_sizes=(7, 64), masks=20, cell=3, seed=9, p=0.3)


def test_chunks_never_exceed_the_batch_size_and_passes_are_counted():
    counter = RowCounter(small_cnn()).eval()
    explainer = tribute.Rise(counter, masks=50, seed=0, batch_size=16)
    explainer.attribute(images(3), target=0)
    assert 1 < counter.most <= 16  # the 150 rows in 10 chunks of 15
    assert explainer.passes.forward_rows == 3 * 51


def test_tolerance_draws_rounds_until_every_pixel_is_within_it():
    net, x = small_cnn(), images(2)
    explainer = tribute.Rise(net, masks=50, cell=3, seed=4, batch_size=256)
    loose = explainer.attribute(x, target=0)
    tolerance = 0.5 * float(explainer.standard_error.flatten(1).amax(1).min())
    s = explainer.attribute(x, target=0, tolerance=tolerance)
    se = explainer.standard_error
    assert float(se.max()) <= tolerance
    rows = explainer.passes.forward_rows - 2
    assert rows % 50 == 0 and rows > 2 * 50
    # each sample stops after its own rounds, alone or in the batch: the same as a plain run with as many masks (its
    # stream continued from round to round)
    for i in range(2):
        alone = explainer.attribute(x[i:i + 1], target=0, tolerance=tolerance)
        torch.testing.assert_close(alone, s[i:i + 1], rtol=1e-10, atol=1e-12)
        k = explainer.passes.forward_rows - 1
        assert k % 50 == 0
        torch.testing.assert_close(explainer.attribute(x[i:i + 1], target=0, masks=k), alone, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(s, loose)
    with pytest.raises(RuntimeError, match=r"tolerance=1e-09 within max_masks=100 .*raise max_masks"):
        explainer.attribute(x, target=0, tolerance=1e-9, max_masks=100)


def test_the_other_inputs_of_a_two_input_model_are_held():
    """With input_index the image is masked and the table goes through as it is: the same as the table held as a
    forward argument (the streams are keyed by the image)."""
    torch.manual_seed(0)
    conv, head = nn.Conv2d(3, 2, 3, padding=1).to(DT), nn.Linear(2 + 4, 3).to(DT)

    def two(image, table):
        return head(torch.cat([torch.relu(conv(image)).mean((2, 3)), table], 1))

    x, table = images(2), torch.rand(2, 4, dtype=DT)
    options = {"masks": 10, "seed": 1, "cell": 2}
    both = tribute.explain(two, (x, table), "rise", target=0, input_index=0, **options)
    held = tribute.explain(two, x, "rise", target=0, forward_args=(table,), **options)
    torch.testing.assert_close(both, held, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="input_index"):
        tribute.explain(two, (x, table), "rise", target=0, **options)


@pytest.mark.parametrize("options, error, match", [
    ({"p": 0.0}, ValueError, "p must be > 0"),
    ({"p": 1.5}, ValueError, "p must be > 0 and <= 1"),
    ({"masks": 0}, ValueError, "masks must be an integer >= 1"),
    ({"cell": 0}, ValueError, "cell must be a positive int"),
    ({"cell": (2, 3, 4)}, ValueError, "cell must be a positive int"),
    ({"cell": 9}, ValueError, r"cell=\(9, 9\) is larger than the image \(8, 8\)"),
    ({"baseline": ("zero", "zero")}, ValueError, "baseline must be"),
    ({"tolerance": 0.1, "max_masks": 4, "masks": 8}, ValueError, "max_masks=4 is below masks=8"),
    ({"differentiable": True}, TypeError, "differentiable= is not accepted here"),
])
def test_bad_options_are_clear_errors(options, error, match):
    with pytest.raises(error, match=match):
        tribute.explain(small_cnn(), images(), "rise", target=0, **options)


def test_inputs_that_are_not_images_are_refused():
    net = nn.Linear(5, 2).to(DT)
    with pytest.raises(ValueError, match=r"rise masks images \(N, C, H, W\)"):
        tribute.explain(net, torch.rand(3, 5, dtype=DT), "rise", target=0, masks=4)
