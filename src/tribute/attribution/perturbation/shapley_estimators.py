"""Shapley values of a game over M players from its values v(z) on coalitions z ∈ {0, 1}^M, with standard errors.

Everything here is pure torch on the values' device, in float64, batched over a leading dimension B (one game per
sample): coalitions are (B, R, M) bool, values (B, R), v(0) and v(1) (B,).  Three estimators:

- :func:`exact_shapley`: the definition, φ_i = Σ_{S ∌ i} |S|! (M − |S| − 1)! / M! · (v(S ∪ i) − v(S)), from the
  values of all 2^M coalitions (Shapley 1953).
- :func:`kernel_shap`: KernelSHAP (Lundberg & Lee 2017), the Shapley kernel's weighted least squares with
  Σφ = v(1) − v(0) imposed exactly, on all 2^M − 2 interior coalitions (exact) or on paired draws from the
  kernel (Covert & Lee 2021), with the CLT standard error.
- :func:`permutation_shapley`: mean marginal contributions along orderings (Castro et al. 2009; Štrumbelj &
  Kononenko 2014), with antithetic pairs of orderings (Mitchell et al. 2022) as the unit of the standard error.

Every estimator satisfies efficiency, Σ_i φ_i = v(1) − v(0), for any sample, and is exact on additive games.
"""

from __future__ import annotations

import math

import torch

from .coalitions import check_players, shapley_kernel_weights


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)


def exact_shapley(values: torch.Tensor) -> torch.Tensor:
    """Shapley values (B, M) from ``values`` (B, 2^M): v of every coalition, in the order of
    :func:`~.coalitions.all_coalitions` (entry k is the coalition whose members are the bits of k)."""
    v = _f64(values)
    m = int(round(math.log2(v.shape[-1])))
    if 2 ** check_players(m) != v.shape[-1]:
        raise ValueError(f"exact Shapley values need the values of all 2^M coalitions; got {v.shape[-1]} values")
    k = torch.arange(2 ** m, device=v.device)
    size = sum((k >> j) & 1 for j in range(m))
    factorial = torch.tensor([math.factorial(s) for s in range(m + 1)], dtype=torch.float64, device=v.device)
    phi = []
    for i in range(m):
        without = k[(k >> i) & 1 == 0]
        s = size[without]
        weight = factorial[s] * factorial[m - s - 1] / factorial[m]
        phi.append(((v[..., without | (1 << i)] - v[..., without]) * weight).sum(-1))
    return torch.stack(phi, -1)


