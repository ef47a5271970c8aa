"""Relevance absorbed by constant leaves: what LRP's conservation counts beside the input's relevance.

LRP redistributes the score S(x) backwards; a rule conserves when the relevance of an op's inputs sums to that of its
output (Montavon et al. 2019, §10.2.1).  Relevance leaves the input's path wherever a constant joins it:

- a bias b of a linear layer (ε rule: b_j · R_j / stab(z_j), Bach et al. 2015 Eq 58; the other rules: what the
  layer's inputs do not receive), LayerNorm's β, batch norm's shift;
- a constant added on the path: position and token-type embeddings (the Norm rule's share c · R / stab(y) of the
  constant c in y = x + c);
- a constant moved into the path: the class token concatenated to the patches, entries masked_fill writes (or
  masked_fill_, in place: computed from a copy, then written).

Issue 13 asks that LRP with CP-LRP attention and ε rules conserves on a bias-free transformer "counting the relevance
that reaches every input and every constant leaf".  A :class:`Absorbed` is filled during one pass's backward by the
relevance form's nodes (:mod:`tribute.lrp.nodes`, :mod:`tribute.lrp.attention`), each with the share its rule gives
the constant, computed from the constant (never as the score minus the input's relevance), per sample; so is f(0)'s
share at a nonlinearity with f(0) ≠ 0 (sigmoid: :class:`tribute.lrp.PassRelevance`).  Two shares are counted as
what the inputs do not receive: a move's (exact: a move conserves) and a linear layer's under a rule other than ε
(z⁺'s b⁺ term, and the stabiliser).  Not counted: what the stabiliser ε absorbs elsewhere.
"""

from __future__ import annotations

import math

import torch


class Absorbed:
    """The relevance constant leaves absorb in one pass, per sample (``rows`` samples; batch on dim 0)."""

    def __init__(self, rows: int):
        self.rows = rows
        self.total: torch.Tensor | None = None
        #: a share on a tensor whose first dimension is not the batch (GPT-2's ``Conv1D`` on (N·T, C), Swin's windows
        #: (N·W, …), ``nn.MultiheadAttention``'s (L, N, E)): its samples are unknown, :meth:`per_sample` says so
        #: with NaN rather than guessing, and the LRP method runs such a chunk again one sample at a time
        self.unplaced = False

    def add(self, share: torch.Tensor) -> None:
        """Count ``share`` (relevance on a constant, laid out like the tensor it joined: batch first)."""
        share = share.detach()
        if self.rows == 1:  # one sample: every share is its own, whatever the layout
            s = share.sum().reshape(1)
        elif share.dim() == 0 or share.shape[0] != self.rows:
            self.unplaced = True
            return
        else:
            s = share.reshape(self.rows, -1).sum(1)
        self.total = s if self.total is None else self.total + s

    def per_sample(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The total per sample (NaN for every sample if some share could not be placed)."""
        if self.unplaced:
            return torch.full((self.rows,), math.nan, dtype=dtype)
        if self.total is None:
            return torch.zeros(self.rows, dtype=dtype)
        return self.total.to(dtype)
