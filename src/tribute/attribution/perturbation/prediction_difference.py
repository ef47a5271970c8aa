"""Prediction difference analysis: the evidence a window of features gives for the class, measured by how the
class probability drops when the window is resampled (Robnik-Šikonja & Kononenko 2008; Zintgraf, Cohen, Adel &
Welling 2017, "Visualizing Deep Neural Network Decisions: Prediction Difference Analysis", ICLR, §2–3).

For a window i (a box of ``window`` features sliding by ``stride``) the weight of evidence for class c is

    WE_i(c | x) = log₂ odds(c | x) − log₂ odds(c | x \\ i),    odds(p) = p / (1 − p),

where p(c | x \\ i) = Σ_{x̃_i} p(x̃_i) p(c | x with window i set to x̃_i) is estimated by *marginal sampling*: the
window's values are taken from the same window of ``samples`` references (``references=``, a tensor of inputs,
e.g. training images), drawn uniformly with replacement from each sample's seeded stream, and the probabilities
averaged (``samples=None``: every reference once, the exact average over the reference set, no randomness).  A
positive WE says the window's actual values support c, a negative one that they speak against it.  Each feature
gets the average WE of the windows that contain it (Zintgraf et al.'s Algorithm 1).

Probabilities are the softmax of the model's outputs (``probabilities="softmax"``) or the outputs themselves
(``"outputs"``, for a model that already outputs probabilities; checked to lie in [0, 1]).  With
``training_size=N`` both probabilities take the Laplace correction p ← (p·N + 1) / (N + K), K the number of
classes and N the number of training examples (Robnik-Šikonja & Kononenko 2008; Zintgraf et al. 2017), which
keeps the log-odds finite; without it a probability of exactly 0 or 1 is an error that says so.  A callable
target receives the probabilities (N, K) and returns one probability per row (e.g. ``lambda p: p[:, 1]``, or the
sum of a group of classes): the WE is then that event's evidence, with the same correction (K the model's classes).

Windows: a box of ``window`` features (a tuple with one size per dim of a sample, or an int for every dim) sliding
by ``stride`` (an int or a tuple).  In each dim the windows start at 0, stride, 2·stride, …, and one more window
ends at the border when the stride does not reach it, so every feature is covered; a stride that would leave a gap
between two windows (larger than the window) is refused, while a window spanning a whole dim has no gap (an int
stride 4 with the window (3, 4, 4) on RGB images is fine).  The default window spans every channel of an image
(C, H, W) and 4 × 4 pixels (fewer for a smaller image), and is one feature elsewhere (Robnik-Šikonja &
Kononenko's one feature at a time); the default stride is 1 (every position, as Zintgraf et al.).
With several inputs each input has its own windows (``window`` and ``stride`` then take one entry per input) and
its own references (a tuple); token ids are resampled from reference sequences like any other values.

**Standard error.**  With ``samples=`` an int the result estimates the one every reference once would give
(``samples=None``, exact over the reference set), and ``explainer.standard_error`` (the attribution's structure)
says how precisely: each window's WE is a smooth function of the mean of its S draws, so to first order (the delta
method) Var(WE_w) = L'(q̄)² · s²/S (L = log₂ odds, q̄ the mean probability, Laplace-corrected, s² the draws'
sample variance); the windows draw independently, so a feature's average over the n windows containing it has
variance Σ_w Var(WE_w) / n².  It ignores the O(1/S) bias of the log-odds of a mean.  ``samples=None``: None (exact).

Not implemented: Zintgraf et al.'s *conditional* sampling (a window drawn from a Gaussian conditioned on the pixels
around it, fitted on the data) — ``sampling="conditional"`` is refused with that reason.

Every perturbed row is built on the fly and sent through the model in chunks of ``batch_size`` under
:func:`torch.inference_mode`; a sample's draws come from streams keyed by its own values (each input's by that
input), so its result alone equals its row in any batch, at any ``batch_size``.  A window whose resampled values
all equal the sample's own has WE exactly 0.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch

from ...core import options as opt
from ...core.engine import Forward, chunks_with_progress
from ...core.randomness import SampleStreams
from ...core.registry import register as register_method
from ...core.targets import Target
from .base import PerturbationMethod

#: the default window's size in an image's two spatial dims
DEFAULT_PIXELS = 4
CONDITIONAL = ("Zintgraf et al.'s conditional sampling (a window drawn from a Gaussian conditioned on the pixels "
               "around it) is not implemented; sampling='marginal' draws windows from the references")


def check_references(name: str, v: Any) -> Any:
    if v is not None and not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of reference inputs (M, ...) (a tuple of them, one per input, for "
                        f"a model taking several), got {type(v).__name__}")
    return v


def check_sampling(name: str, v: Any) -> str:
    if v == "conditional":
        raise ValueError(f"{name}='conditional': {CONDITIONAL}")
    if v != "marginal":
        raise ValueError(f"{name} must be 'marginal', got {v!r}")
    return v


def check_sizes(name: str, v: Any) -> Any:
    """A window or stride: None, an int, a tuple of ints (one per dim), or a tuple of those (one per input)."""
    def one(e):
        return e is None or (isinstance(e, int) and not isinstance(e, bool)) or (
            isinstance(e, tuple) and e and all(isinstance(d, int) and not isinstance(d, bool) for d in e))
    if not (one(v) or (isinstance(v, tuple) and all(one(e) for e in v))):
        raise TypeError(f"{name} must be an int, a tuple of ints (one per dim of a sample), a tuple of those (one "
                        f"per input) or None, got {v!r}")
    return v


class WindowsOfInput(NamedTuple):
    """One input's windows: its sample ``shape``, the index of its ``first`` window, the ``grid`` of window positions
    per dim and, per dim, which positions each window covers (``member[d]``: (grid[d], shape[d]) bool)."""

    shape: tuple[int, ...]
    first: int
    grid: tuple[int, ...]
    member: list[torch.Tensor]

    @property
    def count(self) -> int:
        return math.prod(self.grid)


class SlidingWindows:
    """The windows of every input of the packed rows: boxes of ``window`` sliding by ``stride`` (module doc),
    numbered input by input, each input's in row-major order of their positions."""

    def __init__(self, shapes: tuple[tuple[int, ...], ...], windows: tuple, strides: tuple):
        self.parts: list[WindowsOfInput] = []
        first = 0
        for k, (shape, size, stride) in enumerate(zip(shapes, windows, strides, strict=True)):
            member = [_membership(s, w, t, k, d) for d, (s, w, t) in enumerate(zip(shape, size, stride, strict=True))]
            part = WindowsOfInput(tuple(shape), first, tuple(m.shape[0] for m in member), member)
            self.parts.append(part)
            first += part.count
        self.count = first

    def mask(self, w: torch.Tensor) -> torch.Tensor:
        """(len(w), D) bool: the packed features of window ``w[r]`` in row r."""
        out = []
        for part in self.parts:
            shape, local = part.shape, w - part.first
            inside = (local >= 0) & (local < part.count)
            coords = torch.unravel_index(local.clamp(0, part.count - 1), part.grid)
            box = inside.view(-1, *[1] * len(shape))
            for d, (m, c) in enumerate(zip(part.member, coords, strict=True)):
                box = box & m[c].view(-1, *[1] * d, shape[d], *[1] * (len(shape) - d - 1))
            out.append(box.reshape(len(w), -1))
        return torch.cat(out, 1)

    def spread(self, values: torch.Tensor, *, power: int = 1) -> torch.Tensor:
        """(N, D): each feature's sum of the per-window ``values`` (N, W) over the windows containing it, divided by
        their count (their average) or, with ``power=2``, by its square (the variance of that average when
        ``values`` are the windows' independent variances)."""
        out = []
        for part in self.parts:
            v = values[:, part.first:part.first + part.count].reshape(-1, *part.grid)
            counts = torch.ones((), dtype=values.dtype)
            for m in part.member:  # the boxes factor over the dims: contract one grid dim at a time
                m = m.to(values.device, values.dtype)
                v = torch.tensordot(v, m, dims=([1], [0]))
                counts = counts.unsqueeze(-1) * m.sum(0).to(counts.device)
            out.append((v / counts.to(v.device) ** power).reshape(values.shape[0], -1))
        return torch.cat(out, 1)


