"""KernelSHAP (Lundberg & Lee 2017): Shapley values of the groups as the Shapley kernel's weighted regression.

The game of a sample is v(z) = S_c(x with the groups outside z replaced by the baseline); its Shapley values solve
min Σ_z π(z) (v(z) − v(0) − zᵀφ)² subject to Σφ = v(1) − v(0), π the Shapley kernel.  With P players:

- exact: all 2^P − 2 interior coalitions, weighted by π, when they fit in ``samples`` (2^P − 2 ≤ samples, as
  shap decides; ``exact=True`` insists, up to ``max_samples``): the Shapley values exactly, standard error 0.
- sampled: ``samples`` coalitions in pairs (z, 1 − z) drawn from π (Covert & Lee 2021), the regression with the
  constraint exact, and the standard error of Covert & Lee's CLT (:func:`.shapley_estimators.kernel_shap` says
  which variant and why).  ``tolerance=`` draws ``samples`` more at a time until every group's standard error is
  at most the tolerance (absolute, in score units), up to ``max_samples`` coalitions per sample (then an error).

Groups equal to the baseline are null players: their value is exactly 0 and they are left out of the game.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import torch

from ...core import options as opt
from ...core.registry import register as register_method
from .coalition_game import MAX_REGRESSION_PLAYERS, Design, Sampling, play
from .coalition_method import TOLERANCE, CoalitionMethod
from .coalitions import all_coalitions, paired_kernel_coalitions
from .shapley_estimators import kernel_shap


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def _exact_draw(p: int, k: int, generator: torch.Generator, first: bool) -> torch.Tensor:
    return all_coalitions(p)[1:-1]


def _paired_draw(p: int, k: int, generator: torch.Generator, first: bool) -> torch.Tensor:
    return paired_kernel_coalitions(p, k // 2, generator)


EXACT = Design(_exact_draw, _identity, partial(kernel_shap, exact=True))
SAMPLED = Design(_paired_draw, _identity, partial(kernel_shap, exact=False))


@register_method("kernel_shap")
class KernelShap(CoalitionMethod):
    """KernelSHAP (Lundberg & Lee 2017; paired sampling and standard errors: Covert & Lee 2021): each group's
    Shapley value, given to every feature of the group; ``standard_error`` holds its standard error.

    Options: ``samples`` (coalitions per sample, even; default 2048), ``exact`` (None: when 2^P − 2 ≤ samples;
    True: always, an error past ``max_samples``; False: never), ``tolerance``, ``max_samples`` (100 000), and the
    groups (``feature_mask``/``segments``; default ``"auto"``: SLIC superpixels for images, else each feature).
    """

    options = {
        "samples": opt.Option(2048, opt.integer(2), "coalitions per sample (even: they come in pairs z, 1 − z)"),
        "exact": opt.Option(None, opt.optional(opt.boolean), "enumerate all 2^P − 2 coalitions (None: if they fit "
                            "in samples)"),
        "tolerance": TOLERANCE,
        "max_samples": opt.Option(100_000, opt.integer(2), "most coalitions per sample"),
    }
    example_options = {"samples": 256, "seed": 0}

    def _play(self, game, p, samples, generators, o):
        if p <= 1:
            return game.whole_game(samples)
        if self._exact(p, o):
            return play(game, samples, EXACT, Sampling(2 ** p - 2, 0, None, o.max_samples, self.name), generators)
        return play(game, samples, SAMPLED, self._sampling(p, o), generators)

    def _exact(self, p: int, o: SimpleNamespace) -> bool:
        need = 2 ** p - 2  # a Python int: exact at any p
        if o.exact is True and need > o.max_samples:
            count = f"{need}" if p <= 40 else f"about {float(need):.2e}"
            raise ValueError(f"kernel_shap exact=True: {p} groups have 2^{p} − 2 = {count} coalitions, more than "
                             f"max_samples={o.max_samples}; use fewer groups (feature_mask=, segments=), raise "
                             f"max_samples, or sample them (exact=None or False)")
        return o.exact is True or (o.exact is None and need <= o.samples)

    def _sampling(self, p: int, o: SimpleNamespace) -> Sampling:
        if p > MAX_REGRESSION_PLAYERS:
            raise ValueError(f"kernel_shap solves a {p} × {p} system per sample, more than {MAX_REGRESSION_PLAYERS} "
                             f"groups; group the features (feature_mask=, segments=)")
        if o.samples % 2:
            raise ValueError(f"kernel_shap samples={o.samples}: sampled coalitions come in pairs (z, 1 − z), so "
                             f"samples must be even")
        if o.samples < 4:
            raise ValueError("kernel_shap needs samples >= 4 (two pairs) to sample, and a standard error")
        return Sampling(o.samples, o.samples, o.tolerance, o.max_samples, self.name)
