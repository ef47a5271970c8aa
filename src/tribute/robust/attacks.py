"""Attacks on models: the fast gradient sign method and projected gradient descent, in L∞ and L2.

PGD (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks", §2; Zeng et al. 2021, eq 2-3)
approximates the inner maximisation of adversarial training (Nielsen et al. 2022, eq 3; Zeng et al. 2021, eq 1),
max_{δ ∈ Δ} L(x + δ, y), by projected steps from a random point of the ball Δ = {δ : ‖δ‖_p ≤ ε}:

    x_{t+1} = Π_{B(x, ε) ∩ [lo, hi]} ( x_t + α · s(∇_x L(x_t, y)) ),

with s(g) = sign(g) for L∞ (steepest ascent under ‖·‖∞) and s(g) = g / ‖g‖₂ for L2 (steepest ascent under
‖·‖₂; Zeng et al. 2021, eq 2, write sgn with an L2 ball, which is not the L2 steepest-ascent step and leaves
the ball after one step for any α > ε / √d).  FGSM (Goodfellow et al. 2015, eq 3) is one L∞ step of size ε from x.

Conventions (every attack here):

- ε, α and ``bounds`` are in the units of the inputs given (pixel space); an ``input_transform`` such as
  :class:`tribute.Normalize` is applied between the inputs and the model, so the attack's geometry stays in
  pixel space while the model sees what it was trained on.
- The loss is computed on the model's outputs (logits): cross-entropy by default, per sample; or any callable
  ``loss(logits, labels)`` returning one loss per sample.  Losses are summed for the gradient, so each sample's
  step is its own.  ``targeted=True`` descends the loss towards ``labels`` instead of ascending it.
- The returned points satisfy ``‖x' − x‖_p ≤ ε`` and ``lo ≤ x' ≤ hi`` *as computed in the input's dtype*:
  after the projection a last correction moves any coordinate that rounding put outside by an ulp.  In L2 the
  projection onto the ball is followed by clipping to the bounds, which only shortens δ, so the result lies in
  both sets (it is the exact projection onto the intersection in L∞, a feasible point in L2).
- The random start is uniform in the ball: in the L∞ box ε·U(−1, 1)^d; in the L2 ball a direction from a
  normal draw and a radius ε·U^{1/d} (d the number of input elements).  Each sample draws from its own stream,
  seeded from ``seed`` and its own values (:class:`tribute.core.randomness.SampleStreams`), so a sample's
  adversarial example does not depend on its batch-mates, its position or ``batch_size``.
- The model is put in eval mode for the attack (every submodule), and each module's mode is restored
  afterwards, also on error.  Gradients are taken with respect to the input only (``torch.autograd.grad``):
  no parameter's ``.grad`` or ``requires_grad`` changes.  A model given as a plain function hides its modules:
  one that would run in train mode (batch norm with batch statistics, dropout) is refused before the op runs
  (:mod:`tribute.core.train_guard`), so nothing has changed.
- Any input a model takes (as for the attribution methods): ``inputs`` may be a tuple of tensors, attacked
  jointly with one budget, step and bounds per input (:mod:`tribute.robust.attack_inputs`; the result has the
  inputs' structure); ``forward_args=`` / ``forward_kwargs=`` are passed to every forward pass and held fixed,
  a per-sample tensor following its sample's rows; ``output=`` picks the logits the loss reads from a
  structured output.  Integer inputs (token ids) cannot take a gradient step and are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core import options as opt
from ..core.engine import DisconnectedInputError, Forward, chunk_rows, default_batch_size, record_passes
from ..core.randomness import SampleStreams
from ..core.tensors import per_sample
from ..metrics.common import model_inputs
from .attack_inputs import (
    InputStreams,
    bounds_per_input,
    budgets,
    check_attackable,
    steps_for,
    transforms_per_input,
    with_transform,
)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NORMS = ("linf", "l2")

# Corrections of the rounding of x0 + δ: a handful always suffices (each moves the offending values towards x0).
_MAX_CORRECTIONS = 64


def fgsm(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    *,
    eps: float | tuple[float, ...],
    bounds: tuple | None = None,
    loss: Loss | None = None,
    targeted: bool = False,
    input_transform: Callable | tuple | None = None,
    batch_size: int | None = None,
    forward_args: tuple | None = None,
    forward_kwargs: dict | None = None,
    output=None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Fast gradient sign method: x' = Π_[lo, hi](x + ε · sign(∇_x L(x, y))).

    Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples", eq 3.  With
    ``targeted=True``: x' = x − ε · sign(∇_x L(x, t)) (towards class t = ``labels``).  Equal to
    :func:`pgd` with ``norm="linf"``, ``steps=1``, ``step_size=eps`` and no random start.

    Parameters
    ----------
    model : nn.Module or callable
        Maps (transformed) inputs to logits, (N, classes), or to a structured output holding them (``output=``).
    inputs : Tensor or tuple of Tensors
        (N, ...) floating point, in pixel space; must lie within ``bounds`` when given.  Several inputs are
        attacked jointly, each in its own ball (:mod:`tribute.robust.attack_inputs`).
    labels : Tensor
        (N,) class indices: the true classes (untargeted) or the target classes (``targeted=True``).
    eps : float or tuple of floats
        L∞ budget, > 0, in the units of ``inputs``; with several inputs one for all or one per input (>= 0 each,
        0 holds that input fixed).
    bounds : (lo, hi), optional
        The input domain (numbers, or tensors broadcastable to ``inputs``); the result is clipped to it.  With
        several inputs one pair for all or a tuple with one entry (None or a pair) per input.
    loss : callable, optional
        ``loss(logits, labels) -> (N,)``; default per-sample cross-entropy on the logits.
    targeted : bool
        Descend the loss towards ``labels`` instead of ascending it.
    input_transform : callable, optional
        Applied to the inputs before the model (e.g. :class:`tribute.Normalize`); one per input (a tuple) for
        several.
    batch_size : int, optional
        Most rows through the model at once (default: from the input size, as the attribution methods).
    forward_args, forward_kwargs : optional
        Extra arguments of every forward pass, held fixed (not attacked), as for the attribution methods:
        tensors are per sample and follow their sample's rows, ``tribute.constant(t)`` is the same for all.
    output : str, int or callable, optional
        Which part of a structured output holds the logits the loss reads (:mod:`tribute.core.outputs`).

    Returns
    -------
    Tensor or tuple of Tensors
        Adversarial inputs in the structure, shapes, dtype and device of ``inputs``.
    """
    return _attack(model, inputs, labels, norm="linf", eps=eps, step_size=None, steps=1, random_start=False,
                   bounds=bounds, targeted=targeted, loss=loss, seed=None, input_transform=input_transform,
                   batch_size=batch_size, owner="fgsm", step_name="eps",
                   call={"forward_args": forward_args, "forward_kwargs": forward_kwargs, "output": output})