def _kkt(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The Lagrangian system [[A, 1], [1ᵀ, 0]] of the constrained regression, A = Σ_r w_r z_r z_rᵀ / Σ_r w_r."""
    zf = _f64(z)
    w = weights / weights.sum(-1, keepdim=True)
    a = torch.einsum("br,bri,brj->bij", w, zf, zf)
    b, m = a.shape[0], a.shape[-1]
    kkt = a.new_zeros(b, m + 1, m + 1)
    kkt[:, :m, :m] = a
    kkt[:, :m, m] = 1
    kkt[:, m, :m] = 1
    return kkt


def _solve_kkt(kkt: torch.Tensor, rhs: torch.Tensor, what: str) -> torch.Tensor:
    rank = torch.linalg.matrix_rank(kkt)
    bad = (rank < kkt.shape[-1]).nonzero().flatten().tolist()
    if bad:
        m = kkt.shape[-1] - 1
        raise ValueError(f"{what}: the coalitions drawn for {len(bad)} of {kkt.shape[0]} samples do not determine the "
                         f"{m} players' values (the regression is singular); raise samples")
    return torch.linalg.solve(kkt, rhs)


def constrained_regression(z: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, v0: torch.Tensor,
                           v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin_φ Σ_r w_r (v(z_r) − v(0) − z_rᵀφ)² subject to 1ᵀφ = v(1) − v(0), solved in its Lagrangian form
    [[A, 1], [1ᵀ, 0]] [φ; λ] = [b; v(1) − v(0)] with A = Σ w z zᵀ / Σ w, b = Σ w z (v(z) − v(0)) / Σ w.

    Returns φ (B, M) and the inverse of the system (B, M + 1, M + 1), whose top-left block maps a perturbation of
    b to the perturbation of φ (used by the standard error)."""
    zf, t = _f64(z), _f64(values) - _f64(v0)[:, None]
    w = _f64(weights).expand(t.shape)
    kkt = _kkt(z, w)
    b = torch.einsum("br,bri->bi", w / w.sum(-1, keepdim=True), zf * t[..., None])
    rhs = torch.cat([b, (_f64(v1) - _f64(v0))[:, None]], 1)
    inv = _solve_kkt(kkt, torch.eye(kkt.shape[-1], dtype=kkt.dtype, device=kkt.device).expand_as(kkt), "KernelSHAP")
    return (inv @ rhs[..., None])[:, :-1, 0], inv


def kernel_shap(z: torch.Tensor, values: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor, *,
                exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """KernelSHAP (Lundberg & Lee 2017) and its standard error: φ (B, M) and se (B, M), float64.

    ``exact=True``: ``z`` holds all 2^M − 2 interior coalitions (each once) and they are weighted by the Shapley
    kernel π(z) (:func:`~.coalitions.shapley_kernel_weights`); the constrained regression then returns the Shapley
    values exactly (Lundberg & Lee 2017, Theorem 2) and the standard error is 0.

    ``exact=False``: ``z`` holds K pairs (z, 1 − z) drawn from the kernel
    (:func:`~.coalitions.paired_kernel_coalitions`), each row weighted 1 (the kernel is in the draw): Covert &
    Lee's (2021) KernelSHAP with paired sampling, with the sample Â = Σ z zᵀ / n, not the exact A.  Why the
    sample Â: it is the estimator shap uses and Covert & Lee recommend (they find its bias negligible and its
    variance far below that of their unbiased, exact-A estimator, whose b̂ carries the full variance of v(z) rather
    than that of the regression residual).  Its standard error is the CLT covariance (Covert & Lee 2021 show the
    estimator is asymptotically normal) in its linearised, delta-method form: with the KKT system K(Â) of
    :func:`constrained_regression`, the estimate moves with the sample by δφ ≈ C ū, C the top-left M × M block of
    K(Â)⁻¹, ū the mean over pairs of u_k = ½ Σ_{r ∈ pair k} z_r (v(z_r) − v(0) − z_rᵀφ̂) (the residual terms;
    their population mean is λ1, which C maps to 0).  So Cov(φ̂) ≈ C Ŝ Cᵀ / K with Ŝ the sample covariance of the
    u_k across the K pairs (a pair is one draw: its two rows are dependent by construction).  It is the precision
    of φ̂ as an estimate of the exact Shapley values, to first order in 1/K; it needs K ≥ 2 pairs.
    """
    if exact:
        phi, _ = constrained_regression(z, values, shapley_kernel_weights(z), v0, v1)
        return phi, torch.zeros_like(phi)
    n = z.shape[1]
    if n % 2 or n < 4:
        raise ValueError(f"sampled KernelSHAP needs at least 2 pairs (z, 1 − z) as consecutive rows; got {n} rows")
    phi, inv = constrained_regression(z, values, torch.ones(values.shape, dtype=torch.float64, device=values.device),
                                      v0, v1)
    zf = _f64(z)
    resid = _f64(values) - _f64(v0)[:, None] - (zf * phi[:, None]).sum(-1)
    u = (zf * resid[..., None]).reshape(z.shape[0], n // 2, 2, -1).mean(2)
    cov_u = _sample_covariance(u) / (n // 2)
    c = inv[:, :-1, :-1]
    cov = c @ cov_u @ c.transpose(1, 2)
    return phi, torch.diagonal(cov, dim1=1, dim2=2).clamp(min=0).sqrt()


def _sample_covariance(u: torch.Tensor) -> torch.Tensor:
    """Sample covariance (B, M, M) of the K rows of ``u`` (B, K, M), with the K − 1 divisor."""
    d = u - u.mean(1, keepdim=True)
    return d.transpose(1, 2) @ d / (u.shape[1] - 1)


def permutation_contributions(perms: torch.Tensor, prefix_values: torch.Tensor, v0: torch.Tensor,
                              v1: torch.Tensor) -> torch.Tensor:
    """Each ordering's marginal contributions (B, P, M): player perms[p, k] gets v(first k + 1) − v(first k).

    ``perms`` (B, P, M) orderings, ``prefix_values`` (B, P, M − 1) the values of their interior prefixes (in the
    order of :func:`~.coalitions.prefix_coalitions`).  Along each ordering they telescope to v(1) − v(0).
    """
    b, p, m = perms.shape
    if prefix_values.shape != (b, p, m - 1):
        raise ValueError(f"prefix values must have shape {(b, p, m - 1)}, got {tuple(prefix_values.shape)}")
    chain = torch.cat([_f64(v0)[:, None, None].expand(b, p, 1), _f64(prefix_values),
                       _f64(v1)[:, None, None].expand(b, p, 1)], 2)
    return torch.zeros(b, p, m, dtype=torch.float64, device=chain.device).scatter_(2, perms, chain.diff(dim=2))


def permutation_shapley(perms: torch.Tensor, prefix_values: torch.Tensor, v0: torch.Tensor,
                        v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation sampling (Castro et al. 2009; Štrumbelj & Kononenko 2014) with antithetic orderings.

    Rows 2k and 2k + 1 of ``perms`` are an ordering and its reverse (:func:`~.coalitions.antithetic_permutations`,
    Mitchell et al. 2022).  φ is the mean marginal contribution over all 2K orderings; the standard error is the
    sample standard deviation of the K pair means (each pair is one draw: its two orderings are dependent by
    construction) over √K.  Needs K ≥ 2 pairs for a standard error (with one pair it is NaN).  With every
    ordering of the players (M! rows, in pairs) φ is the exact Shapley value.
    """
    contrib = permutation_contributions(perms, prefix_values, v0, v1)
    b, p, m = contrib.shape
    if p % 2:
        raise ValueError(f"antithetic permutation sampling needs orderings in pairs; got {p} orderings")
    pairs = contrib.reshape(b, p // 2, 2, m).mean(2)
    phi = pairs.mean(1)
    if p // 2 < 2:
        return phi, torch.full_like(phi, math.nan)
    return phi, pairs.std(1, correction=1) / math.sqrt(p // 2)
