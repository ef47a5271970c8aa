"""The averaged Jacobian of LayerNorm, GroupNorm and RMSNorm along a segment, in closed form.

These normalisations are y = w ⊙ c/σ(c) + b per group of n entries, c = P x with P the centring (LayerNorm,
GroupNorm) or the identity (RMSNorm), σ² = ‖c‖²/n + ε.  Their Jacobian is J = diag(w) (I/σ − c cᵀ/(nσ³)) P.
Along the segment x̄ + αΔx the centred vector is c(α) = c̄ + αΔc, so σ² = q(α) is a quadratic in α, and

    J̄ᵀ g = P [ u ∫q^{-1/2} − (1/n) ∫ c(α) ⟨c(α), u⟩ q^{-3/2} ],     u = w ⊙ g,  ∫ over α ∈ [0, 1],

which needs four scalar integrals per group.  Where the segment passes close to c = 0 (q's minimum q₀ small
beside its curvature A = ‖Δc‖²/n), 1/σ is a sharp peak that Gauss–Legendre nodes in α miss (8 nodes left
‖Δy − J̄Δx‖ up to 14% of ‖Δy‖ on the zoo's ConvNeXt and Swin LayerNorms at a zero image, measured).  Written
about the vertex α* of q, c(α) = c⊥ + (α − α*)Δc with c⊥ ⟂ Δc and q = q₀ + A(α − α*)²; the substitution
α − α* = √(q₀/A)·sinh τ turns
q into q₀ cosh² τ and every integral into one of sech², sinh·sech², tanh², whose antiderivatives are tanh τ,
−sech τ and τ − tanh τ: exact, however sharp the peak.  Elsewhere (a peak wider than the segment, or far from it)
the integrands are smooth on [0, 1] and 24 Gauss–Legendre nodes integrate them to rounding (their nearest
complex singularity is at least 1 away from the segment: error below 4.2^-48).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..core.quadrature import quadrature
from .deeplift_ops import call_arg

_SMOOTH_NODES = 24


@functools.lru_cache(maxsize=8)
def _smooth_nodes(n: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The nodes α_k, their squares and the weights of :func:`_smooth`, in ``dtype``."""
    alphas, weights = quadrature("gauss_legendre", n)
    a = alphas.to(device, dtype)
    return a, a * a, weights.to(device, dtype)


