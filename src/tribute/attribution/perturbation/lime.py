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
from .coalition_game import MAX_REGRESSION_PLAYERS, Design, Sampling, play
from .coalition_method import TOLERANCE, CoalitionMethod
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
class Lime(CoalitionMethod):
    """LIME: each group's coefficient in the kernel-weighted linear surrogate (ridge by default), given to every
    feature of the group; ``standard_error`` holds its sandwich standard error (ridge / least squares).

    Options: ``samples`` (coalitions per sample, the instance included; default 1000, LIME's), ``kernel_width``
    (0.25), ``alpha`` (1.0; scikit-learn's meaning for each solver), ``solver`` (``"ridge"`` or ``"lasso"``),
    ``tolerance``, ``max_samples`` (100 000), and the groups (``feature_mask``/``segments``; default ``"auto"``:
    SLIC superpixels for images, as LIME segments images, else each feature alone).
    """

    drop_null = False  # the surrogate is fitted over every group, null ones included
    options = {
        "samples": opt.Option(1000, opt.integer(2), "coalitions per sample, the instance included"),
        "kernel_width": opt.Option(0.25, opt.real(0, low_open=True), "width of the exponential kernel on the "
                                   "cosine distance between a coalition and the instance"),
        "alpha": opt.Option(1.0, opt.real(0), "regularisation strength (scikit-learn's Ridge / Lasso meaning)"),
        "solver": opt.Option("ridge", opt.choice(SOLVERS)),
        "tolerance": TOLERANCE,
        "max_samples": opt.Option(100_000, opt.integer(2), "most coalitions per sample"),
    }
    example_options = {"samples": 64, "seed": 0}

    def _check(self, o: SimpleNamespace, groups) -> None:
        if o.tolerance is not None and o.solver == "lasso":
            raise ValueError("lime tolerance= needs a standard error, which the lasso surrogate has not; "
                             "use solver='ridge'")
        if groups.size > MAX_REGRESSION_PLAYERS:
            raise ValueError(f"lime solves a {groups.size} × {groups.size} system per sample, more than "
                             f"{MAX_REGRESSION_PLAYERS} groups; group the features (feature_mask=, segments=)")

    def _play(self, game, p, samples, generators, o):
        sampling = Sampling(o.samples, o.samples, o.tolerance, o.max_samples, self.name)
        found = play(game, samples, _surrogate(o), sampling, generators)
        # the lasso surrogate has no standard error
        return found if o.solver == "ridge" else {i: (f[0], None) for i, f in found.items()}
