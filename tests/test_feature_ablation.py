"""Feature ablation: φ_g = S(x) − S(x with group g at the baseline), given to every feature of g.

- It equals its definition (a loop over the groups written here) and Captum's ``FeatureAblation`` with the same
  feature mask, in float64 to 1e-10: one mask for every sample, a mask per sample, several inputs with a mask per
  input and a group spanning both.
- A batch equals its samples alone; ``batch_size`` changes nothing; passes: N × (1 + M).
- Token ids with a baseline token; groups already at the baseline get exactly 0.
- Groups from segments (grid, SLIC, quickshift) equal the same labels given as ``feature_mask``; ``segments``
  reports them, renumbered 0…M − 1, in the inputs' shape.
- Masks that are not integer labels, do not broadcast, or disagree with the inputs are refused.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ImageTable, assert_same_alone_and_in_any_batch
from torch import nn

import tribute

DT = torch.float64


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).to(DT).eval()


def images(n: int = 3, seed: int = 1, hw: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed), dtype=DT)


def definition(model, xs, target, masks, baselines):
    """φ by its definition: for each sample and each label of its masks, remove the features with that label (in
    every input) and take the score lost.  ``masks`` has the inputs' shapes (one label map per sample)."""
    xs, masks, baselines = tuple(xs), tuple(masks), tuple(baselines)
    out = [torch.zeros_like(x, dtype=DT) for x in xs]
    with torch.no_grad():
        for i in range(xs[0].shape[0]):
            one = [x[i:i + 1] for x in xs]
            full = model(*one)[0, target]
            for label in torch.unique(torch.cat([m[i].flatten() for m in masks])):
                removed = [torch.where(m[i:i + 1] == label, b[i:i + 1], x) for x, m, b in zip(one, masks, baselines,
                                                                                              strict=True)]
                lost = full - model(*removed)[0, target]
                for o, m in zip(out, masks, strict=True):
                    o[i][m[i] == label] = lost
    return tuple(out)


