"""Pixel perturbation: MoRF and LeRF curves with AOPC, insertion and deletion AUC.

Given an attribution map, features are *removed* (replaced by a reference value) in the order the map
ranks them, and the target's score is recorded after each step.

- **MoRF / LeRF** (Samek et al. 2017, "Evaluating the visualization of what a deep neural network has
  learned", §III): x⁽⁰⁾ = x, x⁽ᵏ⁾ = x⁽ᵏ⁻¹⁾ with the k-th region (most relevant first, or least relevant first)
  replaced.  The area over the perturbation curve, Eq (12) for one image,

      AOPC = 1/(L+1) Σ_{k=0}^{L} ( f(x⁽⁰⁾) − f(x⁽ᵏ⁾) ),

  is large when the ranking finds what the model needs first (MoRF: higher is better; LeRF: lower).
- **Deletion / insertion** (Petsiuk et al. 2018, RISE, §4.1): deletion removes pixels most relevant first
  from x (to zero, by default); insertion starts from a blurred copy of x and puts the most relevant pixels
  back first.  The score is the area under the curve of the class probability against the fraction of
  pixels removed (inserted): low for deletion and high for insertion when the map is faithful.

Features are ranked by a map: (N, C, H, W) attributions are reduced over channels by ``reduce=`` (default
``"sum"``, signed), so a *pixel* (all its channels) is removed at once; ``reduce=None`` ranks each input
element alone.  With ``patch_size=p`` the units are non-overlapping p×p patches (the last row and column of
patches are smaller when p does not divide the size) ranked by their summed attribution, as Samek et al.'s
regions.  Ties are broken by position (the lower index first, in both orders), so results are
deterministic.

The removed value of each element comes from a *replacement image* computed once per input (so a removed
pixel keeps its value as more are removed): ``"mean"`` (each channel's mean over the image), ``"zero"``,
``"blur"`` (Gaussian, ``replacement_options={"sigma": s}``, default a tenth of the larger side),
``"noise"`` (uniform on the image's own [min, max], Samek et al.'s random replacement; seeded per sample by
``seed=``), ``"gaussian"`` (x + N(0, σ²)), a tensor or a callable (see :mod:`tribute.core.baselines`).

The score is ``score="probability"`` (softmax of the outputs at the target class; the default, as in both
papers' figures) or ``"logit"`` (the raw output; also allows a callable target).  Every (image, step) pair is
one row; rows go through the model in chunks of ``batch_size``, built on the fly, so a sample's curve does
not depend on its batch-mates or on the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import Forward, check_inputs, check_model, chunk_rows, default_batch_size
from ..core.reduce import check_reduce
from ..core.targets import Target
from .common import as_map, check_attributions, resolve_target
from .registry import ATTRIBUTIONS, register_metric

SCORES = ("probability", "logit")
ORDERS = ("morf", "lerf")


# -- results ----------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class PerturbationCurve:
    """One curve per sample and its summary.

    Attributes
    ----------
    score : (N,) the metric's summary: AOPC for MoRF/LeRF and ROAD, the AUC for insertion and deletion.
    curve : (N, K+1) the target's score after each step; column 0 is the unperturbed start.
    fractions : (K+1,) fraction of units removed (inserted) at each column, starting at 0.
    predictions : (N, K+1) the predicted class at each step (None for outputs that are not (N, classes)).
    target : (N,) the class scored (None for a callable target).
    order : ``"morf"`` or ``"lerf"``.
    """

    score: torch.Tensor
    curve: torch.Tensor
    fractions: torch.Tensor
    predictions: torch.Tensor | None
    target: torch.Tensor | None
    order: str

    @property
    def aopc(self) -> torch.Tensor:
        """(N,) Samek et al. Eq (12) for each sample: the mean over the K+1 points of f(x⁽⁰⁾) − f(x⁽ᵏ⁾)."""
        return (self.curve[:, :1] - self.curve).mean(1)

    @property
    def auc(self) -> torch.Tensor:
        """(N,) trapezoidal area under the curve against ``fractions``."""
        return torch.trapezoid(self.curve, self.fractions.to(self.curve.dtype), dim=1)

    @property
    def correct(self) -> torch.Tensor:
        """(N, K+1) whether the prediction still equals the target (Rong et al.'s accuracy, per sample)."""
        if self.predictions is None or self.target is None:
            raise ValueError("correct needs class-index targets and (N, classes) outputs")
        return self.predictions == self.target.view(-1, 1)


# -- scoring ----------------------------------------------------------------------------------------------------
class TargetScore:
    """S(x) for rows of perturbed inputs: the target's probability or logit, with the prediction.

    The target is fixed once on the clean ``inputs`` (``None``: the predicted class), so every perturbed copy
    of a sample is scored at the same class.  Callable targets (one score per row) need ``score="logit"``.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, target, score: str, batch_size: int):
        opt.choice(SCORES)("score", score)
        self.score = score
        self.has_classes = True
        self.forward = Forward(model)
        n = inputs.shape[0]
        if callable(target) and not isinstance(target, torch.Tensor):
            if score == "probability":
                raise ValueError(
                    "score='probability' needs class-index targets (None, an int or a tensor); "
                    "use score='logit' with a callable target"
                )
            self.index = None
            self.target = Target(target, n)
        else:
            self.index = resolve_target(model, inputs, target, batch_size=batch_size).cpu()
            self.target = Target(self.index, n)

    def __call__(self, rows: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (R,) and predicted classes (R,) of ``rows``; ``sample[r]`` is the sample row r belongs to.

        Outputs that are not (R, classes) have no predicted class: −1 (and ``has_classes`` is False).
        """
        with torch.no_grad():
            out = self.forward(rows)
            scored = torch.softmax(out, dim=1) if self.score == "probability" else out
            s = self.target.scores(scored, sample)
        self.has_classes = out.dim() == 2
        pred = out.argmax(1) if self.has_classes else torch.full_like(sample, -1)
        return s, pred


def evaluate_rows(n: int, k: int, fn: Callable, *, batch_size: int, progress: bool | str = False,
                  desc: str = "rows") -> list[torch.Tensor]:
    """``fn(sample, step)`` over the n·k rows (sample-major) in chunks of at most ``batch_size`` rows.

    ``fn`` gets two index tensors for a chunk and returns a tuple of per-row tensors; the results come back
    stacked as (n, k, ...) tensors, in the same order.
    """
    parts: list[list[torch.Tensor]] | None = None
    chunks = chunk_rows(n * k, batch_size)
    bar = None
    if progress and len(chunks) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * k, desc=progress if isinstance(progress, str) else desc, unit="row", leave=False)
    try:
        for rows in chunks:
            r = torch.arange(rows.start, rows.stop)
            out = fn(r // k, r % k)
            if parts is None:
                parts = [[] for _ in out]
            for p, o in zip(parts, out, strict=True):
                p.append(o)
            if bar is not None:
                bar.update(len(r))
    finally:
        if bar is not None:
            bar.close()
    return [torch.cat(p).view(n, k, *p[0].shape[1:]) for p in parts]


# -- units: pixels or patches, and their ranking ----------------------------------------------------------------
def _patch(patch_size, spatial_dims: int) -> tuple[int, ...]:
    if isinstance(patch_size, int) and not isinstance(patch_size, bool):
        patch = (patch_size,) * spatial_dims
    elif isinstance(patch_size, Sequence) and all(isinstance(p, int) and not isinstance(p, bool) for p in patch_size):
        patch = tuple(patch_size)
    else:
        raise TypeError(f"patch_size must be an int or a tuple of ints, got {patch_size!r}")
    if len(patch) != spatial_dims or any(p < 1 for p in patch):
        raise ValueError(
            f"patch_size must be >= 1 with one size per spatial dim ({spatial_dims}); got {patch_size!r}"
        )
    return patch


def unit_ids(map_shape: tuple[int, ...], patch_size=1) -> tuple[torch.Tensor, int]:
    """The unit (pixel, patch or feature) of each element of one sample's attribution map, and their number U.

    ``map_shape`` is (D,) for flat inputs (a unit per feature) or (C', *spatial): C' = 1 for a map (a unit is a
    pixel or patch with all its channels, by broadcasting over the input's channels), C' = C for input-shaped
    attributions ranked element by element (``reduce=None``; patches then lie within one channel).
    Returns a long tensor of ``map_shape`` with values in [0, U).
    """
    if len(map_shape) == 1:
        if patch_size not in (1, (1,)):
            raise ValueError("patch_size applies to inputs with spatial dims; flat (N, D) inputs have none")
        return torch.arange(map_shape[0]), map_shape[0]
    channels, spatial = map_shape[0], map_shape[1:]
    patch = _patch(patch_size, len(spatial))
    grid = [math.ceil(s / p) for s, p in zip(spatial, patch, strict=True)]
    coords = torch.meshgrid(*[torch.arange(s) // p for s, p in zip(spatial, patch, strict=True)], indexing="ij")
    pid = torch.zeros(spatial, dtype=torch.long)
    for c, g in zip(coords, grid, strict=True):
        pid = pid * g + c
    per_channel = math.prod(grid)
    ids = torch.arange(channels).view(-1, *([1] * len(spatial))) * per_channel + pid
    return ids, channels * per_channel


def unit_ranks(attr_map: torch.Tensor, ids: torch.Tensor, units: int, order: str) -> torch.Tensor:
    """(N, U) position of each unit in the removal order (0 = removed first), by its summed attribution."""
    n = attr_map.shape[0]
    totals = torch.zeros(n, units, dtype=torch.float64, device=attr_map.device)
    totals.index_add_(1, ids.reshape(-1).to(attr_map.device), attr_map.reshape(n, -1).to(torch.float64))
    order_idx = torch.sort(totals, dim=1, descending=order == "morf", stable=True).indices
    ranks = torch.empty_like(order_idx)
    ranks.scatter_(1, order_idx, torch.arange(units, device=ranks.device).expand(n, -1).contiguous())
    return ranks


def unit_counts(fractions: torch.Tensor, units: int) -> torch.Tensor:
    """Units removed at each fraction: round half up of fraction × U."""
    return torch.floor(fractions.to(torch.float64) * units + 0.5).long()


def element_mask(ranks: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(R, *map_shape) mask: the elements whose unit is among the first ``counts[r]`` of row r's ranking.

    A (1, H, W) map's mask broadcasts over the input's channels.
    """
    flat = ids.reshape(-1).to(ranks.device)
    return (ranks[:, flat] < counts.to(ranks.device).view(-1, 1)).view(-1, *ids.shape)


# -- option checks ----------------------------------------------------------------------------------------------
def check_fractions(fractions, *, name: str = "fractions", closed: bool = True) -> torch.Tensor:
    """A strictly increasing sequence in (0, 1] (``closed``) or (0, 1), as float64."""
    if isinstance(fractions, torch.Tensor):
        fractions = fractions.tolist()
    if isinstance(fractions, (int, float)) and not isinstance(fractions, bool):
        fractions = [fractions]
    if not isinstance(fractions, Sequence) or len(fractions) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {fractions!r}")
    vals = []
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or f != f:
            raise TypeError(f"{name} must hold real numbers, got {f!r}")
        vals.append(float(f))
    interval = "(0, 1]" if closed else "(0, 1)"
    bad = [f for f in vals if not (0 < f < 1 or (closed and f == 1))]
    if bad:
        raise ValueError(f"{name} must lie in {interval}; got {bad[0]!r}")
    if any(b <= a for a, b in zip(vals[:-1], vals[1:], strict=True)):
        raise ValueError(f"{name} must be strictly increasing, got {vals}")
    return torch.tensor(vals, dtype=torch.float64)


def prepare(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, reduce: str | None,
            batch_size: int | None) -> tuple[torch.Tensor, int]:
    """Common checks of a metric of given attributions; returns the ranking map and the batch size."""
    check_model(model)
    check_inputs(model, inputs)
    a = check_attributions(inputs, attributions)
    check_reduce("reduce", reduce)
    opt.optional(opt.integer(1))("batch_size", batch_size)
    amap = as_map(a, reduce) if reduce is not None else a
    return amap.to(inputs.device), batch_size or default_batch_size(inputs)


def replacement_image(replacement, inputs: torch.Tensor, options: dict | None, seed: int | None) -> torch.Tensor:
    """The fully replaced copy of ``inputs`` (``"noise"`` is uniform noise on each image's own range)."""
    spec = "uniform" if isinstance(replacement, str) and replacement == "noise" else replacement
    try:
        spec = check_baseline("replacement", spec)
    except ValueError:
        raise ValueError(
            "replacement must be 'mean', 'zero', 'blur', 'noise', 'uniform', 'gaussian', a number, a tensor or "
            f"a callable; got {replacement!r}"
        ) from None
    opt.optional(opt.integer(0))("seed", seed)
    return make_baseline(spec, inputs, options, seed).detach()


# -- the curve --------------------------------------------------------------------------------------------------
def perturbation_curve(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target=None, *,
                       insert: bool, order: str, replacement, replacement_options: dict | None, patch_size,
                       steps: int, fractions, score: str, reduce: str | None, seed: int | None,
                       batch_size: int | None, progress: bool | str, summary: str) -> PerturbationCurve:
    """The shared engine of :func:`pixel_perturbation`, :func:`deletion` and :func:`insertion`, which pass it
    their own arguments by name (``**locals()`` as their first statement) and fix the rest.

    Row (i, k) is the input i with the first ``count_k`` units of its ranking taken from the end image and
    the others from the start image: start = x and end = the replacement image for removal (``insert=False``),
    the other way round for insertion.
    """
    opt.choice(ORDERS)("order", order)
    amap, batch_size = prepare(model, inputs, attributions, reduce, batch_size)
    if fractions is None:
        opt.integer(1)("steps", steps)
        fractions = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    else:
        fractions = check_fractions(fractions)
    fractions = torch.cat([fractions.new_zeros(1), fractions])
    x = inputs.detach()
    replaced = replacement_image(replacement, x, replacement_options, seed)
    start, end = (replaced, x) if insert else (x, replaced)
    ids, units = unit_ids(tuple(amap.shape[1:]), patch_size)
    ranks = unit_ranks(amap, ids, units, order)
    counts = unit_counts(fractions, units)
    scorer = TargetScore(model, x, target, score, batch_size)

    def rows(sample, step):
        i = sample.to(x.device)
        mask = element_mask(ranks[i], ids, counts[step])
        return scorer(torch.where(mask, end[i], start[i]), sample)

    curve, pred = evaluate_rows(x.shape[0], len(fractions), rows, batch_size=batch_size, progress=progress)
    return finish(curve, pred, fractions, scorer, order, summary)


def finish(curve: torch.Tensor, pred: torch.Tensor, fractions: torch.Tensor, scorer: TargetScore, order: str,
           summary: str) -> PerturbationCurve:
    """The result object, with ``score`` the AOPC or the AUC of the curves."""
    result = PerturbationCurve(
        score=curve.new_zeros(0), curve=curve, fractions=fractions, order=order, target=scorer.index,
        predictions=pred if scorer.has_classes else None,
    )
    result.score = result.aopc if summary == "aopc" else result.auc
    return result


@register_metric("aopc_morf", takes=ATTRIBUTIONS, better="higher", options={"order": "morf"})
@register_metric("aopc_lerf", takes=ATTRIBUTIONS, better="lower", options={"order": "lerf"})
def pixel_perturbation(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target=None, *,
                       order: str = "morf", replacement="mean", replacement_options: dict | None = None,
                       patch_size=1, steps: int = 20, fractions=None, score: str = "probability",
                       reduce: str | None = "sum", seed: int | None = None, batch_size: int | None = None,
                       progress: bool | str = False) -> PerturbationCurve:
    """MoRF or LeRF perturbation curve and its AOPC (Samek et al. 2017, Eq 12).

    Parameters
    ----------
    model, inputs, attributions, target
        The model (eval mode), a batch of inputs, their attributions (the input's shape or (N, 1, H, W)
        maps) and the class explained (``None``: the predicted class; see :func:`resolve_target`).
    order : ``"morf"`` (most relevant first, default) or ``"lerf"`` (least relevant first).
    replacement, replacement_options, seed
        What a removed element becomes (module doc); default ``"mean"``, each channel's mean over the image.
    patch_size : 1 (pixels, default) or p / (p_h, p_w): non-overlapping patches ranked by summed attribution.
    steps : K, the curve removes k/K of the units at step k = 1..K (default 20, i.e. 5 % per step).
    fractions : instead of ``steps``, the fractions removed at each step: strictly increasing, in (0, 1].
    score : ``"probability"`` (default) or ``"logit"``.
    reduce : how channels become a map for the ranking (default ``"sum"``); ``None`` ranks each element.
    batch_size : rows per pass through the model (default: from the input size); ``progress``: a progress bar.

    Returns
    -------
    PerturbationCurve
        ``score`` = AOPC (N,): higher means a steeper MoRF drop (better); for LeRF, lower is better.

    Notes
    -----
    The replacement decides what "removing" means.  A salience map measured against a baseline (gradient ×
    input and IG against 0) is tested consistently by removal to that baseline (``replacement="zero"``); with
    ``"mean"``, replacing a dark pixel of positive attribution by the grey mean can *raise* the score.  On the
    Fashion-MNIST fixture the signed gradient's MoRF AOPC is above a random map's with ``"zero"`` and below it
    with ``"mean"`` (tests/test_metrics_perturbation.py).
    """
    return perturbation_curve(**locals(), insert=False, summary="aopc")  # its arguments, as given


@register_metric("deletion", takes=ATTRIBUTIONS, better="lower")
def deletion(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target=None, *,
             replacement="zero", replacement_options: dict | None = None, patch_size=1, steps: int = 20,
             fractions=None, score: str = "probability", reduce: str | None = "sum", seed: int | None = None,
             batch_size: int | None = None, progress: bool | str = False) -> PerturbationCurve:
    """Deletion AUC (Petsiuk et al. 2018): remove the most relevant pixels first, area under the score curve.

    Options as in :func:`pixel_perturbation`; the replacement defaults to ``"zero"`` (RISE's black pixels).
    ``score`` of the result is the AUC (N,) over the removed fraction in [0, 1]: lower is better.
    """
    return perturbation_curve(**locals(), insert=False, order="morf", summary="auc")


@register_metric("insertion", takes=ATTRIBUTIONS, better="higher")
def insertion(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target=None, *,
              replacement="blur", replacement_options: dict | None = None, patch_size=1, steps: int = 20,
              fractions=None, score: str = "probability", reduce: str | None = "sum", seed: int | None = None,
              batch_size: int | None = None, progress: bool | str = False) -> PerturbationCurve:
    """Insertion AUC (Petsiuk et al. 2018): from a blurred copy, put back the most relevant pixels first.

    Options as in :func:`pixel_perturbation`; the start image is ``replacement`` (default ``"blur"``, σ from
    ``replacement_options``, default a tenth of the larger side).  ``fractions`` are the fractions inserted.
    ``score`` of the result is the AUC (N,) over the inserted fraction in [0, 1]: higher is better.
    """
    return perturbation_curve(**locals(), insert=True, order="morf", summary="auc")


__all__ = ["PerturbationCurve", "deletion", "insertion", "pixel_perturbation"]
