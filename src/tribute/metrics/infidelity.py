"""Infidelity (Yeh et al. 2019): does the attribution predict how the score changes when the input is perturbed?

For perturbations I drawn from a distribution μ, with f the target's score (the class fixed on the clean
input),

    INFD(φ, f, x) = E_{I∼μ}[(Iᵀφ − (f(x) − f(x − I)))²]                    (Yeh et al. 2019, §2)

estimated by the mean over ``samples`` draws per input.  With ``normalize=True`` (default) φ is first
scaled by the factor that minimises the expectation,

    β* = E[Iᵀφ · Δf] / E[(Iᵀφ)²],   INFD(β*φ) = E[Δf²] − E[Iᵀφ · Δf]² / E[(Iᵀφ)²],

so that infidelity does not depend on the scale of the attribution; Yeh et al. scale every explanation
this way in their experiments, and Captum's ``normalize=True`` is the same.  If Iᵀφ = 0 for every draw,
β* = 0 and INFD = E[Δf²].

The convention for salience maps (``convention=``)
--------------------------------------------------
Iᵀφ is the change of the score that φ predicts for the perturbation I.  It has two readings:

- ``"gradient"`` (default): Iᵀφ = Σ_i I_i φ_i.  φ is a rate of change of the score (the gradient,
  SmoothGrad, guided backprop): it predicts Δf for any I by linear extrapolation.  This is Yeh et al.'s
  definition as written, their Gaussian experiments, and Captum's ``infidelity`` as it is.
- ``"salience"``: Iᵀφ = Σ_i φ_i · I_i / (x_i − x̄_i).  φ_i is the contribution of moving feature i all the
  way from the baseline x̄_i to x_i (gradient × input, integrated gradients, DeepLIFT, LRP, occlusion), so a
  perturbation that moves it a fraction I_i / (x_i − x̄_i) of that way is predicted to change the score by
  that fraction of φ_i; removing a set of features (I = x − x̄ on the set) predicts Σ_{i in the set} φ_i.
  This is Yeh et al.'s square-removal experiment (a binary I, the explanation multiplied by the input) and
  Captum's ``infidelity_perturb_func_decorator(multiply_by_inputs=True)``.  A feature equal to its baseline
  has no such fraction: a perturbation that moves it raises a ValueError (use ``"gradient"``, or a removal;
  Captum divides by 1 there instead).

On a linear model f(x) = wᵀx + b the gradient w has zero infidelity under every perturbation in the
``"gradient"`` reading, and gradient × input (x̄ = 0) and integrated gradients (baseline x̄) have zero
infidelity in the ``"salience"`` reading.

Maps.  Attributions of shape (N, 1, H, W) for inputs (N, C, H, W) give one value per pixel: in the
``"gradient"`` reading it multiplies every channel of I at that pixel; in the ``"salience"`` reading the
pixel's fraction is Σ_c I_c d_c / Σ_c d_c² with d = x − x̄ (the fraction itself when all channels move by
the same fraction, as in the removals below).

Perturbations (``perturbation=``; options in ``perturbation_options=``)
----------------------------------------------------------------------
- ``"noisy_baseline"`` (default; Yeh et al.'s "noisy baseline"): x − I = x̄ + ε, ε ∼ N(0, σ²I), i.e. the
  input is replaced by a noisy copy of the baseline.  ``sigma`` (≥ 0, default 0.2, in input units, the value
  of Yeh et al.'s experiments on [0, 1] images; their code also clips x − I to [0, 1], which is not done
  here: pass a callable for that); σ = 0 is their deterministic "difference to baseline", I = x − x̄.
- ``"gaussian"``: I = ε, ε ∼ N(0, σ²I): noise around the input.  ``sigma`` (> 0, default 0.1).
- ``"square"`` (Yeh et al.'s square removal): one square, all channels, set to the baseline.  ``min_side``
  (default 1) and ``max_side`` (default the side scaled from Yeh et al.'s 10 of 28 pixels) bound its side;
  (side, position) is drawn uniformly over all squares that fit, the weighting of Yeh et al.'s enumeration.
  Needs inputs with two spatial dims (the last two).
- ``"subset"`` (Yeh et al.'s subset removal): each pixel (all channels; each feature of a 2-D input) is set
  to the baseline independently with probability ``p`` (default 0.5).
- a callable ``f(rows) -> (I, rows − I)``, Captum's ``perturb_func`` contract: ``rows`` are copies of the
  inputs, ``samples`` consecutive rows per input, in chunks of at most ``batch_size`` rows.  Its randomness
  is its own: a sample's score depends on its batch-mates unless the callable draws per row.
- a tensor of shape (N, samples, *input shape): the perturbations I themselves.

``baseline=`` (x̄) takes what the attribution methods take (a tensor, a number, ``"zero"``, ``"mean"``,
``"blur"``, ``"uniform"``, ``"gaussian"``, a callable; see :mod:`tribute.core.baselines`).  Random draws
come from per-sample streams seeded by ``seed``: a sample's score is the same alone, in any batch, at any
position and chunk size.

Several inputs
--------------
For a model taking several inputs (``inputs`` a tuple), either

- ``input_index=None`` (default): **every input is perturbed**, each by its own perturbation:
  ``perturbation=``, ``perturbation_options=`` and ``baseline=`` take one entry per input (a tuple) or one
  value used for each input, e.g. ``perturbation=("square", "subset")`` removes a square of the image and
  a random subset of the table's features, and ``perturbation_options=({"sigma": 0.2}, {"sigma": 1.0})``
  sets a noise level per input.  Each input draws from its own stream; a callable gets that input's rows and
  a tensor holds that input's perturbations.  The attributions are a tuple with one tensor per input, each of
  its input's shape, and Iᵀφ sums over all of them; or
- ``input_index=k``: **only input k is perturbed**, exactly as if it were the model's only input (the others
  keep their values, as forward arguments would); its attributions are a tensor (or a map) or the tuple of
  all, entry k used.

``forward_args=`` / ``forward_kwargs=`` go to every forward pass, each perturbed row with its sample's, and
``output=`` picks the scores from a structured output, as for the methods.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import chunk_rows, default_batch_size
from ..core.randomness import SampleStreams
from .common import derived_seed, model_inputs, resolve_target_in
from .perturbed import Part, refuse_token_ids, select_part
from .registry import ATTRIBUTIONS, register_metric

CONVENTIONS = ("gradient", "salience")
#: the built-in perturbations and their options (None: chosen from the input, see the module doc)
PERTURBATIONS: dict[str, dict[str, Any]] = {
    "noisy_baseline": {"sigma": 0.2},
    "gaussian": {"sigma": 0.1},
    "square": {"min_side": 1, "max_side": None},
    "subset": {"p": 0.5},
}
DEFAULT_SAMPLES = 100


@register_metric("infidelity", takes=ATTRIBUTIONS, better="lower")
def infidelity(
    model: nn.Module,
    inputs,
    attributions,
    target=None,
    *,
    perturbation="noisy_baseline",
    perturbation_options: dict | None = None,
    samples: int | None = None,
    baseline: Any = "zero",
    convention: str = "gradient",
    normalize: bool = True,
    seed: int | None = 0,
    batch_size: int | None = None,
    input_index: int | None = None,
    forward_args=None,
    forward_kwargs=None,
    output=None,
) -> torch.Tensor:
    """Infidelity of ``attributions`` for each input, E[(Iᵀφ − (f(x) − f(x − I)))²] (Yeh et al. 2019, §2).

    Parameters
    ----------
    model : nn.Module
        The classifier, in eval mode; only called forward, never changed.
    inputs : Tensor (N, ...)
    attributions : Tensor
        The inputs' shape, or (N, 1, *spatial) maps.  Finite.
    target : None, int or 1-D tensor of ints
        The class whose score f is; None: the class predicted for the clean input.
    perturbation : str, callable or Tensor
        ``"noisy_baseline"``, ``"gaussian"``, ``"square"``, ``"subset"``, a callable ``rows -> (I, rows − I)``
        or a tensor (N, samples, ...) of perturbations (module doc).
    perturbation_options : dict, optional
        Options of a built-in perturbation (``sigma``; ``min_side``, ``max_side``; ``p``).
    samples : int, optional
        Perturbations per input (default 100; a tensor ``perturbation`` gives its own).
    baseline
        x̄: what removals put in, what the noisy baseline is noise around, and what the ``"salience"``
        convention measures fractions from.
    convention : {"gradient", "salience"}
        How Iᵀφ reads the attribution (module doc).
    normalize : bool
        Scale φ by the optimal β* first (Yeh et al.'s experiments; Captum's ``normalize=True``).
    seed : int or None
        Seeds the per-sample perturbation streams (None: fresh entropy).
    batch_size : int, optional
        Perturbed inputs per forward pass (default: from the input size, as the methods).
    input_index : int, optional
        With several inputs, perturb input k alone (module doc, "Several inputs"); default: all of them.
    forward_args, forward_kwargs, output
        Extra arguments of every forward pass and which part of a structured output holds the scores, as
        for the methods.

    Returns
    -------
    Tensor (N,)
        Infidelity per input, in the inputs' dtype; 0 is perfect.
    """
    view = model_inputs(model, inputs, forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                        integers=True)
    part = select_part(view, input_index)
    refuse_token_ids(part, "infidelity")
    phi = part.attributions(attributions)
    convention = opt.choice(CONVENTIONS)("convention", convention)
    normalize = opt.boolean("normalize", normalize)
    seed = opt.optional(opt.integer(0))("seed", seed)
    batch_size = opt.optional(opt.integer(1))("batch_size", batch_size) or default_batch_size(view.x)
    x = part.x
    x0 = part.option("baseline", baseline,
                     lambda v, t, k: make_baseline(check_baseline("baseline", v), t, seed=seed)).detach()
    draws = part_perturbations(part, x0, perturbation, perturbation_options, samples, seed)
    target = resolve_target_in(view, target, batch_size=batch_size)
    n, k = x.shape[0], draws.samples
    predicted = torch.empty(n, k, dtype=torch.float64)  # Iᵀφ
    change = torch.empty(n, k, dtype=torch.float64)  # f(x) − f(x − I)
    with torch.no_grad():
        f_x = _scores(view.forward.outputs(view.x, batch_size), target)
        for rows in chunk_rows(n * k, batch_size):
            r = torch.arange(rows.start, rows.stop)
            sample, draw = r // k, r % k
            pert, perturbed = draws(sample, draw)
            f_pert = _scores(view.forward(part.rows(perturbed, sample), sample), target[sample.to(target.device)])
            change[sample, draw] = (f_x[sample.to(f_x.device)] - f_pert).cpu()
            predicted[sample, draw] = _predicted_change(pert, phi[sample.to(phi.device)], x[sample] - x0[sample],
                                                        convention, sample).cpu()
    if normalize:
        power = (predicted * predicted).sum(1)
        beta = torch.where(power > 0, (predicted * change).sum(1) / power.clamp_min(torch.finfo(power.dtype).tiny),
                           torch.zeros_like(power))
        predicted = beta[:, None] * predicted
    return ((predicted - change) ** 2).mean(1).to(device=x.device, dtype=x.dtype)


def draw_perturbations(
    inputs: torch.Tensor,
    perturbation: str = "noisy_baseline",
    samples: int = DEFAULT_SAMPLES,
    *,
    perturbation_options: dict | None = None,
    baseline: Any = "zero",
    seed: int | None = 0,
) -> torch.Tensor:
    """The perturbations I that :func:`infidelity` draws with the same arguments, shape (N, samples, ...).

    For inspection, plotting and feeding the same draws to another implementation.
    """
    x = inputs.detach()
    seed = opt.optional(opt.integer(0))("seed", seed)
    x0 = make_baseline(check_baseline("baseline", baseline), x, seed=seed)
    if not isinstance(perturbation, str):
        raise TypeError(f"draw_perturbations draws the built-in perturbations {', '.join(PERTURBATIONS)}; "
                        f"got {type(perturbation).__name__}")
    draws = Perturbations(x, x0, perturbation, perturbation_options, samples, seed)
    n, k = x.shape[0], draws.samples
    r = torch.arange(n * k)
    pert, _ = draws(r // k, r % k)
    return pert.reshape(n, k, *x.shape[1:])


def part_perturbations(part: Part, x0: torch.Tensor, spec, options, samples, seed):
    """The perturbations of the features ``part``: of one input (:class:`Perturbations`), or of each of several
    inputs, each with its entry of ``spec`` and ``options`` and its own stream (:class:`JointPerturbations`)."""
    if not part.joint:
        return Perturbations(part.x, x0, spec, options, samples, seed)
    return JointPerturbations(part, x0, spec, options, samples, seed)


class JointPerturbations:
    """(I, x − I) for packed rows: each input drawn by its own :class:`Perturbations`, the results packed."""

    def __init__(self, part: Part, x0: torch.Tensor, spec, options, samples, seed):
        layout = part.view.layout
        self.layout = layout
        specs, opts = layout.entries("perturbation", spec), layout.entries("perturbation_options", options)
        self.parts = []
        for k, (t, b) in enumerate(zip(part.view.inputs, layout.unpack(x0), strict=True)):
            try:
                self.parts.append(Perturbations(t.detach(), b, specs[k], opts[k], samples, seed,
                                                purpose=f"infidelity perturbations/inputs[{k}]"))
            except (TypeError, ValueError) as e:
                raise type(e)(f"inputs[{k}]: {e}") from None
        counts = [p.samples for p in self.parts]
        if len(set(counts)) > 1:
            raise ValueError(f"the inputs' perturbations give different numbers of samples per input: {counts}")
        self.samples = counts[0]

    def __call__(self, sample: torch.Tensor, draw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drawn = [p(sample, draw) for p in self.parts]
        return self.layout.pack([d[0] for d in drawn]), self.layout.pack([d[1] for d in drawn])


class Perturbations:
    """Draws (I, x − I) for rows (sample i, draw j); rows of one sample must come in order of j."""

    def __init__(self, x: torch.Tensor, x0: torch.Tensor, spec, options: dict | None, samples, seed,
                 purpose: str = "infidelity perturbations"):
        self.x, self.x0 = x, x0
        self.spec = spec
        if isinstance(spec, torch.Tensor):
            if options:
                raise ValueError("perturbation_options apply to the built-in perturbations, not to a tensor")
            self.samples = self._check_tensor(spec, samples)
            return
        self.samples = DEFAULT_SAMPLES if samples is None else opt.integer(1)("samples", samples)
        if callable(spec) and not isinstance(spec, str):
            if options:
                raise ValueError("perturbation_options apply to the built-in perturbations, not to a callable")
            return
        if spec not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {', '.join(map(repr, PERTURBATIONS))}, a callable "
                             f"rows -> (I, rows - I) or a tensor (N, samples, ...) of perturbations; got {spec!r}")
        self.o = self._check_options(spec, dict(options or {}))
        self.streams = SampleStreams(x, derived_seed(seed, purpose))

    def _check_tensor(self, t: torch.Tensor, samples) -> int:
        n, shape = self.x.shape[0], tuple(self.x.shape[1:])
        if t.dim() != self.x.dim() + 1 or t.shape[0] != n or tuple(t.shape[2:]) != shape:
            raise ValueError(f"a perturbation tensor must have shape (N, samples, *input shape) = ({n}, samples, "
                             f"{', '.join(map(str, shape))}); got {tuple(t.shape)}")
        if samples is not None and samples != t.shape[1]:
            raise ValueError(f"samples={samples!r} but the perturbation tensor holds {t.shape[1]} per input")
        if t.shape[1] < 1:
            raise ValueError("the perturbation tensor holds no perturbations (dim 1 has size 0)")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("the perturbation tensor contains NaN or inf")
        self.tensor = t.detach().to(self.x.device, self.x.dtype)
        return t.shape[1]

    def _check_options(self, kind: str, given: dict) -> dict:
        allowed = PERTURBATIONS[kind]
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError(f"perturbation {kind!r} takes options {', '.join(allowed)}; got {', '.join(unknown)}")
        o = {**allowed, **given}
        if kind in ("noisy_baseline", "gaussian"):
            o["sigma"] = opt.real(0, low_open=kind == "gaussian")("sigma", o["sigma"])
        elif kind == "subset":
            o["p"] = opt.real(0, 1, low_open=True)("p", o["p"])
        else:
            if self.x.dim() < 3:
                raise ValueError(f"square removal needs inputs with two spatial dims, got shape {tuple(self.x.shape)}")
            h, w = self.x.shape[-2:]
            o["min_side"] = opt.integer(1, min(h, w))("min_side", o["min_side"])
            if o["max_side"] is None:  # Yeh et al.: sides 1..10 on 28 x 28 MNIST, scaled to this input
                o["max_side"] = min(max(o["min_side"], round(min(h, w) * 10 / 28)), min(h, w))
            o["max_side"] = opt.integer(o["min_side"], min(h, w))("max_side", o["max_side"])
            sides = torch.arange(o["min_side"], o["max_side"] + 1)
            self.sides = sides
            self.cumulative = torch.cumsum((h - sides + 1) * (w - sides + 1), 0)
        return o

    def __call__(self, sample: torch.Tensor, draw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, bs = self.x[sample.to(self.x.device)], self.x0[sample.to(self.x.device)]
        if isinstance(self.spec, torch.Tensor):
            pert = self.tensor[sample.to(self.x.device), draw.to(self.x.device)]
            return pert, xs - pert
        if callable(self.spec) and not isinstance(self.spec, str):
            return _checked_call(self.spec, xs)
        like = {"dtype": self.x.dtype, "device": self.x.device}
        if self.spec in ("noisy_baseline", "gaussian"):
            noise = self.o["sigma"] * self.streams.draw("normal", sample, tuple(xs.shape[1:]), **like)
            if self.spec == "gaussian":
                return noise, xs - noise
            perturbed = bs + noise
            return xs - perturbed, perturbed
        removed = self._square(sample) if self.spec == "square" else self._subset(sample)
        perturbed = torch.where(removed, bs, xs)
        return xs - perturbed, perturbed

    def _square(self, sample: torch.Tensor) -> torch.Tensor:
        """A square per row, uniform over all (side, top, left) that fit: one uniform draw picks its index."""
        h, w = self.x.shape[-2:]
        total = int(self.cumulative[-1])
        u = self.streams.draw("uniform", sample, (1,), dtype=torch.float64, device="cpu")[:, 0]
        index = (u * total).long().clamp(max=total - 1)
        which = torch.searchsorted(self.cumulative, index, right=True)
        side = self.sides[which]
        offset = index - (self.cumulative[which] - (h - side + 1) * (w - side + 1))
        top, left = offset // (w - side + 1), offset % (w - side + 1)
        hh, ww = torch.arange(h), torch.arange(w)
        rows = (hh >= top[:, None]) & (hh < (top + side)[:, None])
        cols = (ww >= left[:, None]) & (ww < (left + side)[:, None])
        mask = rows[:, :, None] & cols[:, None, :]
        return mask.view(len(sample), *([1] * (self.x.dim() - 3)), h, w).to(self.x.device)

    def _subset(self, sample: torch.Tensor) -> torch.Tensor:
        """Each pixel (all its channels) or, for 2-D inputs, each feature removed with probability p."""
        unit = (1, *self.x.shape[2:]) if self.x.dim() >= 3 else tuple(self.x.shape[1:])
        u = self.streams.draw("uniform", sample, unit, dtype=torch.float64, device=self.x.device)
        return u < self.o["p"]


def _checked_call(fn, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A user's perturbation callable, held to its contract: (I, rows − I), the rows' shape, finite."""
    out = fn(rows)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise TypeError("a perturbation callable must return a pair of tensors (I, rows - I), the perturbation "
                        f"first; got {type(out).__name__}")
    pert, perturbed = (t.detach().to(rows.device, rows.dtype) for t in out)
    for name, t in (("perturbation", pert), ("perturbed input", perturbed)):
        if t.shape != rows.shape:
            raise ValueError(f"the perturbation callable returned a {name} of shape {tuple(t.shape)} for rows of "
                             f"shape {tuple(rows.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"the perturbation callable returned a {name} with NaN or inf")
    # I and x − I must agree up to the rounding of one subtraction
    eps = torch.finfo(rows.dtype).eps
    slack = 8 * eps * (rows.abs() + pert.abs() + perturbed.abs()) + torch.finfo(rows.dtype).tiny
    gap = (rows - pert - perturbed).abs()
    if bool((gap > slack).any()):
        raise ValueError("the perturbation callable must return (I, rows - I): its second tensor differs from rows "
                         f"minus its first by up to {gap.max().item():.3g} (the perturbed input is x - I, not x + I)")
    return pert, perturbed


def _predicted_change(pert: torch.Tensor, phi: torch.Tensor, d: torch.Tensor, convention: str,
                      sample: torch.Tensor) -> torch.Tensor:
    """Iᵀφ for each row, in float64; ``d`` = x − x̄ of the row's sample ``sample[row]`` (module doc)."""
    pert, phi = pert.double(), phi.double()
    is_map = phi.shape[1:] != pert.shape[1:]
    if convention == "gradient":
        return (pert * phi).flatten(1).sum(1)  # a map multiplies every channel
    d = d.double()
    moved, along, length = pert != 0, pert * d, d * d
    if is_map:
        moved, along, length = moved.any(1, keepdim=True), along.sum(1, keepdim=True), length.sum(1, keepdim=True)
    stuck = moved & (length == 0)
    if bool(stuck.any()):
        row = int(stuck.flatten(1).any(1).nonzero()[0])
        raise ValueError(
            "convention='salience' reads φ_i as the effect of moving feature i from the baseline to x, but the "
            f"perturbation moves features that equal the baseline (sample {int(sample[row])}); use "
            "convention='gradient', or a removal ('square', 'subset') that only moves features towards the baseline"
        )
    fraction = torch.where(length > 0, along / length.clamp_min(torch.finfo(length.dtype).tiny),
                           torch.zeros_like(along))
    return (fraction * phi).flatten(1).sum(1)


def _scores(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if outputs.dim() != 2:
        raise ValueError(f"infidelity needs model outputs of shape (N, classes); got {tuple(outputs.shape)}")
    return outputs.gather(1, target.to(outputs.device).view(-1, 1)).squeeze(1).double()


__all__ = ["draw_perturbations", "infidelity"]
