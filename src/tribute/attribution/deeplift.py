"""DeepLIFT with the Rescale rule (Shrikumar et al. 2017; seed 001 Eq 17–18, Prop 2)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import accumulate
from ..core.method import Method
from ..core.registry import register
from ..core.rules import Rescale, RuleSet
from ..core.targets import Target


@register("deeplift")
class DeepLift(Method):
    """DeepLIFT (Rescale): (x − x̄) ⊙ ∂^g S_c(x)/∂x with g = (f(z) − f(z̄)) / (z − z̄) (seed 001, Prop 2).

    z̄ are the pre-activations at the baseline x̄; input and baseline go through the model as one batch
    of 2N rows, so the references cost no separate pass.  Summation-to-delta,
    Σ_i φ_i = S_c(x) − S_c(x̄), holds exactly on networks of linear layers and elementwise
    nonlinearities.  Max pooling routes the signal to the entry selected at the input (its gradient), so
    summation-to-delta holds there when input and baseline select the same entries.

    Options
    -------
    baseline : see :mod:`tribute.core.baselines` (default ``"zero"``); ``baseline_options``, ``seed``.
    """

    options = {
        "baseline": opt.Option("zero", check_baseline),
        "baseline_options": opt.Option(None, opt.anything),
        "seed": opt.Option(None, opt.optional(opt.integer(0))),
    }
    rules = RuleSet("deeplift_rescale", {"*": Rescale()})

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        base = make_baseline(o.baseline, x, o.baseline_options, o.seed)
        pairs = max(1, o.batch_size // 2)
        if target.needs_argmax and x.shape[0] > pairs:
            self._fix_target(x, target, o)
        delta = x - base

        def contribution(sample, _):
            rows = torch.cat([x[sample], base[sample]])
            grad = self._gradients(rows, target, sample, o, score_rows=len(sample))
            return delta[sample] * grad[: len(sample)]

        return accumulate(x.shape[0], 1, contribution, batch_size=pairs)
