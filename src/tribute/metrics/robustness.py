"""Robustness of an explanation to small changes of the input: max- and avg-sensitivity, local Lipschitz estimate.

For perturbations δ drawn uniformly from the ball ‖δ‖ ≤ r around x (``ball="linf"``, default: every
coordinate uniform on [−r, r], as Yeh et al.'s experiments and Captum sample; ``ball="l2"``: uniform in the
Euclidean ball), with φ the method's attribution for the class fixed on the clean input:

- max-sensitivity (Yeh et al. 2019, §3):             SENS_MAX(x) = max_{‖δ‖ ≤ r} ‖φ(x + δ) − φ(x)‖
- avg-sensitivity (Bhatt et al. 2020, "Evaluating and aggregating feature-based model explanations"):
                                                      SENS_AVG(x) = E_{‖δ‖ ≤ r} ‖φ(x + δ) − φ(x)‖
- local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018, "On the robustness of interpretability methods"):
                                                      L̂(x) = max_{‖δ‖ ≤ r} ‖φ(x + δ) − φ(x)‖ / ‖δ‖

each estimated from ``samples`` draws of δ per input (a maximum over draws is a lower bound of the true
maximum).  ``norm=`` ("l2", default: the Frobenius norm of the whole attribution, Captum's ``"fro"``; "l1";
"linf") measures both explanation changes and, for L̂, ‖δ‖.  ``relative=True`` divides by ‖φ(x)‖: Captum's
``sensitivity_max`` always does (and silently divides by 1 where φ(x) = 0; here that is an error).

Stochastic methods.  The metric passes its ``seed`` to a method that takes one (SmoothGrad, expected
gradients, random baselines; unless you set the method's own), so the scores are reproducible and a
sample's score does not depend on its batch-mates.  That alone does not give the *same* noise at x and at
x + δ: tribute seeds each sample's stream from ``seed`` and the sample's own bytes, so x + δ draws other
noise, and the sensitivity of SmoothGrad then includes its Monte-Carlo error.  A method whose options
include ``noise_key`` (a tensor with the inputs' shape whose rows key the per-sample streams and scale the
noise instead of the inputs) gets the clean inputs as key at every perturbed point: then x and x + δ see
identical noise draws (common random numbers) and the score measures the explanation's change alone.

``method`` is a registry name, a :class:`tribute.Method` class or instance, or a callable
``(model, inputs, target) -> attributions`` (see :mod:`tribute.metrics.methods`); ``method_options`` go to
a name, class or instance, not to a plain callable.  Perturbed points go through the method in chunks of
``batch_size`` points (also the method's own ``batch_size`` unless set in ``method_options``).

Several inputs.  For a model taking several inputs (``inputs`` a tuple), the method is called on the inputs
in that structure and returns one attribution per input; φ is all of them together (the norms run over
every input's features).  δ is drawn for all inputs together (``input_index=None``, default: the ball of the
features of all inputs laid end to end; ``radius`` may be a tuple with one radius ≥ 0 per input with
``ball="linf"``, 0 leaving an input where it is), or for input k alone (``input_index=k``: δ drawn as if
input k were the model's only input, the others kept).  ``forward_args=`` / ``forward_kwargs=`` are given
to the method with the rows of their samples, and ``output=`` picks the scores of a structured output, so the
method explains the same model as the metric; a plain callable method cannot take them (an error says so).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import options as opt
from ..core.engine import chunk_rows, default_batch_size
from ..core.randomness import SampleStreams
from .common import derived_seed, explain_rows, model_inputs, resolve_target_in
from .methods import NOISE_KEY as NOISE_KEY  # the option's name, documented here too
from .methods import resolve_method
from .perturbed import Part, refuse_token_ids, select_part
from .registry import METHOD, register_metric

NORMS = ("l2", "l1", "linf")
BALLS = ("linf", "l2")


@register_metric("max_sensitivity", takes=METHOD, better="lower")
def max_sensitivity(model: nn.Module, inputs, method, target=None, *, radius: float = 0.02,
                    samples: int = 10, norm: str = "l2", ball: str = "linf", relative: bool = False,
                    seed: int | None = 0, batch_size: int | None = None, method_options: dict | None = None,
                    input_index: int | None = None, forward_args=None, forward_kwargs=None,
                    output=None) -> torch.Tensor:
    """Max-sensitivity max_{‖δ‖ ≤ r} ‖φ(x + δ) − φ(x)‖ per input (Yeh et al. 2019, §3), over sampled δ.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor (N, ...)
    method : str, Method class or instance, or callable ``(model, inputs, target) -> attributions``
    target : None, int or 1-D tensor of ints
        The class explained at x and at every x + δ; None: the class predicted for the clean input.
    radius : float
        r > 0, in input units (Captum's default 0.02).
    samples : int
        Draws of δ per input (Captum's default 10).
    norm : {"l2", "l1", "linf"}
        Norm of the explanation change (``"l2"`` over all features: Frobenius).
    ball : {"linf", "l2"}
        The ball δ is drawn uniformly from.
    relative : bool
        Divide by ‖φ(x)‖ (Captum's ``sensitivity_max``).
    seed : int or None
        Seeds the draws of δ (per-sample streams) and is passed to a method that takes a seed.
    batch_size : int, optional
        Perturbed points per call of the method (default: from the input size).
    method_options : dict, optional
        Options for a method given by name, class or instance.
    input_index : int, optional
        With several inputs, perturb input k alone (module doc, "Several inputs"); default: all of them.
    forward_args, forward_kwargs, output
        Extra arguments of every forward pass and which part of a structured output holds the scores, given
        to the method for the rows of their samples.

    Returns
    -------
    Tensor (N,), in the inputs' dtype.
    """
    relative = opt.boolean("relative", relative)
    phi0, change, _ = explanation_changes(model, inputs, method, target, radius=radius, samples=samples, norm=norm,
                                          ball=ball, seed=seed, batch_size=batch_size, method_options=method_options,
                                          input_index=input_index, forward_args=forward_args,
                                          forward_kwargs=forward_kwargs, output=output)
    return _scaled(change.amax(1), phi0, norm, relative, inputs)


@register_metric("avg_sensitivity", takes=METHOD, better="lower")
def avg_sensitivity(model: nn.Module, inputs, method, target=None, *, radius: float = 0.02,
                    samples: int = 10, norm: str = "l2", ball: str = "linf", relative: bool = False,
                    seed: int | None = 0, batch_size: int | None = None, method_options: dict | None = None,
                    input_index: int | None = None, forward_args=None, forward_kwargs=None,
                    output=None) -> torch.Tensor:
    """Avg-sensitivity E_{‖δ‖ ≤ r} ‖φ(x + δ) − φ(x)‖ per input (Bhatt et al. 2020), the mean over sampled δ.

    Same parameters as :func:`max_sensitivity`; with the same arguments the two see the same draws, so
    avg ≤ max sample by sample.
    """
    relative = opt.boolean("relative", relative)
    phi0, change, _ = explanation_changes(model, inputs, method, target, radius=radius, samples=samples, norm=norm,
                                          ball=ball, seed=seed, batch_size=batch_size, method_options=method_options,
                                          input_index=input_index, forward_args=forward_args,
                                          forward_kwargs=forward_kwargs, output=output)
    return _scaled(change.mean(1), phi0, norm, relative, inputs)


@register_metric("local_lipschitz", takes=METHOD, better="lower")
def local_lipschitz(model: nn.Module, inputs, method, target=None, *, radius: float = 0.02,
                    samples: int = 10, norm: str = "l2", ball: str = "linf", seed: int | None = 0,
                    batch_size: int | None = None, method_options: dict | None = None,
                    input_index: int | None = None, forward_args=None, forward_kwargs=None,
                    output=None) -> torch.Tensor:
    """Local Lipschitz estimate max_{‖δ‖ ≤ r} ‖φ(x + δ) − φ(x)‖ / ‖δ‖ per input (Alvarez-Melis & Jaakkola 2018).

    Same parameters as :func:`max_sensitivity` (``norm`` measures both the explanation change and δ).
    """
    _, change, step = explanation_changes(model, inputs, method, target, radius=radius, samples=samples, norm=norm,
                                          ball=ball, seed=seed, batch_size=batch_size, method_options=method_options,
                                          input_index=input_index, forward_args=forward_args,
                                          forward_kwargs=forward_kwargs, output=output)
    return (change / step).amax(1).to(device=_like(inputs).device, dtype=_like(inputs).dtype)


def draw_ball(inputs: torch.Tensor, samples: int = 10, radius: float = 0.02, *, ball: str = "linf",
              seed: int | None = 0) -> torch.Tensor:
    """The perturbations δ that the metrics here draw with the same arguments, shape (N, samples, ...).

    ``"linf"``: each coordinate uniform on [−r, r].  ``"l2"``: a direction uniform on the sphere (a normalised
    Gaussian) times r·u^(1/d), u ∼ U(0, 1), d the number of features, which is uniform in the ball; u comes
    from one more Gaussian draw through the normal CDF, so each row is a single draw from its stream.
    """
    samples = opt.integer(1)("samples", samples)
    radius = opt.real(0, low_open=True)("radius", radius)
    ball = opt.choice(BALLS)("ball", ball)
    seed = opt.optional(opt.integer(0))("seed", seed)
    x = inputs.detach()
    streams = SampleStreams(x, derived_seed(seed, "robustness perturbations"))
    r = torch.arange(x.shape[0] * samples)
    return _ball_rows(streams, r // samples, x, radius, ball).reshape(x.shape[0], samples, *x.shape[1:])


def explanation_changes(model: nn.Module, inputs, method, target=None, *, radius: float = 0.02,
                        samples: int = 10, norm: str = "l2", ball: str = "linf", seed: int | None = 0,
                        batch_size: int | None = None, method_options: dict | None = None,
                        input_index: int | None = None, forward_args=None, forward_kwargs=None, output=None):
    """φ(x), and ‖φ(x + δ_j) − φ(x)‖ and ‖δ_j‖ for each input and draw j, shapes (N, ...), (N, samples) × 2.

    The shared core of the three metrics (float64 norms), for users who want other statistics of the draws.
    With several inputs φ(x) is packed, (N, D): every input's attributions flattened end to end.
    """
    view = model_inputs(model, inputs, forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                        integers=True)
    part = select_part(view, input_index)
    refuse_token_ids(part, "sensitivity")
    radius = _radius(part, radius, ball)
    samples = opt.integer(1)("samples", samples)
    norm = opt.choice(NORMS)("norm", norm)
    ball = opt.choice(BALLS)("ball", ball)
    seed = opt.optional(opt.integer(0))("seed", seed)
    batch_size = opt.optional(opt.integer(1))("batch_size", batch_size) or default_batch_size(view.x)
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"method_options must be a dict or None, got {type(method_options).__name__}")
    x = part.x
    explain = resolve_method(method, method_options).bind(model, seed=seed, batch_size=batch_size)
    target = resolve_target_in(view, target, batch_size=batch_size)
    n = x.shape[0]
    phi0 = explain_rows(view, explain, view.x, target, torch.arange(n), noise_key=view.x)
    streams = SampleStreams(x, derived_seed(seed, "robustness perturbations"))
    change = torch.empty(n, samples, dtype=torch.float64)
    step = torch.empty(n, samples, dtype=torch.float64)
    for rows in chunk_rows(n * samples, batch_size):
        r = torch.arange(rows.start, rows.stop)
        sample, draw = r // samples, r % samples
        on = sample.to(x.device)
        delta = _ball_rows(streams, sample, x, radius, ball)
        moved = part.rows(x[on] + delta, sample)
        phi = explain_rows(view, explain, moved, target[sample.to(target.device)], sample, noise_key=view.x[on])
        _same_shape(phi, phi0)
        change[sample, draw] = _norm(phi - phi0[sample.to(phi0.device)], norm).cpu()
        step[sample, draw] = _norm(delta, norm).cpu()
    return phi0, change, step


def _radius(part: Part, radius, ball: str):
    """r > 0; with several inputs perturbed jointly, a tuple of radii ≥ 0 per input (not all 0, ``"linf"``
    only), as one value per packed feature.  For one input, a tuple contributes that input's entry."""
    layout = part.view.layout
    if not part.joint or not isinstance(radius, tuple):
        if isinstance(radius, tuple):
            radius = layout.entries("radius", radius)[part.index or 0]
        return opt.real(0, low_open=True)("radius", radius)
    radii = tuple(opt.real(0)(f"radius[{k}]", r) for k, r in enumerate(layout.entries("radius", radius)))
    if max(radii) == 0:
        raise ValueError("radius must be > 0 for at least one input")
    if len(set(radii)) == 1:
        return radii[0]
    if ball != "linf":
        raise ValueError(f"ball={ball!r} draws from one Euclidean ball of all the inputs' features: give one radius, "
                         "or ball='linf' for a radius per input")
    return layout.per_feature("radius", radii, torch.empty(0, dtype=torch.float64))


def _same_shape(phi: torch.Tensor, phi0: torch.Tensor) -> None:
    if phi.shape[1:] != phi0.shape[1:]:
        raise ValueError(f"the method returned attributions of shape {tuple(phi.shape)}; expected "
                         f"{(phi.shape[0], *phi0.shape[1:])}")


def _ball_rows(streams: SampleStreams, sample: torch.Tensor, x: torch.Tensor, radius: float, ball: str):
    """δ for each row, uniform in the ball of ``radius`` around its sample (see :func:`draw_ball`)."""
    shape = tuple(x.shape[1:])
    if ball == "linf":
        u = streams.draw("uniform", sample, shape, dtype=torch.float64, device="cpu")
        return (radius * (2 * u - 1)).to(x.device, x.dtype)
    d = x[0].numel()
    z = streams.draw("normal", sample, (d + 1,), dtype=torch.float64, device="cpu")
    direction = z[:, :d] / z[:, :d].norm(dim=1, keepdim=True)
    u = 0.5 * (1 + torch.erf(z[:, d] / 2**0.5))  # Φ(z) ∼ U(0, 1)
    delta = radius * u.pow(1 / d)[:, None] * direction
    return delta.reshape(len(sample), *shape).to(x.device, x.dtype)


def _norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.double().flatten(1)
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    return flat.abs().amax(1)


def _like(inputs) -> torch.Tensor:
    """The first input tensor (all share one dtype and device): what the scores are returned like."""
    return inputs[0] if isinstance(inputs, (tuple, list)) else inputs


def _scaled(values: torch.Tensor, phi0: torch.Tensor, norm: str, relative: bool, inputs) -> torch.Tensor:
    if relative:
        size = _norm(phi0, norm).cpu()
        zero = (size == 0).nonzero().flatten().tolist()
        if zero:
            raise ValueError(f"relative=True divides by ‖φ(x)‖, which is 0 for samples {zero[:10]}; "
                             "use relative=False for these inputs")
        values = values / size
    return values.to(device=_like(inputs).device, dtype=_like(inputs).dtype)


__all__ = ["avg_sensitivity", "draw_ball", "explanation_changes", "local_lipschitz", "max_sensitivity"]

