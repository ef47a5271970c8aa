"""LIME's surrogate (Ribeiro et al. 2016): a kernel-weighted linear model over coalitions, solved in torch.

Batched over a leading dimension B (one sample each), float64, on the values' device.  Rows are coalitions
z ∈ {0, 1}^M ((B, R, M) bool), targets the model's scores on them ((B, R)).

- Weights: LIME's exponential kernel on the cosine distance between z and the instance's all-ones row,
  d(z) = 1 − |z|^{1/2} / M^{1/2} (1 for the empty coalition), w(z) = exp(−d² / (2 σ²)), σ = ``kernel_width``;
  this is lime's ``sqrt(exp(−d²/σ²))``.  Image LIME's default is σ = 0.25 on this distance.
- Fit: y ≈ b + zᵀβ with an unpenalised intercept b, by
  ridge (the default, as LIME's ``Ridge(alpha=1)``): min Σ_r w_r (y_r − b − z_rᵀβ)² + α |β|²,
  i.e. [b; β] = (XᵀWX + αD)⁻¹ XᵀWy, X = [1, Z], D = diag(0, 1, …, 1) (α = 0: weighted least squares), or
  lasso (scikit-learn's ``Lasso`` objective with ``sample_weight``): min (1 / (2 Σ w)) Σ_r w_r (y_r − b − z_rᵀβ)²
  + α |β|₁, by coordinate descent to a tolerance.  So ``alpha`` has scikit-learn's meaning for each solver.
- Standard error (ridge and least squares): the sandwich (heteroskedasticity-robust, HC1) covariance
  H⁻¹ (Σ_r w_r² e_r² x_r x_rᵀ) H⁻¹ · R / (R − M − 1), H = XᵀWX + αD, e_r the residuals (White 1980).  The rows are
  i.i.d. draws of z (bar the always-present instance row), and the fit is an M-estimator of the population
  surrogate, the fit over the whole coalition distribution with the penalty α / R per row; the sandwich is the
  CLT covariance of the fit around it (it does not measure the shrinkage the penalty itself causes).
"""

from __future__ import annotations

import math

import torch

SOLVERS = ("ridge", "lasso")


