"""Small tensor helpers shared by methods and the engine."""

from __future__ import annotations

import torch


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per row of ``like``, shape (N,)) as (N, 1, …, 1), to broadcast against ``like`` (N, …).

    E.g. a noise scale σ_n per sample times noise of the batch's shape: ``per_sample(sigma, x) * noise``.
    """
    if values.dim() != 1:
        raise ValueError(f"per_sample takes one value per row (a 1-D tensor), got shape {tuple(values.shape)}")
    return values.view(-1, *([1] * (like.dim() - 1)))


def per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per channel of ``like``, shape (C,)) as (1, C, 1, …, 1), to broadcast against ``like``
    (N, C, …): a bias, batch norm's scale or a normalisation's mean per channel."""
    if values.dim() != 1:
        raise ValueError(f"per_channel takes one value per channel (a 1-D tensor), got shape {tuple(values.shape)}")
    return values.view(1, -1, *([1] * (like.dim() - 2)))
