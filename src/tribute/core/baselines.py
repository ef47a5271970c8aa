"""Baselines x̄: the "absence of signal" that salience methods compare the input against (Ancona et al. 2019, §2.3).

``baseline=`` takes a tensor broadcastable to the inputs, a callable ``f(inputs) -> tensor``, or a name:

- ``"zero"``: x̄ = 0.
- ``"mean"``: every feature of a sample set to that sample's mean over its channel (dims ≥ 2), i.e. a
  flat image of the sample's average colour; for 2-D inputs the mean over the features.
- ``"blur"``: the input blurred by a Gaussian over its last two dims (Fong & Vedaldi 2017);
  ``baseline_options={"sigma": s}`` in pixels (default: a tenth of the larger spatial size).
- ``"uniform"``: independent uniform draws on [low, high]; ``baseline_options={"low": .., "high": ..}``,
  by default each sample's own min and max.  Random: seeded by ``seed=``.
- ``"gaussian"``: x + N(0, σ²) (Sturmfels et al. 2020); ``baseline_options={"sigma": σ}``, by default
  0.1 × each sample's value range.  Random: seeded by ``seed=``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from . import options as opt
from .randomness import SampleStreams
from .tensors import per_sample

NAMES = ("zero", "mean", "blur", "uniform", "gaussian")


def check_baseline(name: str, v: Any) -> Any:
    if isinstance(v, torch.Tensor) or (callable(v) and not isinstance(v, str)):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return torch.tensor(float(v), dtype=torch.float64)  # cast to the inputs' dtype later; float32 would round 0.4
    if v not in NAMES:
        raise ValueError(f"{name} must be a tensor, a number, a callable or one of {', '.join(NAMES)}; got {v!r}")
    return v


def _range(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    return per_sample(flat.amax(1) - flat.amin(1), x)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the last two dims, reflecting at the borders."""
    if x.dim() < 3:
        raise ValueError(f"a blur baseline needs inputs with two spatial dims, got shape {tuple(x.shape)}")
    if sigma <= 0:
        return x.clone()
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, h, w)
    for dim, size in ((-1, w), (-2, h)):
        r = min(int(math.ceil(3 * sigma)), size - 1)
        if r < 1:
            continue
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = (k / k.sum()).to(x.dtype).to(x.device)
        if dim == -1:
            y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        else:
            y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(*lead, h, w)


def make_baseline(spec: Any, x: torch.Tensor, options: dict | None = None, seed: int | None = None) -> torch.Tensor:
    """The baseline tensor for inputs ``x`` (same shape, dtype and device)."""
    options = dict(options or {})
    known = {"zero": (), "mean": (), "blur": ("sigma",), "uniform": ("low", "high"), "gaussian": ("sigma",)}
    if isinstance(spec, str):
        extra = set(options) - set(known[spec])
        if extra:
            raise ValueError(f"baseline {spec!r} takes options {known[spec] or 'none'}; got {sorted(extra)}")
    if callable(spec) and not isinstance(spec, (str, torch.Tensor)):
        spec = spec(x)
        if not isinstance(spec, torch.Tensor):
            raise TypeError(f"a baseline callable must return a tensor, got {type(spec).__name__}")
    if isinstance(spec, torch.Tensor):
        return opt.broadcast_tensor("the baseline", spec, x, x.shape, "the inputs' shape")
    x = x.detach()
    if spec == "zero":
        return torch.zeros_like(x)
    if spec == "mean":
        if x.dim() == 2:
            return x.mean(1, keepdim=True).expand_as(x).clone()
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x).clone()
    if spec == "blur":
        sigma = options.get("sigma", max(x.shape[-2:]) / 10 if x.dim() >= 3 else 0.0)
        return gaussian_blur(x, float(sigma))
    streams = SampleStreams(x, seed)
    sample = torch.arange(x.shape[0])
    if spec == "uniform":
        flat = x.flatten(1)
        low = torch.as_tensor(options.get("low", per_sample(flat.amin(1), x)), dtype=x.dtype, device=x.device)
        high = torch.as_tensor(options.get("high", per_sample(flat.amax(1), x)), dtype=x.dtype, device=x.device)
        u = streams.draw("uniform", sample, tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        return low + (high - low) * u
    # gaussian
    sigma = options.get("sigma")
    sigma = 0.1 * _range(x) if sigma is None else torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return x + sigma * streams.draw("normal", sample, tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