def _channel_weight(w: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if w is None else w.reshape(-1, *([1] * (x.dim() - 2)))  # (C,) against (N, C, …)


class NormParams:
    """What the closed form needs of one call: centred or not, the weight (broadcastable to x) and ε."""

    def __init__(self, centred: bool, weight: torch.Tensor | None, eps: float):
        self.centred, self.weight, self.eps = centred, weight, float(eps)


def norm_params(op: str, x: torch.Tensor, args: tuple, kwargs: dict) -> NormParams | None:
    """The parameters of a LayerNorm, GroupNorm or RMSNorm call (``args`` start with the input), None for other
    ops.  F.layer_norm(x, shape, weight, bias, eps), F.group_norm(x, groups, weight, bias, eps),
    F.rms_norm(x, shape, weight, eps) and the torch.* forms share these positions.  A LayerNorm's or RMSNorm's
    weight has the normalised (trailing) shape and broadcasts as it is."""
    weight = call_arg(args, kwargs, 2, "weight")
    if op == "layer_norm":
        return NormParams(True, weight, call_arg(args, kwargs, 4, "eps", 1e-5))
    if op == "group_norm":
        return NormParams(True, _channel_weight(weight, x), call_arg(args, kwargs, 4, "eps", 1e-5))
    if op == "rms_norm":
        eps = call_arg(args, kwargs, 3, "eps")
        return NormParams(False, weight, torch.finfo(x.dtype).eps if eps is None else eps)
    return None


def _segment(sums: Callable, n: torch.Tensor, p: NormParams, r: torch.Tensor, dx: torch.Tensor):
    """c̄, Δc and the per-group scalars of q(α) = C + Bα + Aα² and of its vertex form q₀ + A(α − α*)²."""
    centre = (lambda t: t - sums(t) / n) if p.centred else (lambda t: t)
    cbar, dc = centre(r), centre(dx)
    a2, dot = sums(dc * dc), sums(cbar * dc)
    moving = a2 > 0
    safe_a2 = torch.where(moving, a2, 1.0)
    star = torch.where(moving, -dot / safe_a2, 0.0)  # α*
    cperp = cbar + star * dc  # ⟂ Δc
    A, C = a2 / n, sums(cbar * cbar) / n + p.eps
    q0 = sums(cperp * cperp) / n + p.eps  # the minimum of q, free of the cancellation in C − B²/4A
    return centre, cbar, dc, cperp, moving, star, A, C, q0, 2 * dot / n


def _sharp(star, A, q0):
    """I = ∫q^{-1/2}, L_k = ∫(α − α*)^k q^{-3/2} over [0, 1] by the sinh substitution (module doc), stably:
    tanh τ₁ − tanh τ₀ = sinh(τ₁ − τ₀)/(cosh τ₀ cosh τ₁) and sech τ₀ − sech τ₁ likewise."""
    w = (q0 / A).sqrt()
    t0, t1 = torch.asinh(-star / w), torch.asinh((1 - star) / w)
    spread, cc = t1 - t0, torch.cosh(t0) * torch.cosh(t1)
    dtanh = torch.sinh(spread) / cc
    dsech = 2 * torch.sinh((t1 + t0) / 2) * torch.sinh(spread / 2) / cc
    scale = w / q0.pow(1.5)
    sw = scale * w
    return spread / A.sqrt(), scale * dtanh, sw * dsech, sw * w * (spread - dtanh)


def _smooth(A, B, C):
    """I = ∫q^{-1/2}, K_k = ∫α^k q^{-3/2} over [0, 1] by Gauss–Legendre (smooth integrands), all nodes at once
    along a new last dimension."""
    a, aa, w = _smooth_nodes(_SMOOTH_NODES, C.dtype, C.device)
    q = C[..., None] + a * (B[..., None] + a * A[..., None])
    weighted = w * q.rsqrt()
    wcube = weighted / q
    return weighted.sum(-1), wcube.sum(-1), (a * wcube).sum(-1), (aa * wcube).sum(-1)


def _moments(basis, dc, u, sums, K):
    """∫ c(α)⟨c(α), u⟩ q^{-3/2} for c(α) = basis + t·Δc, given K_k = ∫ t^k q^{-3/2}."""
    bu, du = sums(basis * u), sums(dc * u)
    return basis * (bu * K[0] + du * K[1]) + dc * (bu * K[1] + du * K[2])


def norm_averaged_vjps(sums: Callable, p: NormParams, r: torch.Tensor, dx: torch.Tensor,
                       gs: list[torch.Tensor]) -> list[torch.Tensor]:
    """J̄ᵀ g for each g of ``gs``: the Jacobian of the normalisation averaged over the segment r → r + dx."""
    n = sums(torch.ones_like(r))
    centre, cbar, dc, cperp, moving, star, A, C, q0, B = _segment(sums, n, p, r, dx)
    sharp = moving & (q0 < A) & (star > -1) & (star < 2)  # a peak narrower than the segment, near it
    some_sharp = bool(sharp.any())
    if not some_sharp:  # the usual case: the sharp branch would be computed only to be dropped
        (integral, *ks), basis = _smooth(A, B, C), cbar
    elif bool(sharp.all()):  # e.g. a zero reference's first norm: the smooth branch would be dropped
        (integral, *ks), basis = _sharp(star, A, q0), cperp
    else:  # per group the one branch that holds, as the scalars and basis of one expression (per-group results
        # exactly those of each branch computed apart and selected; one moment per g instead of two)
        i_smooth, *k_smooth = _smooth(A, B, C)
        safe_A = torch.where(sharp, A, q0)  # keeps the unused branch finite (NaN would reach double-backward)
        i_sharp, *l_sharp = _sharp(torch.where(sharp, star, 0.0), safe_A, q0)
        integral = torch.where(sharp, i_sharp, i_smooth)
        ks = [torch.where(sharp, ls, kh) for ls, kh in zip(l_sharp, k_smooth, strict=True)]
        basis = torch.where(sharp, cperp, cbar)
    return [centre(u * integral - _moments(basis, dc, u, sums, ks) / n)
            for u in (g if p.weight is None else g * p.weight for g in gs)]
