"""Adversarial training (Madry et al. 2018): the min-max problem of Nielsen et al. 2022, eq 3
and Zeng et al. 2021, eq 1.

    min_θ E_{(x, y) ∼ D} [ max_{‖δ‖_p ≤ ε} L(f_θ(x + δ), y) ]

The inner maximisation is approximated by PGD (:func:`tribute.robust.pgd`, Zeng et al. 2021, eq 2-3) on every training
batch, with the model in eval mode and a fresh random start per batch and epoch; the outer minimisation is a
gradient step on the loss at the adversarial points (Danskin's theorem, Madry et al. §2.1), taken by
:func:`tribute.training.fit` (the library's one trainer), which provides checkpoints, resumption, the
progress bar and the history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core import options as opt
from ..training import History, accuracy, fit
from .attacks import NORMS, pgd

#: PGD step size α = STEP_FACTOR · ε / steps by default: the rule of thumb of Madry et al.'s robustness
#: library (the iterates can travel 2.5 ε in all, enough to cross the ball and come back to its boundary).
STEP_FACTOR = 2.5


def adversarial_train(
    model: nn.Module,
    train_data,
    *,
    norm: str,
    eps: float,
    steps: int,
    step_size: float | None = None,
    bounds: tuple | None = None,
    random_start: bool = True,
    seed: int = 0,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    input_transform: Callable | None = None,
    eval_data=None,
    eval_steps: int | None = None,
    eval_step_size: float | None = None,
    eval_batch_size: int = 256,
    metrics: dict[str, Callable[[nn.Module], float]] | None = None,
    **training: Any,
) -> History:
    """Train ``model`` on PGD adversarial examples of its own training batches (Madry et al. 2018, eq 2.1).

    Each step: x' = PGD_{norm, ε}(model, x, y) (``steps`` steps of size α from a random start, clipped to
    ``bounds``), then an optimizer step on mean L(f(x'), y).  After each epoch the history records, besides the
    trainer's ``loss`` and ``train_accuracy`` (both on the adversarial batches), the clean ``accuracy`` and the
    ``robust_accuracy`` under PGD on ``eval_data`` when it is given.

    Parameters
    ----------
    model : nn.Module
        Trained in place and left in eval mode (see :mod:`tribute.training`).
    train_data
        (inputs, labels) pair or iterable of batches, inputs in pixel space (the units of ``eps``).  The inputs
        are one tensor: the trainer (:func:`tribute.training.fit`) calls ``model(x)``, so a pair whose inputs are
        a tuple of tensors is refused.
    norm : {"linf", "l2"}
        Threat model of the inner maximisation.
    eps : float
        Radius ε > 0 of the ball, in the units of the inputs.
    steps : int
        PGD steps per training batch, >= 1.
    step_size : float, optional
        PGD step α; default 2.5 · ε / steps.
    bounds : (lo, hi), optional
        Input domain for the attack, e.g. (0, 1) for images; the inputs must lie in it.
    random_start : bool
        Start PGD at a uniform random point of the ball (fresh for every batch and epoch, from ``seed``).
    loss : callable, optional
        ``loss(logits, labels) -> (N,)``: both maximised by the attack and minimised by training; default
        cross-entropy.
    input_transform : callable, optional
        Applied to inputs before the model, in training and attack alike (e.g. :class:`tribute.Normalize`).
    eval_data : optional
        Data for the per-epoch clean and robust accuracy.
    eval_steps, eval_step_size : optional
        PGD of the robust-accuracy evaluation (default: ``steps`` and 2.5 · ε / eval_steps), with a random start
        seeded once, so every epoch is evaluated against the same draws.  For a robustness claim, evaluate the
        final model with a stronger attack (more steps, several restarts).
    seed, eval_batch_size, metrics
        As in :func:`tribute.training.fit` (``seed`` also seeds the attacks' random starts).
    **training
        The trainer's own options, passed to :func:`tribute.training.fit`: ``epochs`` and ``lr`` (required),
        ``optimizer``, ``momentum``, ``weight_decay``, ``batch_size``, ``checkpoint``, ``resume``, ``progress``,
        ``log``.

    Returns
    -------
    History
        Per-epoch ``loss``, ``train_accuracy``, and with ``eval_data`` ``accuracy`` and ``robust_accuracy``.
    """
    for name, data in (("train_data", train_data), ("eval_data", eval_data)):
        _refuse_several_inputs(name, data)
    taken = sorted({"perturb", "config"} & set(training))
    if taken:
        raise TypeError(f"adversarial_train sets fit's {', '.join(taken)} itself (the PGD attack and its settings)")
    norm = opt.choice(NORMS)("norm", norm)
    eps = opt.real(0.0, low_open=True)("eps", eps)
    steps = opt.integer(1)("steps", steps)
    step_size = STEP_FACTOR * eps / steps if step_size is None else opt.real(0.0, low_open=True)("step_size",
                                                                                                 step_size)
    eval_steps = steps if eval_steps is None else opt.integer(1)("eval_steps", eval_steps)
    eval_step_size = (STEP_FACTOR * eps / eval_steps if eval_step_size is None
                      else opt.real(0.0, low_open=True)("eval_step_size", eval_step_size))
    random_start = opt.boolean("random_start", random_start)
    attack = {"norm": norm, "eps": eps, "random_start": random_start, "bounds": bounds, "loss": loss,
              "input_transform": input_transform}

    def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        return pgd(model, x, y, step_size=step_size, steps=steps, seed=seed, batch_size=len(x), **attack)

    metrics = dict(metrics or {})
    if eval_data is not None:
        if "robust_accuracy" in metrics:
            raise ValueError("metric name 'robust_accuracy' is taken by adversarial_train's own record")
        eval_seed = seed

        def robust_accuracy(model: nn.Module) -> float:
            def attack_eval(m, x, y):
                return pgd(m, x, y, step_size=eval_step_size, steps=eval_steps, seed=eval_seed, **attack)
            return accuracy(model, eval_data, batch_size=eval_batch_size, perturb=attack_eval,
                            input_transform=input_transform)

        metrics["robust_accuracy"] = robust_accuracy
    return fit(model, train_data, seed=seed, loss=loss, perturb=perturb, input_transform=input_transform,
               eval_data=eval_data, eval_batch_size=eval_batch_size, metrics=metrics, **training,
               config={"norm": norm, "eps": eps, "steps": steps, "step_size": step_size, "random_start": random_start,
                       "bounds": bounds, "eval_steps": eval_steps, "eval_step_size": eval_step_size,
                       "custom_loss": loss is not None})


def _refuse_several_inputs(name: str, data) -> None:
    """A pair (inputs, labels) whose inputs are several tensors: the trainer takes one input tensor."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (tuple, list)):
        raise TypeError(f"adversarial_train: {name} holds several inputs ({type(data[0]).__name__} of "
                        f"{len(data[0])}); it trains with tribute.training.fit, which calls model(x) on one input "
                        "tensor. Attack several inputs with tribute.robust.pgd and train with your own loop")
