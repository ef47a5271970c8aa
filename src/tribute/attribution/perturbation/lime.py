"""LIME (Ribeiro et al. 2016): the coefficients of a kernel-weighted linear surrogate over binary group masks.

A sample's groups are the surrogate's features; ``samples`` coalitions are drawn as LIME's image explainer
draws them (the instance itself, then each group kept with probability 1/2), scored through the model in
chunks, weighted by the exponential kernel on the cosine distance to the instance (``kernel_width``, default
0.25, image LIME's), and fit by ridge (``alpha`` = 1, LIME's default) or lasso (``solver="lasso"``), with an
unpenalised intercept, in torch on the input's device (:mod:`.lime_regression` has the formulas).  Each group's
coefficient is given to every feature of the group.

``standard_error`` (ridge, and least squares with ``alpha=0``) is the sandwich standard error of the
coefficients: the precision of the fit as an estimate of the surrogate fit on the whole coalition distribution
(with the same penalty per row); ``tolerance=`` draws ``samples`` more at a time until every coefficient's
standard error is at most the tolerance, up to ``max_samples`` per sample (then an error).  With lasso there is
no standard error (None) and no tolerance.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ...core import options as opt
from ...core.registry import register as register_method
from ...core.targets import Target
from .base import GroupPerturbation, Sampled
from .coalition_game import MAX_REGRESSION_PLAYERS, CoalitionGame, Design, Sampling, play
from .coalitions import lime_coalitions, more_lime_coalitions
from .lime_regression import SOLVERS, lime_fit


def _draw(p: int, k: int, generator: torch.Generator, first: bool) -> torch.Tensor:
    return lime_coalitions(p, k, generator) if first else more_lime_coalitions(p, k, generator)


def _surrogate(o: SimpleNamespace) -> Design:
    def estimate(z, values, v0, v1):
        coef, _, se = lime_fit(z, values, kernel_width=o.kernel_width, alpha=o.alpha, solver=o.solver,
                               standard_error=o.solver == "ridge")
        return coef, torch.full_like(coef, float("nan")) if se is None else se

    return Design(_draw, lambda z: z, estimate)


@register_method("lime")
class Lime(Sampled, GroupPerturbation):
    """LIME: each group's coefficient in the kernel-weighted linear surrogate (ridge by default), given to every
    feature of the group; ``standard_error`` holds its sandwich standard error (ridge / least squares).

    Options: ``samples`` (coalitions per sample, the instance included; default 1000, LIME's), ``kernel_width``
    (0.25), ``alpha`` (1.0; scikit-learn's meaning for each solver), ``solver`` (``"ridge"`` or ``"lasso"``),
    ``tolerance``, ``max_samples`` (100 000), and the groups (``feature_mask``/``segments``; default ``"auto"``:
    SLIC superpixels for images, as LIME segments images, else each feature alone).
    """

    default_segments = "auto"
    options = {
        "samples": opt.Option(1000, opt.integer(2), "coalitions per sample, the instance included"),
        "kernel_width": opt.Option(0.25, opt.real(0, low_open=True), "width of the exponential kernel on the "
                                   "cosine distance between a coalition and the instance"),
        "alpha": opt.Option(1.0, opt.real(0), "regularisation strength (scikit-learn's Ridge / Lasso meaning)"),
        "solver": opt.Option("ridge", opt.choice(SOLVERS)),
        "tolerance": opt.Option(None, opt.optional(opt.real(0, low_open=True)),
                                "sample until every standard error is at most this (score units)"),
        "max_samples": opt.Option(100_000, opt.integer(2), "most coalitions per sample"),
    }
    example_options = {"samples": 64, "seed": 0}

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        if o.tolerance is not None and o.solver == "lasso":
            raise ValueError("lime tolerance= needs a standard error, which the lasso surrogate has not; "
                             "use solver='ridge'")
        groups = self._groups(x, o)
        if groups.size > MAX_REGRESSION_PLAYERS:
            raise ValueError(f"lime solves a {groups.size} × {groups.size} system per sample, more than "
                             f"{MAX_REGRESSION_PLAYERS} groups; group the features (feature_mask=, segments=)")
        game = CoalitionGame(x, self._baseline(x, o), groups, o.call.forward, target, o.batch_size, o.progress,
                             drop_null=False)
        generators = self._streams(x, o).generators
        sampling = Sampling(o.samples, o.samples, o.tolerance, o.max_samples, self.name)
        found = {}
        for _, samples in game.by_count().items():
            found.update(play(game, samples, _surrogate(o), sampling, generators))
        phi = game.spread({i: f[0] for i, f in found.items()})
        like = x if x.is_floating_point() else phi.new_empty(x.shape)
        if o.solver == "ridge":
            se = game.spread({i: f[1] for i, f in found.items()})
            self._report(o, "standard_error", groups.spread(se, x).to(like.dtype))
        else:
            self._report(o, "standard_error", None)
        return groups.spread(phi, x).to(like.dtype)
