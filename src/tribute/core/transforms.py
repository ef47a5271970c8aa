"""Input transforms: let attributions, baselines and noise live in pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .tensors import per_channel


class Normalize:
    """``(x − mean) / std`` per channel (dim 1), for models trained on normalised inputs.

    Pass it as ``input_transform=`` so that inputs, baselines and noise stay in pixel units while the
    model sees what it was trained on; attributions are then with respect to the pixels.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        if self.mean.dim() != 1 or self.mean.shape != self.std.shape:
            raise ValueError("mean and std must be 1-D sequences of the same length (one value per channel)")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.mean.numel():
            raise ValueError(f"Normalize has {self.mean.numel()} channels but the input has shape {tuple(x.shape)}")
        mean = per_channel(self.mean.to(x.device, x.dtype), x)
        std = per_channel(self.std.to(x.device, x.dtype), x)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"