def _membership(size: int, window: int, stride: int, k: int, d: int) -> torch.Tensor:
    """(windows, size) bool: which of a dim's ``size`` positions each window along it covers."""
    if not 1 <= window <= size:
        raise ValueError(f"window size {window} in dim {d} of input {k} must be in [1, {size}] (the input's size "
                         "there): a window larger than the input")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride} in dim {d} of input {k}")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)  # one more window ends at the border
    if any(b - a > window for a, b in zip(starts[:-1], starts[1:], strict=True)):
        raise ValueError(f"stride {stride} > window {window} in dim {d} of input {k} leaves features outside every "
                         "window, which have no weight of evidence: give a stride of at most the window")
    at = torch.arange(size)
    s = torch.tensor(starts)[:, None]
    return (at >= s) & (at < s + window)


def _default_window(shape: tuple[int, ...], floating: bool) -> tuple[int, ...]:
    if len(shape) == 3 and floating:  # an image (C, H, W): every channel, 4 × 4 pixels
        return (shape[0], min(DEFAULT_PIXELS, shape[1]), min(DEFAULT_PIXELS, shape[2]))
    return (1,) * len(shape)


def _per_input(name: str, value: Any, count: int) -> tuple:
    """``value`` as one entry per input: several inputs need a tuple of entries (or None)."""
    if count == 1:
        return (value,)
    if value is None or isinstance(value, int):
        return (value,) * count
    if len(value) != count:
        raise ValueError(f"{name} for a model taking {count} inputs must be a tuple with one entry per input (an int, "
                         f"a tuple of ints or None), got {value!r}")
    return value


