"""ROAD: remove and debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML), the retraining-free variant of ROAR.

Removing pixels leaks the *shape* of the removed set to the model (a mask of constant pixels is itself a
signal), so a perturbation curve partly measures that leak rather than the pixels' information.  ROAD fills
each removed pixel by **noisy linear imputation**: its value is the weighted mean of its 8 neighbours,
weight 1/6 for the 4 direct neighbours and 1/12 for the 4 diagonal ones (neighbours outside the image are
left out and the weights of those inside keep their values), plus a little Gaussian noise.  Removed
neighbours are unknowns too, so for the removed set R the values u solve the sparse linear system

    d_i u_i − Σ_{j ∈ R} w_ij u_j = Σ_{j ∉ R} w_ij x_j          (i ∈ R, d_i = Σ_{j in the image} w_ij)

for every channel, and x̃_i = u_i + σ ε_i with ε_i ∼ N(0, 1).  The matrix is symmetric (w_ij = w_ji) and, when
at least one pixel is kept, positive definite (every connected group of removed pixels touches a kept
one), so it is solved here by conjugate gradients with a Jacobi preconditioner, in torch, for all images,
channels and removal fractions of a chunk at once (the operator is a 3×3 convolution); the solution agrees
with a direct sparse solve (``scipy.sparse.linalg.spsolve``, in the tests).

The removal order is MoRF (most relevant pixels removed) or LeRF (least relevant removed) at the given
fractions; the curve records the target's probability (or logit) after each, and column 0 the clean input.
Rong et al. compare methods by the accuracy on the imputed images (``PerturbationCurve.correct`` per
sample); the per-sample ``score`` here is the AOPC of the curve (Samek et al. Eq 12), as in
:func:`tribute.metrics.pixel_perturbation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import options as opt
from ..core.randomness import SampleStreams
from ..core.tensors import per_sample
from .common import model_inputs
from .perturbation import (
    ORDERS,
    PerturbationCurve,
    TargetScore,
    check_fractions,
    element_mask,
    evaluate_rows,
    finish,
    prepare,
    unit_counts,
    unit_ids,
    unit_ranks,
)
from .perturbed import refuse_token_ids, select_part
from .registry import ATTRIBUTIONS, register_metric

#: the neighbour weights of Rong et al.'s imputation: 1/6 for direct and 1/12 for diagonal neighbours
NEIGHBOUR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def _neighbour_sum12(u: torch.Tensor) -> torch.Tensor:
    """12 Σ_j w_ij u_j + 4 u_i over the in-image neighbours, for (B, 1, H, W) fields (zero outside the image).

    The kernel of :data:`NEIGHBOUR_WEIGHTS` is ((s ⊗ s) − 4δ)/12 with s = (1, 2, 1): two 1-D passes, a few
    times faster on CPU than a single-channel 3×3 convolution; callers fold the 4δ and the 1/12 in.
    """
    p = F.pad(u, (1, 1, 1, 1))
    h = p[..., :, :-2] + p[..., :, 2:]
    h.add_(p[..., :, 1:-1], alpha=2)
    v = h[..., :-2, :] + h[..., 2:, :]
    return v.add_(h[..., 1:-1, :], alpha=2)


def linear_imputation(images: torch.Tensor, removed: torch.Tensor, *, tol: float | None = None,
                      max_iter: int | None = None) -> torch.Tensor:
    """Noise-free linear imputation: each removed pixel the weighted mean of its neighbours (module doc).

    Parameters
    ----------
    images : (B, C, H, W)
    removed : (B, 1, H, W) or (B, C, H, W) boolean, True where the pixel is removed; each (image, channel)
        must keep at least one pixel.
    tol : relative residual ‖b − Au‖ ≤ tol ‖b‖ at which conjugate gradients stop (default 1e-6 in float32,
        1e-10 in float64).
    max_iter : iterations at most (default 10 (H + W) + 100); not converging by then is an error.

    Returns
    -------
    (B, C, H, W) the images with the removed pixels imputed (kept pixels unchanged).
    """
    if images.dim() != 4:
        raise ValueError(f"linear imputation needs (B, C, H, W) images, got shape {tuple(images.shape)}")
    b_, c, h, w = images.shape
    if removed.dtype != torch.bool or removed.dim() != 4 or removed.shape[0] != b_ or removed.shape[2:] != (h, w) \
            or removed.shape[1] not in (1, c):
        raise ValueError(
            f"removed must be a boolean mask of shape ({b_}, 1 or {c}, {h}, {w}), got "
            f"{removed.dtype} {tuple(removed.shape)}"
        )
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    tol = (1e-10 if dtype == torch.float64 else 1e-6) if tol is None else opt.real(0, low_open=True)("tol", tol)
    max_iter = 10 * (h + w) + 100 if max_iter is None else opt.integer(1)("max_iter", max_iter)
    m = removed.expand(b_, c, h, w).reshape(-1, 1, h, w).to(dtype)
    if bool((m.flatten(1).amin(1) > 0).any()):
        raise ValueError("every image must keep at least one pixel: with all removed, imputation has no data")
    x = images.reshape(-1, 1, h, w).to(dtype)
    ones = torch.ones(1, 1, h, w, dtype=dtype, device=x.device)
    d = (_neighbour_sum12(ones) - 4) / 12  # the in-image neighbours' total weight (1 inside, less at borders)
    # A u = m ⊙ (d u − Σ_j w_ij u_j) = m ⊙ ((d + 1/3) u − nsum12(u)/12) for u zero on the kept pixels
    d_shift = d + 1 / 3
    precond = m / d  # Jacobi: the inverse diagonal on the removed pixels, 0 elsewhere

    def apply(u):
        out = d_shift * u
        return out.sub_(_neighbour_sum12(u), alpha=1 / 12).mul_(m)

    kept = (1 - m) * x
    rhs = m * (_neighbour_sum12(kept) / 12 - kept / 3)
    u = torch.zeros_like(x)
    r = rhs.clone()
    z = r * precond
    p = z.clone()
    rz = (r * z).flatten(1).sum(1)
    bnorm = rhs.flatten(1).norm(dim=1)
    tiny = torch.finfo(dtype).tiny
    # A system stops moving once it has converged (alpha = 0 from then on), so each runs exactly the
    # iterations it needs whatever else shares the batch: its solution does not depend on its batch-mates.
    for _ in range(max_iter):
        active = r.flatten(1).norm(dim=1) > tol * bnorm
        if not bool(active.any()):
            break
        ap = apply(p)
        pap = (p * ap).flatten(1).sum(1)
        alpha = per_sample(torch.where(active & (pap > 0), rz / pap.clamp_min(tiny), torch.zeros_like(rz)), p)
        u.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        z = torch.mul(r, precond, out=z)
        rz_new = (r * z).flatten(1).sum(1)
        beta = per_sample(torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz)), p)
        p = p.mul_(beta).add_(z)
        rz = rz_new
    else:
        worst = float((r.flatten(1).norm(dim=1) / bnorm.clamp_min(tiny)).max())
        if worst > tol:
            raise RuntimeError(
                f"linear imputation did not converge in max_iter={max_iter} conjugate-gradient iterations "
                f"(largest relative residual {worst:.2e} > tol={tol:.1e}); raise max_iter"
            )
    out = torch.where(m > 0, u, x)
    return out.view(b_, c, h, w).to(images.dtype)


def noisy_linear_imputation(images: torch.Tensor, removed: torch.Tensor, *, noise: float = 0.01,
                            seed: int | None = None, tol: float | None = None,
                            max_iter: int | None = None) -> torch.Tensor:
    """Rong et al.'s noisy linear imputation of the removed pixels of ``images`` (module doc).

    ``noise`` is the standard deviation σ (in the images' units; 0.01 as in Rong et al.) of the Gaussian
    noise added to each imputed value, drawn per sample from ``seed`` (see
    :class:`tribute.core.randomness.SampleStreams`); ``tol`` and ``max_iter`` as in :func:`linear_imputation`.
    """
    opt.real(0)("noise", noise)
    opt.optional(opt.integer(0))("seed", seed)
    out = linear_imputation(images, removed, tol=tol, max_iter=max_iter)
    if noise == 0:
        return out
    streams = SampleStreams(images, seed)
    eps = streams.draw("normal", torch.arange(images.shape[0]), tuple(images.shape[1:]), dtype=images.dtype,
                       device=images.device)
    return torch.where(removed, out + noise * eps, out)


#: input elements imputed per conjugate-gradient call in :func:`road` (rows of small images go together)
_IMPUTE_ELEMENTS = 2**19

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@register_metric("road_morf", takes=ATTRIBUTIONS, better="higher", options={"order": "morf"})
@register_metric("road_lerf", takes=ATTRIBUTIONS, better="lower", options={"order": "lerf"})
def road(model: nn.Module, inputs, attributions, target=None, *,
         fractions=DEFAULT_FRACTIONS, order: str = "morf", noise: float = 0.01, patch_size=1,
         score: str = "probability", reduce: str | None = "sum", seed: int | None = None,
         batch_size: int | None = None, tol: float | None = None, max_iter: int | None = None,
         progress: bool | str = False, input_index: int | None = None, forward_args=None, forward_kwargs=None,
         output=None) -> PerturbationCurve:
    """ROAD (Rong et al. 2022): the target's score after removing a fraction of the pixels, MoRF or LeRF, with
    the removed pixels filled by noisy linear imputation.

    Parameters
    ----------
    model, inputs, attributions, target
        The model (eval mode), (N, C, H, W) images, attributions of the input's shape or (N, 1, H, W) maps,
        and the class explained (``None``: the prediction on the clean input).
    fractions : fractions of the pixels removed, strictly increasing in (0, 1) (default 0.1, 0.2, …, 0.9,
        Rong et al.'s grid); a fraction removes round(fraction × pixels) pixels.
    order : ``"morf"`` (the most relevant pixels removed; default) or ``"lerf"`` (the least relevant).
    noise : σ of the imputation noise (default 0.01, as Rong et al.), seeded per sample by ``seed``.
    patch_size : 1 (pixels; default) or patches ranked by summed attribution, as in pixel perturbation.
    score : ``"probability"`` (default) or ``"logit"``.
    reduce : channels → ranking map (default ``"sum"``).  Pixels are removed with all their channels, so
        ``reduce=None`` is accepted only for maps or single-channel images.
    batch_size : rows (image × fraction) per chunk, imputed and scored together; ``tol``, ``max_iter``: of
        the conjugate-gradient solve (:func:`linear_imputation`).
    input_index : for a model taking several inputs (a tuple), the image whose pixels are removed and imputed;
        the other inputs keep their values (its attributions: a tensor, or the tuple of all, entry k used).
        Imputation fills pixels from their neighbours in one image, so there is no joint removal over
        several inputs.
    forward_args, forward_kwargs, output
        Extra arguments of every forward pass (each row gets its sample's) and which part of a structured
        output holds the scores, as for the methods.

    Returns
    -------
    PerturbationCurve
        ``curve`` (N, K+1) with the clean score first, ``score`` its AOPC (MoRF: higher is better; LeRF:
        lower), ``correct`` (N, K+1) whether the prediction still is the target (Rong et al.'s accuracy
        is its mean over the samples).
    """
    opt.choice(ORDERS)("order", order)
    opt.real(0)("noise", noise)
    opt.optional(opt.integer(0))("seed", seed)
    view = model_inputs(model, inputs, forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                        integers=True)
    part = select_part(view, input_index)
    refuse_token_ids(part, "ROAD")
    if part.joint:
        raise ValueError("ROAD imputes the removed pixels of one image from their neighbours; with several inputs "
                         "name the image with input_index=k (the other inputs keep their values)")
    if part.x.dim() != 4:
        raise ValueError(f"ROAD imputes pixels of images: {part.name} must be (N, C, H, W), got {tuple(part.x.shape)}")
    amap, batch_size = prepare(part, attributions, reduce, patch_size, batch_size)
    if amap.shape[1] != 1:
        raise ValueError(
            f"ROAD removes whole pixels: its ranking needs a map of shape (N, 1, H, W); got {tuple(amap.shape)} "
            "(pass reduce='sum' or another reduction)"
        )
    fractions = check_fractions(fractions, closed=False)
    fractions = torch.cat([fractions.new_zeros(1), fractions])
    x = part.x
    ids, units = unit_ids(tuple(amap.shape[1:]), patch_size)
    ranks = unit_ranks(amap, ids, units, order)
    counts = unit_counts(fractions, units)
    if bool((counts[1:] >= units).any()) or bool((counts[1:] == 0).any()):
        raise ValueError(
            f"fractions {fractions[1:].tolist()} remove 0 or all of the {units} units for some step; "
            "each must remove at least one and keep at least one"
        )
    streams = SampleStreams(x, seed) if noise > 0 else None
    scorer = TargetScore(view, target, score, batch_size)
    k = len(fractions)
    # The solver's cost on small images is per call, not per pixel, so rows are imputed in blocks larger
    # than the model's chunks; each system converges on its own (see linear_imputation), so a row's values
    # do not depend on the block it is solved in.
    block = max(batch_size, _IMPUTE_ELEMENTS // x[0].numel())
    cache = {"first": 0, "rows": x.new_zeros(0, *x.shape[1:])}

    def imputed(first: int, last: int) -> torch.Tensor:
        if last >= cache["first"] + len(cache["rows"]):
            r = torch.arange(first, min(max(last + 1, first + block), x.shape[0] * k))
            sample, step = r // k, r % k
            i = sample.to(x.device)
            removed = element_mask(ranks[i], ids, counts[step])
            filled = linear_imputation(x[i], removed, tol=tol, max_iter=max_iter)
            if streams is not None:  # rows come in order, so each sample's stream is read in order
                eps = streams.draw("normal", sample, tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
                filled = torch.where(removed, filled + noise * eps, filled)
            cache["first"], cache["rows"] = first, filled
        return cache["rows"][first - cache["first"]:last + 1 - cache["first"]]

    def rows(sample, step):
        r = sample * k + step
        return scorer(part.rows(imputed(int(r[0]), int(r[-1])), sample), sample)

    curve, pred = evaluate_rows(x.shape[0], k, rows, batch_size=batch_size, progress=progress)
    return finish(curve, pred, fractions, scorer, order, "aopc")


__all__ = ["linear_imputation", "noisy_linear_imputation", "road"]