def pgd(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float | tuple[float, ...],
    step_size: float | tuple[float, ...],
    steps: int,
    random_start: bool = True,
    bounds: tuple | None = None,
    targeted: bool = False,
    loss: Loss | None = None,
    seed: int | None = None,
    input_transform: Callable | tuple | None = None,
    batch_size: int | None = None,
    forward_args: tuple | None = None,
    forward_kwargs: dict | None = None,
    output=None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Projected gradient descent (ascent on the loss) in an L∞ or L2 ball of radius ε around each input.

    x_0 = x (+ a uniform random point of the ball), x_{t+1} = Π(x_t + α · s(±∇_x L(x_t, y))), t < ``steps``;
    returns x_T.  Madry et al. 2018, §2 and eq 2.1; Zeng et al. 2021, eq 2-3 (with the L2 steepest-ascent step
    s(g) = g / ‖g‖₂ rather than sign(g), see the module docstring).  A sample whose gradient is exactly zero does
    not move in that step.  Several inputs are attacked jointly, each in its own ball with its own step
    (:mod:`tribute.robust.attack_inputs`).

    Parameters
    ----------
    model, inputs, labels, bounds, loss, targeted, input_transform, batch_size, forward_args, forward_kwargs, output
        As in :func:`fgsm`.
    norm : {"linf", "l2"}
        The threat model: ‖δ‖∞ ≤ ε (sign steps) or ‖δ‖₂ ≤ ε (normalised-gradient steps), ‖·‖ over all of a
        sample's elements (of each input, for several).
    eps : float or tuple of floats
        The budget ε > 0, in the units of ``inputs`` (per input as in :func:`fgsm`).
    step_size : float or tuple of floats
        α > 0, in the same units (a common choice is 2.5 · ε / steps: Madry et al.'s robustness library); one
        for all inputs or one per input.
    steps : int
        Number of gradient steps, >= 1.
    random_start : bool
        Start from a uniform random point of the ball (clipped to ``bounds``) instead of x.
    seed : int, optional
        Seeds the random start (per sample, see the module docstring); None draws fresh entropy.

    Returns
    -------
    Tensor or tuple of Tensors
        Adversarial inputs in the structure, shapes, dtype and device of ``inputs``.
    """
    return _attack(model, inputs, labels, norm=norm, eps=eps, step_size=step_size, steps=steps,
                   random_start=random_start, bounds=bounds, targeted=targeted, loss=loss, seed=seed,
                   input_transform=input_transform, batch_size=batch_size, owner="pgd", step_name="step_size",
                   call={"forward_args": forward_args, "forward_kwargs": forward_kwargs, "output": output})


@dataclass(frozen=True)
class _Ball:
    """One input's constraint set and step: ‖δ‖_p ≤ eps, lo ≤ x ≤ hi, steps of size ``step``; ``streams`` draw
    its random start (None: it starts at x)."""

    eps: float
    step: float
    lo: torch.Tensor | None
    hi: torch.Tensor | None
    streams: SampleStreams | None

    def start(self, x0: torch.Tensor, sample: torch.Tensor, norm: str) -> torch.Tensor:
        if self.streams is None or self.eps == 0:
            return x0
        return project(x0 + _ball_draw(self.streams, sample, x0, self.eps, norm), x0, self.eps, norm, self.lo,
                       self.hi)

    def step_from(self, xt: torch.Tensor, g: torch.Tensor, x0: torch.Tensor, norm: str) -> torch.Tensor:
        if self.eps == 0:  # held fixed
            return x0
        return project(xt + self.step * _ascent_direction(g, norm), x0, self.eps, norm, self.lo, self.hi)


def _attack(model, inputs, labels, *, norm, eps, step_size, steps, random_start, bounds, targeted, loss, seed,
            input_transform, batch_size, owner, step_name, call):
    layout, xs = check_attackable(owner, inputs)
    eps = budgets(owner, "eps", eps, layout)
    norm = opt.choice(NORMS)(f"{owner}: norm", norm)
    steps_k = eps if step_size is None else budgets(owner, step_name, step_size, layout)
    steps_for(owner, step_name, steps_k, eps)
    steps = opt.integer(1)(f"{owner}: steps", steps)
    random_start = opt.boolean(f"{owner}: random_start", random_start)
    targeted = opt.boolean(f"{owner}: targeted", targeted)
    opt.function(f"{owner}: loss", loss)
    transform = transforms_per_input(owner, input_transform, layout)
    batch_size = opt.optional(opt.integer(1))(f"{owner}: batch_size", batch_size)
    if seed is not None:
        opt.integer(0)(f"{owner}: seed", seed)
    if not callable(model):
        raise TypeError(f"{owner}: model must be a callable nn.Module, got {type(model).__name__}")
    with _eval_mode(model):  # before the model is checked: an attack runs a module in train mode in eval mode
        view = model_inputs(model, inputs, **call)
        forward = with_transform(view, transform)
        x = view.x
        starts = InputStreams.of(view.inputs, eps, seed).streams if random_start else (None,) * layout.count
        balls = [_Ball(e, s, *check_bounds(owner if layout.single else f"{owner}: inputs[{k}]", t.detach(), b), st)
                 for k, (e, s, t, b, st) in enumerate(zip(eps, steps_k, view.inputs, bounds_per_input(bounds, layout),
                                                          starts, strict=True))]
        y = _check_labels(owner, x, labels, custom_loss=loss is not None)
        loss_fn = loss if loss is not None else _cross_entropy
        batch_size = batch_size or default_batch_size(x)
        out = torch.empty_like(x)
        with torch.enable_grad():
            for rows in chunk_rows(x.shape[0], batch_size):
                sample = torch.arange(rows.start, rows.stop)
                x0 = layout.unpack(x[rows.start:rows.stop])
                xt = [b.start(p, sample, norm) for b, p in zip(balls, x0, strict=True)]
                for t in range(steps):
                    g = _loss_gradient(forward, loss_fn, xt, y[rows.start:rows.stop], sample, owner, check=t == 0)
                    g = [-d for d in g] if targeted else g
                    xt = [b.step_from(p, d, q, norm) for b, p, d, q in zip(balls, xt, g, x0, strict=True)]
                out[rows.start:rows.stop] = layout.pack(xt)
    return layout.result(out)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def _loss_gradient(forward: Forward, loss_fn, xs, y, sample, owner, check) -> tuple[torch.Tensor, ...]:
    """∇_x Σ_i L(x_i, y_i) for each input: one forward and one backward pass, to the inputs only."""
    layout = forward.layout
    leaf = layout.pack([t.detach() for t in xs]).detach().requires_grad_()
    logits = forward(leaf, sample)
    if check and loss_fn is _cross_entropy:
        _check_classes(owner, logits, y)
    losses = loss_fn(logits, y)
    if not isinstance(losses, torch.Tensor) or losses.shape != (leaf.shape[0],):
        got = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"{owner}: loss must return one loss per sample, shape ({leaf.shape[0]},); got {got}")
    g = torch.autograd.grad(losses.sum(), leaf, allow_unused=True)[0] if losses.requires_grad else None
    if g is None:
        raise DisconnectedInputError(f"{owner}: the loss does not depend on the input through autograd "
                                     "(a torch.no_grad() or .detach() in the model or the loss?)")
    record_passes(backward=leaf.shape[0])  # the forward rows are counted by the forward itself
    return layout.unpack(g)


def _ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit ‖·‖_p norm: sign(g) for L∞, g / ‖g‖₂ for L2 (0 where g = 0)."""
    if norm == "linf":
        return g.sign()
    n = _norms(g)
    return g / per_sample(torch.where(n > 0, n, torch.ones_like(n)), g)


def _ball_draw(streams: SampleStreams, sample: torch.Tensor, x0: torch.Tensor, eps: float, norm: str):
    """A uniform point of the ε-ball for each row, from the row's own stream."""
    shape = tuple(x0.shape[1:])
    kw = {"dtype": torch.float64, "device": x0.device}
    if norm == "linf":
        u = streams.draw("uniform", sample, shape, **kw)
        return ((2 * u - 1) * eps).to(x0.dtype)
    z = streams.draw("normal", sample, shape, **kw)
    u = streams.draw("uniform", sample, (1,), **kw)
    direction = z / per_sample(_norms(z).clamp_min(1e-300), z)
    radius = eps * u.squeeze(1) ** (1.0 / x0[0].numel())
    return (direction * per_sample(radius, z)).to(x0.dtype)


def project(x: torch.Tensor, x0: torch.Tensor, eps: float, norm: str, lo, hi) -> torch.Tensor:
    """Π onto {‖x − x0‖_p ≤ ε} then onto [lo, hi]; then any rounding excess is removed (see module docstring)."""
    if norm == "linf":
        x = torch.maximum(torch.minimum(x, x0 + eps), x0 - eps)
    else:
        d = x - x0
        n = _norms(d)
        x = x0 + d * per_sample(eps / torch.where(n > eps, n, torch.full_like(n, eps)), d)
    x = _clip(x, lo, hi)
    u = torch.finfo(x.dtype).eps
    for k in range(_MAX_CORRECTIONS):
        d = x - x0
        if norm == "linf":
            over = d.abs() > eps
            if not bool(over.any()):
                return x
            x = torch.where(over, torch.nextafter(x, x0), x)
        else:
            n = _norms(d)
            over = n > eps
            if not bool(over.any()):
                return x
            shrink = torch.where(over, eps / n * (1 - 2 ** (k + 1) * u), torch.ones_like(n))
            x = _clip(torch.where(per_sample(over, d), x0 + d * per_sample(shrink, d), x), lo, hi)
    raise RuntimeError("could not bring the adversarial point inside the ε-ball in the input's precision")


def _clip(x: torch.Tensor, lo, hi) -> torch.Tensor:
    return x if lo is None else torch.minimum(torch.maximum(x, lo), hi)


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def check_bounds(owner: str, x: torch.Tensor, bounds):
    if bounds is None:
        return None, None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"{owner}: bounds must be a pair (lo, hi) or None, got {bounds!r}")
    lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in bounds)
    try:
        torch.broadcast_shapes(lo.shape, x.shape)
        torch.broadcast_shapes(hi.shape, x.shape)
    except RuntimeError as e:
        raise ValueError(f"{owner}: bounds must broadcast to the inputs' shape {tuple(x.shape)}; "
                         f"got shapes {tuple(lo.shape)} and {tuple(hi.shape)}") from e
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError(f"{owner}: bounds must be finite (use bounds=None for an unbounded domain)")
    if not bool((lo < hi).all()):
        raise ValueError(f"{owner}: bounds (lo, hi) need lo < hi, got {bounds!r}")
    outside = ((x < lo) | (x > hi)).flatten(1).any(1)
    if bool(outside.any()):
        rows = outside.nonzero().flatten().tolist()
        raise ValueError(
            f"{owner}: inputs lie outside bounds={bounds!r} (samples {rows[:10]}{'…' if len(rows) > 10 else ''}; "
            f"values in [{x.min().item():.6g}, {x.max().item():.6g}]). Give inputs in the declared range, e.g. "
            "pixel values before normalisation with input_transform= for the model's normalisation"
        )
    return lo, hi


