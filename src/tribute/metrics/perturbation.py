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
``"auto"``: ``"sum"``, signed, for one input; see "Several inputs"), so a *pixel* (all its channels) is
removed at once; ``reduce=None`` ranks each input element alone.  With ``patch_size=p`` the units are
non-overlapping p×p patches (the last row and column of patches are smaller when p does not divide the size)
ranked by their summed attribution, as Samek et al.'s regions.  Ties are broken by position (the lower index
first, in both orders), so results are deterministic.

The removed value of each element comes from a *replacement image* computed once per input (so a removed
pixel keeps its value as more are removed): ``"mean"`` (each channel's mean over the image), ``"zero"``,
``"blur"`` (Gaussian, ``replacement_options={"sigma": s}``, default a tenth of the larger side),
``"noise"`` (uniform on the image's own [min, max], Samek et al.'s random replacement; seeded per sample by
``seed=``), ``"gaussian"`` (x + N(0, σ²)), a tensor or a callable (see :mod:`tribute.core.baselines`).

The score is ``score="probability"`` (softmax of the outputs at the target class; the default, as in both
papers' figures) or ``"logit"`` (the raw output; also allows a callable target).  Every (image, step) pair is
one row; rows go through the model in chunks of ``batch_size``, built on the fly, so a sample's curve does
not depend on its batch-mates or on the chunk size.

Several inputs
--------------
``inputs`` may be a tuple of tensors (a model taking an image and a table).  Two rules
(:mod:`tribute.metrics.perturbed`):

- ``input_index=None`` (default): the features of **all inputs are ranked jointly**, element by element
  (``reduce=None``, ``patch_size=1``; an image's pixel summed over its channels would compete with single
  features of the other inputs, so other values are an error); the attributions are a tuple, one tensor of
  its input's shape per input; ``replacement=`` is one value for all inputs or a tuple with one per input
  (``("blur", "zero")``), each resolved against its own input, and likewise ``replacement_options``.
  A fraction is a fraction of all the elements of all the inputs.
- ``input_index=k``: **only input k is perturbed**, with its own map, ``reduce=``, patches and replacement,
  exactly as if it were the model's only input and the others were forward arguments; the attributions
  are input k's (or the tuple of all, entry k used).

``forward_args=`` / ``forward_kwargs=`` go to every forward pass, each perturbed row with its own sample's
(an attention mask, lengths); ``output=`` picks the scores from a structured output (a dict, a Hugging Face
``ModelOutput``), as for the methods.

Token sequences
---------------
For integer token ids (N, T) the attributions are one value per token (N, T), e.g. from
``layer_integrated_gradients`` at the embedding with ``reduce="sum"``.  A removed token is replaced by the
baseline token ``replacement_token=`` (an id, or ``"pad"``, ``"mask"``, ``"unk"`` with ``tokenizer=``);
insertion starts from the sequence of baseline tokens.  Special tokens (``keep_tokens=`` ids, by default the
tokenizer's special tokens) are never removed nor ranked: they stay in place, and a fraction is a fraction
of each sequence's other tokens (its padding does not count).  The attention mask goes in
``forward_kwargs``.  Pixel replacements (``replacement=``) on token ids are an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import chunk_rows, default_batch_size
from ..core.reduce import check_reduce
from ..core.targets import Target
from ..core.tokens import check_baseline_token, special_ids, token_baseline, token_id
from .common import ModelInputs, as_map, model_inputs, resolve_target_in
from .perturbed import Part, select_part
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

    The target is fixed once on the clean inputs of ``view`` (``None``: the predicted class), so every
    perturbed copy of a sample is scored at the same class.  Callable targets (one score per row) need
    ``score="logit"``.  Rows are packed rows of ``view`` (:mod:`tribute.metrics.perturbed`), each scored with
    its own sample's forward arguments.
    """

    def __init__(self, view: ModelInputs, target, score: str, batch_size: int):
        opt.choice(SCORES)("score", score)
        self.score = score
        self.has_classes = True
        self.forward = view.forward
        n = view.x.shape[0]
        if callable(target) and not isinstance(target, torch.Tensor):
            if score == "probability":
                raise ValueError(
                    "score='probability' needs class-index targets (None, an int or a tensor); "
                    "use score='logit' with a callable target"
                )
            self.index = None
            self.target = Target(target, n)
        else:
            self.index = resolve_target_in(view, target, batch_size=batch_size).cpu()
            self.target = Target(self.index, n)

    def __call__(self, rows: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (R,) and predicted classes (R,) of ``rows``; ``sample[r]`` is the sample row r belongs to.

        Outputs that are not (R, classes) have no predicted class: −1 (and ``has_classes`` is False).
        """
        with torch.no_grad():
            out = self.forward(rows, sample)
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


def unit_ranks(attr_map: torch.Tensor, ids: torch.Tensor, units: int, order: str,
               excluded: torch.Tensor | None = None, tie_keys: torch.Tensor | None = None) -> torch.Tensor:
    """(N, U) position of each unit in the removal order (0 = removed first), by its summed attribution;
    ``excluded`` (N, U) units (special tokens) come after all the others, in either order.  Equal totals go in
    the order of ``tie_keys`` (N, U) when given (a random permutation per sample breaks ties at random), else
    the lower unit index first."""
    n = attr_map.shape[0]
    totals = torch.zeros(n, units, dtype=torch.float64, device=attr_map.device)
    totals.index_add_(1, ids.reshape(-1).to(attr_map.device), attr_map.reshape(n, -1).to(torch.float64))
    if excluded is not None:
        totals = totals.masked_fill(excluded.to(totals.device), -math.inf if order == "morf" else math.inf)
    if tie_keys is not None:
        # a stable sort of the units laid out in the order of their keys keeps that order among equal totals
        by_key = torch.argsort(tie_keys.to(totals.device), dim=1, stable=True)
        within = torch.sort(totals.gather(1, by_key), dim=1, descending=order == "morf", stable=True).indices
        order_idx = by_key.gather(1, within)
    else:
        order_idx = torch.sort(totals, dim=1, descending=order == "morf", stable=True).indices
    ranks = torch.empty_like(order_idx)
    ranks.scatter_(1, order_idx, torch.arange(units, device=ranks.device).expand(n, -1).contiguous())
    return ranks


def unit_counts(fractions: torch.Tensor, units) -> torch.Tensor:
    """Units removed at each fraction: round half up of fraction × U (U an int, or a tensor that broadcasts,
    e.g. (N, 1) removable units per sample)."""
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


#: ``reduce=``'s default: ``"sum"`` (pixels, channels summed) for one input; for several inputs ranked jointly
#: and for token ids, None (element by element)
AUTO = "auto"
#: the replacement each curve uses when ``replacement=None`` (floating-point inputs)
DEFAULT_REPLACEMENT = {"pixel_perturbation": "mean", "deletion": "zero", "insertion": "blur"}


def prepare(part: Part, attributions, reduce: str | None, patch_size,
            batch_size: int | None) -> tuple[torch.Tensor, int]:
    """Common checks of a metric of given attributions on the features ``part``; returns the ranking map and the
    batch size (default: from the size of the model's packed rows)."""
    a = part.attributions(attributions)
    if reduce == AUTO:
        reduce = None if part.joint or not part.x.is_floating_point() else "sum"
    check_reduce("reduce", reduce)
    if part.joint and reduce is not None:
        raise ValueError(
            f"reduce={reduce!r}: several inputs ranked jointly are ranked element by element, since an image's "
            "channels summed into a pixel would compete with single features of the other inputs; pass "
            "reduce=None, or input_index=k to rank the pixels of input k alone"
        )
    if part.joint and patch_size not in (1, (1,)):
        raise ValueError(f"patch_size={patch_size!r}: patches tile one image, so they apply with input_index=k "
                         "naming it; several inputs ranked jointly are ranked element by element")
    opt.optional(opt.integer(1))("batch_size", batch_size)
    amap = as_map(a, reduce) if reduce is not None else a
    return amap.to(part.x.device), batch_size or default_batch_size(part.view.x)


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


def removed_values(part: Part, replacement, options, seed: int | None, default: str, *, replacement_token,
                   keep_tokens, tokenizer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What each perturbed feature becomes when removed, and which features are never removed (None: all may be).

    Real-valued features take the replacement image (``replacement``, one entry per input or one for all,
    resolved against each input); token ids take the baseline token, special tokens kept in place and out of
    the ranking.
    """
    if not part.x.is_floating_point():
        if replacement is not None or options is not None:
            raise ValueError(
                f"replacement={replacement!r} makes real values (pixels, features), but {part.name} are token ids "
                f"({part.x.dtype}): a removed token is replaced by a baseline token, replacement_token= (an id, or "
                f"'pad', 'mask', 'unk' with tokenizer=)"
            )
        if replacement_token is None:
            raise ValueError(f"{part.name} are token ids ({part.x.dtype}): a removed token is replaced by a baseline "
                             "token; pass replacement_token= (an id, or 'pad', 'mask', 'unk' with tokenizer=)")
        check_baseline_token("replacement_token", replacement_token)
        keep = special_ids(tokenizer, keep_tokens)
        kept = torch.isin(part.x, torch.tensor(list(keep), dtype=part.x.dtype, device=part.x.device)) if keep else None
        return token_baseline(part.x, token_id(replacement_token, tokenizer), keep), kept
    if replacement_token is not None or keep_tokens is not None or tokenizer is not None:
        raise ValueError(f"replacement_token, keep_tokens and tokenizer apply to token ids; {part.name} are "
                         f"{part.x.dtype}: pass replacement= instead")
    spec = default if replacement is None else replacement

    def resolve(entry, t, k):
        return replacement_image(entry, t, part.entry("replacement_options", options, k), seed)
    return part.option("replacement", spec, resolve), None


def removal_order(amap: torch.Tensor, patch_size, order: str, fractions: torch.Tensor, kept: torch.Tensor | None):
    """The units of the map, their ranks and the units removed per (sample, step), (N, K+1): a fraction of
    each sample's removable units (all, or all but its special tokens)."""
    ids, units = unit_ids(tuple(amap.shape[1:]), patch_size)
    n = amap.shape[0]
    excluded = None
    if kept is not None:
        excluded = torch.zeros(n, units, dtype=torch.long, device=amap.device)
        excluded.index_add_(1, ids.reshape(-1).to(amap.device), kept.reshape(n, -1).long().to(amap.device))
        excluded = excluded > 0
    ranks = unit_ranks(amap, ids, units, order, excluded)
    if excluded is None:
        counts = unit_counts(fractions, units).expand(n, -1)
    else:
        counts = unit_counts(fractions, (units - excluded.sum(1)).cpu().view(-1, 1))
    return ids, ranks, counts


def curve_fractions(steps: int, fractions) -> torch.Tensor:
    """0 and the fractions removed at each step: ``fractions`` or k/steps."""
    if fractions is None:
        opt.integer(1)("steps", steps)
        fractions = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    else:
        fractions = check_fractions(fractions)
    return torch.cat([fractions.new_zeros(1), fractions])


# -- the curve --------------------------------------------------------------------------------------------------
def perturbation_curve(model: nn.Module, inputs, attributions, target=None, *, insert: bool, order: str,
                       replacement, replacement_options, patch_size, steps: int, fractions, score: str,
                       reduce: str | None, seed: int | None, batch_size: int | None, progress: bool | str,
                       summary: str, input_index: int | None, forward_args, forward_kwargs, output,
                       replacement_token, keep_tokens, tokenizer, curve: str) -> PerturbationCurve:
    """The shared engine of :func:`pixel_perturbation`, :func:`deletion` and :func:`insertion`, which pass it
    their own arguments by name (``**locals()`` as their first statement) and fix the rest.

    Row (i, k) is the input i with the first ``count_k`` units of its ranking taken from the end image and
    the others from the start image: start = x and end = the replacement image for removal (``insert=False``),
    the other way round for insertion.
    """
    opt.choice(ORDERS)("order", order)
    view = model_inputs(model, inputs, forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                        integers=True)
    part = select_part(view, input_index)
    amap, batch_size = prepare(part, attributions, reduce, patch_size, batch_size)
    fractions = curve_fractions(steps, fractions)
    x = part.x
    replaced, kept = removed_values(part, replacement, replacement_options, seed, DEFAULT_REPLACEMENT[curve],
                                    replacement_token=replacement_token, keep_tokens=keep_tokens, tokenizer=tokenizer)
    start, end = (replaced, x) if insert else (x, replaced)
    ids, ranks, counts = removal_order(amap, patch_size, order, fractions, kept)
    scorer = TargetScore(view, target, score, batch_size)

    def rows(sample, step):
        i = sample.to(x.device)
        mask = element_mask(ranks[i], ids, counts[sample, step])
        return scorer(part.rows(torch.where(mask, end[i], start[i]), sample), sample)

    curve_values, pred = evaluate_rows(x.shape[0], len(fractions), rows, batch_size=batch_size, progress=progress)
    return finish(curve_values, pred, fractions, scorer, order, summary)


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
def pixel_perturbation(model: nn.Module, inputs, attributions, target=None, *, order: str = "morf",
                       replacement=None, replacement_options=None, patch_size=1, steps: int = 20, fractions=None,
                       score: str = "probability", reduce: str | None = AUTO, seed: int | None = None,
                       batch_size: int | None = None, progress: bool | str = False, input_index: int | None = None,
                       forward_args=None, forward_kwargs=None, output=None, replacement_token=None,
                       keep_tokens=None, tokenizer=None) -> PerturbationCurve:
    """MoRF or LeRF perturbation curve and its AOPC (Samek et al. 2017, Eq 12).

    Parameters
    ----------
    model, inputs, attributions, target
        The model (eval mode), a batch of inputs (a tensor, or a tuple of tensors for a model with several),
        their attributions (the input's shape or (N, 1, H, W) maps; a tuple for several inputs) and the class
        explained (``None``: the predicted class; see :func:`resolve_target`).
    order : ``"morf"`` (most relevant first, default) or ``"lerf"`` (least relevant first).
    replacement, replacement_options, seed
        What a removed element becomes (module doc); default (None) ``"mean"``, each channel's mean over the
        image.  With several inputs, a tuple gives one entry per input.
    patch_size : 1 (pixels, default) or p / (p_h, p_w): non-overlapping patches ranked by summed attribution.
    steps : K, the curve removes k/K of the units at step k = 1..K (default 20, i.e. 5 % per step).
    fractions : instead of ``steps``, the fractions removed at each step: strictly increasing, in (0, 1].
    score : ``"probability"`` (default) or ``"logit"``.
    reduce : how channels become a map for the ranking (default ``"auto"``: ``"sum"``, or None for several
        inputs ranked jointly and for token ids); ``None`` ranks each element.
    batch_size : rows per pass through the model (default: from the input size); ``progress``: a progress bar.
    input_index : with several inputs, perturb input k alone (the others keep their values); default None: all
        inputs, ranked jointly element by element (module doc, "Several inputs").
    forward_args, forward_kwargs, output
        Extra arguments of every forward pass (each perturbed row gets its sample's) and which part of a
        structured output holds the scores, as for the methods.
    replacement_token, keep_tokens, tokenizer
        For token ids (module doc, "Token sequences"): the id a removed token becomes (or ``"pad"``,
        ``"mask"``, ``"unk"`` with ``tokenizer=``), and the ids never removed (default: the tokenizer's
        special tokens, else none).

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
    return perturbation_curve(**locals(), insert=False, summary="aopc", curve="pixel_perturbation")


@register_metric("deletion", takes=ATTRIBUTIONS, better="lower")
def deletion(model: nn.Module, inputs, attributions, target=None, *, replacement=None, replacement_options=None,
             patch_size=1, steps: int = 20, fractions=None, score: str = "probability", reduce: str | None = AUTO,
             seed: int | None = None, batch_size: int | None = None, progress: bool | str = False,
             input_index: int | None = None, forward_args=None, forward_kwargs=None, output=None,
             replacement_token=None, keep_tokens=None, tokenizer=None) -> PerturbationCurve:
    """Deletion AUC (Petsiuk et al. 2018): remove the most relevant pixels first, area under the score curve.

    Options as in :func:`pixel_perturbation`; the replacement defaults (None) to ``"zero"`` (RISE's black
    pixels); token ids become ``replacement_token``.  ``score`` of the result is the AUC (N,) over the removed
    fraction in [0, 1]: lower is better.
    """
    return perturbation_curve(**locals(), insert=False, order="morf", summary="auc", curve="deletion")


@register_metric("insertion", takes=ATTRIBUTIONS, better="higher")
def insertion(model: nn.Module, inputs, attributions, target=None, *, replacement=None, replacement_options=None,
              patch_size=1, steps: int = 20, fractions=None, score: str = "probability", reduce: str | None = AUTO,
              seed: int | None = None, batch_size: int | None = None, progress: bool | str = False,
              input_index: int | None = None, forward_args=None, forward_kwargs=None, output=None,
              replacement_token=None, keep_tokens=None, tokenizer=None) -> PerturbationCurve:
    """Insertion AUC (Petsiuk et al. 2018): from a blurred copy, put back the most relevant pixels first.

    Options as in :func:`pixel_perturbation`; the start image is ``replacement`` (default (None) ``"blur"``,
    σ from ``replacement_options``, default a tenth of the larger side), for token ids the sequence of
    ``replacement_token`` (special tokens in place).  ``fractions`` are the fractions inserted.  ``score`` of
    the result is the AUC (N,) over the inserted fraction in [0, 1]: higher is better.
    """
    return perturbation_curve(**locals(), insert=True, order="morf", summary="auc", curve="insertion")


__all__ = ["PerturbationCurve", "deletion", "insertion", "pixel_perturbation"]
