"""Similarity of two batches of maps, one number per sample.

Attributional robustness compares the map of x with the map of x + δ (Ghorbani et al. 2019, *Interpretation
of Neural Networks is Fragile*, AAAI; Nielsen et al. 2022, §5); sanity checks compare the map of a model with the map of
its randomised copy (Adebayo et al. 2018, *Sanity Checks for Saliency Maps*).  Both need the same few
measures of how alike two maps are:

===========================  ====================================================================  =========
function                     what it computes                                                      equal maps
===========================  ====================================================================  =========
:func:`topk_intersection`    |top_k(a) ∩ top_k(b)| / k (Ghorbani et al. 2019)                      1
:func:`spearman`             Pearson's r of the average ranks (Spearman's ρ with ties)             1
:func:`pearson`              Σ(a − ā)(b − b̄) / (‖a − ā‖ ‖b − b̄‖)                                  1
:func:`center_of_mass_shift` ‖C(a) − C(b)‖₂, C(m) = Σ_p m_p p / Σ_p m_p (Ghorbani et al. 2019)     0
:func:`ssim`                 mean structural similarity (Wang et al. 2004, Eq 13 and §III-C)       1
:func:`hog_similarity`       Pearson's r of the HOG descriptors (Dalal & Triggs 2005)              1
===========================  ====================================================================  =========

Shapes.  ``a`` and ``b`` have the same shape (N, ...), batch first.  With ``reduce=None`` (the default) every
entry after the batch dimension is a feature: a (N, 3, H, W) attribution compares 3·H·W features.  With
``reduce="sum" | "abs_sum" | "max_abs" | "l2"`` (the shared ``reduce=``, :func:`tribute.metrics.as_map`)
channels (dim 1) are first reduced to one map, (N, 1, H, W).  The spatial measures (centre of mass, SSIM,
HOG) need one map per sample: (N, 1, *spatial) or, for SSIM and HOG, (N, H, W); a multi-channel attribution
needs ``reduce=``.

Decisions where the papers are silent:

- top-k by magnitude by default (``absolute=True``), as Ghorbani et al. rank features by saliency magnitude;
  ties at the k-th place go to the lower flat index (a stable sort), so the result is deterministic;
- the correlations (``spearman``, ``pearson``, ``hog_similarity``) are NaN for a sample where either map is
  constant (no ranking or direction to compare), as in ``scipy.stats``;
- the centre of mass needs a non-negative map with positive mass: negative entries (unless
  ``absolute=True``) and all-zero maps raise a ValueError naming the samples;
- SSIM's dynamic range L defaults, per sample, to max − min over both maps together; two equal constant
  maps (L = 0) have SSIM 1, the limit of Wang's formula.

Everything is computed in float64 (ranks and sums of many small values) and returned as an (N,) tensor in
the maps' floating dtype (float32 for integer maps), on their device.  :func:`pearson` and
:func:`center_of_mass` keep the autograd graph (the attacks on explanations differentiate them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.reduce import check_reduce
from ..core.tensors import per_sample
from .common import as_map

__all__ = [
    "center_of_mass",
    "center_of_mass_shift",
    "hog",
    "hog_similarity",
    "pearson",
    "spearman",
    "ssim",
    "topk_intersection",
]

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")


# -- shapes and checks -----------------------------------------------------------------------------------------
def _check_map(name: str, m) -> torch.Tensor:
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(m).__name__}")
    if m.is_complex() or m.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {m.dtype}")
    if m.dim() < 2:
        raise ValueError(f"{name} must be a batch of maps (N, ...) with the samples along dim 0, "
                         f"got shape {tuple(m.shape)}")
    if m.shape[0] == 0:
        raise ValueError(f"{name} holds no samples (dim 0 has size 0)")
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return m


def _out_dtype(m: torch.Tensor) -> torch.dtype:
    return m.dtype if m.is_floating_point() else torch.get_default_dtype()


def _reduced(name: str, m: torch.Tensor, reduce: str | None) -> torch.Tensor:
    check_reduce("reduce", reduce)
    m = _check_map(name, m)
    if reduce is not None:
        if m.dim() < 3:
            raise ValueError(f"reduce={reduce!r} reduces channels (dim 1) of (N, C, *spatial) maps; {name} has "
                             f"shape {tuple(m.shape)}, which has no spatial dims (use reduce=None)")
        m = as_map(m.to(torch.float64), reduce) if m.shape[1] != 1 else m
    return m.to(torch.float64)


def _pair(a, b, reduce: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    a, b = _check_map("a", a), _check_map("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return _reduced("a", a, reduce), _reduced("b", b, reduce), _out_dtype(a)


def _spatial(name: str, m: torch.Tensor, *, allow_plain: bool) -> torch.Tensor:
    """(N, 1, *spatial) → (N, *spatial); with ``allow_plain`` a (N, H, W) map passes as it is."""
    if m.dim() >= 3 and m.shape[1] == 1:
        return m.squeeze(1)
    if allow_plain and m.dim() == 3:
        return m
    raise ValueError(
        f"{name} must hold one map per sample, (N, 1, *spatial){' or (N, H, W)' if allow_plain else ''}; got shape "
        f"{tuple(m.shape)} (reduce the channels with reduce='sum', 'abs_sum', 'max_abs' or 'l2')"
    )


def _image_pair(a, b, reduce, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    a, b, dtype = _pair(a, b, reduce)
    a, b = _spatial("a", a, allow_plain=True), _spatial("b", b, allow_plain=True)
    if a.dim() != 3:
        raise ValueError(f"{what} compares 2-D maps, (N, 1, H, W) or (N, H, W); got {a.dim() - 1} spatial dims")
    return a, b, dtype


def _check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v


# -- rankings --------------------------------------------------------------------------------------------------
def _top_mask(m: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N, D) mask of each row's k largest entries; ties broken by the lower index (stable sort)."""
    order = torch.sort(m, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(m, dtype=torch.bool).scatter_(1, order, True)


def check_k(k, features: int) -> int:
    """``k`` must be an integer in [1, features]."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= features:
        raise ValueError(f"k must be an integer in [1, {features}] (the number of features per map), got {k}")
    return k


def topk_intersection(a, b, k: int, *, absolute: bool = True, reduce: str | None = None) -> torch.Tensor:
    """Top-k intersection: the fraction of a's k most important features that are among b's k most important.

    .. math:: \\mathrm{TopK}(a, b) = |T_k(a) \\cap T_k(b)| / k,

    with T_k(m) the indices of the k largest entries of |m| (``absolute=True``, the saliency magnitude of
    Ghorbani et al. 2019, who measure fragility by it) or of m.  Symmetric in a and b; 1 for
    equal rankings, 0 for disjoint top sets.

    Parameters
    ----------
    a, b : Tensor (N, ...)
        Two batches of maps of the same shape.
    k : int
        The number of top features, 1 ≤ k ≤ the number of features per map.
    absolute : bool
        Rank by magnitude (default) or by signed value.
    reduce : None or str
        Reduce channels first (see the module doc).

    Returns
    -------
    Tensor (N,)
        Values in {0, 1/k, …, 1}.
    """
    a, b, dtype = _pair(a, b, reduce)
    a, b = a.flatten(1), b.flatten(1)
    k = check_k(k, a.shape[1])
    if _check_bool("absolute", absolute):
        a, b = a.abs(), b.abs()
    common = _top_mask(a, k) & _top_mask(b, k)
    return (common.sum(1).to(torch.float64) / k).to(dtype)


def average_ranks(m: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 1 of a (N, D) tensor, tied values given the mean of their ranks, batched."""
    n, d = m.shape
    values, order = torch.sort(m, dim=1, stable=True)
    pos = torch.arange(d, device=m.device).expand(n, d)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    ends_group = torch.ones_like(new_group)
    ends_group[:, :-1] = new_group[:, 1:]
    # the first and last sorted position of each entry's group of equal values
    first = torch.where(new_group, pos, torch.zeros_like(pos)).cummax(dim=1).values
    last = torch.where(ends_group, pos, torch.full_like(pos, d)).flip(1).cummin(dim=1).values.flip(1)
    ranks_sorted = (first + last).to(torch.float64) / 2 + 1
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson's r of each row pair of two (N, D) float64 tensors; NaN where a row is constant."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.where(norm > 0, r.clamp(-1.0, 1.0), torch.full_like(r, math.nan))


def pearson(a, b, *, absolute: bool = False, reduce: str | None = None) -> torch.Tensor:
    """Pearson's correlation coefficient of the flattened maps, per sample.

    .. math:: r(a, b) = \\frac{\\sum_i (a_i - \\bar a)(b_i - \\bar b)}{\\|a - \\bar a\\|_2\\,\\|b - \\bar b\\|_2}

    of a and b, or of |a| and |b| with ``absolute=True``.  NaN for a sample where either map is constant.
    Differentiable (the graph is kept).

    Returns
    -------
    Tensor (N,) in [−1, 1].
    """
    a, b, dtype = _pair(a, b, reduce)
    if _check_bool("absolute", absolute):
        a, b = a.abs(), b.abs()
    return _correlation(a.flatten(1), b.flatten(1)).to(dtype)


def spearman(a, b, *, absolute: bool = False, reduce: str | None = None) -> torch.Tensor:
    """Spearman's rank correlation ρ of the flattened maps, per sample (Pearson's r of the average ranks).

    Ties get the mean of the ranks they span, as in ``scipy.stats.spearmanr``.  With ``absolute=True`` the
    ranks are those of |a| and |b| (the sanity checks of Adebayo et al. 2018 report both).  NaN for a sample
    where either map is constant.

    Returns
    -------
    Tensor (N,) in [−1, 1].
    """
    a, b, dtype = _pair(a, b, reduce)
    a, b = a.detach().flatten(1), b.detach().flatten(1)
    if _check_bool("absolute", absolute):
        a, b = a.abs(), b.abs()
    return _correlation(average_ranks(a), average_ranks(b)).to(dtype)


# -- centre of mass --------------------------------------------------------------------------------------------
def center_of_mass(maps, *, absolute: bool = False, reduce: str | None = None) -> torch.Tensor:
    """The centre of mass of each map, in index units along each spatial dim.

    .. math:: C(m) = \\sum_p m_p\\, p \\;/\\; \\sum_p m_p ,

    p the index vector of position p (row, column for images), as in Ghorbani et al. (2019: the centre of mass
    of the saliency map).  The map must be non-negative: a signed map raises unless ``absolute=True`` (then |m|
    is used).  A map with zero mass has no centre: a ValueError names the samples.

    Parameters
    ----------
    maps : Tensor (N, 1, *spatial) or (N, *spatial)
        One map per sample (a (N, C, *spatial) attribution with ``reduce=``).  A (N, D) tensor is a 1-D map.
    absolute : bool
        Use |m|.
    reduce : None or str
        Reduce channels first.

    Returns
    -------
    Tensor (N, d)
        One coordinate per spatial dim (d = 2 for images: row, then column).  Differentiable.
    """
    m = _reduced("maps", maps, reduce)
    dtype = _out_dtype(maps)
    if m.dim() >= 3 and m.shape[1] == 1:
        m = m.squeeze(1)
    if _check_bool("absolute", absolute):
        m = m.abs()
    elif bool((m < 0).any()):
        rows = (m < 0).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(
            f"the centre of mass needs non-negative maps; samples {rows[:10]} have negative entries "
            "(pass absolute=True to use |map|, or reduce='abs_sum')"
        )
    mass = m.flatten(1).sum(1)
    if bool((mass <= 0).any()):
        rows = (mass <= 0).nonzero().flatten().tolist()
        raise ValueError(f"the centre of mass is undefined for samples {rows[:10]}: their maps are zero everywhere")
    coords = []
    for dim, size in enumerate(m.shape[1:], start=1):
        index = torch.arange(size, dtype=torch.float64, device=m.device)
        marginal = m.sum(dim=[d for d in range(1, m.dim()) if d != dim])  # (N, size)
        coords.append((marginal * index).sum(1) / mass)
    return torch.stack(coords, dim=1).to(dtype)


def center_of_mass_shift(a, b, *, absolute: bool = False, reduce: str | None = None) -> torch.Tensor:
    """‖C(a) − C(b)‖₂: how far (in pixels) the centre of mass moved (Ghorbani et al. 2019, centre attack).

    See :func:`center_of_mass` for the maps it accepts and its errors.

    Returns
    -------
    Tensor (N,) ≥ 0.
    """
    _pair(a, b, None)  # same shapes, finite
    ca = center_of_mass(a, absolute=absolute, reduce=reduce)
    cb = center_of_mass(b, absolute=absolute, reduce=reduce)
    return (ca - cb).to(torch.float64).norm(dim=1).to(ca.dtype)


# -- SSIM ------------------------------------------------------------------------------------------------------
def _gaussian_window(window: int, sigma: float, device) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float64, device=device) - (window - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(a, b, *, window: int = 11, sigma: float = 1.5, data_range=None, k1: float = 0.01, k2: float = 0.03,
         reduce: str | None = None) -> torch.Tensor:
    """Mean structural similarity of two maps (Wang et al. 2004, *Image Quality Assessment: From Error
    Visibility to Structural Similarity*, Eq 13 with the Gaussian window of §III-C), per sample.

    .. math:: \\mathrm{SSIM}(a, b) = \\frac{(2\\mu_a\\mu_b + C_1)(2\\sigma_{ab} + C_2)}
              {(\\mu_a^2 + \\mu_b^2 + C_1)(\\sigma_a^2 + \\sigma_b^2 + C_2)},\\quad C_i = (K_i L)^2,

    with local means, variances and covariance weighted by a ``window`` × ``window`` Gaussian of standard
    deviation ``sigma`` (normalised to sum 1, population moments), evaluated wherever the window fits inside
    the map and averaged.  Equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
    sigma=sigma, use_sample_covariance=False, data_range=L)`` when ``window = 2·int(3.5·sigma + 0.5) + 1``
    (11 for Wang's σ = 1.5, 7 for σ = 0.8).

    Parameters
    ----------
    a, b : Tensor (N, 1, H, W) or (N, H, W)
        2-D maps (multi-channel ones with ``reduce=``); H, W ≥ ``window``.
    window : int
        Odd window size ≥ 3 (Wang et al.: 11).
    sigma : float
        Standard deviation of the Gaussian weights, > 0 (Wang et al.: 1.5).
    data_range : None, float or Tensor (N,)
        L, the dynamic range.  None: per sample, max − min over both maps (two equal constant maps, L = 0,
        have SSIM 1).
    k1, k2 : float
        The constants K₁, K₂ > 0 (Wang et al.: 0.01, 0.03).

    Returns
    -------
    Tensor (N,) in [−1, 1].
    """
    a, b, dtype = _image_pair(a, b, reduce, "ssim")
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 3, got {window!r}")
    for name, v in (("sigma", sigma), ("k1", k1), ("k2", k2)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    n, h, w = a.shape
    if h < window or w < window:
        raise ValueError(f"the maps ({h} x {w}) are smaller than the SSIM window ({window}); pass a smaller window")
    if data_range is None:
        both = torch.cat([a.flatten(1), b.flatten(1)], dim=1)
        big_l = both.amax(1) - both.amin(1)
    elif isinstance(data_range, torch.Tensor):
        if data_range.shape not in ((), (n,)):
            raise ValueError(f"data_range must be a number or a tensor of shape ({n},), got {tuple(data_range.shape)}")
        big_l = data_range.detach().to(a.device, torch.float64).expand(n)
        if not bool((big_l > 0).all()) or not bool(torch.isfinite(big_l).all()):
            raise ValueError("data_range must be finite and > 0 for every sample")
    else:
        if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not data_range > 0 \
                or not math.isfinite(data_range):
            raise ValueError(f"data_range must be None, a finite number > 0 or a tensor of those, got {data_range!r}")
        big_l = torch.full((n,), float(data_range), dtype=torch.float64, device=a.device)
    kernel = _gaussian_window(window, float(sigma), a.device)

    rows, cols = kernel.view(1, 1, -1, 1), kernel.view(1, 1, 1, -1)

    def local(m):  # Gaussian-weighted local mean where the window fits ("valid"); the Gaussian is separable
        return F.conv2d(F.conv2d(m.unsqueeze(1), rows), cols).squeeze(1)

    mu_a, mu_b = local(a), local(b)
    var_a = local(a * a) - mu_a**2
    var_b = local(b * b) - mu_b**2
    cov = local(a * b) - mu_a * mu_b
    c1 = per_sample((k1 * big_l) ** 2, mu_a)
    c2 = per_sample((k2 * big_l) ** 2, mu_a)
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    constant = big_l == 0  # both maps the same constant: the limit of the formula is 1
    s = (num / torch.where(den > 0, den, torch.ones_like(den))).flatten(1).mean(1)
    return torch.where(constant, torch.ones_like(s), s).to(dtype)


# -- HOG -------------------------------------------------------------------------------------------------------
def _pair_of_ints(name: str, v) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v)):
        raise ValueError(f"{name} must be a positive integer or a pair of them, got {v!r}")
    return int(v[0]), int(v[1])