def quadrants(n: int = 1) -> torch.Tensor:
    r = torch.arange(6)
    return ((r[:, None] // 3) * 2 + r[None, :] // 3).expand(n, 1, 6, 6)


def test_equals_its_definition_with_a_shared_mask_and_each_feature_alone():
    model, x = cnn(), images()
    mask = quadrants()
    got = tribute.explain(model, x, "feature_ablation", target=1, feature_mask=mask)
    (expected,) = definition(model, (x,), 1, (mask.expand_as(x),), (torch.zeros_like(x),))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    alone = tribute.explain(model, x[:1], "feature_ablation", target=1, baseline=0.25)
    (expected,) = definition(model, (x[:1],), 1, (torch.arange(108).view(1, 3, 6, 6),), (torch.full_like(x[:1], .25),))
    torch.testing.assert_close(alone, expected, rtol=1e-12, atol=1e-14)


def test_a_mask_per_sample_gives_each_sample_its_own_groups():
    model, x = cnn(), images(3)
    g = torch.Generator().manual_seed(4)
    masks = torch.randint(0, 5, (3, 1, 6, 6), generator=g) * 3 + 7  # labels need not start at 0 nor be consecutive
    got = tribute.explain(model, x, "feature_ablation", target=0, feature_mask=masks)
    (expected,) = definition(model, (x,), 0, (masks.expand_as(x),), (torch.zeros_like(x),))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    for i in range(3):
        alone = tribute.explain(model, x[i:i + 1], "feature_ablation", target=0, feature_mask=masks[i:i + 1])
        torch.testing.assert_close(alone, got[i:i + 1], rtol=1e-12, atol=1e-14)


captum = pytest.importorskip("captum.attr")


@pytest.mark.parametrize("per_sample", [False, True])
def test_equals_captums_feature_ablation_with_the_same_mask(per_sample):
    model, x = cnn(), images(4)
    g = torch.Generator().manual_seed(5)
    mask = torch.randint(0, 6, (4 if per_sample else 1, 1, 6, 6), generator=g)
    baseline = 0.25  # exact in float32 too: tribute's check_baseline keeps a number as a float32 tensor
    got = tribute.explain(model, x, "feature_ablation", target=2, feature_mask=mask, baseline=baseline)
    if per_sample:  # Captum takes one mask per call for a batch: one call per sample
        theirs = torch.cat([captum.FeatureAblation(model).attribute(x[i:i + 1], feature_mask=mask[i:i + 1],
                                                                    baselines=baseline, target=2) for i in range(4)])
    else:
        theirs = captum.FeatureAblation(model).attribute(x, feature_mask=mask, baselines=baseline, target=2)
    assert theirs.dtype == DT
    torch.testing.assert_close(got, theirs, rtol=1e-10, atol=1e-12)


def two_inputs(n: int = 3):
    g = torch.Generator().manual_seed(2)
    return images(n), torch.rand(n, 4, generator=g, dtype=DT)


def test_several_inputs_with_a_mask_each_and_a_group_spanning_both():
    net, (img, tab) = ImageTable().to(DT).eval(), two_inputs()
    img_mask = quadrants()  # labels 0…3
    tab_mask = torch.tensor([[3, 3, 4, 5]])  # label 3 spans the image's last quadrant and two table columns
    got = tribute.explain(net, (img, tab), "feature_ablation", target=1, feature_mask=(img_mask, tab_mask),
                          baseline=(0.0, 0.5))
    expected = definition(net, (img, tab), 1, (img_mask.expand_as(img), tab_mask.expand_as(tab)),
                          (torch.zeros_like(img), torch.full_like(tab, 0.5)))
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)
    assert torch.equal(got[0][:, :, 3:, 3:], got[1][:, :1, None, None].expand(-1, 3, 3, 3))  # one group, one value
    theirs = captum.FeatureAblation(net).attribute((img, tab), feature_mask=(img_mask, tab_mask),
                                                   baselines=(0.0, 0.5), target=1)
    for a, c in zip(got, theirs, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_an_input_without_a_mask_has_each_feature_alone():
    net, (img, tab) = ImageTable().to(DT).eval(), two_inputs()
    got = tribute.explain(net, (img, tab), "feature_ablation", target=0, feature_mask=(quadrants(), None))
    labels = (torch.arange(4) + 4).view(1, 4)  # numbered after the image's labels
    expected = definition(net, (img, tab), 0, (quadrants().expand_as(img), labels.expand_as(tab)),
                          (torch.zeros_like(img), torch.zeros_like(tab)))
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


def test_a_batch_equals_its_samples_alone_and_batch_size_changes_nothing():
    assert_same_alone_and_in_any_batch(cnn(), images(4), "feature_ablation", torch.tensor([3, 1, 0, 2]),
                                       target=torch.tensor([2, 0, 1, 1]), batch_sizes=(1, 3, 100),
                                       feature_mask=quadrants())


def test_passes_are_counted():
    explainer = tribute.FeatureAblation(cnn(), feature_mask=quadrants())
    explainer.attribute(images(5), target=0, batch_size=3)
    assert explainer.passes.forward_rows == 5 * (1 + 4) and explainer.passes.backward_rows == 0


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(12, 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_token_ids_with_a_baseline_token_and_groups_of_tokens():
    net = TokenNet().to(DT).eval()
    ids = torch.randint(2, 12, (3, 6), generator=torch.Generator().manual_seed(0))
    ids[0, 4:] = 1  # already the pad token: removing them changes nothing
    words = torch.tensor([[0, 0, 1, 2, 2, 3]])
    got = tribute.explain(net, ids, "feature_ablation", target=0, feature_mask=words, baseline=1)
    assert got.dtype == DT and got.shape == ids.shape
    (expected,) = definition(net, (ids,), 0, (words.expand_as(ids),), (torch.ones_like(ids),))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert float(got[0, 5].abs()) == 0.0  # its group (token 5 alone) is at the baseline: exactly 0


def test_segments_equal_the_same_labels_given_as_a_mask_and_are_reported():
    model, x = cnn(), images(2)
    for segments, options in (("grid", {"cell": (2, 3)}), ("slic", {"n_segments": 6}),
                              ("quickshift", {"kernel_size": 2, "max_dist": 3})):
        explainer = tribute.FeatureAblation(model, segments=segments, segment_options=options)
        got = explainer.attribute(x, target=1)
        labels = explainer.segments
        assert labels.shape == x.shape and labels.dtype == torch.long
        for i in range(2):  # renumbered 0…M_i − 1, shared by the channels
            assert torch.equal(labels[i].unique(), torch.arange(int(labels[i].max()) + 1))
            assert bool((labels[i] == labels[i, :1]).all())
        torch.testing.assert_close(got, tribute.explain(model, x, "feature_ablation", target=1, feature_mask=labels),
                                   rtol=1e-12, atol=1e-14)
    grid = tribute.FeatureAblation(model, segments="grid", segment_options={"cell": (2, 3)})
    grid.attribute(x, target=1)
    r = torch.arange(6)
    assert torch.equal(grid.segments[0, 0], (r[:, None] // 2) * 2 + r[None, :] // 3)


@pytest.mark.parametrize("mask, error, match", [
    (torch.full((1, 1, 6, 6), 0.5, dtype=DT), ValueError, "non-integer values"),
    (torch.zeros(1, 1, 5, 6, dtype=torch.long), ValueError, "does not broadcast"),
    (torch.zeros(2, 1, 6, 6, dtype=torch.long), ValueError, r"one map per sample \(3\)"),
    (torch.zeros(1, 1, 1, 6, 6, dtype=torch.long), ValueError, "must be shared by the samples"),
    ([[0, 1]], TypeError, "feature_mask must be an integer tensor"),
])
def test_bad_masks_are_refused_naming_the_option(mask, error, match):
    with pytest.raises(error, match=match):
        tribute.explain(cnn(), images(3), "feature_ablation", target=0, feature_mask=mask)


def test_mask_and_segments_together_and_masks_for_the_wrong_inputs_are_refused():
    with pytest.raises(ValueError, match="feature_mask= or segments=, not both"):
        tribute.explain(cnn(), images(), "feature_ablation", target=0, feature_mask=quadrants(), segments="grid")
    net, (img, tab) = ImageTable().to(DT).eval(), two_inputs()
    with pytest.raises(ValueError, match="must be a tuple with one mask"):
        tribute.explain(net, (img, tab), "feature_ablation", target=0, feature_mask=quadrants())
    with pytest.raises(ValueError, match="feature_mask has 3 entries but the model takes 2 inputs"):
        tribute.explain(net, (img, tab), "feature_ablation", target=0, feature_mask=(quadrants(), None, None))
    with pytest.raises(ValueError, match=r"segments\[1\]='grid' segments images"):
        tribute.explain(net, (img, tab), "feature_ablation", target=0, segments=("grid", "grid"))
