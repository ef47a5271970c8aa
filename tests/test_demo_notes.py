"""The demo's notes under its figure's columns and the measures behind them, on tensors worked by hand."""

from __future__ import annotations

import pytest
import torch

from tribute.demo_notes import KNOWN_NOTES, method_notes, roughness, smallest_correlation


def test_smallest_correlation_finds_maps_that_do_not_depend_on_the_sample():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, 6, 6, generator=g, dtype=torch.float64)
    same = torch.cat([base, 2 * base, base + 0.0])  # one map, scaled: correlation 1
    assert smallest_correlation(same) == pytest.approx(1.0)
    flipped = torch.cat([base, -base])
    assert smallest_correlation(flipped) == pytest.approx(-1.0)
    # by hand on per-pixel totals [1, 2, 3] and [1, 3, 2]: centred [-1, 0, 1] and [-1, 1, 0], r = 1 / 2
    a = torch.tensor([[[[1.0, 2.0, 3.0]]], [[[1.0, 3.0, 2.0]]]])
    assert smallest_correlation(a) == pytest.approx(0.5)
    assert smallest_correlation(base) is None  # one sample: nothing to compare
    assert smallest_correlation(torch.ones(2, 1, 2, 2)) is None  # constant maps have no correlation


def test_roughness_by_hand():
    # per-pixel map [[0, 1], [0, 1]]: horizontal differences 1, 1; vertical 0, 0 → mean 0.5; mean |φ| is 0.5
    a = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]], dtype=torch.float64)
    assert roughness(a).tolist() == pytest.approx([1.0])
    assert roughness(7 * a).tolist() == pytest.approx([1.0])  # scale-free
    assert roughness(torch.ones(1, 3, 4, 4)).tolist() == [0.0]  # a constant map is smooth
    checker = (torch.arange(16).reshape(4, 4) + torch.arange(4)[:, None]) % 2 * 2.0 - 1.0
    assert roughness(checker[None, None]).tolist() == pytest.approx([2.0])  # neighbours differ by 2, |φ| = 1
    assert roughness(torch.zeros(1, 1, 3, 3)).tolist() == [0.0]  # all zero: no division by zero


def test_notes_say_what_is_known_and_what_is_measured():
    g = torch.Generator().manual_seed(0)
    gradient = torch.randn(3, 3, 8, 8, generator=g)
    grid = torch.randn(1, 3, 8, 8, generator=g).expand(3, -1, -1, -1).clone()  # the same for every photo
    notes = method_notes({"gradient": gradient, "deconvnet": grid, "guided_backprop": gradient.clone(),
                          "deeplift": torch.randn(3, 3, 8, 8, generator=g)})
    assert "gradient" not in notes and "deeplift" not in notes  # nothing to say
    assert notes["deconvnet"].startswith(KNOWN_NOTES["deconvnet"])
    assert notes["deconvnet"].endswith("Measured: the same map for every photo (correlation ≥ 1.00).")
    assert notes["guided_backprop"] == "Identical to the plain gradient: its rules changed nothing on this model."
    assert "Nie et al. 2018" in KNOWN_NOTES["deconvnet"] and "Shrikumar et al. 2017" in \
        KNOWN_NOTES["deeplift_reveal_cancel"]
