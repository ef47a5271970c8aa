"""The zᴮ rule (Montavon et al. 2017, Eq 13) at a first layer that reads tokens: bounds per input feature placed on
the axis the layer reads as features, whatever the layout (N, T, C) or the (N·T, C) a reshape gives (GPT-2's
``Conv1D`` calls ``addmm`` so), checked against the rule computed by hand on a 3 × 3 example where T = C, so a bound
placed per token instead of per feature would give other numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute

DT = torch.float64
X = torch.tensor([[[0.5, -1.0, 2.0], [1.0, 0.0, -0.5], [-1.0, 1.0, 0.25]]], dtype=DT)  # (N, T, C) = (1, 3, 3)
W = torch.tensor([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.5]], dtype=DT)  # (C, K): Conv1D's layout, x @ W
B = torch.tensor([0.3, -0.2], dtype=DT)
LOW, HIGH = [-1.0, -2.0, -3.0], [1.0, 2.0, 3.0]
TARGET = 2  # output (token 1, unit 0): z = 1·1 + 0·0.5 + (−0.5)(−1) + 0.3 = 1.8


class Conv1DLike(nn.Module):
    """A dense first layer as Hugging Face's Conv1D writes it: addmm(b, x.view(N·T, C), W), outputs flattened."""

    def __init__(self, addmm: bool):
        super().__init__()
        self.addmm = addmm
        self.w, self.b = nn.Parameter(W.clone()), nn.Parameter(B.clone())

    def forward(self, x):
        if self.addmm:
            z = torch.addmm(self.b, x.reshape(-1, x.shape[-1]), self.w).reshape(x.shape[0], -1, 2)
        else:  # F.linear on (N, T, C) as it is
            z = F.linear(x, self.w.T, self.b)
        return z.flatten(1)


def _by_hand() -> torch.Tensor:
    # R at z(token 1, unit 0) is the score 1.8; w = W[:, 0] = (1, 0.5, −1), w⁺ = (1, 0.5, 0), w⁻ = (0, 0, −1).
    # terms x_i w_i − l_i w⁺_i − h_i w⁻_i: 1 + 1 = 2, 0 + 1 = 1, 0.5 + 3 = 3.5; zᴮ = 6.5 (the bias cancels);
    # R_i = term_i · 1.8 / 6.5, and no relevance reaches the other tokens
    r = torch.zeros_like(X)
    r[0, 1] = torch.tensor([2.0, 1.0, 3.5], dtype=DT) * 1.8 / 6.5
    return r


@pytest.mark.parametrize("addmm", [True, False], ids=["addmm_on_NT_by_C", "linear_on_N_T_C"])
def test_box_rule_places_per_feature_bounds_on_the_features_the_layer_reads(addmm):
    phi = tribute.explain(Conv1DLike(addmm), X, "lrp", composite="epsilon_gamma_box", target=TARGET,
                          low=LOW, high=HIGH)
    torch.testing.assert_close(phi, _by_hand(), rtol=1e-6, atol=1e-12)
    assert abs(float(phi.sum()) - 1.8) < 1e-6  # zᴮ conserves: the bias cancels from numerator and denominator


def test_box_rule_with_one_number_bounds_every_feature():
    # l = −3, h = 3 everywhere: terms 1 + 3 = 4, 0 + 1.5 = 1.5, 0.5 + 3 = 3.5; zᴮ = 9
    phi = tribute.explain(Conv1DLike(True), X, "lrp", composite="epsilon_gamma_box", target=TARGET, low=-3.0,
                          high=3.0)
    expected = torch.zeros_like(X)
    expected[0, 1] = torch.tensor([4.0, 1.5, 3.5], dtype=DT) * 1.8 / 9.0
    torch.testing.assert_close(phi, expected, rtol=1e-6, atol=1e-12)


def test_box_rule_refuses_bounds_that_do_not_fit_the_layer_as_it_reads_the_input():
    full = torch.full((1, 3, 3), -3.0, dtype=DT)  # per entry of (N, T, C): the layer reads (N·T, C)
    with pytest.raises(ValueError, match=r"do not broadcast to the input of the first layer.*\(3, 3\)"):
        tribute.explain(Conv1DLike(True), X, "lrp", composite="epsilon_gamma_box", target=TARGET, low=full,
                        high=-full)
    with pytest.raises(ValueError, match="4 bounds per input feature.*3 features on dim 1"):
        tribute.explain(Conv1DLike(True), X, "lrp", composite="epsilon_gamma_box", target=TARGET,
                        low=[-3.0] * 4, high=[3.0] * 4)
