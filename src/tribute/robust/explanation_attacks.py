"""Attacks on explanations: change the map, keep the decision (Nielsen et al. 2022, §5, attributional robustness).

Ghorbani, Abid & Zou (2019), *Interpretation of Neural Networks is Fragile* (AAAI), Algorithm 1: from the
test input x_t, signed-gradient steps that increase a dissimilarity D between the maps of x_t and x,

    x^p = Π( x^{p−1} + α · sign ∇_x D(x_t, x^{p−1}) ),

Π the projection onto the L∞ ball ‖x − x_t‖∞ ≤ ε and onto the input range; a step that changes the predicted
label is undone (x^p = x^{p−1}); the output is the iterate with the largest dissimilarity among those with the
original label.  Per sample, independently.

- :func:`topk_attack`: D = −Σ_{i∈B} m̂_i(x), B the k most important features of x_t, m̂ the importance map
  normalised to unit sum; the iterate kept is the one with the lowest top-k intersection;
- :func:`center_attack`: D = ‖C(m(x)) − C(m(x_t))‖², C the centre of mass; the iterate kept is the one whose
  centre moved furthest;
- :func:`random_sign_perturbation`: the paper's baseline, x_t + ε·sign(u), u uniform noise, seeded.

Dombrowski et al. (2019), *Explanations can be manipulated and geometry is to blame* (NeurIPS), their loss:
:func:`manipulate_explanation` moves the map towards a chosen target map h_t while keeping the output,

    L(x) = ‖h(x) − h_t‖² + γ ‖g(x) − g(x_t)‖²,

minimised by the same projected signed steps (the label must not change; the iterate with the lowest L on
the real model is kept).

**The surrogate.**  On a ReLU network the gradient is piecewise constant in x, so the saliency's derivative
∂m/∂x is zero almost everywhere and D has no useful gradient.  As both papers do, the attack direction is
computed on a *surrogate* explanation, the same method on the network with every ReLU made softplus_β
(``surrogate_beta``; the engine's ``softplus_beta=`` option with ``differentiable=True``), while every
acceptance test, dissimilarity and returned choice uses the *real* explanation of the unmodified model.

**The β-smoothing defence** (Dombrowski et al. 2019): explain with the softplus_β network itself,
``method_options={"softplus_beta": β}``.  The attacks then attack that smoothed explanation directly (it is
differentiable; the attacker knows the defence), and measure success on it.

Importance maps.  The map of an attribution φ (any registered method that accepts ``differentiable=True``,
default ``"saliency"``) is m = |reduce(φ)|, the magnitude as in Ghorbani et al.: ``reduce="abs_sum"`` (the
default) sums |φ| over channels; single-channel inputs pass as they are.  The similarity measures are those of
:mod:`tribute.metrics.similarity`.

Algorithm 1 as written: a refused step leaves the sample where it was, and as the direction from there is the
same, the sample stays there for the remaining steps (no step-size halving or random restart is added).

The model is never modified: only its outputs and input gradients are read (``torch.autograd.grad``, no
``.grad`` is touched); it must be in eval mode.  Inputs may be any float batch; ``bounds=(lo, hi)`` declares
their range (inputs outside it are an error); the ball and the bounds hold exactly in the inputs' dtype (the
projection of :mod:`tribute.robust.attacks`).  Work is done in chunks of ``batch_size`` samples, each chunk
running all steps, and a sample's path depends only on itself.  In float32 the rounding of a convolution can
depend on the batch size, and sign steps may amplify such differences; in float64 results are identical alone
and in any batch (tests/test_explanation_attacks.py).

Models that take more than the attacked input: ``forward_args=`` / ``forward_kwargs=`` reach every forward pass
of the model and of the explanation, each sample meeting its own (a per-sample mask follows its sample), and
``output=`` picks the logits of a structured output (:mod:`tribute.core.outputs`).  The attacked input is one
tensor: a tuple of inputs is refused (the maps compared are one input's), the others being held fixed as forward
arguments.  ``manipulate_explanation``'s choice of the kept output g is ``keep=``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.engine import Forward, check_model, default_batch_size
from ..core.randomness import SampleStreams
from ..core.reduce import check_reduce
from ..core.targets import Target
from ..core.tensors import per_sample
from ..metrics.common import ModelInputs, as_map, model_inputs
from ..metrics.methods import BoundExplainer, ResolvedMethod, resolve_method
from ..metrics.similarity import center_of_mass, check_k, topk_intersection
from ..metrics.view_methods import explain_rows
from .attacks import check_bounds, project

__all__ = [
    "DEFAULT_SURROGATE_BETA",
    "center_attack",
    "manipulate_explanation",
    "random_sign_perturbation",
    "topk_attack",
]

#: β of the softplus surrogate when the explanation itself is not smoothed.  Large enough that the surrogate's
#: saliency is close to the ReLU one, small enough that its second derivatives are not confined to the few
#: inputs near a kink (pre-activations after batch norm are of order 1).  Measured on the Fashion-MNIST fixture
#: (8 images, ε = 0.01, 20 steps, k = 50): mean top-k intersection 0.55, 0.39, 0.32, 0.37 for β = 3, 10, 30, 100;
#: at ε = 0.02, 0.135 (β = 10) and 0.108 (β = 30), and the centre attack moved the centre further with β = 30.
DEFAULT_SURROGATE_BETA = 30.0


# -- checks ----------------------------------------------------------------------------------------------------
def _positive(name: str, v, *, allow_inf: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise TypeError(f"{name} must be a real number, got {v!r}")
    if not v > 0 or (not allow_inf and math.isinf(v)):
        raise ValueError(f"{name} must be {'> 0' if allow_inf else 'finite and > 0'}, got {v!r}")
    return float(v)


def _steps(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"steps must be an integer >= 1, got {v!r}")
    return v


def _check_inputs(inputs, owner: str) -> torch.Tensor:
    if isinstance(inputs, (tuple, list)):
        raise TypeError(
            f"{owner}: inputs is a {type(inputs).__name__} of {len(inputs)}; the attacks on explanations perturb one "
            "input and compare its maps (its top-k features, its centre of mass). Attack one input and pass the "
            "others with forward_args= (held fixed; a lambda can put the attacked input first)")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty batch with the samples along dim 0, got shape "
                         f"{tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be floating point, got {inputs.dtype}")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs contain NaN or inf")
    return inputs.detach()


def _project_linf(x: torch.Tensor, x0: torch.Tensor, eps: float, box) -> torch.Tensor:
    """Onto the L∞ ball around x0 and the bounds, exactly in the input's dtype (shared with the model attacks)."""
    return project(x, x0, eps, "linf", *box)


