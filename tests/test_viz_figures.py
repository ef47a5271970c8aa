"""Figures of tribute.viz (issue 16): every map with a colour bar whose limits are the stated scale, diverging maps
white at 0, NaN/±inf in their own colours and counted, degenerate inputs handled, inputs never mutated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from tribute.viz import (  # noqa: E402
    NONFINITE_COLORS,
    class_contrast_figure,
    colormap,
    family_figure,
    heatmap_figure,
    map_scale,
    map_similarity,
    method_figure,
    overlay_figure,
)

RED, BLUE, WHITE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)


def rendered(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0


def colour_at(fig, png: np.ndarray, ax, row: int, col: int) -> np.ndarray:
    """The rendered colour at the centre of map pixel (row, col) of panel ``ax``."""
    x, y = ax.transData.transform((col, row))
    return png[int(round(png.shape[0] - y)), int(round(x))]


def bar_of(ax):
    (cax,) = ax.child_axes
    return cax


def label_of(ax) -> str:
    return bar_of(ax).get_xlabel()


# -- the scale rule ---------------------------------------------------------------------------------------------


def test_the_scale_rule_is_stated_for_every_case():
    a = np.concatenate([np.linspace(-1, 1, 999), [100.0]])
    s = map_scale(a)
    assert s.value == pytest.approx(np.percentile(np.abs(a), 99.5)) and s.signed
    assert s.label == f"clipped at the 99.5th percentile of |φ| = {s.value:.2g}" and s.limits == (-s.value, s.value)
    assert map_scale(a, percentile=100).label == "full colour at the largest |φ| = 1e+02"  # nothing beyond it
    assert map_scale(a, percentile=1).label.startswith("clipped at the 1st percentile")
    assert map_scale(a, percentile=92).label.startswith("clipped at the 92nd percentile")
    given = map_scale(a, scale=2.0)
    assert (given.value, given.label) == (2.0, "scale given: full colour at ±2")
    zero = map_scale(np.zeros((4, 4)))
    assert (zero.value, zero.label, zero.signed) == (1.0, "all zero (scale 1)", False)
    sparse = np.zeros(1000)
    sparse[3] = 0.5  # the 99.5th percentile is 0, the map is not
    s = map_scale(sparse)
    assert s.value == 0.5 and "percentile of |φ| is 0; full colour at the largest |φ| = 0.5" in s.label
    none = map_scale(np.array([np.nan, np.inf]))
    assert (none.value, none.label) == (1.0, "no finite value (scale 1)")
    # unsigned maps: sequential from 0; the sign is decided on the finite values
    positive = map_scale(np.array([0.0, 1.0, 2.0, np.nan, -np.inf]))
    assert not positive.signed and positive.limits == (0.0, positive.value)
    assert map_scale(np.array([1.0, 2.0]), signed=True).limits[0] < 0
    # extreme values: scaled, not overflowed
    assert map_scale(np.array([1e30, -2e30, 0.0]), percentile=100).value == 2e30
    shared = map_scale([np.array([1.0]), np.array([-3.0])], percentile=100, shared="the row")
    assert shared.value == 3.0 and shared.signed and shared.label.startswith("shared by the row: ")
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        map_scale(a, scale=0.0)


def test_the_diverging_scale_is_white_at_zero_and_the_sequential_white_at_its_start():
    np.testing.assert_allclose(colormap(True)(0.5)[:3], WHITE)
    np.testing.assert_allclose(colormap(True)(0.0)[:3], BLUE)
    np.testing.assert_allclose(colormap(True)(1.0)[:3], RED)
    np.testing.assert_allclose(colormap(False)(0.0)[:3], WHITE)
    np.testing.assert_allclose(colormap(False)(1.0)[:3], RED)


# -- single maps --------------------------------------------------------------------------------------------------


def _blocks(values: np.ndarray, size: int = 4) -> np.ndarray:
    """Each value of a small grid as a size × size block, so that rendered pixels are read away from edges."""
    return np.kron(values, np.ones((size, size)))


def test_a_heat_map_is_drawn_with_its_colour_bar_at_the_stated_scale():
    a = _blocks(np.array([[-2.0, 0.0], [1.0, 2.0]]))
    fig = heatmap_figure(a, percentile=100)
    (ax,) = fig.axes
    assert bar_of(ax).get_xlim() == (-2.0, 2.0)
    assert label_of(ax) == "full colour at the largest |φ| = 2"
    png = rendered(fig)
    np.testing.assert_allclose(colour_at(fig, png, ax, 1, 1), BLUE, atol=0.02)   # −2: full blue
    np.testing.assert_allclose(colour_at(fig, png, ax, 1, 5), WHITE, atol=0.02)  # 0: white
    np.testing.assert_allclose(colour_at(fig, png, ax, 5, 1), (1.0, 0.5, 0.5), atol=0.02)  # half red
    np.testing.assert_allclose(colour_at(fig, png, ax, 5, 5), RED, atol=0.02)


def test_nan_and_infinite_pixels_get_their_colours_and_are_counted():
    a = _blocks(np.array([[np.nan, np.inf], [-np.inf, 1.0]]))
    a[-1, -1] = -1.0  # signed
    before = a.copy()
    fig = heatmap_figure(torch.from_numpy(a))
    (ax,) = fig.axes
    png = rendered(fig)
    np.testing.assert_allclose(colour_at(fig, png, ax, 1, 1), NONFINITE_COLORS["NaN"], atol=0.02)
    np.testing.assert_allclose(colour_at(fig, png, ax, 1, 5), NONFINITE_COLORS["+inf"], atol=0.02)
    np.testing.assert_allclose(colour_at(fig, png, ax, 5, 1), NONFINITE_COLORS["-inf"], atol=0.02)
    assert "16 NaN (green), 16 +inf (gold), 16 -inf (cyan) pixels" in label_of(ax)
    # the scale comes from the finite values (1 and −1), the colour bar says so
    assert bar_of(ax).get_xlim() == (-1.0, 1.0)
    np.testing.assert_array_equal(a, before)  # the input is not mutated (NaN compared as equal)


def test_an_overlay_shows_the_image_where_the_map_is_zero():
    image = np.full((1, 8, 8), 0.3)  # single-channel grey
    a = np.zeros((8, 8))
    a[4:, 4:] = 1.0
    fig = overlay_figure(image, a)
    photo, over = fig.axes
    png = rendered(fig)
    np.testing.assert_allclose(colour_at(fig, png, photo, 1, 1), (0.3, 0.3, 0.3), atol=0.01)
    np.testing.assert_allclose(colour_at(fig, png, over, 1, 1), (0.3, 0.3, 0.3), atol=0.01)  # φ = 0: image only
    # full colour: red at OVERLAY_ALPHA over the grey
    from tribute.viz.panels import OVERLAY_ALPHA

    expected = OVERLAY_ALPHA * np.array(RED) + (1 - OVERLAY_ALPHA) * 0.3
    np.testing.assert_allclose(colour_at(fig, png, over, 6, 6), expected, atol=0.02)
    with pytest.raises(ValueError, match="the image is 8 × 8 but the map 4 × 4"):
        overlay_figure(image, np.ones((4, 4)))


# -- every figure function on every awkward input ------------------------------------------------------------------

EDGE_CASES = {
    "all_zero": (lambda: np.zeros((3, 8, 8)), "all zero (scale 1)"),
    "constant": (lambda: np.full((3, 8, 8), 2.0), "constant: every pixel = 6"),
    "extreme": (lambda: np.concatenate([np.full((3, 4, 8), 1e30), np.full((3, 4, 8), -1e30)], 1), "= 3e+30"),
    "nonfinite": (lambda: np.where(np.eye(8, dtype=bool), np.nan, np.linspace(-1, 1, 64).reshape(8, 8))[None]
                  .repeat(3, 0), "8 NaN (green) pixels"),
    "infinite": (lambda: np.where(np.eye(8, dtype=bool), np.inf, 1.0)[None], "8 +inf (gold) pixels"),
    "single_channel": (lambda: np.linspace(-1, 1, 64).reshape(1, 8, 8), "percentile of |φ|"),
    "two_dimensional": (lambda: np.linspace(0, 1, 64).reshape(8, 8), "percentile of |φ|"),
}


def _figures(a: np.ndarray, image: np.ndarray):
    yield "heatmap_figure", heatmap_figure(a)
    yield "heatmap_figure with image", heatmap_figure(a, image)
    yield "overlay_figure", overlay_figure(image, a)
    yield "method_figure", method_figure(image[None], {"m": a[None], "gradient": a[None]})
    yield "family_figure", family_figure(image[None], {"gradient": a[None], "lrp": a[None]}, ["x"])
    yield "class_contrast_figure", class_contrast_figure(image, {"first": a, "second": a})


@pytest.mark.parametrize("case", list(EDGE_CASES))
@pytest.mark.parametrize("image_channels", [1, 3])
def test_every_figure_function_handles_the_input(case, image_channels):
    make, expected = EDGE_CASES[case]
    a, image = make(), np.linspace(0, 1, image_channels * 64).reshape(image_channels, 8, 8)
    a_before, image_before = a.copy(), image.copy()
    for name, fig in _figures(a, image):
        rendered(fig)
        map_axes = [ax for ax in fig.axes if ax.child_axes]
        assert map_axes, name
        for ax in map_axes:
            label = label_of(ax)
            assert expected in label, (name, label)
            low, high = bar_of(ax).get_xlim()
            scale = map_scale(a.sum(0) if a.ndim == 3 else a)
            assert (low, high) == pytest.approx(scale.limits), name  # the bar spans the stated scale
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(image, image_before)


# -- grids --------------------------------------------------------------------------------------------------------


def test_grids_share_scales_when_asked():
    maps = {"a": np.array([[[1.0]], [[4.0]]]) * np.ones((2, 4, 4)), "b": -np.ones((2, 4, 4))}
    fig = method_figure(None, maps, percentile=100)
    assert [bar_of(ax).get_xlim() for ax in fig.axes] == [(0, 1), (-1, 1), (0, 4), (-1, 1)]  # each its own
    fig = method_figure(None, maps, percentile=100, share="column")
    assert [bar_of(ax).get_xlim() for ax in fig.axes] == [(0, 4), (-1, 1), (0, 4), (-1, 1)]
    assert label_of(fig.axes[0]).startswith("shared by the column: ")
    fig = method_figure(None, maps, percentile=100, share="row")
    assert [bar_of(ax).get_xlim() for ax in fig.axes] == [(-1, 1), (-1, 1), (-4, 4), (-4, 4)]
    fig = method_figure(None, maps, percentile=100, share="all")
    assert {bar_of(ax).get_xlim() for ax in fig.axes} == {(-4, 4)}
    with pytest.raises(ValueError, match="share must be"):
        method_figure(None, maps, share="rows")


def test_family_grids_have_headers_notes_and_readable_size():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    names = ["gradient", "saliency", "integrated_gradients", "smoothgrad", "deeplift", "gradcam", "mine"]
    maps = {m: torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i, m in enumerate(names)}
    fig = family_figure(images, maps, ["cat (chelsea)", "cup"], notes={"deeplift": "a note under DeepLIFT"},
                        max_columns=2)
    texts = [t.get_text() for t in fig.texts]
    # gradient's 4 methods split in two bands of 2; propagation and CAM share a band; the unlisted method last
    assert [t for t in texts if not t.startswith("a note")] == [
        "gradient", "gradient (continued)", "propagation", "CAM", "other"]
    assert "a note under DeepLIFT" in texts
    # per block and row: the image then the block's methods
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:6] == ["cat (chelsea)", "gradient", "saliency", "cup", "", ""]
    assert titles[6:9] == ["cat (chelsea)", "integrated gradients", "smoothgrad"]
    assert len(fig.axes) == 2 * sum(1 + k for k in (2, 2, 2, 1))  # rows × (image + methods) per band
    assert [ax.get_title() for ax in fig.axes[12:15]] == ["cat (chelsea)", "deeplift", "gradcam"]
    width, height = fig.get_size_inches()
    assert width == pytest.approx(0.15 + 3 * (2.2 + 0.15))  # the widest block: image + 2 methods
    assert height > 4 * 2 * 2.2  # every row at full panel size


def test_grids_check_their_inputs():
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"attributions\['g'\] must have shape .* N = 2"):
        method_figure(images, {"g": torch.zeros(3, 8, 8, 8)})
    with pytest.raises(ValueError, match="titles must hold one title per image"):
        method_figure(images, {"g": torch.zeros(2, 8, 8)}, ["one"])
    with pytest.raises(ValueError, match="no attributions"):
        method_figure(images, {})
    with pytest.raises(ValueError, match="overlay=True needs the images"):
        method_figure(None, {"g": torch.zeros(2, 8, 8)}, overlay=True)
    with pytest.raises(ValueError, match="attribution must have shape"):
        heatmap_figure(torch.zeros(8))
    with pytest.raises(ValueError, match="notes for 'gradient', which have no attributions here; the methods are 'g'"):
        method_figure(images, {"g": torch.zeros(2, 8, 8)}, notes={"gradient": "a typo'd key"})


# -- class contrast -----------------------------------------------------------------------------------------------


def test_similarities_by_hand():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert map_similarity(a, np.array([[1.0, 3.0], [2.0, 4.0]]))[0] == pytest.approx(0.8)  # 1 − 6·2/(4·15)
    assert map_similarity(a, 2 * a + 1)[0] == pytest.approx(1.0)
    assert map_similarity(a, -a, "cosine")[0] == pytest.approx(-1.0)
    assert map_similarity(a, np.array([[1.0, 0.0], [0.0, 0.0]]), "cosine")[0] == pytest.approx(1 / np.sqrt(30))
    # ties get their average rank: ranks of [1, 1, 2, 3] are [1.5, 1.5, 3, 4]
    v, text = map_similarity(np.array([[1.0, 1.0], [2.0, 3.0]]), a)
    assert v == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1]) and text.startswith("Spearman ρ =")
    assert map_similarity(a, np.ones((2, 2))) == (None, "Spearman ρ: undefined (a constant map has no ranking)")
    assert map_similarity(a, np.zeros((2, 2)), "cosine")[0] is None
    nan = a.copy()
    nan[0, 0] = np.nan
    assert map_similarity(nan, a)[1] == "Spearman ρ = 1.00 over 3 finite pixels"
    assert map_similarity(1e300 * a, -1e300 * a, "cosine")[0] == pytest.approx(-1.0)  # no overflow
    with pytest.raises(ValueError, match="similarity must be one of"):
        map_similarity(a, a, "pearson")


def test_the_class_contrast_grid_writes_each_similarity_to_the_first_class():
    g = torch.Generator().manual_seed(0)
    image, first = torch.rand(3, 8, 8, generator=g), torch.randn(8, 8, generator=g)
    fig = class_contrast_figure(image, {"tabby": first, "tiger cat": 2 * first, "espresso": -first},
                                similarity="cosine", title="cat (chelsea)")
    assert [ax.get_title() for ax in fig.axes] == ["cat (chelsea)", "tabby", "tiger cat", "espresso"]
    texts = [t.get_text() for t in fig.texts]
    assert "cosine = 1.00 to 'tabby'" in texts and "cosine = -1.00 to 'tabby'" in texts
    assert "the reference of the cosine values" in texts
