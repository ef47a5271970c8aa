"""Meaningful perturbation (Fong & Vedaldi 2017, "Interpretable explanations of black boxes by meaningful
perturbation", Eq 3–4 and §4): the deletion game.

A mask m ∈ [0, 1] (1 keeps a pixel, 0 deletes it) blends the image with a blurred copy,
Φ(x; m) = m ⊙ x + (1 − m) ⊙ blur_σ(x), and is learned by minimising

    λ₁ ‖1 − m‖₁ + λ₂ TV_β(m) + E_τ[f_c(Φ(x(· − τ); m))],      TV_β(m) = Σ_u |∂_x m(u)|^β + |∂_y m(u)|^β,

with Adam from m = 1 (nothing deleted), projecting m onto [0, 1] after every step.  The smallest deletion that
drops the target's score is the explanation: the attribution is the deleted region 1 − m, a map (N, 1, H, W).

The mask.  As in §4 the mask is learned at a lower resolution (one value per ``cell`` × ``cell`` pixels, 28 × 28
on a 224 × 224 image with the default ``cell=8``) and upsampled bilinearly (``align_corners=False``) to the image;
the two regularisers are sums over the upsampled mask's pixels, the lattice Eq 4 sums over, so λ₁ and λ₂ keep
their meaning whatever the cell size.

Defaults (§4, for 224 × 224 images and softmax probabilities f_c ∈ [0, 1]): λ₁ = 1e-4 (``l1_weight``), λ₂ = 1e-2
(``tv_weight``), β = 3 (``tv_beta``), Adam with learning rate 0.1 (``lr``) for 500 iterations (``steps``), blur
σ = 10 pixels (``sigma``).  Deleting a fraction a of a 224 × 224 image then costs 5.0·a against a probability:
the objective's terms are of one order.  On other image sizes λ₁ and λ₂ may need scaling with the pixel count.

Jitter.  Eq 4 averages the score over small random translations τ of the image (the expectation E_τ) against
artifacts; ``jitter=J`` draws τ uniformly from {−J, …, J}² at every iteration (the image and its blurred copy
shifted together, replicating the border), from per-sample streams seeded by ``seed`` keyed by the image: a
sample gets the same translations alone or in any batch.  ``jitter=0`` (the default) optimises the plain
objective of Eq 3 with the TV term; ``seed=`` is then refused, since nothing is drawn.

Cost: ``steps`` forward and backward passes of every sample, in chunks of ``batch_size`` rows.  After a call,
``explainer.objective`` holds the objective of every iteration, (steps, N), for the calling thread.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...core import options as opt
from ...core.baselines import gaussian_blur
from ...core.engine import accumulation_dtype
from ...core.method import Method
from ...core.randomness import SampleStreams
from ...core.registry import register as register_method
from ...core.targets import Target
from ..image_input import INPUT_INDEX_OPTION, ImageMethod, with_image
from .mask_games import GAME_OPTIONS, Adam, image_in, iterations, row_gradients, target_scores, total_variation


@register_method("meaningful_perturbation")
class MeaningfulPerturbation(ImageMethod, Method):
    """Meaningful perturbation (Fong & Vedaldi 2017): the deleted region 1 − m of the learned deletion mask.

    See the module doc for the objective, the defaults and the jitter.  ``explainer.objective`` holds the
    objective per iteration and sample of the calling thread's last call.
    """

    returns: ClassVar[str] = "map"
    options = {
        **INPUT_INDEX_OPTION,
        **GAME_OPTIONS,
        "steps": opt.Option(500, opt.integer(1, 100_000), "Adam iterations"),
        "lr": opt.Option(0.1, opt.real(0, low_open=True), "Adam's learning rate"),
        "cell": opt.Option(8, opt.integer(1), "pixels per mask value along each axis (the mask's resolution)"),
        "sigma": opt.Option(10.0, opt.real(0, low_open=True), "σ of the Gaussian blur, in pixels"),
        "l1_weight": opt.Option(1e-4, opt.real(0), "λ₁, the weight of the deleted area ‖1 − m‖₁"),
        "tv_weight": opt.Option(1e-2, opt.real(0), "λ₂, the weight of the total variation TV_β(m)"),
        "tv_beta": opt.Option(3.0, opt.real(1), "β of the total variation"),
        "jitter": opt.Option(0, opt.integer(0), "largest random translation of the image per iteration, pixels"),
        "seed": opt.Option(None, opt.optional(opt.integer(0)), "seed of the jitter's translations"),
    }
    example_options = {"steps": 4, "cell": 2, "sigma": 1.0, "l1_weight": 1e-5}

    @property
    def objective(self) -> torch.Tensor | None:
        """The objective of every iteration and sample, (steps, N), of the calling thread's last call."""
        return getattr(self._last_call, "objective", None)

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        image = image_in(x, o, self.name)
        if o.seed is not None and o.jitter == 0:
            raise ValueError("seed= draws the jitter's translations; with jitter=0 nothing is random: drop seed= or "
                             "set jitter=")
        n, _, h, w = image.shape
        dtype = accumulation_dtype(image.dtype)
        blurred = gaussian_blur(image, o.sigma)
        m = torch.ones(n, 1, math.ceil(h / o.cell), math.ceil(w / o.cell), dtype=dtype, device=image.device)
        adam = Adam(o.lr)
        streams = SampleStreams(image, o.seed) if o.jitter else None
        history = []
        for _ in iterations(o.steps, o.progress):
            shift = None if streams is None else _draw_shifts(streams, n, o.jitter)

            def objective(leaf, rows, shift=shift):
                up = F.interpolate(leaf, size=(h, w), mode="bilinear", align_corners=False)
                img, blur = image[rows], blurred[rows]
                if shift is not None:
                    img, blur = _translated(img, shift[rows]), _translated(blur, shift[rows])
                phi = (up * img + (1 - up) * blur).to(image.dtype)
                score = target_scores(o.call.forward(with_image(x[rows].detach(), phi, o), rows), target, rows, o)
                regular = o.l1_weight * (1 - up).flatten(1).sum(1) + o.tv_weight * total_variation(up, o.tv_beta)
                return score.to(dtype), regular

            g, value = row_gradients(m, objective, o.batch_size)
            history.append(value)
            m = adam.step(m, g).clamp(0, 1)
        self._last_call.objective = torch.stack(history)
        return 1 - F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)


def _draw_shifts(streams: SampleStreams, n: int, jitter: int) -> torch.Tensor:
    """One translation (dy, dx) ∈ {−J, …, J}² per sample, the next draw of each sample's own stream."""
    u = streams.draw("uniform", torch.arange(n), (2,), dtype=torch.float64, device="cpu")
    return ((u * (2 * jitter + 1)).floor().long() - jitter).clamp(-jitter, jitter)


def _translated(t: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Row r of (R, C, H, W) translated by shift[r] = (dy, dx): out(u) = t(u − τ), the border replicated."""
    r, c, h, w = t.shape
    shift = shift.to(t.device)
    ys = (torch.arange(h, device=t.device) - shift[:, :1]).clamp(0, h - 1)  # (R, H)
    xs = (torch.arange(w, device=t.device) - shift[:, 1:]).clamp(0, w - 1)  # (R, W)
    t = t.gather(2, ys[:, None, :, None].expand(r, c, h, w))
    return t.gather(3, xs[:, None, None, :].expand(r, c, h, w))
