"""Occlusion (Zeiler & Fergus 2014): the mean, over the windows covering a feature, of the score lost when the
window takes the baseline.

- It equals a brute-force loop over the windows written here (both borders, a stride that does not divide
  L − w, windows spanning the leading dims), and values worked by hand on a linear model.
- It equals Captum's ``Occlusion`` with ``border="truncate"`` (Captum's cut last window) and with ``"cover"``
  where the placements coincide.  Captum divides by the window counts after casting to float32
  (``format_result``: ``single_attrib.float() / weight``), so its result is float32: ours, computed in float64,
  agrees to float32's last place.  At 1e-10 in float64: tiling windows (stride = window) equal Captum's
  ``FeatureAblation`` with the tiles as its feature mask.
- A batch equals its samples one at a time; ``batch_size`` changes neither the values nor the rows sent, and no
  pass holds more than ``batch_size`` rows; passes are counted: N × (1 + windows).
- Token ids (N, T) with a window over T and a baseline token; two inputs with a window per input equal each input
  occluded alone with the other held as a forward argument.
- The planted square: a model that sees one square only; occlusion's top-k pixels lie inside it dilated by the
  window.
- Bad input: clear errors naming the option.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import ImageTable, assert_same_alone_and_in_any_batch
from torch import nn

import tribute
from tribute.attribution.perturbation.occlusion import place

DT = torch.float64


def cnn(seed: int = 0, h: int = 7, w: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * h * w, 3)).to(DT).eval()


def images(n: int = 3, h: int = 7, w: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=DT)


def starts(length: int, size: int, step: int, border: str) -> list[int]:
    """Window starts along one dim, written independently of the library: 'cover' steps while the window fits and
    adds one flush with the edge; 'truncate' steps until a window reaches the far edge."""
    if border == "cover":
        s = list(range(0, length - size + 1, step))
        return s if s[-1] == length - size else [*s, length - size]
    s, p = [], 0
    while True:
        s.append(p)
        if p + size >= length:
            return s
        p += step


def brute_force(model, x, target, window, stride, border, baseline):
    """Occlusion by its definition: one window at a time, one forward pass per window and sample."""
    shape = x.shape[1:]
    with torch.no_grad():
        full = model(x)[:, target]
        total, count = torch.zeros_like(x, dtype=full.dtype), torch.zeros_like(x, dtype=full.dtype)
        per_dim = [starts(L, w, s, border) for L, w, s in zip(shape, window, stride, strict=True)]
        for corner in itertools.product(*per_dim):
            box = (slice(None), *[slice(p, p + w) for p, w in zip(corner, window, strict=True)])
            occluded = x.clone()
            occluded[box] = baseline[box] if isinstance(baseline, torch.Tensor) else baseline
            lost = full - model(occluded)[:, target]
            total[box] += lost.view(-1, *[1] * len(shape))
            count[box] += 1
    assert bool((count > 0).all())
    return total / count


@pytest.mark.parametrize("border", ["cover", "truncate"])
@pytest.mark.parametrize("window, stride", [((3, 3, 4), (1, 2, 3)), ((2, 4, 3), (1, 2, 2)), ((3, 1, 1), (1, 1, 1))])
def test_equals_a_brute_force_loop_over_windows(border, window, stride):
    model, x = cnn(), images()
    got = tribute.explain(model, x, "occlusion", target=2, window=window, stride=stride, border=border)
    torch.testing.assert_close(got, brute_force(model, x, 2, window, stride, border, 0.0), rtol=1e-12, atol=1e-14)
    # over the last dims only: the leading dims (channels) spanned whole
    short = tribute.explain(model, x, "occlusion", target=2, window=window[1:], stride=stride[1:], border=border)
    torch.testing.assert_close(short, brute_force(model, x, 2, (3, *window[1:]), (1, *stride[1:]), border, 0.0),
                               rtol=1e-12, atol=1e-14)


def test_a_tensor_baseline_is_what_windows_take():
    model, x = cnn(), images()
    baseline = torch.rand(1, 3, 7, 6, generator=torch.Generator().manual_seed(5), dtype=DT)
    got = tribute.explain(model, x, "occlusion", target=0, window=(2, 2), stride=2, baseline=baseline)
    expected = brute_force(model, x, 0, (3, 2, 2), (1, 2, 2), "cover", baseline.expand_as(x))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_values_worked_by_hand_on_a_linear_model():
    """f(x) = w·x on 6 features, window 4, stride 3, baseline 0: a window's loss is the sum of w_i x_i inside it.
    cover: windows [0, 4) and [2, 6); truncate: [0, 4) and [3, 6) (cut at the edge)."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 1).to(DT)
    x = torch.rand(1, 6, dtype=DT)
    c = (lin.weight[0] * x[0]).detach()
    a, b = c[:4].sum(), c[2:].sum()
    cover = torch.stack([a, a, (a + b) / 2, (a + b) / 2, b, b])
    got = tribute.explain(lin, x, "occlusion", target=0, window=4, stride=3)
    torch.testing.assert_close(got[0], cover, rtol=1e-14, atol=0)
    a, b = c[:4].sum(), c[3:].sum()
    truncate = torch.stack([a, a, a, (a + b) / 2, b, b])
    got = tribute.explain(lin, x, "occlusion", target=0, window=4, stride=3, border="truncate")
    torch.testing.assert_close(got[0], truncate, rtol=1e-14, atol=0)


