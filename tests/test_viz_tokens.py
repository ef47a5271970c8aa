"""Token attributions as coloured text (issue 12): colours on the heat maps' scale, the scale written down."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tribute.viz import NONFINITE_COLORS, token_colors, token_figure, token_text

TOKENS = ["[CLS]", "a", "great", "film", "[SEP]"]
VALUES = torch.tensor([0.0, 0.1, 0.8, -0.4, 0.0])


def test_colours_follow_the_sign_and_the_sentence_scale():
    colors, scale = token_colors(TOKENS, VALUES)
    assert scale == pytest.approx(0.8)
    np.testing.assert_allclose(colors[2], [1.0, 0.0, 0.0])      # the largest value: full red
    np.testing.assert_allclose(colors[0], [1.0, 1.0, 1.0])      # zero: white
    np.testing.assert_allclose(colors[3], [0.5, 0.5, 1.0])      # −0.4 of 0.8: half blue
    shared, s = token_colors(TOKENS, VALUES, scale=1.6)
    np.testing.assert_allclose(shared[2], [1.0, 0.5, 0.5])      # a shared scale twice as large: half red
    assert s == 1.6


def test_terminal_text_colours_each_token_and_states_the_scale():
    text = token_text(TOKENS, VALUES)
    assert "\x1b[48;2;255;0;0m" in text and "great" in text   # red background on "great"
    assert text.endswith("(full colour = ±0.8, the largest |φ|)")  # the scale and its rule
    plain = token_text(TOKENS, VALUES, color=False)
    assert "great[+0.8]" in plain and "film[-0.4]" in plain and "\x1b" not in plain


def test_an_all_zero_sentence_is_white_and_says_so():
    colors, scale = token_colors(TOKENS, torch.zeros(5))
    assert scale == 1.0 and np.all(colors == 1.0)  # the stated rule: all zero, scale 1
    assert token_text(TOKENS, torch.zeros(5)).endswith("(all zero)")


def test_non_finite_values_get_their_own_colours_and_are_named():
    values = torch.tensor([0.0, 0.1, 0.8, float("nan"), float("inf")])
    before = values.clone()
    colors, scale = token_colors(TOKENS, values)
    assert scale == pytest.approx(0.8)  # from the finite values only
    np.testing.assert_allclose(colors[3], NONFINITE_COLORS["NaN"])
    np.testing.assert_allclose(colors[4], NONFINITE_COLORS["+inf"])
    np.testing.assert_allclose(colors[2], [1.0, 0.0, 0.0])
    assert token_text(TOKENS, values).endswith("1 NaN (green), 1 +inf (gold) tokens: 'film', '[SEP]')")
    assert torch.equal(values.isnan(), before.isnan()) and torch.equal(values[:3], before[:3])  # not mutated
    with pytest.raises(ValueError, match="one number per token"):
        token_colors(TOKENS, torch.zeros(4))


def test_the_figure_draws_every_token_on_its_colour():
    pytest.importorskip("matplotlib")
    long = [f"w{i}" for i in range(40)]
    fig = token_figure([TOKENS, long], [VALUES, torch.linspace(-1, 1, 40)], titles=["positive", "ramp"])
    texts = fig.axes[0].texts
    drawn = [t.get_text() for t in texts]
    assert all(t in drawn for t in TOKENS) and all(t in drawn for t in long)
    great = next(t for t in texts if t.get_text() == "great")
    np.testing.assert_allclose(great.get_bbox_patch().get_facecolor()[:3], [1.0, 0.0, 0.0])
    assert any("positive   full colour = ±0.8, the largest |φ|" in t for t in drawn)
    # 40 tokens wrap onto more than one line
    ys = {round(t.get_position()[1], 3) for t in texts if t.get_text().startswith("w")}
    assert len(ys) > 1


def test_extreme_constant_and_infinite_sentences_follow_the_heat_maps_rules():
    extreme = torch.tensor([1e30, -5e29, 0.0, 2.5e29, 0.0], dtype=torch.float64)
    colors, scale = token_colors(TOKENS, extreme)
    assert scale == 1e30
    np.testing.assert_allclose(colors[1], [0.5, 0.5, 1.0])  # half the scale, negative: half blue
    constant = torch.full((5,), 0.3)
    colors, scale = token_colors(TOKENS, constant)
    assert scale == pytest.approx(0.3) and np.allclose(colors, [1.0, 0.0, 0.0])
    only_inf = torch.tensor([float("inf"), float("-inf"), 0.0, 0.0, 0.0])
    colors, scale = token_colors(TOKENS, only_inf)
    assert scale == 1.0  # no finite non-zero value: "all zero" among the finite ones
    np.testing.assert_allclose(colors[:2], [NONFINITE_COLORS["+inf"], NONFINITE_COLORS["-inf"]])
    assert token_text(TOKENS, only_inf).endswith("(all zero; 1 +inf (gold), 1 -inf (cyan) tokens: '[CLS]', 'a')")


def test_the_figure_has_a_colour_bar_in_the_units_it_says():
    pytest.importorskip("matplotlib")
    own = token_figure([TOKENS], [VALUES])
    (bar,) = [ax for ax in own.axes if ax.get_xlabel()]
    assert bar.get_xlim() == (-1.0, 1.0) and bar.get_xlabel().startswith("φ / the sentence's full-colour scale")
    shared = token_figure([TOKENS, TOKENS], [VALUES, 2 * VALUES], shared_scale=True)
    (bar,) = [ax for ax in shared.axes if ax.get_xlabel()]
    assert bar.get_xlim() == pytest.approx((-1.6, 1.6)) and bar.get_xlabel().startswith("φ (one scale")
    drawn = [t.get_text() for t in shared.axes[0].texts]
    assert sum("full colour = ±1.6, the largest |φ| of all sentences" in t for t in drawn) == 2
    nan = token_figure([TOKENS], [torch.tensor([0.0, float("nan"), 0.8, -0.4, 0.0])])
    drawn = [t.get_text() for t in nan.axes[0].texts]
    assert any("1 NaN (green) token: 'a'" in t for t in drawn)
    (a_token,) = [t for t in nan.axes[0].texts if t.get_text() == "a"]
    np.testing.assert_allclose(a_token.get_bbox_patch().get_facecolor()[:3], NONFINITE_COLORS["NaN"])
