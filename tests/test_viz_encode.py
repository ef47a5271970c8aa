"""Direct PNG encoding of attribution maps (tribute.viz.encode): colours worked by hand, the scale rule,
non-finite values, degenerate maps, overlays and colour bars, decoded back with Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tribute.viz.encode import (
    NONFINITE_RGB,
    colorbar_png,
    encode_map,
    high_percentile,
    png_bytes,
)

PIL = pytest.importorskip("PIL.Image")

RED, BLUE, WHITE, GREEN = (255, 0, 0), (0, 0, 255), (255, 255, 255), NONFINITE_RGB
DARK_RED = (128, 0, 38)  # the sequential table's full colour


def decode(png: bytes) -> np.ndarray:
    """PNG bytes as an (H, W, 3) int array, through Pillow (an independent decoder)."""
    with PIL.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_signed_colours_worked_by_hand():
    a = torch.tensor([[1.0, -1.0], [0.0, 0.5]])
    enc = encode_map(a, percentile=100)
    rgb = decode(enc.png)
    assert rgb.shape == (2, 2, 3) and (enc.width, enc.height) == (2, 2)
    assert enc.signed and enc.scale == 1.0 and enc.clipped == 0 and not enc.nonfinite
    np.testing.assert_array_equal(rgb[0, 0], RED)
    np.testing.assert_array_equal(rgb[0, 1], BLUE)
    np.testing.assert_array_equal(rgb[1, 0], WHITE)
    # half-way from white to red: 0.5 → palette index 127 + 64 = 191, at 191/254 of the table
    np.testing.assert_allclose(rgb[1, 1], (255, 128, 128), atol=2)


def test_symmetric_scale_and_sign_flip_swaps_red_and_blue():
    enc = encode_map(np.array([[2.0, -1.0]]), percentile=100)
    rgb = decode(enc.png)
    assert enc.scale == 2.0
    np.testing.assert_array_equal(rgb[0, 0], RED)
    np.testing.assert_allclose(rgb[0, 1], (128, 128, 255), atol=2)  # half the largest magnitude, half the blue
    a = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    pos, neg = decode(encode_map(a).png), decode(encode_map(-a).png)
    np.testing.assert_array_equal(pos[..., 0], neg[..., 2])
    np.testing.assert_array_equal(pos[..., 1], neg[..., 1])
    assert encode_map(a).scale == encode_map(-a).scale


def test_the_scale_is_the_percentile_of_the_magnitudes_or_the_given_value():
    a = np.random.default_rng(0).standard_normal((3, 40, 50))
    summed = a.sum(0)
    enc = encode_map(a)
    assert enc.scale == pytest.approx(np.percentile(np.abs(summed), 99.5), rel=1e-12)
    assert enc.clipped == int((np.abs(summed) > enc.scale).sum()) > 0  # saturated values are counted
    assert encode_map(a, percentile=90).scale == pytest.approx(np.percentile(np.abs(summed), 90), rel=1e-12)
    given = encode_map(a, scale=1e6)
    assert given.scale == 1e6 and given.clipped == 0
    assert "values beyond the scale" in " ".join(enc.notes())
    # a shared scale: two maps, one twice the other, encoded at one scale differ in intensity
    faint, strong = decode(encode_map(summed / 2, scale=enc.scale).png), decode(encode_map(summed, scale=enc.scale).png)
    assert (np.abs(255 - faint).sum() < np.abs(255 - strong).sum())


@pytest.mark.parametrize("n", [1, 7, 1000, 4096, 50176, 120001])
@pytest.mark.parametrize("q", [0, 50, 99, 99.5, 99.9, 100])
def test_fast_percentile_equals_numpy(n, q):
    rng = np.random.default_rng(n)
    for x in (np.abs(rng.standard_normal(n)), rng.integers(0, 3, n).astype(float), np.full(n, 2.5),
              np.abs(rng.standard_cauchy(n)).astype(np.float32)):
        assert high_percentile(x, q) == pytest.approx(float(np.percentile(x, q)), rel=1e-6, abs=1e-12)


def test_channels_are_summed_and_tensors_equal_arrays():
    a = torch.randn(3, 9, 11, generator=torch.Generator().manual_seed(1))
    assert encode_map(a).png == encode_map(a.sum(0).numpy()).png
    assert encode_map(a, reduce="abs_sum").png == encode_map(a.abs().sum(0)).png
    assert encode_map(a.double()).png == encode_map(a.numpy()).png
    assert encode_map(a.half()).scale == pytest.approx(encode_map(a.half().float()).scale)
    with pytest.raises(ValueError, match="reduce must be one of"):
        encode_map(a, reduce="max")
    with pytest.raises(ValueError, match=r"\(H, W\) or \(C, H, W\)"):
        encode_map(torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="empty"):
        encode_map(np.zeros((0, 4)))


def test_unsigned_maps_are_sequential_from_white():
    a = np.array([[0.0, 1.0], [0.5, 2.0]])
    enc = encode_map(a, scale=1.0)
    rgb = decode(enc.png)
    assert not enc.signed and enc.clipped == 1
    np.testing.assert_array_equal(rgb[0, 0], WHITE)
    np.testing.assert_array_equal(rgb[0, 1], DARK_RED)
    np.testing.assert_array_equal(rgb[1, 1], DARK_RED)  # saturated
    # intensity grows with the value: the sum of the channels falls
    assert rgb[0, 0].sum() > rgb[1, 0].sum() > rgb[0, 1].sum()
    assert encode_map(a, signed=True, scale=1.0).signed  # a diverging map on request
    with pytest.raises(ValueError, match="signed=False but the map has negative values"):
        encode_map(np.array([[1.0, -1.0]]), signed=False)


def test_nan_and_infinities_are_painted_green_and_counted():
    a = np.array([[np.nan, 1.0, -2.0], [np.inf, -np.inf, 0.5]])
    enc = encode_map(a, percentile=100)
    rgb = decode(enc.png)
    assert (enc.nan, enc.posinf, enc.neginf, enc.nonfinite) == (1, 1, 1, 3)
    assert enc.scale == 2.0  # from the finite values only
    for r, c in [(0, 0), (1, 0), (1, 1)]:
        np.testing.assert_array_equal(rgb[r, c], GREEN)
    np.testing.assert_array_equal(rgb[0, 2], BLUE)
    assert "1 NaN, 1 +inf, 1 -inf shown in green" in enc.notes()
    only_nan = encode_map(np.full((2, 2), np.nan))
    assert only_nan.scale == 0.0 and only_nan.nan == 4 and not only_nan.all_zero
    assert (decode(only_nan.png) == GREEN).all()


def test_all_zero_constant_and_extreme_maps():
    zero = encode_map(torch.zeros(3, 5, 5))
    assert zero.scale == 0.0 and zero.all_zero and not zero.signed and zero.notes() == ["all values are zero"]
    assert (decode(zero.png) == WHITE).all()
    const = encode_map(np.full((4, 4), -3.0))
    assert const.scale == 3.0 and (decode(const.png) == BLUE).all()
    extreme = np.array([[1e300, -1e300], [1e-300, 0.0]])
    enc = encode_map(extreme, percentile=100)
    rgb = decode(enc.png)
    np.testing.assert_array_equal(rgb[0, 0], RED)
    np.testing.assert_array_equal(rgb[0, 1], BLUE)
    np.testing.assert_array_equal(rgb[1, 0], WHITE)  # negligible beside the scale
    tiny = encode_map(np.array([[1e-30, -1e-30]]), percentile=100)
    assert tiny.scale == 1e-30 and (decode(tiny.png)[0, 0] == RED).all()
    huge_over_tiny = encode_map(np.array([[1e300, 1.0]]), scale=1e-300)  # overflows to inf: full colour, silently
    np.testing.assert_array_equal(decode(huge_over_tiny.png)[0, 0], DARK_RED)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be finite"):
            encode_map(np.ones((2, 2)), scale=bad)
    with pytest.raises(ValueError, match="percentile must be in"):
        encode_map(np.ones((2, 2)), percentile=0)


def test_overlay_on_colour_and_single_channel_images():
    h, w = 6, 8
    grey = torch.rand(1, h, w, generator=torch.Generator().manual_seed(2))
    zero = encode_map(torch.zeros(h, w), image=grey)
    # a zero map leaves the (lightened) grey image: 0.35 + 0.65 × grey, in 8 bits
    expected = np.rint((0.35 + 0.65 * grey[0].numpy()) * 255)
    np.testing.assert_allclose(decode(zero.png)[..., 0], expected, atol=1)
    assert (decode(zero.png) == decode(zero.png)[..., :1]).all()
    # a single-channel image, the same image as 3 equal channels, (H, W) and channels-last: one picture
    a = torch.randn(h, w, generator=torch.Generator().manual_seed(3))
    pngs = {encode_map(a, image=im).png for im in (grey, grey.expand(3, h, w), grey[0], grey.permute(1, 2, 0),
                                                  grey.expand(3, h, w).permute(1, 2, 0).numpy())}
    assert len(pngs) == 1
    # full-scale values cover the image at 85 %: red dominates where a is at the scale
    enc = encode_map(a, image=grey)
    rgb = decode(enc.png)
    top = np.unravel_index(np.argmax(a.numpy()), a.shape)
    assert rgb[top][0] > rgb[top][1] + 100
    # non-finite values stay green over the image
    a[0, 0] = float("nan")
    np.testing.assert_array_equal(decode(encode_map(a, image=grey).png)[0, 0], GREEN)
    with pytest.raises(ValueError, match=r"\(H, W\) = \(6, 8\)"):
        encode_map(a, image=torch.rand(3, h, w + 1))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        encode_map(a, image=grey * 255)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        encode_map(a, image=torch.full((1, h, w), float("nan")))


def test_colour_bar_runs_from_minus_to_plus_scale():
    bar = decode(colorbar_png(0.5, width=255, height=10))
    assert bar.shape == (10, 255, 3)
    np.testing.assert_array_equal(bar[0, 0], BLUE)
    np.testing.assert_array_equal(bar[0, 127], WHITE)
    np.testing.assert_array_equal(bar[0, -1], RED)
    assert (bar == bar[:1]).all()  # every row alike
    seq = decode(colorbar_png(2.0, signed=False, width=64, height=4))
    np.testing.assert_array_equal(seq[0, 0], WHITE)
    np.testing.assert_array_equal(seq[0, -1], DARK_RED)
    with pytest.raises(ValueError, match="scale must be finite"):
        colorbar_png(float("nan"))
    with pytest.raises(ValueError, match="width >= 2"):
        colorbar_png(1.0, width=1)


def test_png_bytes_round_trip_and_data_uri():
    rgb = np.random.default_rng(4).integers(0, 256, (13, 17, 3)).astype(np.uint8)
    np.testing.assert_array_equal(decode(png_bytes(rgb)), rgb)
    enc = encode_map(np.eye(3))
    assert enc.data_uri().startswith("data:image/png;base64,iVBORw0KGgo")
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(rgb.astype(float))