def test_every_feature_is_covered_and_cover_keeps_windows_whole():
    for length, size, step in [(32, 4, 2), (7, 3, 3), (6, 4, 3), (5, 5, 1), (10, 3, 2)]:
        for border in ("cover", "truncate"):
            (axis,) = place((length,), (size,), step, border).axes
            assert bool((axis.sum(0) >= 1).all()), (length, size, step, border)
            if border == "cover":
                assert bool((axis.sum(1) == size).all())  # every window has the full size
    zeng = place((3, 32, 32), (3, 4, 4), 2, "cover")
    assert zeng.count == 225 and place((3, 32, 32), (3, 4, 4), 2, "truncate").count == 225


captum = pytest.importorskip("captum.attr")


@pytest.mark.parametrize("border, window, stride", [
    ("truncate", (3, 3, 4), (1, 2, 3)), ("truncate", (1, 4, 3), (1, 2, 2)),
    ("cover", (3, 3, 2), (1, 2, 2)), ("cover", (2, 3, 3), 1)])
def test_equals_captums_occlusion_to_float32s_last_place(border, window, stride):
    model, x = cnn(), images()
    got = tribute.explain(model, x, "occlusion", target=1, window=window, stride=stride, border=border)
    theirs = captum.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=stride, target=1)
    assert theirs.dtype == torch.float32  # Captum's division by the counts is in float32
    torch.testing.assert_close(got.float(), theirs, rtol=3 * torch.finfo(torch.float32).eps, atol=1e-30)


