"""Integrated gradients and expected gradients: averages of the gradient along paths from baselines.

Both are (x − x̄) ⊙ ∫_0^1 ∂S_c(x̄ + α(x − x̄))/∂x dα; they differ in how x̄ and α are chosen.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import accumulate, accumulation_dtype
from ..core.method import Method
from ..core.quadrature import RULES, quadrature
from ..core.randomness import SampleStreams
from ..core.registry import register
from ..core.targets import Target
from .gradient import SOFTPLUS_OPTION, smoothed_rules

SEED_OPTION = {"seed": opt.Option(None, opt.optional(opt.integer(0)), "seed of the per-sample random streams")}


@register("integrated_gradients")
class IntegratedGradients(Method):
    """Integrated gradients (Sundararajan et al. 2017; seed 001 Eq 19).

    φ_i(x) = (x_i − x̄_i) · Σ_k w_k ∂S_c(x̄ + α_k(x − x̄))/∂x_i, the quadrature (α_k, w_k) of
    ∫_0^1 … dα.  Satisfies completeness, Σ_i φ_i = S_c(x) − S_c(x̄), up to quadrature error.

    Options
    -------
    baseline : see :mod:`tribute.core.baselines` (default ``"zero"``); ``baseline_options``, ``seed``.
    steps : number of quadrature nodes (default 64).
    quadrature : ``"gauss_legendre"`` (default; exact for polynomials of degree < 2·steps),
        ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"`` or ``"riemann_trapezoid"``.
    """

    options = {
        "baseline": opt.Option("zero", check_baseline),
        "baseline_options": opt.Option(None, opt.anything),
        "steps": opt.Option(64, opt.integer(1)),
        "quadrature": opt.Option("gauss_legendre", opt.choice(RULES)),
        **SEED_OPTION,
        **SOFTPLUS_OPTION,
    }
    rule_set = staticmethod(smoothed_rules)

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        base = make_baseline(o.baseline, x, o.baseline_options, o.seed)
        alphas, weights = quadrature(o.quadrature, o.steps)
        acc = accumulation_dtype(x.dtype)
        alphas = alphas.to(x.device, x.dtype)
        weights = weights.to(x.device, acc)
        self._fix_target(x, target, o)
        delta = x - base

        def contribution(sample, step):
            shape = (-1, *([1] * (x.dim() - 1)))
            points = base[sample] + alphas[step].view(shape) * delta[sample]
            grad = self._gradients(points, target, sample, o)
            return grad.to(acc) * weights[step].view(shape)

        avg = accumulate(x.shape[0], o.steps, contribution, batch_size=o.batch_size, progress=o.progress)
        return delta * avg


@register("expected_gradients")
class ExpectedGradients(Method):
    """Expected gradients / GradientSHAP (Erion et al. 2021; Lundberg & Lee 2017).

    φ(x) = E_{x̄∼D, α∼U(0,1)} [(x − x̄) ⊙ ∂S_c(x̄ + α(x − x̄))/∂x], estimated with ``samples`` draws of
    a reference x̄ from ``baselines`` (a tensor of M references) and α, per input from its own seeded
    stream.  In expectation Σ_i φ_i = S_c(x) − E[S_c(x̄)].
    """

    options = {
        "baselines": opt.Option(None, opt.optional(opt.tensor_or(opt.anything))),
        "samples": opt.Option(50, opt.integer(1)),
        **SEED_OPTION,
        **SOFTPLUS_OPTION,
    }
    rule_set = staticmethod(smoothed_rules)

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        refs = o.baselines
        if refs is None:
            raise ValueError("expected_gradients needs baselines=, a tensor of reference inputs (M, ...)")
        if not isinstance(refs, torch.Tensor) or refs.shape[1:] != x.shape[1:] or refs.shape[0] < 1:
            got = tuple(refs.shape) if isinstance(refs, torch.Tensor) else type(refs).__name__
            raise ValueError(f"baselines must be a tensor of shape (M, {', '.join(map(str, x.shape[1:]))}), got {got}")
        refs = refs.to(x.device, x.dtype)
        streams = SampleStreams(x, o.seed)
        acc = accumulation_dtype(x.dtype)
        self._fix_target(x, target, o)
        shape = (-1, *([1] * (x.dim() - 1)))

        def contribution(sample, _):
            # one draw of two uniforms per row keeps a row's (reference, α) independent of the chunking
            u = streams.draw("uniform", sample, (2,), dtype=torch.float64, device="cpu")
            j = (u[:, 0] * refs.shape[0]).long().clamp(max=refs.shape[0] - 1).to(x.device)
            alpha = u[:, 1].to(x.device, x.dtype).view(shape)
            ref = refs[j]
            delta = x[sample] - ref
            grad = self._gradients(ref + alpha * delta, target, sample, o)
            return (delta * grad).to(acc)

        total = accumulate(x.shape[0], o.samples, contribution, batch_size=o.batch_size, progress=o.progress)
        return total / o.samples
