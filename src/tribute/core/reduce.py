"""One shared ``reduce=``: channels of an attribution → one map, for metrics and figures.

An attribution of shape (N, C, H, W) (or (N, C, *spatial)) becomes (N, 1, H, W):

- ``"sum"``:     Σ_c a_c          signed evidence summed over the channels (keeps completeness sums)
- ``"abs_sum"``: Σ_c |a_c|        magnitude, as in the saliency maps of Simonyan et al. (2014)
- ``"max_abs"``: max_c |a_c|      the strongest channel at each position (Simonyan et al. 2014, §3.1)
- ``"l2"``:      (Σ_c a_c²)^(1/2) the Euclidean norm over the channels
"""

from __future__ import annotations

import torch

REDUCTIONS = ("sum", "abs_sum", "max_abs", "l2")


def check_reduce(name: str, v) -> str | None:
    """Option check for ``reduce=``: ``None`` or one of :data:`REDUCTIONS`."""
    if v is not None and v not in REDUCTIONS:
        raise ValueError(f"{name} must be None or one of {', '.join(map(repr, REDUCTIONS))}; got {v!r}")
    return v


def reduce(attribution: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce the channel dimension (dim 1) of ``attribution`` to size 1 by ``how`` (see module doc).

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[[[1.0]], [[-2.0]]]])        # (1, 2, 1, 1)
    >>> [round(float(reduce(a, h)), 4) for h in ("sum", "abs_sum", "max_abs", "l2")]
    [-1.0, 3.0, 2.0, 2.2361]
    """
    if how not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(map(repr, REDUCTIONS))}; got {how!r}")
    if not isinstance(attribution, torch.Tensor):
        raise TypeError(f"reduce takes a tensor, got {type(attribution).__name__}")
    if attribution.dim() < 3:
        raise ValueError(
            "reduce turns (N, C, H, W) attributions (channels at dim 1, then spatial dims) into (N, 1, H, W) maps; "
            f"got shape {tuple(attribution.shape)}, which has no spatial dims"
        )
    if how == "sum":
        return attribution.sum(1, keepdim=True)
    if how == "abs_sum":
        return attribution.abs().sum(1, keepdim=True)
    if how == "max_abs":
        return attribution.abs().amax(1, keepdim=True)
    return attribution.pow(2).sum(1, keepdim=True).sqrt()
