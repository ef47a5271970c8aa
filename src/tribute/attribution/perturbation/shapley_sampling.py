"""Shapley value sampling (Castro et al. 2009; Štrumbelj & Kononenko 2014) with antithetic orderings.

For each ordering of a sample's groups, a group's marginal contribution is v(its predecessors and it) −
v(its predecessors), v(z) = S_c(x with the groups outside z replaced by the baseline); the attribution is the
mean over ``samples`` orderings, drawn in pairs (an ordering and its reverse; Mitchell et al. 2022).  Each
ordering costs P − 1 forward passes (v(0) and v(1) are shared).  Efficiency, Σφ = S_c(x) − S_c(baseline), holds
for any number of orderings.  ``standard_error`` is the spread of the pair means over √pairs (NaN, unknown, with
a single pair); ``tolerance=`` adds ``samples`` orderings at a time until every group's standard error is at
most the tolerance (absolute, score units), up to ``max_samples`` orderings per sample (then an error).  Groups
equal to the baseline are null players: exactly 0, left out of the orderings.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ...core import options as opt
from ...core.registry import register as register_method
from .coalition_game import Design, Sampling, play
from .coalition_method import TOLERANCE, CoalitionMethod
from .coalitions import antithetic_permutations, prefix_coalitions
from .shapley_estimators import permutation_shapley


def _draw(p: int, k: int, generator: torch.Generator, first: bool) -> torch.Tensor:
    return antithetic_permutations(p, k // 2, generator)


def _prefixes(perms: torch.Tensor) -> torch.Tensor:
    b, k, p = perms.shape
    return prefix_coalitions(perms.reshape(b * k, p)).reshape(b, k * (p - 1), p)


def _estimate(perms: torch.Tensor, values: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor):
    b, k, p = perms.shape
    return permutation_shapley(perms, values.reshape(b, k, p - 1), v0, v1)


ORDERINGS = Design(_draw, _prefixes, _estimate)


@register_method("shapley_sampling")
class ShapleySampling(CoalitionMethod):
    """Shapley value sampling with antithetic orderings: each group's mean marginal contribution, given to every
    feature of the group; ``standard_error`` holds its standard error.

    Options: ``samples`` (orderings per sample, even; default 32), ``tolerance``, ``max_samples`` (orderings,
    default 10 000), and the groups (``feature_mask``/``segments``; default ``"auto"``: SLIC for images).
    """

    options = {
        "samples": opt.Option(32, opt.integer(2), "orderings per sample (even: an ordering and its reverse)"),
        "tolerance": TOLERANCE,
        "max_samples": opt.Option(10_000, opt.integer(2), "most orderings per sample"),
    }
    example_options = {"samples": 4, "seed": 0}

    def _check(self, o: SimpleNamespace, groups) -> None:
        if o.samples % 2:
            raise ValueError(f"shapley_sampling samples={o.samples}: orderings come in pairs (an ordering and its "
                             f"reverse), so samples must be even")

    def _play(self, game, p, samples, generators, o):
        if p <= 1:
            return game.whole_game(samples)
        sampling = Sampling(o.samples, o.samples, o.tolerance, o.max_samples, self.name)
        return play(game, samples, ORDERINGS, sampling, generators)
