"""What the two mask games share (Fong & Vedaldi 2017; Fong, Patrick & Vedaldi 2019): the image checked, the
masks' regularisers, the optimisers, and one optimisation step taken row by row in chunks of ``batch_size``.

Both games optimise one mask per row (a sample, or a sample and an area) by gradient descent through the model.
Every row's objective depends on its own mask only, so the gradient of the sum over a chunk of rows is each row's
own gradient: rows are taken in chunks of ``batch_size`` (forward and backward), and a sample gets the same mask
alone or in any batch.  The optimisers act elementwise, which keeps that independence.  Only the masks are
differentiated (``torch.autograd.grad`` with respect to them): the model's parameters, their ``requires_grad``
and their ``.grad`` are never touched.  Unlike the forward-only perturbation methods these passes cannot run
under ``torch.inference_mode()``: each needs its backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import SimpleNamespace

import torch

from ...core import options as opt
from ...core.engine import chunk_rows, disconnected, record_passes
from ...core.targets import Target
from ..image_input import image_of

#: options both games take
GAME_OPTIONS = {
    "differentiable": opt.Option(False, opt.refused("the map is an optimised mask, not a differentiable function "
                                                    "of the inputs")),
    "softmax": opt.Option(True, opt.boolean, "score the target's softmax probability (else the raw score); a "
                                             "callable target receives the softmax output"),
}


def image_in(x: torch.Tensor, o: SimpleNamespace, name: str) -> torch.Tensor:
    """The image the game masks, (N, C, H, W), or a clear error for other inputs."""
    image = image_of(x, o)
    if image.dim() != 4:
        raise ValueError(f"{name} explains images (N, C, H, W); got an input of shape {tuple(image.shape)}")
    return image.detach()


def total_variation(m: torch.Tensor, beta: float) -> torch.Tensor:
    """TV_β(m) = Σ_u ‖∇m(u)‖_β^β = Σ_u |m(u + e_x) − m(u)|^β + |m(u + e_y) − m(u)|^β per row of (R, 1, H, W)
    masks (Fong & Vedaldi 2017, Eq 4; forward differences, pairs inside the image only)."""
    # torch.diff gives contiguous differences, whose backward is far faster than that of two slices
    dx = torch.diff(m, dim=-1).abs().pow(beta).flatten(1).sum(1)
    dy = torch.diff(m, dim=-2).abs().pow(beta).flatten(1).sum(1)
    return dx + dy


def target_scores(out: torch.Tensor, target: Target, sample: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
    """One score per row: the target's softmax probability (``softmax=True``) or raw score."""
    return target.scores(out.softmax(dim=1) if o.softmax else out, sample)


class Adam:
    """Adam (Kingma & Ba 2015) with its default β₁ = 0.9, β₂ = 0.999, ε = 1e-8, elementwise (rows independent)."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def step(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        self.t += 1
        self.m = (1 - b1) * g if self.m is None else b1 * self.m + (1 - b1) * g
        self.v = (1 - b2) * g * g if self.v is None else b2 * self.v + (1 - b2) * g * g
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return p - self.lr * m_hat / (v_hat.sqrt() + self.eps)


class Momentum:
    """Gradient descent with momentum as an exponential average of the gradients, v ← μv + (1 − μ)g, p ← p − lr·v
    (the authors' release of extremal perturbation: SGD whose dampening equals its momentum)."""

    def __init__(self, lr: float, momentum: float):
        self.lr, self.mu = lr, momentum
        self.v: torch.Tensor | None = None

    def step(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        self.v = (1 - self.mu) * g if self.v is None else self.mu * self.v + (1 - self.mu) * g
        return p - self.lr * self.v


def row_gradients(params: torch.Tensor, objective: Callable[[torch.Tensor, torch.Tensor], tuple],
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """∂J_r/∂params_r and J_r for every row r, in chunks of ``batch_size`` rows.

    ``objective(leaf, rows)`` gets the chunk's parameters (a leaf that requires grad) and their row indices and
    returns the rows' two terms of J: the model's (checked to reach the mask through autograd) and the
    regulariser's.  The model's backward pass runs once per chunk.
    """
    grads, values = [], []
    for rows in chunk_rows(params.shape[0], batch_size):
        r = torch.arange(rows.start, rows.stop)
        leaf = params[rows.start:rows.stop].detach().requires_grad_()
        with torch.enable_grad():
            model_term, regular = objective(leaf, r)
            g = None
            if model_term.requires_grad:
                (g,) = torch.autograd.grad(model_term.sum(), leaf, allow_unused=True,
                                           retain_graph=regular.requires_grad)  # the two may share the mask's graph
            if g is None:  # e.g. the model detaches its input, or its head: its score has no gradient to the mask
                raise disconnected("the mask")
            if regular.requires_grad:
                g = g + torch.autograd.grad(regular.sum(), leaf)[0]
        record_passes(backward=len(r))
        grads.append(g)
        values.append((model_term + regular).detach())
    return torch.cat(grads), torch.cat(values)


def iterations(steps: int, progress) -> Iterable[int]:
    """range(steps), with a progress bar over the iterations when ``progress`` is True or a label."""
    if not progress:
        return range(steps)
    from tqdm.auto import tqdm

    return tqdm(range(steps), desc=progress if isinstance(progress, str) else "iterations", unit="it", leave=False)
