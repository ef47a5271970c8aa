"""Extremal perturbation (Fong, Patrick & Vedaldi 2019, "Understanding deep networks via extremal perturbations
and smooth masks", §3): for an area a, the smooth mask of that area whose preserved region keeps the target's
score highest (the preservation game; ``game="delete"``: whose deleted region lowers it most),

    m_a = argmax_{m ∈ M, ‖m‖₁ = a|Ω|} f_c(m ⊗ x)        (Eq 1; delete: argmin f_c((1 − m) ⊗ x)).

The area constraint is the ranking regulariser R_a(m) = ‖vecsort(m) − r_a‖² / |Ω| (Eq 3; r_a holds (1 − a)|Ω|
zeros then a|Ω| ones: the constraint holds exactly when m is binary with a|Ω| ones), here a mean over the |Ω|
pixels as in the authors' release so that λ does not scale with the image.  The energy −f_c(m ⊗ x) + λ_t R_a(m)
is minimised by gradient descent with momentum on the grid values m̄ of the smooth mask (:mod:`.smooth_masks`,
projected onto [0, 1] after every step, starting from 1), with λ_t = λ₀ γ^t growing so the constraint is
approached gradually and enforced at the end (the schedule of the release: λ₀ = 300 (``area_weight``),
γ = 1.0035 (``area_growth``), learning rate 0.01 (``lr``), momentum 0.9, 800 iterations (``steps``)).  m ⊗ x is
the blur perturbation of :func:`.smooth_masks.perturb` (``levels``, σ_max = ``sigma``).  The score is the raw
target score, as in the release (``softmax=True``: its probability).  ``flip=True`` mirrors the perturbed image
horizontally on every other iteration (the release's jitter; the paper's §3 has none, so it is off by default).

Several areas.  ``area=(a₁, …, a_A)`` optimises the N·A masks in one batched optimisation: the N·A rows (sample-
major) go through the model together in chunks of ``batch_size``, each row with its own mask and area, and a row's
mask is the one a call with that area alone gives.  The map is then the mean of the A masks, (N, 1, H, W) (for
one area, its mask); each area's masks stay in ``explainer.masks``, (N, A, H, W), for the calling thread, and
``explainer.objective`` holds every iteration's energy, (steps, N, A).

Defaults are those of the release for 224 × 224 images: ``cell=7`` pixels between grid points, kernel σ = 21
(``smoothness``), T = 0.05 (``temperature``), 8 blur levels up to σ_max = 20.  Cost: ``steps`` forward and
backward passes of N·A rows.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import torch

from ...core import options as opt
from ...core.engine import accumulation_dtype
from ...core.method import Method
from ...core.registry import register as register_method
from ...core.targets import Target
from ..image_input import INPUT_INDEX_OPTION, ImageMethod, with_image
from .mask_games import GAME_OPTIONS, Momentum, image_in, iterations, row_gradients, target_scores
from .smooth_masks import SmoothMasks, blur_pyramid, perturb


def check_areas(name: str, v) -> tuple[float, ...]:
    """``area``: a number in (0, 1) or a non-empty tuple of them."""
    values = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if not values:
        raise ValueError(f"{name} must be a number in (0, 1) or a tuple of them, got an empty {type(v).__name__}")
    for a in values:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
            raise ValueError(f"{name} must be a number in (0, 1) or a tuple of them (a fraction of the image's "
                             f"pixels), got {a!r}")
    return tuple(float(a) for a in values)


def ranking_regulariser(m: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """R_a(m) = mean_k (vecsort(m)_k − r_k)² per row of masks (R, 1, H, W) against sorted references (R, H·W)."""
    return (m.flatten(1).sort(dim=1, stable=True).values - reference).pow(2).mean(1)


def area_references(areas: tuple[float, ...], pixels: int, size: tuple[int, int], *, dtype, device) -> torch.Tensor:
    """r_a for each area, (A, pixels): (1 − a)|Ω| zeros then a|Ω| ones (a|Ω| rounded), refused when empty or full."""
    refs = torch.zeros(len(areas), pixels, dtype=dtype, device=device)
    for k, a in enumerate(areas):
        ones = round(a * pixels)
        if not 0 < ones < pixels:
            raise ValueError(f"area={a} is {ones} of the {size[0]} × {size[1]} image's pixels: choose an area that "
                             "keeps at least one pixel and leaves at least one")
        refs[k, pixels - ones:] = 1
    return refs


@register_method("extremal_perturbation")
class ExtremalPerturbation(ImageMethod, Method):
    """Extremal perturbation (Fong, Patrick & Vedaldi 2019): the smooth mask of a given area that preserves (or
    deletes) the most of the target's score; see the module doc."""

    returns: ClassVar[str] = "map"
    options = {
        **INPUT_INDEX_OPTION,
        **GAME_OPTIONS,
        "softmax": opt.Option(False, opt.boolean, "score the target's softmax probability (default: the raw score, "
                                                  "as the release); a callable target receives the softmax output"),
        "area": opt.Option(0.1, check_areas, "the mask's area, a fraction of the image in (0, 1), or a tuple of them "
                                             "optimised together"),
        "game": opt.Option("preserve", opt.choice(("preserve", "delete")), "keep the region (preserve) or remove it"),
        "steps": opt.Option(800, opt.integer(1, 100_000), "iterations"),
        "lr": opt.Option(0.01, opt.real(0, low_open=True), "learning rate"),
        "momentum": opt.Option(0.9, opt.real(0, 1), "momentum μ (v ← μv + (1 − μ)g)"),
        "area_weight": opt.Option(300.0, opt.real(0, low_open=True), "λ₀, the area regulariser's first weight"),
        "area_growth": opt.Option(1.0035, opt.real(1), "γ: λ_t = λ₀ γ^t"),
        "cell": opt.Option(7, opt.integer(1), "pixels between the mask's grid points"),
        "smoothness": opt.Option(21.0, opt.real(0, low_open=True), "σ of the smooth max-convolution's kernel, pixels"),
        "temperature": opt.Option(0.05, opt.real(0, low_open=True), "T of the smooth max"),
        "levels": opt.Option(8, opt.integer(2), "levels of the blur pyramid"),
        "sigma": opt.Option(20.0, opt.real(0, low_open=True), "σ_max of the blur pyramid, pixels"),
        "flip": opt.Option(False, opt.boolean, "mirror the perturbed image on every other iteration (jitter)"),
    }
    # a light area weight: on tiny models the reward, not the regulariser's ties, leads the first steps
    example_options = {"steps": 4, "area": 0.5, "cell": 2, "smoothness": 2.0, "sigma": 2.0, "lr": 0.1,
                       "area_weight": 5.0}

    @property
    def masks(self) -> torch.Tensor | None:
        """Each area's masks, (N, A, H, W), of the calling thread's last call."""
        return getattr(self._last_call, "masks", None)

    @property
    def objective(self) -> torch.Tensor | None:
        """The energy of every iteration, sample and area, (steps, N, A), of the calling thread's last call."""
        return getattr(self._last_call, "objective", None)

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        image = image_in(x, o, self.name)
        n, _, h, w = image.shape
        area = check_areas("area", o.area)  # the default is not validated: a float
        areas = len(area)
        dtype = accumulation_dtype(image.dtype)
        masks = SmoothMasks((h, w), o.cell, o.smoothness, o.temperature, dtype=dtype, device=image.device)
        refs = area_references(area, h * w, (h, w), dtype=dtype, device=image.device)
        pyramid = blur_pyramid(image, o.levels, o.sigma)
        params = torch.ones(n * areas, 1, *masks.grid, dtype=dtype, device=image.device)
        optimiser = Momentum(o.lr, o.momentum)
        sign = 1 if o.game == "preserve" else -1
        history = []
        for t in iterations(o.steps, o.progress):
            weight = o.area_weight * o.area_growth**t

            def objective(leaf, rows, t=t, weight=weight):
                sample = rows // areas
                m = masks(leaf)
                kept = m if o.game == "preserve" else 1 - m
                phi = perturb(pyramid[sample], kept).to(image.dtype)
                if o.flip and t % 2 == 0:
                    phi = phi.flip(-1)
                out = o.call.forward(with_image(x[sample].detach(), phi, o), sample)
                score = target_scores(out, target, sample, o)
                return -sign * score.to(dtype), weight * ranking_regulariser(m, refs[rows % areas])

            g, value = row_gradients(params, objective, o.batch_size)
            history.append(value.view(n, areas))
            params = optimiser.step(params, g).clamp(0, 1)
        with torch.no_grad():
            final = masks(params).view(n, areas, h, w)
        self._last_call.masks = final
        self._last_call.objective = torch.stack(history)
        return final.mean(1, keepdim=True)