def _windows(window: Any, stride: Any, shapes: tuple[tuple[int, ...], ...], floating: bool) -> SlidingWindows:
    """The call's windows from the options ``window`` and ``stride`` (None: the defaults of the module doc)."""
    sizes, steps = _per_input("window", window, len(shapes)), _per_input("stride", stride, len(shapes))
    return SlidingWindows(
        shapes,
        tuple(_default_window(s, floating) if w is None else _sizes("window", w, s, k)
              for k, (w, s) in enumerate(zip(sizes, shapes, strict=True))),
        tuple(_sizes("stride", 1 if t is None else t, s, k)
              for k, (t, s) in enumerate(zip(steps, shapes, strict=True))))


def _sizes(name: str, entry: Any, shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    if isinstance(entry, int):
        return (entry,) * len(shape)
    if len(entry) != len(shape):
        raise ValueError(f"{name} {entry} has {len(entry)} sizes but a sample of input {k} has {len(shape)} dims "
                         f"{shape}")
    return entry


class Probabilities:
    """p(c | row): the target's probability from the model's class probabilities, in float64, without gradients
    (module doc: softmax of the outputs or the outputs themselves; a callable target reads the probabilities)."""

    def __init__(self, forward: Forward, target: Target, mode: str):
        self.forward, self.target, self.mode = forward, target, mode
        self.classes = 0

    def table(self, rows: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """(len(rows), K) class probabilities."""
        with torch.inference_mode():
            out = self.forward(rows, sample)
        if out.dim() != 2:
            raise ValueError(f"prediction_difference needs class scores of shape (N, classes), got {tuple(out.shape)} "
                             "(pick them from a structured output with output=)")
        self.classes = out.shape[1]
        out = out.to(torch.float64)
        if self.mode == "softmax":
            return out.softmax(1)
        if bool((out < 0).any() or (out > 1).any()):
            raise ValueError(f"probabilities='outputs' reads the model's outputs as probabilities, but they lie in "
                             f"[{float(out.min()):.4g}, {float(out.max()):.4g}]: use probabilities='softmax' for a "
                             "model that outputs logits")
        return out

    def __call__(self, rows: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return self.score(self.table(rows, sample), sample)

    def score(self, table: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The target's probability (len(table),) from the class probabilities ``table``."""
        p = self.target.scores(table, sample).to(torch.float64)
        if self.target.fn is not None and bool((p < 0).any() or (p > 1).any()):
            raise ValueError("a callable target of prediction_difference receives the class probabilities (N, K) and "
                             f"must return a probability per row; it returned values in [{float(p.min()):.4g}, "
                             f"{float(p.max()):.4g}]")
        return p

    def clean(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """p(c | x) of the unperturbed samples; fixes ``target=None`` to the predicted classes from the same pass."""
        sample = self.forward.samples_in_order(x.shape[0])
        table = torch.cat([self.table(c, s) for c, s in zip(x.split(batch_size), sample.split(batch_size),
                                                             strict=True)])
        self.target.resolve(table)
        return self.score(table, sample)


def weight_of_evidence(p: torch.Tensor, without: torch.Tensor, classes: int, training_size: int | None) -> torch.Tensor:
    """WE = log₂ odds(p) − log₂ odds(p without the window), (N, W), after the Laplace correction when
    ``training_size`` is given (module doc)."""
    p = p[:, None]
    if training_size is not None:
        p, without = ((q * training_size + 1) / (training_size + classes) for q in (p, without))
    elif bool(((p <= 0) | (p >= 1)).any() or ((without <= 0) | (without >= 1)).any()):
        raise ValueError("a class probability of exactly 0 or 1 has infinite log-odds: give training_size=N (the "
                         "number of training examples) for the Laplace correction p <- (p·N + 1) / (N + K)")

    def log2_odds(q):
        return (torch.log(q) - torch.log1p(-q)) / math.log(2)

    return log2_odds(p) - log2_odds(without)


@register_method("prediction_difference")
class PredictionDifference(PerturbationMethod):
    """Prediction difference analysis (Robnik-Šikonja & Kononenko 2008; Zintgraf et al. 2017): each feature's
    average weight of evidence, in bits, over the sliding windows that contain it, the windows resampled from
    ``references`` (marginal sampling; module doc).

    Options
    -------
    references : reference inputs (M, ...) the windows' values are drawn from (a tuple, one per input, for several).
    samples : draws per window (default 10, Zintgraf et al.'s); None: every reference once (exact, no randomness).
    window, stride : the sliding window (module doc; default: all channels × 4 × 4 pixels of an image, one feature
        otherwise; stride 1).
    probabilities : ``"softmax"`` of the outputs (default) or ``"outputs"`` (the model outputs probabilities).
    training_size : N of the Laplace correction p <- (p·N + 1) / (N + K) (default None: no correction).
    sampling : ``"marginal"`` (conditional sampling is not implemented).
    seed : seed of the per-sample streams that draw the references.

    With ``samples`` an int, ``explainer.standard_error`` is each feature's standard error (module doc).
    """

    options = {
        "references": opt.Option(None, check_references, "reference inputs (M, ...) the windows are drawn from",
                                 per_input="references"),
        "samples": opt.Option(10, opt.optional(opt.integer(1)), "references drawn per window (None: all of them)"),
        "window": opt.Option(None, check_sizes, "the sliding window's size per dim of a sample"),
        "stride": opt.Option(1, check_sizes, "the sliding window's step per dim"),
        "probabilities": opt.Option("softmax", opt.choice(("softmax", "outputs")),
                                    "class probabilities: the softmax of the outputs, or the outputs themselves"),
        "training_size": opt.Option(None, opt.optional(opt.integer(1)), "N of the Laplace correction"),
        "sampling": opt.Option("marginal", check_sampling, "how a window is resampled"),
    }
    example_options = {"samples": 3, "seed": 0}

    @classmethod
    def schema(cls) -> dict[str, opt.Option]:
        s = super().schema()
        del s["baseline"], s["baseline_options"]  # windows are resampled from references=: there is no baseline
        return s

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        x = x.detach()  # forward passes only: resampled rows need no graph back to the caller's tensor
        layout = o.call.layout
        xs = (x,) if layout.single else layout.unpack(x)
        refs = self._references(x, o)
        windows = _windows(o.window, o.stride, layout.shapes, x.is_floating_point())
        probs = Probabilities(o.call.forward, target, o.probabilities)
        p = probs.clean(x, o.batch_size)
        picks = _Picks(xs, refs.shape[0], windows, o.samples, o.seed)
        draws, same = _resampled(x, refs, windows, picks, probs, o)
        without = draws.mean(2)
        we = weight_of_evidence(p.to(without.device), without, probs.classes, o.training_size)
        we = torch.where(same.to(we.device), 0.0, we)
        variance = None if picks.table is None else _variance(draws, same, probs.classes, o.training_size)
        self._report(o, "standard_error", None if variance is None else
                     windows.spread(variance, power=2).sqrt().view(x.shape))
        return windows.spread(we).view(x.shape)

    def _references(self, x: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
        refs = o.references
        if refs is None:
            raise ValueError("prediction_difference needs references=, a tensor of reference inputs (M, ...) whose "
                             "windows replace the sample's (e.g. training images)")
        if refs.dim() < 1 or refs.shape[0] < 1 or tuple(refs.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"references must be a tensor of shape (M, {', '.join(map(str, x.shape[1:]))}) with "
                             f"M >= 1, got {tuple(refs.shape)}")
        if refs.is_floating_point() != x.is_floating_point():
            raise TypeError(f"references are {refs.dtype} but the inputs are {x.dtype}: token ids need token-id "
                            "references, values need values")
        if refs.is_floating_point() and not bool(torch.isfinite(refs).all()):
            raise ValueError("references contain NaN or inf")
        return refs.detach().to(x.device, x.dtype)


class _Picks:
    """Which reference fills window w in draw d of sample i: draw d itself with ``samples=None`` (every reference
    once), else a uniform draw with replacement from the sample's stream of the window's input."""

    def __init__(self, xs: tuple[torch.Tensor, ...], count: int, windows: SlidingWindows, samples: int | None,
                 seed: int | None):
        self.draws = count if samples is None else samples
        self.table = None
        if samples is None:
            return
        parts = []
        for t, part in zip(xs, windows.parts, strict=True):
            streams = SampleStreams(t, seed)  # keyed by this input alone: its windows draw the same, held or not
            parts.append(torch.stack([torch.randint(count, (part.count, samples), generator=g)
                                      for g in streams.generators]))
        self.table = torch.cat(parts, 1)  # (N, W, samples)

    def __call__(self, sample: torch.Tensor, window: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        return draw if self.table is None else self.table[sample, window, draw]


def _resampled(x: torch.Tensor, refs: torch.Tensor, windows: SlidingWindows, picks: _Picks, probs: Probabilities,
               o: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor]:
    """p(c | x \\ w) of every draw (N, W, draws), and whether every draw left sample and window unchanged (N, W);
    the rows are built chunk by chunk, sample-major."""
    n, s = x.shape[0], picks.draws
    k = windows.count * s
    flat_x, flat_refs = x.reshape(n, -1), refs.reshape(refs.shape[0], -1)
    scores = torch.empty(n * k, dtype=torch.float64, device=x.device)
    same = torch.empty(n * k, dtype=torch.bool, device=x.device)
    for chunk in chunks_with_progress(n * k, o.batch_size, o.progress, unit="perturbation"):
        r = torch.arange(chunk.start, chunk.stop)
        sample, window, draw = r // k, (r % k) // s, r % s
        mask = windows.mask(window).to(x.device)
        own = flat_x[sample.to(x.device)]
        rows = torch.where(mask, flat_refs[picks(sample, window, draw).to(x.device)], own)
        same[chunk.start:chunk.stop] = (rows == own).all(1)
        scores[chunk.start:chunk.stop] = probs(rows.view(len(r), *x.shape[1:]), sample)
    return scores.view(n, windows.count, s), same.view(n, windows.count, s).all(2)


def _variance(draws: torch.Tensor, same: torch.Tensor, classes: int, training_size: int | None) -> torch.Tensor:
    """Var(WE_w) (N, W) to first order (the delta method): WE_w = L(p) − L(q̄), L = log₂ odds, q̄ the mean of the
    window's S draws (Laplace-corrected), so Var ≈ L'(q̄)² · (dq̄/dp̄)² · s² / S with s² their sample variance."""
    s = draws.shape[2]
    spread = draws.var(2) / s if s > 1 else torch.full_like(draws[..., 0], torch.inf)  # one draw: unknown spread
    q, slope = draws.mean(2), 1.0
    if training_size is not None:
        q, slope = (q * training_size + 1) / (training_size + classes), training_size / (training_size + classes)
    derivative = slope / (q * (1 - q) * math.log(2))
    return torch.where(same.to(q.device), 0.0, derivative ** 2 * spread)