def random_sign_perturbation(inputs: torch.Tensor, *, eps: float, bounds=None, seed: int | None = None) -> torch.Tensor:
    """The random baseline of Ghorbani et al. (2019): every feature moved by ±ε, the sign a fair coin.

    x̃ = Π(x + ε · sign(u − ½)), u ∼ U[0, 1) per feature, Π the clip to ``bounds`` (so a feature at a bound
    moves by 0 or ε).  Each sample draws from its own stream, seeded by ``seed`` and its own values (see
    :class:`tribute.core.randomness.SampleStreams`): the same sample gets the same signs in any batch.
    The predicted label may change: compare with the attacks only where it did not.

    Returns
    -------
    Tensor, the input's shape, dtype and device.
    """
    x = _check_inputs(inputs, "random_sign_perturbation")
    eps = _positive("eps", eps)
    box = check_bounds("random_sign_perturbation", x, bounds)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    streams = SampleStreams(x, seed)
    u = streams.draw("uniform", torch.arange(x.shape[0]), tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    signs = torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))
    return _project_linf(x + eps * signs, x, eps, box)


# -- explanations: the real one and its differentiable surrogate ------------------------------------------------
@dataclass
class _Maps:
    """The importance maps of one resolved method on the attacked model: real (off the graph) and surrogate.

    ``forward`` scores rows (the model with ``input_transform``, forward arguments and ``output=``); every
    call names the samples its rows belong to, whose forward arguments they meet.
    """

    view: ModelInputs
    forward: Forward
    real_method: BoundExplainer
    surrogate_method: BoundExplainer
    reduce: str | None
    batch_size: int

    def outputs(self, x: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        out = self.forward(x, sample)
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"the model must return logits of shape (N, classes); got {tuple(out.shape)}")
        return out

    def predict(self, x: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.outputs(x, sample).argmax(1)

    def _map(self, explain: BoundExplainer, x, cls, sample):
        phi = explain_rows(explain, self.view, x, cls, sample)
        m = phi if self.reduce is None else as_map(phi, self.reduce)
        return m.abs()

    def real(self, x: torch.Tensor, cls: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The importance map |reduce(φ(x))| of the unmodified model, detached."""
        return self._map(self.real_method, x.detach(), cls, sample).detach()

    def surrogate(self, x: torch.Tensor, cls: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The importance map of the surrogate (softplus_β ReLUs), on the autograd graph back to x."""
        return self._map(self.surrogate_method, x, cls, sample)


def _maps(model, method, method_options, surrogate_beta, reduce, input_transform, batch_size, x, call) -> _Maps:
    check_model(model)  # before any forward pass: a refused model is left as it was
    resolved = resolve_method(method, method_options)
    if resolved.klass is None:
        raise TypeError(f"method must be a registered method name or a tribute Method class, got {method!r}: the "
                        "attacks differentiate the explanation, which a plain callable cannot promise")
    if resolved.klass.returns == "layer":
        raise ValueError(f"method {resolved.klass.name!r} attributes to a layer; the attacks need maps of the input")
    for reserved in ("differentiable", "input_transform", "batch_size", "forward_args", "forward_kwargs", "output"):
        if reserved in resolved.options:
            raise TypeError(f"method_options may not set {reserved!r}: " + (
                "the attack needs the map both on and off the autograd graph" if reserved == "differentiable"
                else f"pass {reserved}= to the attack itself"))
    check_reduce("reduce", reduce)
    view = model_inputs(model, x, **call)
    if batch_size is None:
        batch_size = default_batch_size(x)
    elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    if input_transform is not None and not callable(input_transform):
        raise TypeError(f"input_transform must be callable or None, got {type(input_transform).__name__}")
    fixed = {"input_transform": input_transform, "batch_size": batch_size}
    real = resolved.bind(model, differentiable=False, **fixed)  # validates the options, with the method's messages
    surrogate = _surrogate(resolved, surrogate_beta).bind(model, differentiable=True, **fixed)
    f = view.forward
    forward = Forward(model, input_transform, layout=f.layout, args=f.args, output=f.output)
    return _Maps(view, forward, real, surrogate, reduce, batch_size)


def _surrogate(resolved: ResolvedMethod, surrogate_beta) -> ResolvedMethod:
    """The method whose map gives the attack direction: softplus_β ReLUs where the method has that option."""
    smoothable = "softplus_beta" in resolved.klass.schema()
    if isinstance(surrogate_beta, str):
        if surrogate_beta != "auto":
            raise ValueError(f"surrogate_beta must be 'auto', None or a number > 0, got {surrogate_beta!r}")
        if smoothable and {**resolved.preset, **resolved.options}.get("softplus_beta") is None:
            return resolved.with_options(softplus_beta=DEFAULT_SURROGATE_BETA)
        return resolved
    if surrogate_beta is None:
        return resolved
    if not smoothable:
        raise ValueError(f"surrogate_beta needs a method with the softplus_beta option ({resolved.klass.name!r} has "
                         "none); pass surrogate_beta=None or 'auto'")
    return resolved.with_options(softplus_beta=_positive("surrogate_beta", surrogate_beta))


def _classes(ex: _Maps, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted labels on the clean inputs and the explained classes (``target``, default: predicted)."""
    with torch.no_grad():
        out = torch.cat([ex.outputs(c, s) for c, s in _chunks(ex, x)])
    pred = out.argmax(1)
    t = Target(target, x.shape[0])
    if t.fn is not None:
        raise TypeError("the attacks on explanations need class indices as target (an int, a tensor of ints or None)")
    if t.needs_argmax:
        t.set_argmax(out)
    if bool((t.index >= out.shape[1]).any()):
        raise IndexError(f"target class {int(t.index.max())} is out of range for a model with {out.shape[1]} outputs")
    return pred, t.index.to(x.device)


# -- the iteration (Ghorbani et al. 2019, Algorithm 1) ---------------------------------------------------------
def _chunks(ex: _Maps, x: torch.Tensor):
    """The batch in chunks of ``ex.batch_size`` rows, with each chunk's sample indices."""
    return zip(x.split(ex.batch_size), torch.arange(x.shape[0]).split(ex.batch_size), strict=True)


@dataclass
class _Chunk:
    """What an objective and a score see of one chunk of samples (``sample``: their indices in the batch)."""

    sample: torch.Tensor
    x0: torch.Tensor
    cls: torch.Tensor
    real0: torch.Tensor  # the real importance maps of x0
    extra: dict[str, torch.Tensor]


Objective = Callable[[_Maps, torch.Tensor, _Chunk], torch.Tensor]


def _attack(ex: _Maps, x: torch.Tensor, target, *, eps: float, steps: int, step_size: float,
            bounds, objective: Objective, score: Objective, prepare: Callable) -> torch.Tensor:
    """Projected signed ascent of ``objective`` (surrogate), per sample; keeps label-preserving steps and returns
    the iterate with the highest ``score`` (real model), the clean input if no step helped."""
    pred, cls = _classes(ex, x, target)
    real0 = torch.cat([ex.real(c, cls[s.to(cls.device)], s) for c, s in _chunks(ex, x)])
    extra = prepare(ex, x, real0)  # checks on the whole batch name the samples by their index in it
    out = []
    n_done = 0
    for rows in torch.arange(x.shape[0], device=x.device).split(ex.batch_size):
        chunk = _Chunk(rows.cpu(), x[rows], cls[rows], real0[rows], {k: v[rows] for k, v in extra.items()})
        out.append(_ascend(ex, chunk, pred[rows], eps, steps, step_size, bounds, objective, score, n_done))
        n_done += len(rows)
    return torch.cat(out)


def _ascend(ex, chunk: _Chunk, pred, eps, steps, step_size, bounds, objective, score, offset) -> torch.Tensor:
    x0 = chunk.x0
    x = x0.clone()
    best, best_score = x0.clone(), score(ex, x0, chunk)
    for p in range(steps):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            d = objective(ex, xr, chunk)
            (grad,) = torch.autograd.grad(d.sum(), xr)
        if p == 0:
            flat = (grad.flatten(1) == 0).all(1)
            if bool(flat.any()):
                rows = (flat.nonzero().flatten() + offset).tolist()
                warnings.warn(
                    f"the attack objective has a zero gradient for samples {rows[:10]}: their explanation is "
                    "locally constant in the input (a ReLU network without a softplus surrogate?); they stay put",
                    RuntimeWarning, stacklevel=4)
        candidate = _project_linf(x + step_size * grad.sign(), x0, eps, bounds)
        keep = ex.predict(candidate, chunk.sample) == pred  # a step that changes the label is undone (Algorithm 1)
        x = torch.where(per_sample(keep, x0), candidate, x)
        s = score(ex, x, chunk)
        better = keep & (s > best_score)
        best = torch.where(per_sample(better, x0), x, best)
        best_score = torch.where(better, s, best_score)
    return best


def _validate_common(owner, model, inputs, eps, steps, step_size, bounds, method, method_options, surrogate_beta,
                     reduce, input_transform, batch_size, call):
    x = _check_inputs(inputs, owner)
    eps = _positive("eps", eps, allow_inf=True)
    steps = _steps(steps)
    if step_size is None:
        if math.isinf(eps):
            raise ValueError("step_size must be given when eps is infinite")
        step_size = 2.5 * eps / steps
    step_size = _positive("step_size", step_size)
    box = check_bounds(owner, x, bounds)
    ex = _maps(model, method, method_options, surrogate_beta, reduce, input_transform, batch_size, x, call)
    return x, eps, steps, step_size, box, ex


def _squared_shift(m: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """‖C(m) − c0‖² per sample, −inf where the map has no mass (and so no centre); differentiable."""
    alive = m.flatten(1).sum(1) > 0
    out = torch.full((m.shape[0],), -math.inf, dtype=m.dtype, device=m.device)
    if bool(alive.any()):
        out = out.index_put((alive,), (center_of_mass(m[alive]) - c0[alive]).pow(2).sum(1))
    return out


def _unit_sum(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    return flat / flat.sum(1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)


_DOC_COMMON = """eps : float
        L∞ budget ε > 0 in the inputs' units (``math.inf``: no ball, only ``bounds`` and the steps).
    steps : int
        Iterations P ≥ 1.
    step_size : float or None
        α > 0; default 2.5 ε / P (Madry et al. 2018: the ball's far side is reachable from anywhere in it).
    target : None, int or Tensor (N,)
        The explained class; default the class predicted on the clean input (also the label that must not
        change).
    method : str, Method class or Method instance
        The explanation (``"saliency"``; any method that accepts ``differentiable=True``).
    method_options : dict or None
        Options of the method (e.g. ``{"softplus_beta": β}``: the β-smoothing defence).
    surrogate_beta : "auto", None or float
        β of the softplus surrogate that gives the attack direction: ``"auto"`` uses the method's own
        ``softplus_beta`` if set, else :data:`DEFAULT_SURROGATE_BETA` for methods with that option, else the
        method as it is; None: the method as it is (on a ReLU network the direction is then zero).
    reduce : str or None
        Channels to map (``"abs_sum"``; see :mod:`tribute.core.reduce`); the map used is |reduce(φ)|.
    bounds : None or (lo, hi)
        The inputs' range (numbers, or tensors broadcasting to the inputs): iterates are clipped to it, inputs
        outside it are an error.  None: no range.
    input_transform : callable or None
        Applied before the model (e.g. ``tribute.Normalize``); ε and bounds stay in the inputs' units.
    batch_size : int or None
        Samples attacked together (each chunk runs all steps).
    forward_args, forward_kwargs : optional
        Extra arguments of every forward pass (model and explanation alike), held fixed, not attacked: tensors
        are per sample and follow their sample, ``tribute.constant(t)`` is the same for all samples.
    output : str, int, callable or None
        Which part of a structured output holds the logits (:mod:`tribute.core.outputs`).
"""
_DOC_RETURNS = """    Returns
    -------
    Tensor
        x_adv, the input's shape, dtype and device: ‖x_adv − x_t‖∞ ≤ ε, inside ``bounds``, same predicted label
        as x_t (x_t itself where no step improved the objective).
"""


def _with_common_doc(doc: str | None) -> str | None:
    """The options and result the three attacks share, written once (docstrings are None under python -OO)."""
    shared = _DOC_COMMON + "\n" + _DOC_RETURNS.rstrip()
    return None if doc is None else doc.replace("<common options and returns>", shared)


def topk_attack(model: nn.Module, inputs: torch.Tensor, *, k: int, eps: float, steps: int = 50,
                step_size: float | None = None, target=None, method="saliency", method_options=None,
                surrogate_beta="auto", reduce: str | None = "abs_sum", bounds=None, input_transform=None,
                batch_size: int | None = None, forward_args=None, forward_kwargs=None, output=None) -> torch.Tensor:
    """Ghorbani et al. (2019) top-k attack: move the map's mass away from its k most important features.

    Maximises D(x) = −Σ_{i∈B} m̂_i(x), B the k largest entries of the real map of x_t and m̂ the surrogate
    map normalised to unit sum (so that shrinking the whole map, which leaves its ranking as it was, does not
    count), by projected signed steps; keeps the label-preserving iterate with the lowest top-k intersection
    (:func:`tribute.metrics.similarity.topk_intersection`) of the real maps.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits (N, classes), in eval mode; not modified.
    inputs : Tensor (N, ...)
        The test inputs x_t.
    k : int
        The number of top features (1 ≤ k ≤ the number of entries of one map).
    <common options and returns>
    """
    x, eps, steps, step_size, box, ex = _validate_common(
        "topk_attack", model, inputs, eps, steps, step_size, bounds, method, method_options, surrogate_beta, reduce,
        input_transform, batch_size, _call(forward_args, forward_kwargs, output))
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an integer, got {k!r}")

    def prepare(ex, x, real0):
        flat = real0.flatten(1)
        check_k(k, flat.shape[1])
        top = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
        return {"top": torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True)}

    def objective(ex, xr, chunk):
        m = _unit_sum(ex.surrogate(xr, chunk.cls, chunk.sample))
        return -(m * chunk.extra["top"]).sum(1)

    def score(ex, xs, chunk):
        return -topk_intersection(chunk.real0, ex.real(xs, chunk.cls, chunk.sample), k)

    return _attack(ex, x, target, eps=eps, steps=steps, step_size=step_size, bounds=box, objective=objective,
                   score=score, prepare=prepare)


topk_attack.__doc__ = _with_common_doc(topk_attack.__doc__)


def center_attack(model: nn.Module, inputs: torch.Tensor, *, eps: float, steps: int = 50,
                  step_size: float | None = None, target=None, method="saliency", method_options=None,
                  surrogate_beta="auto", reduce: str | None = "abs_sum", bounds=None, input_transform=None,
                  batch_size: int | None = None, forward_args=None, forward_kwargs=None, output=None) -> torch.Tensor:
    """Ghorbani et al. (2019) centre-of-mass attack: move the map's centre of mass as far as possible.

    Maximises D(x) = ‖C(m(x)) − C(m(x_t))‖², C the centre of mass (:func:`tribute.metrics.similarity.
    center_of_mass`) of the surrogate map at x and of the real map at x_t (squared: the same signed steps,
    smooth at the start); keeps the label-preserving iterate whose real map's centre moved furthest.  A sample
    whose clean map is zero everywhere has no centre: ValueError.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits (N, classes), in eval mode; not modified.
    inputs : Tensor (N, C, H, W) (or any (N, 1, *spatial))
        The test inputs x_t.
    <common options and returns>
    """
    x, eps, steps, step_size, box, ex = _validate_common(
        "center_attack", model, inputs, eps, steps, step_size, bounds, method, method_options, surrogate_beta, reduce,
        input_transform, batch_size, _call(forward_args, forward_kwargs, output))

    def prepare(ex, x, real0):
        return {"c0": center_of_mass(real0)}

    def objective(ex, xr, chunk):
        d = _squared_shift(ex.surrogate(xr, chunk.cls, chunk.sample), chunk.extra["c0"])
        return torch.where(torch.isfinite(d), d, torch.zeros_like(d))  # a map without mass: no direction

    def score(ex, xs, chunk):
        d = _squared_shift(ex.real(xs, chunk.cls, chunk.sample), chunk.extra["c0"])
        return torch.where(torch.isfinite(d), d.clamp_min(0).sqrt(), d)  # a map without mass is never chosen

    return _attack(ex, x, target, eps=eps, steps=steps, step_size=step_size, bounds=box, objective=objective,
                   score=score, prepare=prepare)


center_attack.__doc__ = _with_common_doc(center_attack.__doc__)


#: what g is in :func:`manipulate_explanation`'s output term (``keep=``)
KEEP = ("probabilities", "logits")


def _call(forward_args, forward_kwargs, output) -> dict:
    if output in KEEP[:1]:  # the name this option had before output= picked the scores of structured outputs
        raise TypeError(f"output={output!r}: output= picks the scores of a structured output; what the "
                        "manipulation keeps is keep='probabilities' or keep='logits'")
    return {"forward_args": forward_args, "forward_kwargs": forward_kwargs, "output": output}


def manipulate_explanation(model: nn.Module, inputs: torch.Tensor, target_map: torch.Tensor, *, eps: float,
                           gamma: float, keep: str = "probabilities", steps: int = 50,
                           step_size: float | None = None, target=None, method="saliency", method_options=None,
                           surrogate_beta="auto", reduce: str | None = "abs_sum", bounds=None, input_transform=None,
                           batch_size: int | None = None, forward_args=None, forward_kwargs=None,
                           output=None) -> torch.Tensor:
    """Dombrowski et al. (2019) targeted manipulation: bring the map close to ``target_map``, keep the output.

    Minimises their loss L(x) = ‖h(x) − h_t‖² + γ ‖g(x) − g(x_t)‖² by projected signed steps, with h the importance
    map normalised to unit sum (surrogate for the direction, real for the choice), h_t the target map made an
    importance map the same way (|reduce(·)|, unit sum) and g the model's softmax probabilities (``keep=
    "probabilities"``, the paper's "vector of all class probabilities") or logits (``keep="logits"``); keeps the
    label-preserving iterate with the lowest L on the real model.  Dombrowski et al. report the size of the
    perturbation rather than bound it; here the budget ε bounds it as in the attacks above (``eps=math.inf`` drops
    the ball).

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits (N, classes), in eval mode; not modified.
    inputs : Tensor (N, ...)
        The inputs x_t.
    target_map : Tensor
        h_t: one map per sample, the shape of an attribution or of its map (N, 1, *spatial), non-zero.
    gamma : float
        γ ≥ 0, the weight of keeping the output; no default, as it depends on the sizes of both terms: the map
        term of unit-sum maps is of order 1/d (d the map's entries), the output term of order Δp².  On the
        28 × 28 Fashion-MNIST fixture γ = 1 keeps probabilities within 0.01 (tests/test_explanation_attacks.py).
    keep : str
        ``"probabilities"`` or ``"logits"``: what g is (the output kept).
    <common options and returns>
    """
    x, eps, steps, step_size, box, ex = _validate_common(
        "manipulate_explanation", model, inputs, eps, steps, step_size, bounds, method, method_options,
        surrogate_beta, reduce, input_transform, batch_size, _call(forward_args, forward_kwargs, output))
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0 or math.isinf(gamma):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(map(repr, KEEP))}; got {keep!r}")
    if not isinstance(target_map, torch.Tensor):
        raise TypeError(f"target_map must be a tensor, got {type(target_map).__name__}")
    if not target_map.is_floating_point() or not bool(torch.isfinite(target_map).all()):
        raise ValueError("target_map must be a finite floating-point tensor")
    gamma = float(gamma)

    def prepare(ex, x, real0):
        h_t = target_map.detach().to(device=x.device, dtype=real0.dtype)
        if h_t.shape != real0.shape and reduce is not None and h_t.dim() >= 3:
            h_t = as_map(h_t, reduce)
        if h_t.shape != real0.shape:
            raise ValueError(f"target_map must have the shape of the maps, {tuple(real0.shape)}, or of the "
                             f"attributions before reduce={reduce!r}; got {tuple(target_map.shape)}")
        mass = h_t.abs().flatten(1).sum(1)
        if bool((mass == 0).any()):
            rows = (mass == 0).nonzero().flatten().tolist()
            raise ValueError(f"target_map is zero everywhere for samples {rows[:10]}: no shape to move towards")
        return {"h_t": _unit_sum(h_t.abs()), "g0": g0}

    def g(out):
        return F.softmax(out, dim=1) if keep == "probabilities" else out

    with torch.no_grad():
        g0 = torch.cat([g(ex.outputs(c, s)) for c, s in _chunks(ex, x)])

    def loss(h, xs, chunk):
        with torch.enable_grad() if xs.requires_grad else torch.no_grad():
            out_term = (g(ex.outputs(xs, chunk.sample)) - chunk.extra["g0"]).pow(2).sum(1)
        return (_unit_sum(h) - chunk.extra["h_t"]).pow(2).sum(1) + gamma * out_term

    def objective(ex, xr, chunk):
        return -loss(ex.surrogate(xr, chunk.cls, chunk.sample), xr, chunk)

    def score(ex, xs, chunk):
        return -loss(ex.real(xs, chunk.cls, chunk.sample), xs, chunk)

    return _attack(ex, x, target, eps=eps, steps=steps, step_size=step_size, bounds=box, objective=objective,
                   score=score, prepare=prepare)


manipulate_explanation.__doc__ = _with_common_doc(manipulate_explanation.__doc__)
