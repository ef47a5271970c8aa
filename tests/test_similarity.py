"""Similarity of maps (tribute.metrics.similarity): hand-worked values and scipy / scikit-image references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from skimage.feature import hog as skimage_hog
from skimage.metrics import structural_similarity

from tribute.metrics import similarity as sim


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- top-k intersection ----------------------------------------------------------------------------------------
def test_topk_intersection_hand_worked():
    a = torch.tensor([[5.0, 1.0, 4.0, 0.0, 3.0]])
    b = torch.tensor([[0.0, 5.0, 4.0, 3.0, 1.0]])
    # top-2: {0, 2} and {1, 2} share one feature; top-3: {0, 2, 4} and {1, 2, 3} share one of three
    assert sim.topk_intersection(a, b, 2).tolist() == [0.5]
    assert sim.topk_intersection(a, b, 3).item() == pytest.approx(1 / 3)
    assert sim.topk_intersection(a, b, 5).tolist() == [1.0]
    assert sim.topk_intersection(a, a, 1).tolist() == [1.0]
    assert sim.topk_intersection(b, a, 3).tolist() == sim.topk_intersection(a, b, 3).tolist()


def test_topk_by_magnitude_or_by_value():
    a = torch.tensor([[-5.0, 1.0, 4.0, 0.0, 3.0]])
    b = torch.tensor([[5.0, 1.0, 4.0, 0.0, 3.0]])
    # by magnitude a ranks like b: top-2 {0, 2} in both; by value a's top-2 is {2, 4}
    assert sim.topk_intersection(a, b, 2).tolist() == [1.0]
    assert sim.topk_intersection(a, b, 2, absolute=False).tolist() == [0.5]


def test_topk_ties_go_to_the_lower_index():
    a = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # top-2 by the tie rule: {0, 1}
    b = torch.tensor([[0.0, 1.0, 1.0, 1.0]])  # {1, 2}
    assert sim.topk_intersection(a, b, 2).tolist() == [0.5]


def test_topk_batched_and_reduced_over_channels():
    a, b = rand(4, 3, 6, 6, seed=1) - 0.5, rand(4, 3, 6, 6, seed=2) - 0.5
    got = sim.topk_intersection(a, b, 7, reduce="abs_sum")
    for i in range(4):
        ta = set(a[i].abs().sum(0).flatten().argsort(descending=True)[:7].tolist())
        tb = set(b[i].abs().sum(0).flatten().argsort(descending=True)[:7].tolist())
        assert got[i].item() == pytest.approx(len(ta & tb) / 7)
    # without reduce, all 3·6·6 entries are features
    whole = sim.topk_intersection(a, b, 108)
    assert whole.tolist() == [1.0] * 4


@pytest.mark.parametrize("k", [0, 26, -1])
def test_topk_k_out_of_range(k):
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 25\]"):
        sim.topk_intersection(rand(2, 1, 5, 5), rand(2, 1, 5, 5), k)


@pytest.mark.parametrize("k", [2.0, True, "3"])
def test_topk_k_must_be_an_int(k):
    with pytest.raises(TypeError, match="k must be an integer"):
        sim.topk_intersection(rand(2, 10), rand(2, 10), k)


# -- correlations ----------------------------------------------------------------------------------------------
def test_average_ranks_hand_worked():
    got = sim.average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0], [2.0, 2.0, 2.0, 2.0]]))
    assert got.tolist() == [[3.5, 1.0, 3.5, 2.0], [2.5, 2.5, 2.5, 2.5]]


def test_spearman_hand_worked():
    # no ties: ρ = 1 − 6 Σd² / (n (n² − 1)) = 1 − 6·2 / (4·15) = 0.8
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[10.0, 30.0, 20.0, 40.0]])
    assert sim.spearman(a, b).item() == pytest.approx(0.8)
    assert sim.spearman(a, -b).item() == pytest.approx(-0.8)
    assert sim.spearman(a, a.exp()).item() == pytest.approx(1.0)  # monotone maps rank alike


@pytest.mark.parametrize("absolute", [False, True])
def test_spearman_equals_scipy_with_ties(absolute):
    g = torch.Generator().manual_seed(3)
    a = torch.randint(-3, 4, (6, 1, 7, 7), generator=g).double()  # many ties, and signs for absolute=
    b = torch.randint(-3, 4, (6, 1, 7, 7), generator=g).double() + a
    got = sim.spearman(a, b, absolute=absolute)
    f = np.abs if absolute else (lambda v: v)
    want = [stats.spearmanr(f(a[i].flatten().numpy()), f(b[i].flatten().numpy())).statistic for i in range(6)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_pearson_hand_worked_and_scipy():
    # a − ā = (−1, 0, 1), b − b̄ = (−7, −1, 8)/3: r = 5 / (√2 · √114 / 3) = 15 / √228
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 7.0]])
    assert sim.pearson(a, b).item() == pytest.approx(15 / math.sqrt(228))
    x, y = rand(5, 2, 4, 4, seed=4) - 0.5, rand(5, 2, 4, 4, seed=5) - 0.5
    for absolute in (False, True):
        got = sim.pearson(x, y, absolute=absolute)
        f = np.abs if absolute else (lambda v: v)
        want = [stats.pearsonr(f(x[i].flatten().numpy()), f(y[i].flatten().numpy())).statistic for i in range(5)]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_pearson_is_differentiable():
    a = rand(3, 8, seed=6).requires_grad_()
    b = rand(3, 8, seed=7)
    assert torch.autograd.gradcheck(lambda t: sim.pearson(t, b), (a,))


def test_correlations_of_a_constant_map_are_nan():
    a = torch.stack([torch.ones(9), torch.arange(9.0)])
    b = torch.stack([torch.arange(9.0), torch.arange(9.0)])
    for fn in (sim.pearson, sim.spearman):
        r = fn(a, b)
        assert math.isnan(r[0].item()) and r[1].item() == pytest.approx(1.0)


# -- centre of mass --------------------------------------------------------------------------------------------
def test_center_of_mass_hand_worked():
    m = torch.zeros(2, 1, 3, 3)
    m[0, 0, 0, 0], m[0, 0, 2, 2] = 1.0, 3.0  # (0·1 + 2·3) / 4 = 1.5 along both axes
    m[1, 0, 1, 2] = 7.0  # one pixel: its own position
    assert sim.center_of_mass(m).tolist() == [[1.5, 1.5], [1.0, 2.0]]
    shift = sim.center_of_mass_shift(m[:1], m[1:])
    assert shift.item() == pytest.approx(math.hypot(0.5, 0.5))


def test_center_of_mass_equals_scipy():
    m = rand(4, 1, 9, 13, seed=8)
    got = sim.center_of_mass(m)
    want = [ndimage.center_of_mass(m[i, 0].numpy()) for i in range(4)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # (N, H, W) maps are read the same way; a 3-D map has three coordinates
    np.testing.assert_allclose(sim.center_of_mass(m.squeeze(1)).numpy(), want, rtol=1e-12)
    v = rand(2, 1, 4, 5, 6, seed=9)
    np.testing.assert_allclose(sim.center_of_mass(v)[1].numpy(), ndimage.center_of_mass(v[1, 0].numpy()), rtol=1e-12)


def test_center_of_mass_of_a_zero_map_is_an_error():
    m = rand(3, 1, 5, 5)
    m[1] = 0
    with pytest.raises(ValueError, match=r"undefined for samples \[1\].*zero everywhere"):
        sim.center_of_mass(m)
    with pytest.raises(ValueError, match=r"undefined for samples \[1\]"):
        sim.center_of_mass_shift(m, rand(3, 1, 5, 5))


def test_center_of_mass_needs_non_negative_maps():
    m = rand(2, 1, 5, 5) - 0.5
    with pytest.raises(ValueError, match="non-negative.*absolute=True"):
        sim.center_of_mass(m)
    np.testing.assert_allclose(sim.center_of_mass(m, absolute=True), sim.center_of_mass(m.abs()))


def test_center_of_mass_over_channels_needs_reduce():
    a = rand(2, 3, 5, 5)
    np.testing.assert_allclose(sim.center_of_mass(a, reduce="sum"), sim.center_of_mass(a.sum(1, keepdim=True)))


# -- SSIM ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window,sigma", [(11, 1.5), (7, 0.8)])
def test_ssim_equals_skimage(window, sigma):
    a = rand(4, 1, 28, 28, seed=10)
    b = (a + 0.4 * rand(4, 1, 28, 28, seed=11)) * torch.tensor([1.0, 2.0, 0.5, 1.0]).view(4, 1, 1, 1)
    got = sim.ssim(a, b, window=window, sigma=sigma)
    for i in range(4):
        ai, bi = a[i, 0].numpy(), b[i, 0].numpy()
        joint_range = max(ai.max(), bi.max()) - min(ai.min(), bi.min())
        want = structural_similarity(ai, bi, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                     data_range=joint_range)
        assert got[i].item() == pytest.approx(want, abs=1e-12)
    fixed = sim.ssim(a, b, window=window, sigma=sigma, data_range=2.0)
    want = structural_similarity(a[2, 0].numpy(), b[2, 0].numpy(), gaussian_weights=True, sigma=sigma,
                                 use_sample_covariance=False, data_range=2.0)
    assert fixed[2].item() == pytest.approx(want, abs=1e-12)
    per_sample = sim.ssim(a, b, window=window, sigma=sigma, data_range=torch.tensor([2.0, 3.0, 2.0, 1.0]))
    assert per_sample[2].item() == pytest.approx(want, abs=1e-12)
    assert per_sample[1].item() == pytest.approx(sim.ssim(a[1:2], b[1:2], window=window, sigma=sigma,
                                                          data_range=3.0).item(), abs=1e-15)


def test_ssim_of_equal_maps_is_one():
    a = rand(3, 12, 12, seed=12)
    torch.testing.assert_close(sim.ssim(a, a), torch.ones(3, dtype=torch.float64))
    c = torch.full((2, 1, 11, 11), 0.3)
    assert sim.ssim(c, c).tolist() == [1.0, 1.0]  # L = 0: the limit of the formula


def test_ssim_errors():
    a = rand(2, 1, 10, 10)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        sim.ssim(a, a)
    with pytest.raises(ValueError, match="window must be an odd integer"):
        sim.ssim(a, a, window=4)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        sim.ssim(a, a, window=5, sigma=0)
    with pytest.raises(ValueError, match="data_range"):
        sim.ssim(a, a, window=5, data_range=0.0)
    with pytest.raises(ValueError, match="one map per sample"):
        sim.ssim(rand(2, 3, 12, 12), rand(2, 3, 12, 12))


# -- HOG -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientations,cell,block,norm", [
    (9, (8, 8), (2, 2), "L2-Hys"), (9, (4, 4), (3, 3), "L1"), (8, (5, 3), (2, 1), "L1-sqrt"), (6, (7, 7), (1, 1), "L2"),
])
def test_hog_equals_skimage(orientations, cell, block, norm):
    m = rand(3, 1, 28, 30, seed=13) - 0.3
    got = sim.hog(m, orientations=orientations, pixels_per_cell=cell, cells_per_block=block, block_norm=norm)
    want = np.stack([skimage_hog(m[i, 0].numpy(), orientations=orientations, pixels_per_cell=cell,
                                 cells_per_block=block, block_norm=norm) for i in range(3)])
    assert got.shape == want.shape
    # scikit-image accumulates the cell histograms in single precision: agreement to ~1e-7
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_hog_similarity_is_pearson_of_skimage_descriptors():
    a = rand(3, 1, 24, 24, seed=14)
    b = a + 0.5 * rand(3, 1, 24, 24, seed=15)
    got = sim.hog_similarity(a, b)
    for i in range(3):
        # Dalal and Triggs's 2 x 2 cell blocks (scikit-image's default is 3 x 3)
        ha, hb = (skimage_hog(m[i, 0].numpy(), cells_per_block=(2, 2)) for m in (a, b))
        assert got[i].item() == pytest.approx(stats.pearsonr(ha, hb).statistic, abs=1e-6)
    torch.testing.assert_close(sim.hog_similarity(a, a), torch.ones(3, dtype=torch.float64))


def test_hog_needs_one_block():
    with pytest.raises(ValueError, match="fewer than one block"):
        sim.hog(rand(1, 1, 12, 12))
    with pytest.raises(ValueError, match="block_norm must be one of"):
        sim.hog(rand(1, 1, 16, 16), block_norm="L3")


# -- common checks ---------------------------------------------------------------------------------------------
def test_mismatched_shapes_and_bad_maps():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 5\) and \(2, 6\)"):
        sim.pearson(rand(2, 5), rand(2, 6))
    with pytest.raises(ValueError, match="NaN or inf"):
        sim.spearman(torch.tensor([[1.0, math.nan]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"batch of maps \(N, ...\)"):
        sim.topk_intersection(torch.ones(5), torch.ones(5), 2)
    with pytest.raises(TypeError, match="must be a tensor"):
        sim.spearman([[1.0, 2.0]], torch.ones(1, 2))
    with pytest.raises(ValueError, match="reduce must be None or one of"):
        sim.pearson(rand(2, 3, 4, 4), rand(2, 3, 4, 4), reduce="mean")


def test_dtype_and_device_follow_the_maps():
    a, b = rand(2, 1, 12, 12, dtype=torch.float32), rand(2, 1, 12, 12, seed=1, dtype=torch.float32)
    for fn in (lambda: sim.topk_intersection(a, b, 5), lambda: sim.spearman(a, b), lambda: sim.pearson(a, b),
               lambda: sim.center_of_mass_shift(a, b), lambda: sim.ssim(a, b, window=7, sigma=0.8),
               lambda: sim.hog_similarity(a, b, pixels_per_cell=4)):
        out = fn()
        assert out.shape == (2,) and out.dtype == torch.float32
    ints = torch.arange(24).view(2, 12)
    assert sim.spearman(ints, ints).dtype == torch.get_default_dtype()
