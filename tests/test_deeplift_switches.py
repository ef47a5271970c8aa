"""DeepLIFT at switches other than 2-d max pooling (issue 13, never a silent wrong answer).

1-d/3-d and adaptive max pooling, ``return_indices``, ``x.max(dim)`` and ``amax`` pass the signal to the entry the
input selects.  That is DeepLIFT's exact multiplier where the reference selects an entry of the same value (a zero
image through ReLU(bias) makes every entry of a channel equal), and then the sum is S(x) − S(x̄) to rounding; where
the reference selects another entry it is not, and the call is refused naming the op (warned with strict=False).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute
from tribute.core import UncoveredModelError

DT = torch.float64

SWITCHES = {
    "amax": (lambda h: h.amax(-1), "amax"),
    "max_over_dim": (lambda h: h.max(-1).values, "max"),
    "max_pool1d": (lambda h: F.max_pool1d(h, 8).squeeze(-1), "max_pool1d"),
    "max_pool1d_indices": (lambda h: F.max_pool1d(h, 8, return_indices=True)[0].squeeze(-1), "max_pool1d"),
    "adaptive_max_pool1d": (lambda h: F.adaptive_max_pool1d(h, 1).squeeze(-1), "adaptive_max_pool1d"),
    "dilated_max_pool2d": (lambda h: F.max_pool2d(h.unsqueeze(-1), (3, 1), dilation=(2, 1)).amax((2, 3)),
                           "max_pool2d"),
}


class Pooled(nn.Module):
    def __init__(self, switch):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head, self.switch = nn.Conv1d(2, 3, 3, padding=1), nn.Linear(3, 2), switch

    def forward(self, x):
        return self.head(self.switch(torch.relu(self.conv(x))))


X = torch.randn(3, 2, 8, dtype=DT, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("switch", list(SWITCHES), ids=list(SWITCHES))
def test_where_the_reference_selects_equal_values_the_gradient_is_exact(switch):
    model = Pooled(SWITCHES[switch][0]).to(DT).eval()
    phi = tribute.explain(model, X, "deeplift", target=1)  # zero image: ReLU(bias) is constant per channel
    with torch.no_grad():
        delta = model(X)[:, 1] - model(torch.zeros_like(X))[:, 1]
    torch.testing.assert_close(phi.flatten(1).sum(1), delta, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("switch", list(SWITCHES), ids=list(SWITCHES))
def test_where_the_reference_selects_another_entry_the_call_is_refused(switch):
    model = Pooled(SWITCHES[switch][0]).to(DT).eval()
    reference = X[[1, 2, 0]].clone()  # other images: their maxima sit elsewhere
    with pytest.raises(UncoveredModelError, match=SWITCHES[switch][1]):
        tribute.explain(model, X, "deeplift", target=1, baseline=reference)
    with pytest.warns(UserWarning, match=SWITCHES[switch][1]):
        phi = tribute.explain(model, X, "deeplift", target=1, baseline=reference, strict=False)
    with torch.no_grad():
        delta = model(X)[:, 1] - model(reference)[:, 1]
    assert (phi.flatten(1).sum(1) - delta).abs().max() > 1e-6  # what the refusal spared the user


class BatchSecond(nn.Module):
    """Runs its sequence as (T, N, C), as nn.MultiheadAttention(batch_first=False) does, and takes a LayerNorm
    there: DeepLIFT's 2N rows are then dimension 1, and its rules would pair the wrong rows."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.norm, self.head = nn.Linear(2, 4), nn.LayerNorm(4), nn.Linear(4, 2)

    def forward(self, x):  # x: (N, T, C)
        h = torch.tanh(self.lin(x)).transpose(0, 1)  # (T, N, 4)
        h = self.norm(h) * torch.sigmoid(h.flip(1))  # a gate reading another sample's row
        return self.head(h.mean(0))


def test_a_model_that_mixes_the_rows_of_its_batch_is_refused_by_the_sum_check():
    model = BatchSecond().to(DT).eval()
    x = torch.randn(4, 6, 2, dtype=DT, generator=torch.Generator().manual_seed(3))
    with pytest.raises(UncoveredModelError, match=r"sum to .* not S\(x\) − S\(x̄\).*dimension 0"):
        tribute.explain(model, x, "deeplift", target=1)
    with pytest.warns(UserWarning, match="dimension 0"):
        tribute.explain(model, x, "deeplift", target=1, strict=False)


def test_the_sum_check_passes_exact_attributions_of_a_batch_first_model():
    model = Pooled(lambda h: torch.softmax(h, -1).mul(h).sum(-1)).to(DT).eval()  # no switch: rules all exact
    phi = tribute.explain(model, X, "deeplift", target=0, baseline=X[[0, 0, 0]] * 0.5 + 0.1)
    with torch.no_grad():
        delta = model(X)[:, 0] - model(X[[0, 0, 0]] * 0.5 + 0.1)[:, 0]
    torch.testing.assert_close(phi.flatten(1).sum(1), delta, rtol=1e-10, atol=1e-12)