def _check_labels(owner: str, x: torch.Tensor, labels, *, custom_loss: bool) -> torch.Tensor:
    n = x.shape[0]
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{owner}: labels must be a tensor with one label per sample, got {type(labels).__name__}")
    if custom_loss:  # a custom loss may take any per-sample labels (soft labels, regression targets)
        if labels.dim() == 0 or labels.shape[0] != n:
            raise ValueError(f"{owner}: labels need one entry per sample along dim 0 ({n}); "
                             f"got shape {tuple(labels.shape)}")
        return labels.to(x.device)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{owner}: labels must hold class indices (integers), got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{owner}: labels must have shape ({n},), one class per sample; got {tuple(labels.shape)}")
    if bool((labels < 0).any()):
        raise ValueError(f"{owner}: labels must be class indices >= 0, got {int(labels.min())}")
    return labels.to(x.device, torch.long)


def _check_classes(owner: str, logits: torch.Tensor, y: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"{owner}: cross-entropy needs logits of shape (N, classes); the model returned "
                         f"{tuple(logits.shape)}. Pass loss= for other outputs")
    if bool((y >= logits.shape[1]).any()):
        raise ValueError(f"{owner}: label {int(y.max())} is out of range for a model with {logits.shape[1]} "
                         "outputs")


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Every submodule in eval mode inside; each module's own flag restored after (mixed modes survive)."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training
