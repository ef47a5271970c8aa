"""The perturbation methods' foundation: feature groups, image segments and scoring perturbed rows in chunks.

- FeatureGroups: perturbed rows, per-group values spread to features, groups that exist and groups already at
  the baseline, all worked by hand; labels renumbered per sample to 0…M_i − 1 in increasing order; an input
  without a mask has each feature alone, numbered after the given labels; several inputs' segments disjoint.
- Segments: the grid by hand (the default cell an eighth of the image, the last cells smaller); SLIC and
  quickshift segment the picture, not its value range (x and a·x + b get the same segments); options checked.
- Scoring: ``perturbed_scores`` equals a loop over (sample, copy) whatever ``batch_size``; rows come sample-major,
  no pass holds more than ``batch_size`` rows, every row is counted, nothing records a graph; ``clean_scores``
  fixes ``target=None`` from its own pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tribute.attribution.perturbation.groups import FeatureGroups, feature_groups
from tribute.attribution.perturbation.scoring import clean_scores, perturbed_scores
from tribute.attribution.perturbation.segments import segment_images
from tribute.core.engine import Forward, count_passes
from tribute.core.inputs import Layout
from tribute.core.targets import Target

DT = torch.float64


def hand_groups() -> FeatureGroups:
    # sample 0: groups {0, 1}, {2}, {3}; sample 1: {0}, {1, 2, 3}
    return FeatureGroups(torch.tensor([[0, 0, 1, 2], [0, 1, 1, 1]]), torch.tensor([3, 2]))


def test_feature_groups_worked_by_hand():
    g = hand_groups()
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    b = torch.tensor([[0.0, 2.0, -1.0, -2.0], [-5.0, 6.0, 7.0, 8.0]])
    assert g.size == 3
    assert torch.equal(g.present(), torch.tensor([[True, True, True], [True, True, False]]))
    keep = torch.tensor([[False, True, True], [True, False, True], [False, True, False]])
    rows = g.rows(x, b, keep, torch.tensor([0, 0, 1]))
    expected = torch.tensor([[0.0, 2.0, 3.0, 4.0],     # sample 0 without group 0
                             [1.0, 2.0, -1.0, 4.0],    # sample 0 without group 1
                             [-5.0, 6.0, 7.0, 8.0]])   # sample 1 without group 0 (its group 2 does not exist)
    assert torch.equal(rows, expected)
    # sample 1's group 1 is at the baseline already; sample 0's group 0 only half (feature 1 equals it)
    assert torch.equal(g.unchanged(x, b), torch.tensor([[False, False, False], [False, True, True]]))
    values = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    assert torch.equal(g.spread(values, x), torch.tensor([[10.0, 10.0, 20.0, 30.0], [40.0, 50.0, 50.0, 50.0]]))


def groups_of(xs, mask=None, segments=None, options=None, default="features"):
    layout, xs = Layout.of(xs)
    return feature_groups(layout.pack(xs), xs, layout, mask, segments, options, default=default)


def test_labels_are_renumbered_per_sample_in_increasing_order():
    x = torch.zeros(2, 5)
    shared = groups_of(x, torch.tensor([9, 9, -3, 40, 9]))
    assert torch.equal(shared.index, torch.tensor([[1, 1, 0, 2, 1]] * 2)) and shared.counts.tolist() == [3, 3]
    own = groups_of(x, torch.tensor([[7, 7, 7, 2, 2], [0, 1, 2, 3, 4]]))
    assert torch.equal(own.index, torch.tensor([[1, 1, 1, 0, 0], [0, 1, 2, 3, 4]])) and own.counts.tolist() == [2, 5]
    assert torch.equal(own.present()[0], torch.tensor([True, True, False, False, False]))
    floats = groups_of(x, torch.tensor([2.0, 2.0, 1.0, 1.0, 0.0]))  # integer-valued floats are labels too
    assert torch.equal(floats.index[0], torch.tensor([2, 2, 1, 1, 0]))


def test_several_inputs_masks_segments_and_inputs_without_a_mask():
    a, b = torch.zeros(2, 2, 3), torch.zeros(2, 3)
    spanning = groups_of((a, b), (torch.tensor([[0, 0, 1], [1, 2, 2]]), torch.tensor([2, 5, 5])))
    assert torch.equal(spanning.index[0], torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3]))  # label 2 spans both inputs
    alone = groups_of((a, b), (None, torch.tensor([0, 0, 1])))  # input 0: each feature alone, after labels 0, 1
    assert torch.equal(alone.index[0], torch.tensor([2, 3, 4, 5, 6, 7, 0, 0, 1]))
    features = groups_of((a, b), segments=("features", "features"))
    assert torch.equal(features.index[0], torch.arange(9)) and features.size == 9
    with pytest.raises(ValueError, match="feature_mask has no mask"):
        groups_of((a, b), (None, None))


def test_the_grid_by_hand():
    x = torch.rand(2, 3, 10, 7)
    grid = segment_images(x, "grid", {"cell": (4, 3)})
    r, c = torch.arange(10), torch.arange(7)
    expected = (r[:, None] // 4) * 3 + c[None, :] // 3  # 3 × 3 cells, the last row and column smaller
    assert torch.equal(grid[0], expected) and torch.equal(grid[1], expected)
    assert int(expected.max()) == 8 and int((expected == 8).sum()) == 2 * 1
    default = segment_images(torch.rand(1, 3, 32, 32), "grid")  # cells of 4 × 4: 8 × 8 of them
    assert int(default.max()) == 63 and bool((torch.bincount(default.flatten()) == 16).all())
    with pytest.raises(ValueError, match="cell must be a positive int"):
        segment_images(x, "grid", {"cell": 0})
    with pytest.raises(ValueError, match=r"segments='grid' takes segment_options \['cell'\], got \['size'\]"):
        segment_images(x, "grid", {"size": 2})


def picture(n: int = 2, hw: int = 16) -> torch.Tensor:
    """Two flat halves of different colours, slightly noisy: any sensible segmentation splits at the middle."""
    x = torch.zeros(n, 3, hw, hw, dtype=DT)
    x[:, :, :, hw // 2:] = torch.tensor([0.9, 0.1, 0.2], dtype=DT).view(1, 3, 1, 1)
    x[:, :, :, :hw // 2] = torch.tensor([0.1, 0.7, 0.8], dtype=DT).view(1, 3, 1, 1)
    return x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=DT)


# no smoothing before SLIC (its default σ = 1 blurs the edge pixels into both colours)
@pytest.mark.parametrize("method, options", [("slic", {"n_segments": 4, "sigma": 0.0}),
                                             ("quickshift", {"kernel_size": 2})])
def test_superpixels_follow_the_picture_not_its_value_range(method, options):
    x = picture()
    labels = segment_images(x, method, options)
    assert labels.shape == (2, 16, 16) and labels.dtype == torch.long
    torch.testing.assert_close(segment_images(3.0 * x - 1.5, method, options), labels, rtol=0, atol=0)
    left, right = labels[0, :, :8].unique(), labels[0, :, 8:].unique()
    assert not set(left.tolist()) & set(right.tolist())  # no segment crosses the colour edge


def test_segment_options_are_checked():
    with pytest.raises(ValueError, match=r"segments='slic' takes segment_options"):
        segment_images(picture(), "slic", {"n_segment": 4})
    with pytest.raises(ValueError, match="quickshift segments RGB or grey images; these have 4 channels"):
        segment_images(torch.rand(1, 4, 8, 8), "quickshift")
    assert segment_images(torch.rand(1, 4, 8, 8), "slic", {"n_segments": 4}).shape == (1, 8, 8)  # any channels
    with pytest.raises(ValueError, match=r"segments='slic' segments images \(N, C, H, W\) of floats"):
        groups_of(torch.rand(2, 5), segments="slic")


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
        self.rows, self.grad = [], []

    def forward(self, x):
        self.rows.append(x.shape[0])
        self.grad.append(torch.is_grad_enabled())
        return self.net(x)


def test_perturbed_scores_equal_a_loop_in_any_chunking():
    model = Recorder()
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    scale = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0], dtype=DT)

    def make_rows(sample, draw):
        return x[sample] * scale[draw][:, None]

    target = Target(torch.tensor([2, 0, 1]), 3)
    with torch.no_grad():
        expected = torch.stack([model.net(x[i] * scale[:, None])[:, int(target.index[i])] for i in range(3)])
    for batch_size in (1, 4, 7, 100):
        model.rows, model.grad, seen = [], [], []

        def recording(sample, draw, seen=seen):
            seen.extend(zip(sample.tolist(), draw.tolist(), strict=True))
            return make_rows(sample, draw)

        with count_passes() as count:
            got = perturbed_scores(Forward(model), target, 3, 5, recording, batch_size=batch_size)
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-15)
        assert seen == [(i, j) for i in range(3) for j in range(5)]  # sample-major, each copy once
        assert max(model.rows) <= batch_size and sum(model.rows) == 15 == count.forward_rows
        assert not any(model.grad) and got.dtype == DT


def test_clean_scores_fix_target_none_from_their_own_pass():
    model = Recorder()
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    target = Target(None, 5)
    s = clean_scores(Forward(model), target, x, batch_size=2)
    with torch.no_grad():
        out = model.net(x)
    assert torch.equal(target.index, out.argmax(1)) and model.rows == [2, 2, 1]
    torch.testing.assert_close(s, out.max(1).values, rtol=1e-14, atol=0)
    floats = clean_scores(Forward(model), target, x.float().double(), batch_size=5)
    assert floats.dtype == DT
