"""Heat-map colours and the method-comparison figure (tribute.viz), on synthetic attributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tribute.viz import diverging_colors, heatmap, method_figure, method_grid, reduce_channels, symmetric_scale

RED, BLUE, WHITE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)


def test_colours_red_positive_blue_negative_white_zero():
    a = torch.tensor([[1.0, -1.0], [0.0, 0.5]])
    rgb = heatmap(a, percentile=100)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], RED)
    np.testing.assert_allclose(rgb[0, 1], BLUE)
    np.testing.assert_allclose(rgb[1, 0], WHITE)
    np.testing.assert_allclose(rgb[1, 1], (1.0, 0.5, 0.5))  # half-way from white to red
    # the sign decides the dominant channel everywhere, not just at the extremes
    v = np.linspace(-1, 1, 41)
    c = diverging_colors(v)
    assert (c[v > 0, 0] > c[v > 0, 2]).all() and (c[v < 0, 2] > c[v < 0, 0]).all()
    assert ((c >= 0) & (c <= 1)).all()


def test_scaling_is_symmetric():
    # the largest magnitude is positive: the negative value of half that size gets half the intensity
    rgb = heatmap(np.array([[2.0, -1.0]]), percentile=100)
    np.testing.assert_allclose(rgb[0, 0], RED)
    np.testing.assert_allclose(rgb[0, 1], (0.5, 0.5, 1.0))
    # flipping the sign of the map swaps red and blue and nothing else
    a = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    pos, neg = heatmap(a), heatmap(-a)
    np.testing.assert_allclose(pos[..., 0], neg[..., 2])
    np.testing.assert_allclose(pos[..., 1], neg[..., 1])


def test_percentile_scale_saturates_outliers():
    a = np.concatenate([np.linspace(-1, 1, 999), [100.0]])
    s = symmetric_scale(a, 99.5)
    assert 0.9 < s < 1.0 + 1e-9  # the outlier does not set the scale
    rgb = heatmap(a.reshape(1, -1), percentile=99.5)
    np.testing.assert_allclose(rgb[0, -1], RED)  # the outlier is clipped to full red
    np.testing.assert_allclose(rgb[0, 0], BLUE, atol=0.11)  # −1 is (nearly) full blue, not washed out
    # an explicit scale overrides the percentile
    np.testing.assert_allclose(heatmap(np.array([[1.0]]), scale=2.0)[0, 0], (1.0, 0.5, 0.5))


def test_channel_reduction_and_degenerate_maps():
    a = torch.zeros(3, 2, 2)
    a[0, 0, 0], a[1, 0, 0] = 1.0, -1.0  # cancel in the sum
    a[:, 1, 1] = 1.0
    np.testing.assert_allclose(reduce_channels(a, "sum"), [[0.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(reduce_channels(a, "mean"), [[0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(reduce_channels(a, "abs_sum"), [[2.0, 0.0], [0.0, 3.0]])
    rgb = heatmap(a, percentile=100)
    np.testing.assert_allclose(rgb[0, 0], WHITE)
    np.testing.assert_allclose(rgb[1, 1], RED)
    # all zeros: all white, no division by zero
    np.testing.assert_array_equal(heatmap(torch.zeros(3, 4, 4)), np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="reduce"):
        heatmap(a, reduce="max")
    with pytest.raises(ValueError, match="shape"):
        heatmap(torch.zeros(1, 3, 4, 4))


def _images_and_maps(n=2, size=16):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    images[:, 1:] = 0.0  # pure red-ish photos, so they cannot be mistaken for white or blue heat maps
    positive = torch.rand(n, 3, size, size, generator=g) + 0.5
    return images, {"all_positive": positive, "all_negative": -positive, "zero": torch.zeros(n, size, size)}


def _panel_colour(png: np.ndarray, fig, index: int) -> np.ndarray:
    """Mean RGB over the middle of axes ``index`` in the saved PNG (rows counted from the top)."""
    box = fig.axes[index].get_position()
    h, w = png.shape[:2]
    r0, r1 = int((1 - box.y1) * h), int((1 - box.y0) * h)
    c0, c1 = int(box.x0 * w), int(box.x1 * w)
    dr, dc = (r1 - r0) // 4, (c1 - c0) // 4
    return png[r0 + dr : r1 - dr, c0 + dc : c1 - dc, :3].reshape(-1, 3).mean(0)


def test_method_grid_writes_a_png_with_one_row_per_photo_and_one_column_per_method(tmp_path):
    import matplotlib.image

    images, maps = _images_and_maps()
    path = method_grid(images, maps, ["a: tabby (40%)", "b: espresso (95%)"], tmp_path / "sub" / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = matplotlib.image.imread(path)
    fig = method_figure(images, maps, ["a", "b"])
    width, height = fig.get_size_inches() * 100
    assert png.shape[:2] == (round(height), round(width))
    assert len(fig.axes) == 2 * (1 + len(maps))
    fig.canvas.draw()  # fixes the axes' positions (imshow keeps aspect)
    for row in range(2):
        photo, pos, neg, zero = (_panel_colour(png, fig, row * 4 + c) for c in range(4))
        assert photo[0] > 0.2 and photo[1] < 0.05 and photo[2] < 0.05  # the photo itself
        assert pos[0] > 0.95 and pos[2] < pos[0] - 0.3  # red
        assert neg[2] > 0.95 and neg[0] < neg[2] - 0.3  # blue
        np.testing.assert_allclose(zero, WHITE, atol=0.02)
    # column titles on the first row only, photo titles on every row
    assert [ax.get_title() for ax in fig.axes[:4]] == ["a", "all positive", "all negative", "zero"]
    assert [ax.get_title() for ax in fig.axes[4:]] == ["b", "", "", ""]


def test_method_grid_checks_shapes(tmp_path):
    images, maps = _images_and_maps()
    with pytest.raises(ValueError, match="all_positive"):
        method_grid(images, {"all_positive": maps["all_positive"][:1]}, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        method_grid(images, maps, ["only one"], tmp_path / "x.png")


def test_a_sparse_map_is_not_drawn_white():
    a = np.zeros((40, 40))
    a[3, 4] = 2.0  # the 99.5th percentile of |a| is 0: the largest |a| sets the scale instead
    rgb = heatmap(a)
    np.testing.assert_allclose(rgb[3, 4], RED)
    np.testing.assert_allclose(rgb[0, 0], WHITE)
    nan = np.array([[np.nan, 1.0], [-1.0, 0.0]])
    from tribute.viz import NONFINITE_COLORS

    np.testing.assert_allclose(heatmap(nan)[0, 0], NONFINITE_COLORS["NaN"])  # not some value's colour
    assert symmetric_scale(nan, 100) == 1.0  # from the finite values