def lime_kernel(z: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """w(z) = exp(−d(z)² / (2 σ²)), d the cosine distance between z and the all-ones row (float64)."""
    if not kernel_width > 0:
        raise ValueError(f"kernel_width must be > 0, got {kernel_width!r}")
    m = z.shape[-1]
    d = 1 - (z.sum(-1).to(torch.float64) / m).sqrt()
    return torch.exp(-d * d / (2 * kernel_width ** 2))


def _design(z: torch.Tensor) -> torch.Tensor:
    """X = [1, Z] in float64."""
    zf = z.to(torch.float64)
    return torch.cat([torch.ones_like(zf[..., :1]), zf], -1)


def _ridge_system(x: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """H = XᵀWX + αD (the intercept unpenalised)."""
    h = torch.einsum("br,bri,brj->bij", w, x, x)
    pen = torch.full((x.shape[-1],), float(alpha), dtype=h.dtype, device=h.device)
    pen[0] = 0
    return h + torch.diag(pen)


def _check_solvable(h: torch.Tensor) -> None:
    bad = (torch.linalg.matrix_rank(h) < h.shape[-1]).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"LIME: the coalitions of {len(bad)} of {h.shape[0]} samples do not determine the surrogate "
                         f"(a player kept or removed in every weighted row); raise samples or set alpha > 0")


def ridge_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[b; β] = (XᵀWX + αD)⁻¹ XᵀWy: coefficients β (B, M) and intercept b (B,)."""
    x = _design(z)
    yw = y.to(torch.float64) * w
    h = _ridge_system(x, w, alpha)
    _check_solvable(h)
    theta = torch.linalg.solve(h, torch.einsum("bri,br->bi", x, yw))
    return theta[:, 1:], theta[:, 0]


def lasso_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float, *, tol: float = 1e-12,
              max_sweeps: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted lasso, scikit-learn's objective (1 / (2 Σw)) Σ w (y − b − zᵀβ)² + α |β|₁, intercept unpenalised.

    The intercept is profiled out by weighted centring; coordinate descent on the centred Gram matrix
    G = Z̃ᵀWZ̃ / Σw, c = Z̃ᵀWỹ / Σw updates β_j = S(c_j − Σ_{k≠j} G_jk β_k, α) / G_jj (S the soft threshold;
    β_j = 0 for a constant column), all samples at once, until a sweep moves no coefficient by more than
    ``tol`` × (1 + max |β|).  Not converging within ``max_sweeps`` is an error.
    """
    zf, yf = z.to(torch.float64), y.to(torch.float64)
    wn = w / w.sum(-1, keepdim=True)
    zbar, ybar = torch.einsum("br,bri->bi", wn, zf), (wn * yf).sum(-1)
    zc, yc = zf - zbar[:, None], yf - ybar[:, None]
    g = torch.einsum("br,bri,brj->bij", wn, zc, zc)
    c = torch.einsum("br,bri,br->bi", wn, zc, yc)
    diag = torch.diagonal(g, dim1=1, dim2=2)
    live = diag > 1e-14
    beta = torch.zeros_like(c)
    for _ in range(max_sweeps):
        biggest = torch.zeros_like(c[:, 0])
        for j in range(c.shape[1]):
            rho = c[:, j] - (g[:, j] * beta).sum(-1) + diag[:, j] * beta[:, j]
            new = torch.where(live[:, j], torch.sign(rho) * (rho.abs() - alpha).clamp(min=0) / diag[:, j].clamp(
                min=1e-300), torch.zeros_like(rho))
            biggest = torch.maximum(biggest, (new - beta[:, j]).abs())
            beta[:, j] = new
        if bool((biggest <= tol * (1 + beta.abs().amax(-1))).all()):
            return beta, ybar - (zbar * beta).sum(-1)
    raise RuntimeError(f"LIME's lasso did not converge to tol={tol:g} within {max_sweeps} sweeps; "
                       f"use solver='ridge' or a larger alpha")


def sandwich_standard_error(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float, coef: torch.Tensor,
                            intercept: torch.Tensor) -> torch.Tensor:
    """The HC1 sandwich standard error of the ridge / least-squares coefficients β (B, M) (module docstring)."""
    x = _design(z)
    theta = torch.cat([intercept[:, None], coef], 1)
    e = y.to(torch.float64) - (x * theta[:, None]).sum(-1)
    h = _ridge_system(x, w, alpha)
    meat = torch.einsum("br,bri,brj->bij", (w * e) ** 2, x, x)
    h_inv = torch.linalg.inv(h)
    r, p = x.shape[1], x.shape[2]
    if r <= p:
        return torch.full_like(coef, math.nan)
    cov = h_inv @ meat @ h_inv * (r / (r - p))
    return torch.diagonal(cov, dim1=1, dim2=2)[:, 1:].clamp(min=0).sqrt()


def lime_fit(z: torch.Tensor, y: torch.Tensor, *, kernel_width: float, alpha: float, solver: str = "ridge",
             standard_error: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """LIME's surrogate on the rows ``z`` with scores ``y``: coefficients β (B, M), intercept (B,), and the
    sandwich standard error of β (None when not asked for).  Lasso has no standard error here: its estimate is
    not a smooth function of the sample moments, so the sandwich does not apply (an error, not a guess)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    w = lime_kernel(z, kernel_width).expand(y.shape)
    if solver == "lasso":
        if standard_error:
            raise ValueError("LIME's lasso surrogate has no standard error here (the sandwich needs a smooth fit); "
                             "use solver='ridge' for a standard error or a tolerance")
        coef, intercept = lasso_fit(z, y, w, alpha)
        return coef, intercept, None
    coef, intercept = ridge_fit(z, y, w, alpha)
    se = sandwich_standard_error(z, y, w, alpha, coef, intercept) if standard_error else None
    return coef, intercept, se
