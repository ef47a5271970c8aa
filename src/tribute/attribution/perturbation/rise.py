"""RISE: the saliency of a pixel is the score expected when the pixel is kept by a random smooth mask
(Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models", §3).

Masks (§3, "Mask generation"): a grid of h × w cells, each kept (1) with probability ``p`` and dropped (0)
otherwise, is upsampled bilinearly to (h + 1)·C_H × (w + 1)·C_W, where C_H × C_W is the cell size in pixels
(``cell``; h = ⌈H / C_H⌉), and an H × W window of it is cropped at a shift drawn uniformly from
{0, …, C_H − 1} × {0, …, C_W − 1}.  A masked image is I ⊙ M + b ⊙ (1 − M) with the baseline b (the paper's is 0,
``baseline="zero"``), the mask shared by the channels.  The saliency (Eq 6) is the Monte Carlo estimate over K
masks

    S(λ) = 1 / (E[M] · K) · Σ_i f(I ⊙ M_i) M_i(λ),

normalised as in the paper by E[M] = p, not by the empirical mean of the masks: bilinear interpolation is a
convex combination of the cells, so E[M_i(λ)] = p at every pixel exactly (the crop included), and S(λ) is then
an unbiased mean of i.i.d. terms y_i(λ) = f(I ⊙ M_i) M_i(λ) / p.  Its expectation E[f(I ⊙ M) M(λ)] / E[M(λ)]
is, for binary masks, the paper's E[f(I ⊙ M) | M(λ) = 1] (Eq 4–5); dividing by the empirical Σ_i M_i(λ) instead
would be a ratio estimator, biased at finite K and without the simple standard error below.  On a linear model
f(x) = Σ w ⊙ x + c it has a closed form: with a(μ) = Σ_channels w (I − b) at pixel μ and M(λ) = Σ_c φ_c(λ) B_c
(B_c ∼ Bernoulli(p), Σ_c φ_c = 1), E[M(μ) M(λ)] = p² + p(1 − p) K(μ, λ) with K(μ, λ) = E_shift Σ_c φ_c(μ) φ_c(λ), so
E[S(λ)] = f(b) + p Σ_μ a(μ) + (1 − p) Σ_μ a(μ) K(μ, λ): a constant plus the contributions a smoothed by the
masks' kernel (tests/test_rise.py checks it).

**Standard error.**  Being a mean of i.i.d. terms, S(λ) has the standard error sd_i(y_i(λ)) / √K (the sample
standard deviation over the masks), computed in one streaming pass from sums of y − f(I) and (y − f(I))² in
float64 (shifted by the clean score, so that nearly constant terms lose no digits: with p = 1 every term is the
clean score and the error is 0, up to how the model rounds one row in batches of different sizes) and
kept as ``explainer.standard_error`` (same shape as the map).  ``tolerance=`` draws ``masks`` more masks per round
for every sample whose largest per-pixel standard error is still above it (an absolute bound, in units of the
score), up to ``max_masks`` masks per sample (then a RuntimeError).

Masks are made chunk by chunk from each sample's own random stream (:class:`tribute.core.randomness.SampleStreams`,
keyed by the image and ``seed``), never all at once: a sample gets the same masks alone or in any batch, at any
position, with any ``batch_size``.  f is the target's score (the model's output; the paper reads the softmax
probability: give a model that outputs probabilities, or a callable target).  The result is a map (N, 1, H, W) on
the image's grid, like the CAM family's; with several inputs ``input_index=`` names the image, the other inputs
go through the model as they are.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, ClassVar

import torch

from ...core import options as opt
from ...core.baselines import check_baseline, make_baseline
from ...core.engine import chunks_with_progress
from ...core.randomness import SampleStreams
from ...core.registry import register as register_method
from ...core.targets import Target
from ..image_input import INPUT_INDEX_OPTION, ImageMethod, image_of, with_image
from .base import PerturbationMethod
from .scoring import clean_scores, score_rows

#: the grid of the paper's ImageNet experiments: 7 × 7 cells
DEFAULT_GRID = 7


def check_cell(name: str, v: Any) -> Any:
    pair = (v, v) if isinstance(v, int) else v
    if v is not None and not (isinstance(pair, tuple) and len(pair) == 2 and all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in pair)):
        raise ValueError(f"{name} must be a positive int or a pair (height, width) of them, in pixels, or None, "
                         f"got {v!r}")
    return None if v is None else pair


class MaskSampler:
    """RISE's masks (module doc) for images of size H × W, drawn row by row from each sample's stream."""

    def __init__(self, image: torch.Tensor, cell: tuple[int, int] | None, p: float, seed: int | None):
        h, w = image.shape[-2:]
        if cell is None:
            cell = (math.ceil(h / DEFAULT_GRID), math.ceil(w / DEFAULT_GRID))
        if cell[0] > h or cell[1] > w:
            raise ValueError(f"cell={cell} is larger than the image ({h}, {w}): give a cell of at most the image's "
                             "height and width")
        self.size, self.cell, self.p = (h, w), cell, p
        self.grid = (math.ceil(h / cell[0]), math.ceil(w / cell[1]))
        self.streams = SampleStreams(image, seed)

    def draw(self, sample: torch.Tensor) -> torch.Tensor:
        """One mask (H, W) in float64 for each row, row r from the stream of sample ``sample[r]``."""
        (gh, gw), (ch, cw), (h, w) = self.grid, self.cell, self.size
        u = self.streams.draw("uniform", sample, (gh * gw + 2,), dtype=torch.float64, device="cpu")
        kept = (u[:, :gh * gw] < self.p).to(torch.float64).view(-1, gh, gw)
        dy = (u[:, -2] * ch).long().clamp(max=ch - 1)
        dx = (u[:, -1] * cw).long().clamp(max=cw - 1)
        rows = _lerp(kept, 1, *_bilinear(dy, h, gh, (gh + 1) * ch))  # (B, H, gw)
        return _lerp(rows, 2, *_bilinear(dx, w, gw, (gw + 1) * cw))  # (B, H, W)


def _bilinear(shift: torch.Tensor, size: int, cells: int, upsampled: int):
    """Where the ``size`` pixels of a crop starting at ``shift`` (B,) fall on a grid of ``cells`` upsampled
    bilinearly to ``upsampled`` pixels (``align_corners=False``, as :func:`torch.nn.functional.interpolate`): the
    cells below and above, (B, size) each, and the weight of the one above."""
    at = ((shift[:, None] + torch.arange(size) + 0.5) * (cells / upsampled) - 0.5).clamp(min=0).to(torch.float64)
    below = at.floor().long().clamp(max=cells - 1)
    return below, (below + 1).clamp(max=cells - 1), at - below


def _lerp(grid: torch.Tensor, dim: int, below: torch.Tensor, above: torch.Tensor, weight: torch.Tensor):
    """``grid`` interpolated along ``dim`` (1 or 2) as g_below + t·(g_above − g_below): a region of equal cells
    stays exactly their value (a kept area is exactly 1, so p = 1 keeps the image as it is)."""
    if dim == 1:
        lo, hi = (grid.gather(1, i[:, :, None].expand(-1, -1, grid.shape[2])) for i in (below, above))
        return lo + weight[:, :, None] * (hi - lo)
    lo, hi = (grid.gather(2, i[:, None, :].expand(-1, grid.shape[1], -1)) for i in (below, above))
    return lo + weight[:, None, :] * (hi - lo)


@register_method("rise")
class Rise(ImageMethod, PerturbationMethod):
    """RISE (Petsiuk et al. 2018): the score-weighted mean of random smooth masks, normalised by p·K (Eq 6),
    with its per-pixel standard error (module doc).

    Options
    -------
    masks : masks per sample (default 4000, the paper's for ResNet-50); with ``tolerance``, masks per round.
    p : probability that a cell is kept, in (0, 1] (default 0.5, the paper's).
    cell : cell size in pixels, an int or (height, width) (default: the image's size / 7, rounded up: a 7 × 7 grid).
    baseline : what a dropped pixel fades to, a baseline of the image (:mod:`tribute.core.baselines`; default 0).
    tolerance : draw masks in rounds until every pixel's standard error is at most this (in units of the score).
    max_masks : at most this many masks per sample with ``tolerance`` (default 100 000).
    seed : seed of the per-sample mask streams.
    """

    returns: ClassVar[str] = "map"
    options = {
        # the image's baseline only (the other inputs of a model taking several are never masked)
        "baseline": opt.Option("zero", check_baseline, "what a dropped pixel fades to (tribute.core.baselines)"),
        "masks": opt.Option(4000, opt.integer(1), "random masks per sample (per round with tolerance=)"),
        "p": opt.Option(0.5, opt.real(0, 1, low_open=True), "probability that a cell of the grid is kept"),
        "cell": opt.Option(None, check_cell, "cell size in pixels (default: a 7 × 7 grid)"),
        "tolerance": opt.Option(None, opt.optional(opt.real(0, low_open=True)),
                                "draw masks until every pixel's standard error is at most this"),
        "max_masks": opt.Option(100_000, opt.integer(1), "most masks per sample with tolerance="),
        **INPUT_INDEX_OPTION,
    }
    example_options = {"masks": 8, "seed": 0}

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        x = x.detach()  # forward passes only: masked rows need no graph back to the caller's tensor
        image = image_of(x, o)
        if image.dim() != 4 or not image.is_floating_point():
            raise ValueError(f"rise masks images (N, C, H, W) of floats; got shape {tuple(image.shape)} and dtype "
                             f"{image.dtype}")
        if o.tolerance is not None and o.max_masks < o.masks:
            raise ValueError(f"max_masks={o.max_masks} is below masks={o.masks}, the masks of one round")
        shift = clean_scores(o.call.forward, target, x, o.batch_size).to(torch.float64)
        sampler = MaskSampler(image, o.cell, o.p, o.seed)
        baseline = make_baseline(o.baseline, image, o.baseline_options, o.seed)
        n = x.shape[0]
        sums = torch.zeros(n, 2, *image.shape[-2:], dtype=torch.float64, device=x.device)
        count = torch.zeros(n, dtype=torch.long)
        active = torch.arange(n)
        while len(active):
            sums[active.to(x.device)] += self._round(x, image, baseline, sampler, shift, target, o, active)
            count[active] += o.masks
            mean, se = _mean_and_error(sums, count, shift)
            if o.tolerance is None:
                break
            above = se.flatten(1).amax(1).cpu() > o.tolerance
            active = torch.arange(n)[above]
            if len(active) and int(count[active].max()) + o.masks > o.max_masks:
                raise RuntimeError(
                    f"rise did not reach tolerance={o.tolerance:g} within max_masks={o.max_masks} for samples "
                    f"{active.tolist()[:10]} (largest standard error {float(se.amax()):.3g}); raise max_masks or "
                    "the tolerance")
        self._report(o, "standard_error", se.unsqueeze(1))
        return mean.unsqueeze(1)

    @staticmethod
    def _round(x: torch.Tensor, image: torch.Tensor, baseline: torch.Tensor, sampler: MaskSampler,
               shift: torch.Tensor, target: Target, o: SimpleNamespace, active: torch.Tensor) -> torch.Tensor:
        """Σ over ``o.masks`` new masks of each active sample of (y − f(I), (y − f(I))²) per pixel, y = f(I ⊙ M) M / p
        (float64, (len(active), 2, H, W))."""
        def contribution(local, _):
            sample = active[local]
            at = sample.to(x.device)
            m = sampler.draw(sample).to(x.device, image.dtype).unsqueeze(1)  # (B, 1, H, W), shared by channels
            masked = image[at] * m + baseline[at] * (1 - m)
            f = score_rows(o.call.forward, target, with_image(x[at], masked, o), sample).to(torch.float64)
            y = f.view(-1, 1, 1) * m[:, 0].to(torch.float64) / o.p - shift[at].view(-1, 1, 1)
            return torch.stack([y, y * y], 1)

        return sum_per_sample(len(active), o.masks, contribution, batch_size=o.batch_size, progress=o.progress)


def sum_per_sample(n: int, k: int, contribution, *, batch_size: int, progress: bool | str = False) -> torch.Tensor:
    """Σ_j contribution(sample i, draw j) for j < k, for each of ``n`` samples, the rows taken sample-major in chunks
    of at most ``batch_size`` (as :func:`tribute.core.engine.accumulate`).  A chunk's rows of one sample are
    contiguous, so each sample's part is summed as a slice: ``index_add`` with one index repeated over a chunk's
    rows is serialised and cost more than the model's pass here (11 ms for 32 rows of 8 × 8 maps)."""
    total = None
    for rows in chunks_with_progress(n * k, batch_size, progress, unit="mask"):
        r = torch.arange(rows.start, rows.stop)
        sample = r // k
        c = contribution(sample, r % k)
        if total is None:
            total = c.new_zeros((n, *c.shape[1:]))
        owners, counts = torch.unique_consecutive(sample, return_counts=True)
        for i, part in zip(owners.tolist(), c.split(counts.tolist()), strict=True):
            total[i] += part.sum(0)
    return total


def _mean_and_error(sums: torch.Tensor, count: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The saliency (N, H, W) and its standard error from the shifted sums (module doc); one mask: error ∞."""
    k = count.to(sums.device, torch.float64).view(-1, 1, 1)
    centred = sums[:, 0] / k
    variance = ((sums[:, 1] - sums[:, 0] * centred) / (k - 1).clamp(min=1)).clamp(min=0)
    error = torch.where(k > 1, (variance / k).sqrt(), torch.inf)  # one draw says nothing of its spread
    return shift.view(-1, 1, 1) + centred, error