def hog(maps, *, orientations: int = 9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm: str = "L2-Hys",
        reduce: str | None = None) -> torch.Tensor:
    """Histograms of oriented gradients of 2-D maps (Dalal & Triggs 2005), batched in torch.

    1. gradients by centred differences, g_r(i, j) = m(i+1, j) − m(i−1, j) and g_c(i, j) = m(i, j+1) − m(i, j−1),
       zero on the border rows (g_r) and columns (g_c);
    2. magnitude ‖g‖ and unsigned orientation atan2(g_r, g_c) mod 180°;
    3. per cell of ``pixels_per_cell`` pixels (cells tile the map from the top left; leftover rows and columns
       are dropped): the mean magnitude falling in each of ``orientations`` equal bins of [0°, 180°) (hard
       binning, no interpolation);
    4. per block of ``cells_per_block`` cells, sliding by one cell: the block's histograms normalised
       (``"L1"``: v/(‖v‖₁ + ε); ``"L1-sqrt"``: its square root; ``"L2"``: v/√(‖v‖² + ε²); ``"L2-Hys"``: L2,
       clipped at 0.2, L2 again), ε = 1e-5;
    5. all blocks concatenated, ordered (block row, block column, cell row, cell column, orientation).

    This is the descriptor of ``skimage.feature.hog(m, orientations, pixels_per_cell, cells_per_block,
    block_norm, feature_vector=True)`` (same order); the tests check equality.  Defaults are Dalal and
    Triggs's: 9 bins, 8 × 8 pixel cells, 2 × 2 cell blocks, L2-Hys.

    Returns
    -------
    Tensor (N, F)
        F = blocks_r · blocks_c · cells_per_block · orientations.
    """
    if isinstance(orientations, bool) or not isinstance(orientations, int) or orientations < 1:
        raise ValueError(f"orientations must be an integer >= 1, got {orientations!r}")
    cr, cc = _pair_of_ints("pixels_per_cell", pixels_per_cell)
    br, bc = _pair_of_ints("cells_per_block", cells_per_block)
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {', '.join(map(repr, BLOCK_NORMS))}; got {block_norm!r}")
    m = _reduced("maps", maps, reduce)
    dtype = _out_dtype(maps)
    m = _spatial("maps", m, allow_plain=True)
    if m.dim() != 3:
        raise ValueError(f"hog takes 2-D maps, (N, 1, H, W) or (N, H, W); got {m.dim() - 1} spatial dims")
    n, h, w = m.shape
    cells_r, cells_c = h // cr, w // cc
    if cells_r < br or cells_c < bc:
        raise ValueError(
            f"a {h} x {w} map holds {cells_r} x {cells_c} cells of {cr} x {cc} pixels, fewer than one block of "
            f"{br} x {bc} cells; use smaller pixels_per_cell or cells_per_block"
        )
    g_r, g_c = torch.zeros_like(m), torch.zeros_like(m)
    g_r[:, 1:-1, :] = m[:, 2:, :] - m[:, :-2, :]
    g_c[:, :, 1:-1] = m[:, :, 2:] - m[:, :, :-2]
    magnitude = torch.hypot(g_r, g_c)
    angle = torch.rad2deg(torch.atan2(g_r, g_c)) % 180
    width = 180.0 / orientations
    # bin i holds i·width <= angle < (i+1)·width; an angle rounded up to 180 belongs to no bin
    edges = width * torch.arange(1, orientations + 1, dtype=torch.float64, device=m.device)
    which = torch.bucketize(angle, edges, right=True)
    votes = F.one_hot(which, orientations + 1)[..., :orientations].to(torch.float64) * magnitude[..., None]
    votes = votes[:, : cells_r * cr, : cells_c * cc]
    cells = votes.reshape(n, cells_r, cr, cells_c, cc, orientations).sum((2, 4)) / (cr * cc)
    blocks = cells.unfold(1, br, 1).unfold(2, bc, 1)  # (n, blocks_r, blocks_c, orientations, br, bc)
    blocks = blocks.permute(0, 1, 2, 4, 5, 3).flatten(3)  # (n, blocks_r, blocks_c, br·bc·orientations)
    eps = 1e-5
    if block_norm in ("L1", "L1-sqrt"):
        blocks = blocks / (blocks.abs().sum(-1, keepdim=True) + eps)
        if block_norm == "L1-sqrt":
            blocks = blocks.sqrt()
    else:
        blocks = blocks / torch.sqrt(blocks.pow(2).sum(-1, keepdim=True) + eps**2)
        if block_norm == "L2-Hys":
            blocks = blocks.clamp(max=0.2)
            blocks = blocks / torch.sqrt(blocks.pow(2).sum(-1, keepdim=True) + eps**2)
    return blocks.flatten(1).to(dtype)


def hog_similarity(a, b, *, orientations: int = 9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                   block_norm: str = "L2-Hys", reduce: str | None = None) -> torch.Tensor:
    """Pearson's r between the HOG descriptors of a and b (:func:`hog`), per sample.

    The sanity checks of Adebayo et al. (2018) compare maps by it: HOG sees edges and their directions, not
    the maps' scale.  NaN for a sample whose descriptor is constant (e.g. a constant map).

    Returns
    -------
    Tensor (N,) in [−1, 1].
    """
    _pair(a, b, None)
    options = {"orientations": orientations, "pixels_per_cell": pixels_per_cell, "cells_per_block": cells_per_block,
               "block_norm": block_norm, "reduce": reduce}
    ha, hb = hog(a, **options), hog(b, **options)
    return _correlation(ha.to(torch.float64), hb.to(torch.float64)).to(ha.dtype)
