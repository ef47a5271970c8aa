"""Extremal perturbation (Fong, Patrick & Vedaldi 2019): with the planted square's area it finds the square, the
ranking regulariser, the smooth max-convolution and the blur pyramid match their definitions evaluated directly,
rows are optimised independently (a batch equals its samples alone; several areas in one call equal one call per
area), and bad areas get a clear error."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from test_meaningful_perturbation import SIDE, H, PlantedSquare, planted_images, small_cnn, square

import tribute
from tribute.attribution.perturbation.extremal import area_references, ranking_regulariser
from tribute.attribution.perturbation.smooth_masks import SmoothMasks, blur_pyramid, kernel, perturb
from tribute.core.baselines import gaussian_blur

AREA = SIDE * SIDE / (H * H)
EP = {"steps": 100, "lr": 0.1, "cell": 2, "smoothness": 2.0, "sigma": 4.0, "area": AREA}


class MatchedSquare(PlantedSquare):
    """Class 0 scores s = Σ_{u in the square} w(u) (x(u) − ½) with w(u) = 20 sign(x₀(u) − ½) matched to an image x₀:
    linear in the pixels, so keeping a pixel of x₀'s square against its blur raises s at any blur level (the
    deletion game starts from everything blurred), and every pixel of the square counts alike."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        sq = x0[:, self.top:self.top + self.side, self.left:self.left + self.side]
        self.register_buffer("w", 20 * torch.sign(sq - 0.5))

    def forward(self, x):
        sq = x[:, :, self.top:self.top + self.side, self.left:self.left + self.side]
        s = (self.w * (sq - 0.5)).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s), -s], 1)


