"""Quadrature rules on [0, 1] for path integrals (integrated gradients, Ancona et al. 2019, Eq 19)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .engine import accumulation_dtype
from .tensors import per_sample

RULES = ("gauss_legendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes α_k in [0, 1] and weights w_k (float64) with Σ_k w_k f(α_k) ≈ ∫_0^1 f(α) dα.

    The weights sum to 1 (to float64 rounding), so a constant integrand is integrated exactly.
    ``riemann_trapezoid`` needs ``steps >= 2``; it is exact for integrands linear in α, as are
    ``riemann_middle`` (Σ α_k w_k = 1/2) and Gauss–Legendre (exact to degree 2·steps − 1).
    """
    if rule not in RULES:
        raise ValueError(f"quadrature must be one of {', '.join(RULES)}; got {rule!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    n = steps
    k = np.arange(n, dtype=np.float64)
    if rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(n)
        alphas, weights = (x + 1) / 2, w / 2
    elif rule == "riemann_left":
        alphas, weights = k / n, np.full(n, 1 / n)
    elif rule == "riemann_right":
        alphas, weights = (k + 1) / n, np.full(n, 1 / n)
    elif rule == "riemann_middle":
        alphas, weights = (k + 0.5) / n, np.full(n, 1 / n)
    else:
        if n < 2:
            raise ValueError("the riemann_trapezoid rule needs steps >= 2")
        alphas = k / (n - 1)
        weights = np.full(n, 1 / (n - 1))
        weights[[0, -1]] /= 2
    weights = weights / math.fsum(weights)
    return torch.from_numpy(alphas.copy()), torch.from_numpy(weights.copy())


@dataclass(frozen=True)
class PathNodes:
    """A quadrature rule laid on the straight path from a baseline x̄ to x: the points x̄ + α_k (x − x̄) and the
    weighted gradients w_k ∇S there, whose sum over k is the path integral.  Nodes are in the path's dtype and
    device; weighted terms are kept in the accumulation dtype (at least float32)."""

    alphas: torch.Tensor
    weights: torch.Tensor

    def point(self, base: torch.Tensor, delta: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """x̄ + α_k (x − x̄) for each row (``step`` holds each row's node index k)."""
        return base + per_sample(self.alphas[step], base) * delta

    def weigh(self, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """w_k ∇S at each row's node, in the accumulation dtype."""
        return grad.to(self.weights.dtype) * per_sample(self.weights[step], grad)


def path_nodes(rule: str, steps: int, like: torch.Tensor) -> PathNodes:
    """The nodes and weights of :func:`quadrature` for a path in ``like``'s space (its dtype and device)."""
    alphas, weights = quadrature(rule, steps)
    return PathNodes(alphas.to(like.device, like.dtype), weights.to(like.device, accumulation_dtype(like.dtype)))