def test_tiling_windows_equal_captums_feature_ablation_with_the_tiles_in_float64():
    model, x = cnn(), images()
    got = tribute.explain(model, x, "occlusion", target=1, window=(3, 1, 2), stride=(1, 1, 2))
    tiles = (torch.arange(7)[:, None] * 3 + torch.arange(6)[None, :] // 2).expand(1, 3, 7, 6)
    theirs = captum.FeatureAblation(model).attribute(x, feature_mask=tiles, target=1)
    assert theirs.dtype == DT
    torch.testing.assert_close(got, theirs, rtol=1e-10, atol=1e-12)


def test_a_batch_equals_its_samples_alone_and_batch_size_changes_nothing():
    assert_same_alone_and_in_any_batch(cnn(), images(5), "occlusion", torch.tensor([4, 2, 0, 3, 1]),
                                       target=torch.tensor([0, 1, 2, 1, 0]), window=(2, 3), stride=(2, 2))


def test_an_input_transform_equals_the_model_wrapped_by_hand():
    """Windows are removed in pixel space, before the transform: the same as a model that normalises itself."""
    model, x = cnn(), images()
    mean, std = torch.tensor([0.4, 0.5, 0.6], dtype=DT), torch.tensor([0.2, 0.25, 0.3], dtype=DT)
    wrapped = lambda t: model((t - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))  # noqa: E731
    kw = {"target": 1, "window": (2, 2), "stride": 2, "baseline": "blur"}
    got = tribute.explain(model, x, "occlusion", input_transform=tribute.Normalize(mean.tolist(), std.tolist()), **kw)
    torch.testing.assert_close(got, tribute.explain(wrapped, x, "occlusion", **kw), rtol=1e-12, atol=1e-14)


class Recorder(nn.Module):
    """The model, recording how many rows each pass holds."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.model(x)


def test_passes_are_counted_and_no_pass_exceeds_batch_size():
    model, x = Recorder(cnn()), images(4)
    explainer = tribute.Occlusion(model, window=(3, 3), stride=2)  # H 7: starts 0, 2, 4; W 6: 0, 2, 3 (cover)
    explainer.attribute(x, target=0, batch_size=10)
    windows = 3 * 3
    assert explainer.passes.forward_rows == 4 * (1 + windows) == sum(model.rows)
    assert max(model.rows) <= 10 and explainer.passes.backward_rows == 0


def test_target_none_is_the_prediction_from_the_clean_pass():
    model, x = Recorder(cnn()), images(3)
    explainer = tribute.Occlusion(model, window=(2, 2), stride=2)
    got = explainer.attribute(x)
    assert sum(model.rows) == 3 * (1 + 12)  # no extra pass for the prediction
    predicted = cnn()(x).argmax(1)
    torch.testing.assert_close(got, tribute.explain(cnn(), x, "occlusion", target=predicted, window=(2, 2), stride=2))


class TokenNet(nn.Module):
    def __init__(self, vocab: int = 12, t: int = 7):
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(vocab, 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * t, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_token_ids_with_a_window_over_t_and_a_baseline_token():
    net = TokenNet().to(DT).eval()
    ids = torch.randint(1, 12, (3, 7), generator=torch.Generator().manual_seed(0))
    got = tribute.explain(net, ids, "occlusion", target=1, window=3, stride=2, baseline=0)
    assert got.shape == ids.shape and got.dtype == DT
    torch.testing.assert_close(got, brute_force(net, ids, 1, (3,), (2,), "cover", 0), rtol=1e-12, atol=1e-14)
    # a token already equal to the baseline token changes nothing: windows made of it alone give exactly 0
    padded = ids.clone()
    padded[:, 5:] = 0
    alone = tribute.explain(net, padded, "occlusion", target=1, window=1, baseline=0)
    assert float(alone[:, 5:].abs().max()) == 0.0 and float(alone[:, :5].abs().min()) > 0


def test_two_inputs_each_with_its_window_equal_each_occluded_with_the_other_held():
    net = ImageTable(table=5, height=7).to(DT).eval()
    img, tab = images(3), torch.rand(3, 5, generator=torch.Generator().manual_seed(2), dtype=DT)
    a_img, a_tab = tribute.explain(net, (img, tab), "occlusion", target=2, window=((2, 2), (2,)), stride=(2, 1),
                                   baseline=(0.0, 0.5))
    held_img = tribute.explain(net, img, "occlusion", target=2, window=(2, 2), stride=2, forward_args=(tab,))
    torch.testing.assert_close(a_img, held_img, rtol=1e-12, atol=1e-14)
    swapped = lambda t, i: net(i, t)  # noqa: E731 (the table first, the image held)
    held_tab = tribute.explain(swapped, tab, "occlusion", target=2, window=2, baseline=0.5, forward_args=(img,))
    torch.testing.assert_close(a_tab, held_tab, rtol=1e-12, atol=1e-14)
    explainer = tribute.Occlusion(net, window=((2, 2), (2,)), stride=(2, 1))
    explainer.attribute((img, tab), target=2)
    assert explainer.passes.forward_rows == 3 * (1 + 4 * 3 + 4)  # image: H 0,2,4,5 × W 0,2,4; table: 0…3


class PlantedSquare(nn.Module):
    """Sees the square [top, top + size) × [left, left + size) only, through positive weights: removing any of its
    pixels lowers the score, pixels elsewhere do nothing."""

    def __init__(self, top: int, left: int, size: int, hw: int = 32):
        super().__init__()
        mask = torch.zeros(1, 1, hw, hw, dtype=DT)
        mask[..., top:top + size, left:left + size] = 1
        self.register_buffer("mask", mask)
        torch.manual_seed(6)
        self.conv = nn.Conv2d(3, 4, 3, padding=1).to(DT)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.bias.zero_()

    def forward(self, x):
        s = nn.functional.softplus(self.conv(x * self.mask)) * self.mask
        return torch.stack([s.sum((1, 2, 3)), -s.sum((1, 2, 3))], 1)


def test_planted_square_top_pixels_lie_in_the_square_dilated_by_the_window():
    top, left, size, w = 9, 17, 6, 4
    net = PlantedSquare(top, left, size)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=DT)
    a = tribute.explain(net, x, "occlusion", target=0, window=(3, 4, 4), stride=2)  # Zeng et al.'s setting
    pixels = a.sum(1).flatten(1)
    dilated = torch.zeros(32, 32, dtype=torch.bool)
    dilated[top - (w - 1):top + size + w - 1, left - (w - 1):left + size + w - 1] = True
    top_k = pixels.topk(size * size, dim=1).indices
    inside = dilated.flatten()[top_k].double().mean(1)
    assert bool((inside >= 0.9).all()), inside
    assert float(pixels[:, ~dilated.flatten()].abs().max()) == 0.0  # no window reaching the square: exactly 0


@pytest.mark.parametrize("options, match", [
    ({}, "occlusion needs window="),
    ({"window": (3, 8, 2)}, r"window=\(3, 8, 2\) is larger than the input along dim 2"),
    ({"window": (1, 3, 3, 3)}, r"window=\(1, 3, 3, 3\) has 4 dims but .* \(3, 7, 6\) has 3"),
    ({"window": 3}, r"window=3 is ambiguous .* \(3, 7, 6\)"),
    ({"window": (2, 2), "stride": 0}, "stride must be a positive int"),
    ({"window": (2, 2), "stride": -1}, "stride must be a positive int"),
    ({"window": (2, 2), "stride": (1, 2, 1)}, r"stride=\(1, 2, 1\) must be an int or have one entry per dim"),
    ({"window": (2, 2), "stride": 3}, "more than window's 2: the features between two windows"),
    ({"window": (0, 2)}, "window must be a positive int"),
    ({"window": (2.0, 2)}, "window must be a positive int"),
    ({"window": ((2, 2), (2,))}, "window has 2 entries .* the model takes 1 inputs"),
    ({"window": (2, 2), "border": "drop"}, "border must be one of"),
])
def test_bad_windows_are_refused_naming_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        tribute.explain(cnn(), images(), "occlusion", target=0, **options)


def test_several_inputs_need_matching_entries():
    net = ImageTable(table=5, height=7).to(DT).eval()
    img, tab = images(2), torch.rand(2, 5, dtype=DT)
    with pytest.raises(ValueError, match=r"stride has 3 entries but the model takes 2 inputs"):
        tribute.explain(net, (img, tab), "occlusion", target=0, window=((2, 2), (2,)), stride=(1, 1, 1))
    # strides per input beside one shared window: each input steps by its own
    shared = tribute.explain(net, (img, tab), "occlusion", target=0, window=(2,), stride=((2,), (1,)))
    per_input = tribute.explain(net, (img, tab), "occlusion", target=0, window=((2,), (2,)), stride=(2, 1))
    for a, b in zip(shared, per_input, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"window \(input 1\)=\(6,\) is larger than the input"):
        tribute.explain(net, (img, tab), "occlusion", target=0, window=((2, 2), (6,)))