def iou_of_top_pixels(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """IoU of each map's k largest pixels (k = the region's size) with the region."""
    k = int(region.sum())
    inter = region.flatten()[maps.flatten(1).topk(k, dim=1).indices].double().sum(1)
    return inter / (2 * k - inter)


# the deletion game with the blend m ⊙ x + (1 − m) ⊙ blur(x) (two levels): on the pyramid, half-deleting a pixel of
# binary noise already blurs it almost as much as deleting it, so the game has no reason to push m past ½ there
@pytest.mark.parametrize("game, levels", [("preserve", 8), ("delete", 2)])
def test_the_mask_with_the_square_s_area_finds_the_square(game, levels):
    x = planted_images()
    a = torch.cat([tribute.explain(MatchedSquare(x[i]), x[i:i + 1], "extremal_perturbation", target=0, game=game,
                                   levels=levels, **EP) for i in range(3)])
    assert a.shape == (3, 1, H, H) and a.dtype == x.dtype
    iou = iou_of_top_pixels(a, square())
    assert bool((iou >= 0.8).all()), iou
    # the area constraint holds at the end: the mask's mass is about the square's (a little more: the smooth mask's
    # edge spills over the square)
    mass = a.flatten(1).mean(1)
    assert bool(((mass > 0.9 * AREA) & (mass < 1.8 * AREA)).all()), mass


def test_the_ranking_regulariser_worked_by_hand():
    m = torch.tensor([0.2, 0.9, 0.4, 0.7], dtype=torch.float64).view(1, 1, 2, 2)
    r = area_references((0.5,), 4, (2, 2), dtype=torch.float64, device="cpu")
    assert r.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    # sorted (0.2, 0.4, 0.7, 0.9) against (0, 0, 1, 1): (0.04 + 0.16 + 0.09 + 0.01) / 4
    assert float(ranking_regulariser(m, r)) == pytest.approx(0.075)
    r = area_references((0.25, 0.75), 4, (2, 2), dtype=torch.float64, device="cpu")
    assert r.tolist() == [[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    both = ranking_regulariser(m.expand(2, 1, 2, 2), r)
    torch.testing.assert_close(both, torch.tensor([(0.04 + 0.16 + 0.49 + 0.01) / 4, (0.04 + 0.36 + 0.09 + 0.01) / 4],
                                                  dtype=torch.float64))
    # a binary mask of the right area meets the constraint exactly, wherever its ones are
    binary = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64).view(1, 1, 2, 2)
    assert float(ranking_regulariser(binary, area_references((0.5,), 4, (2, 2), dtype=torch.float64,
                                                             device="cpu"))) == 0.0


def _smooth_mask_directly(values: torch.Tensor, size, cell: int, sigma: float, temperature: float) -> torch.Tensor:
    """m(u) = smax_T {k(‖u − p_i‖/σ) m̄_i : grid points i at most ⌈σ/cell⌉ + 1 cells from u's cell}, pixel by pixel;
    the points of that neighbourhood off the grid count as m̄ = 0."""
    h, w = size
    gh, gw = values.shape
    r = math.ceil(sigma / cell) + 1
    out = torch.zeros(h, w, dtype=torch.float64)
    for uy in range(h):
        for ux in range(w):
            z = []
            for iy in range(uy // cell - r, uy // cell + r + 1):
                for ix in range(ux // cell - r, ux // cell + r + 1):
                    on_grid = 0 <= iy < gh and 0 <= ix < gw
                    d = math.hypot(uy - (cell * iy + (cell - 1) / 2), ux - (cell * ix + (cell - 1) / 2))
                    z.append(math.exp(-2 * max(0.0, d / sigma - 0.5) ** 2) * float(values[iy, ix]) if on_grid else 0.0)
            e = [math.exp(v / temperature) for v in z]
            out[uy, ux] = sum(v * q for v, q in zip(z, e, strict=True)) / sum(e)
    return out


@pytest.mark.parametrize("size, cell, sigma, temperature", [((7, 9), 2, 2.5, 0.1), ((6, 6), 3, 1.0, 0.05),
                                                            ((5, 8), 1, 1.5, 0.2)])
def test_the_smooth_max_convolution_equals_its_direct_evaluation(size, cell, sigma, temperature):
    grid = (math.ceil(size[0] / cell), math.ceil(size[1] / cell))
    values = torch.rand(2, 1, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    masks = SmoothMasks(size, cell, sigma, temperature, dtype=torch.float64, device="cpu")
    assert masks.grid == grid
    got = masks(values)
    for i in range(2):
        torch.testing.assert_close(got[i, 0], _smooth_mask_directly(values[i, 0], size, cell, sigma, temperature))


def test_smooth_masks_keep_a_region_of_ones_and_tend_to_the_max_convolution():
    # σ ≥ √2·cell: every pixel has a grid point within the kernel's flat top, so all-ones gives ones (up to the
    # smooth max's weight on the smaller kernel values, e^{−(1 − k)/T})
    ones = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    for t, tol in ((0.05, 0.02), (0.01, 0.002)):
        m = SmoothMasks((8, 8), 2, 3.0, t, dtype=torch.float64, device="cpu")(ones)
        assert float(m.max()) <= 1 and float(m.min()) >= 1 - tol, (t, m.min())
    assert float(kernel(torch.tensor(0.5))) == 1.0 and float(kernel(torch.tensor(1.0))) == pytest.approx(math.exp(-0.5))
    values = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    cold = SmoothMasks((8, 8), 2, 3.0, 1e-4, dtype=torch.float64, device="cpu")
    z = values.flatten(1)[:, cold.index] * cold.weight
    hard = z.max(1).values.view(1, 1, 8, 8)
    torch.testing.assert_close(cold(values), hard, rtol=0, atol=1e-3)


def test_the_blur_pyramid_reads_each_level_and_with_two_levels_is_the_blend():
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pyramid = blur_pyramid(x, 5, 4.0)
    for level in range(5):
        torch.testing.assert_close(pyramid[:, level], gaussian_blur(x, 4.0 * (1 - level / 4)))
        m = torch.full((2, 1, 9, 9), level / 4, dtype=torch.float64)
        torch.testing.assert_close(perturb(pyramid, m), pyramid[:, level])
    torch.testing.assert_close(perturb(pyramid, torch.ones(2, 1, 9, 9, dtype=torch.float64)), x)
    m = torch.rand(2, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    two = blur_pyramid(x, 2, 4.0)
    torch.testing.assert_close(perturb(two, m), m * x + (1 - m) * gaussian_blur(x, 4.0))
    # between two levels: linear in m
    mid = torch.full((2, 1, 9, 9), 0.3, dtype=torch.float64)  # 0.3·4 = 1.2: 80 % level 1, 20 % level 2
    torch.testing.assert_close(perturb(pyramid, mid), 0.8 * pyramid[:, 1] + 0.2 * pyramid[:, 2])


SMALL = {"steps": 6, "lr": 0.1, "cell": 2, "smoothness": 2.0, "sigma": 2.0}


def test_a_batch_equals_its_samples_one_at_a_time():
    net, x = small_cnn(), torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batched = tribute.explain(net, x, "extremal_perturbation", target=2, batch_size=2, area=0.3, **SMALL)
    assert float(batched.std(0).max()) > 0.01
    for i in range(3):
        alone = tribute.explain(net, x[i:i + 1], "extremal_perturbation", target=2, area=0.3, **SMALL)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-12)


def test_several_areas_in_one_call_equal_one_call_per_area():
    net, x = small_cnn(), torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    areas = (0.1, 0.3, 0.6)
    e = tribute.ExtremalPerturbation(net, **SMALL)
    together = e(x, target=1, area=areas, batch_size=4)  # chunks of 4 of the 6 rows cut across samples and areas
    masks, energy = e.masks, e.objective
    assert masks.shape == (2, 3, 8, 8) and energy.shape == (6, 2, 3)
    assert e.passes.forward_rows == e.passes.backward_rows == 6 * 2 * 3  # steps × samples × areas
    torch.testing.assert_close(together, masks.mean(1, keepdim=True), rtol=0, atol=0)
    for k, a in enumerate(areas):
        alone = e(x, target=1, area=a)
        torch.testing.assert_close(masks[:, k:k + 1], alone, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(energy[:, :, k:k + 1], e.objective, rtol=1e-10, atol=1e-12)
    assert float((masks[:, 0] - masks[:, 2]).abs().max()) > 0.1  # the areas give different masks


def test_the_model_is_left_as_it_was():
    net = small_cnn()
    net[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tribute.explain(net, torch.rand(2, 3, 8, 8, dtype=torch.float64), "extremal_perturbation", target=1, **SMALL)
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, True]
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("area, match", [(0.0, r"area must be a number in \(0, 1\)"),
                                         (1.0, r"area must be a number in \(0, 1\)"),
                                         (1.5, r"area must be a number in \(0, 1\)"),
                                         ((0.2, -0.1), r"got -0.1"), ((), "got an empty tuple"),
                                         ("0.2", r"area must be a number"), (0.001, "0 of the 8 × 8 image's pixels")])
def test_a_bad_area_gets_a_clear_error(area, match):
    with pytest.raises(ValueError, match=match):
        tribute.explain(small_cnn(), torch.rand(1, 3, 8, 8, dtype=torch.float64), "extremal_perturbation", target=0,
                        area=area, **SMALL)


def test_other_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"explains images \(N, C, H, W\)"):
        tribute.explain(lambda t: t[:, :3], torch.rand(2, 5, dtype=torch.float64), "extremal_perturbation", target=0)
    with pytest.raises(ValueError, match="game must be one of"):
        tribute.explain(small_cnn(), torch.rand(1, 3, 8, 8, dtype=torch.float64), "extremal_perturbation", target=0,
                        game="dual")
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        tribute.explain(small_cnn(), torch.rand(1, 3, 8, 8, dtype=torch.float64), "extremal_perturbation", target=0,
                        levels=1)


def test_at_a_fixed_area_weight_the_energy_decreases_and_the_kept_score_rises():
    """With γ = 1 the energy −f_c(m ⊗ x) + λ R_a(m) is one function, and gradient descent lowers it; the score of
    the preserved region, which starts from the image itself (m = 1), ends above that of the blurred image."""
    x = planted_images(2)
    net = MatchedSquare(x[0])
    e = tribute.ExtremalPerturbation(net, area_growth=1.0, **{**EP, "steps": 60})
    e(x[:1], target=0)
    energy = e.objective[:, 0, 0]
    assert float(energy[-5:].max()) < float(energy[0]) / 10
    kept = perturb(blur_pyramid(x[:1], 8, EP["sigma"]), e.masks[:, :1])
    blurred = gaussian_blur(x[:1], EP["sigma"])
    assert float(net(kept)[0, 0]) > float(net(blurred)[0, 0]) + 0.5 * float(net(x[:1])[0, 0] - net(blurred)[0, 0])


def test_each_thread_reads_its_own_masks():
    net = small_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    e = tribute.ExtremalPerturbation(net, **SMALL)
    e(x, target=0, area=(0.2, 0.5))
    seen = {}

    def other():
        e(x[:1], target=0, area=0.3)
        seen["shape"] = tuple(e.masks.shape)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["shape"] == (1, 1, 8, 8) and tuple(e.masks.shape) == (2, 2, 8, 8)
