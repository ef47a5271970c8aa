"""Summation-to-delta as a check: Σφ = S(x) − S(x̄) is the identity of DeepLIFT and RevealCancel (Shrikumar et al.
2017, Eq 1), and both methods see S(x) and S(x̄) in the pass that computes φ, so checking it costs nothing.  A miss
beyond rounding means a wrong answer that no op on the path announced: a model that pairs rows other than along
dimension 0 (the methods run inputs and references as one batch of 2N rows), a switch selecting unlike entries, a
target function that is not linear in the model's output."""

from __future__ import annotations

import torch


def summation_miss(total: torch.Tensor, score: torch.Tensor, reference: torch.Tensor) -> int | None:
    """The sample whose attributions (summing to ``total``) miss S(x) − S(x̄) = ``score − reference`` by the most,
    or None where every sample is within rounding: √ε of the largest of Σφ, S(x) and S(x̄) (float64: 1.5e-8 of
    it; float32: 3.5e-4)."""
    total, score, reference = (t.detach() for t in (total, score, reference))
    delta = score - reference
    scale = torch.maximum(total.abs(), torch.maximum(score.abs(), reference.abs()))
    tolerance = torch.finfo(delta.dtype).eps ** 0.5 * scale
    gap = (total - delta).abs()
    if not bool((gap > tolerance).any()):
        return None
    return int((gap / torch.maximum(delta.abs(), tolerance)).argmax())
