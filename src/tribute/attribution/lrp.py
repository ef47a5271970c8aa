"""Layer-wise relevance propagation: ε-LRP as a modified gradient (Ancona et al. 2019, Prop 1), and LRP
with rules at the linear layers assigned by composites (Bach et al. 2015; Montavon et al. 2019)."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace

import torch

from ..core import options as opt
from ..core.engine import accumulate
from ..core.family_rules import family_rules
from ..core.method import Method
from ..core.registry import register
from ..core.rule_registry import RuleKind, rules_of_kind
from ..core.rules import RuleSet
from ..core.targets import Target
from ..lrp.absorbed import Absorbed
from ..lrp.composites import (
    RULE_PARAMETERS,
    RuleParameters,
    WithWeights,
    check_composite,
    composite_parameters,
    make_composite,
    refuse_unread,
)
from ..lrp.elementwise import FAMILY as LRP_EPSILON
from ..lrp.epsilon_form import EpsilonForm, FusedEpsilonRelu, Unsupported, covers
from ..lrp.epsilon_ops import ATTENTION, EpsilonOps
from ..lrp.merge_plan import MergePlan, Replan
from ..lrp.ops import FAMILY
from ..lrp.rules import PassRelevance
from ..lrp.weight_cache import WeightCache
from .gradient import GradientAtInput


@register("lrp_epsilon")
class LRPEpsilon(GradientAtInput):
    """ε-LRP in Ancona's form (Ancona et al. 2019, Prop 1): x ⊙ ∂^g S_c(x)/∂x with g(z) = f(z) / (z + ε·sign z).

    sign(0) is taken as +1, so g is finite where z = 0.  On ReLU networks this equals gradient × input
    up to O(ε) (Prop 3i).  The stabiliser sits at the nonlinearities only; it agrees with the Eq 15 form
    (ε at every linear layer) where every linear layer feeds a nonlinearity and ε → 0.

    Options
    -------
    epsilon : the stabiliser ε > 0 (default 1e-9).
    unbounded : bool, default False.  A nonlinearity with f(0) ≠ 0 (sigmoid, hardsigmoid, softplus, exp) makes the
        ratio unbounded, ~f(0)/ε near z = 0, so it is refused; ``True`` computes the ratio anyway.  Method
        ``"lrp"`` counts f(0) as an absorbed bias and stays bounded.
    attention : ``"cp"`` (default) or ``"attnlrp"``: attention's softmax weights held constant (CP-LRP, Ali et al.
        2022), or AttnLRP's softmax rule (Achtibat et al. 2024), which does not conserve.  Products of two tensors on
        the input's path: a gate (sigmoid, softmax under CP, …) takes no gradient, two signals half each
        (:mod:`tribute.lrp.epsilon_ops`); normalisations with 1/σ held constant.
    """

    options = {"epsilon": opt.Option(1e-9, opt.real(0, low_open=True)),
               "unbounded": opt.Option(False, opt.boolean),
               "attention": opt.Option("cp", opt.choice(ATTENTION))}

    def rule_set(self, o: SimpleNamespace) -> RuleSet:
        if o.unbounded:
            base = family_rules(LRP_EPSILON, epsilon=o.epsilon, unbounded=True)
        else:
            base = family_rules(LRP_EPSILON, epsilon=o.epsilon)
        return RuleSet(f"{base.name}[attention={o.attention}]", base.rules, ops=EpsilonOps(o.attention))

    def combine(self, x, grad):
        return x * grad


def _composite(o: SimpleNamespace, x_shape, transform):
    """The composite named by ``o.composite`` (or given), with the method's rule parameters."""
    return make_composite(o.composite, RuleParameters(o.epsilon, o.gamma, o.alpha, o.beta, o.low, o.high,
                                                      tuple(x_shape), transform))


@register("lrp")
class LRP(Method):
    """Layer-wise relevance propagation with rules at the linear layers (Bach et al. 2015; Ancona et al. 2019, Eq 14–15;
    Montavon et al. 2019).

    The relevance at the output is the target score, R = S_c(x) at the target (a callable target: its
    value times its gradient with respect to the outputs); each linear layer redistributes the relevance
    at its output over its inputs by the rule the composite assigns it (see :mod:`tribute.lrp`
    for every rule and for batch norm, residual additions and pooling).  The result is the relevance at the
    model's input: with ``input_transform``, at the transformed input (relevance is not rescaled by it).

    Options
    -------
    composite : a :class:`tribute.lrp.Composite`, or one of ``"epsilon"`` (ε on every layer,
        Eq 15), ``"zplus"``, ``"alpha_beta"``, ``"gamma"`` (that rule on every layer), ``"epsilon_plus"``
        (z⁺ on convolutions, ε on dense layers; the default), ``"epsilon_plus_flat"`` (flat on the first
        layer), ``"epsilon_alpha2_beta1"``, ``"epsilon_gamma_box"`` (zᴮ on the first layer with ``low`` and
        ``high``, γ on convolutions, ε on dense layers).
    epsilon, gamma, alpha, beta : the rules' parameters (defaults 1e-6, 0.25, 2, 1).
    low, high : bounds of the input (pixel space; a number, per-channel sequence or tensor) for zᴮ.
        Each of these six is taken only with a composite that reads it (as its registration declares,
        :func:`tribute.lrp.composites.composite_parameters`; a :class:`~tribute.lrp.Composite` given as is reads
        none): given explicitly, to the constructor or the call, to any other composite it is refused.
    attention : ``"cp"`` (default) or ``"attnlrp"``: attention's softmax output held constant as a gate (CP-LRP,
        Ali et al. 2022; conserves), or AttnLRP's softmax rule R_x = x ⊙ (R − s ΣR) with the product s·V split
        uniformly (Achtibat et al. 2024; does not conserve).  See :mod:`tribute.lrp.attention`; products of two
        tensors on the input's path follow :mod:`tribute.lrp.gates` (a gate takes nothing, two signals half each).
    absorbed : bool, default False.  Count the relevance that constant leaves absorb (biases, LayerNorm's β,
        position and token-type embeddings added on the path, a class token, masked entries: see
        :mod:`tribute.lrp.absorbed`), per sample, in ``explainer.absorbed`` after each call (None when off).  The
        relevance form then runs on every model (the ε composites' faster gradient form does not count).
    cache_weights : keep the weights the rules derive from the model's (batch norm merged, W⁺, W + γW⁺, …)
        between chunks and calls of this explainer (default True), at the cost of holding copies of the
        parameters (on a ResNet-18: 1.84× for ε, 2.84× for z⁺, 3.44× for γ, 4× for αβ).  From the second call on,
        layers that batch norm merges into run with the merged weights and the batch-norm ops are skipped
        (:mod:`tribute.lrp.merge_plan`); a stride-1 convolution's transposed layer runs as a convolution
        with the rotated derived weight, kept in its place (:func:`tribute.lrp.layer_call.rotate`).  The
        weights are rederived whenever a parameter or batch norm statistic they came from changes (see
        :mod:`tribute.lrp.weight_cache`); ``explainer.weights.clear()`` drops them.
    """

    options = {
        "composite": opt.Option("epsilon_plus", check_composite),
        "epsilon": opt.Option(1e-6, opt.real(0, low_open=True)),
        "gamma": opt.Option(0.25, opt.real(0)),
        "alpha": opt.Option(2.0, opt.real(1)),
        "beta": opt.Option(1.0, opt.real(0)),
        "low": opt.Option(None, opt.anything),
        "high": opt.Option(None, opt.anything),
        "cache_weights": opt.Option(True, opt.boolean),
        "attention": opt.Option("cp", opt.choice(ATTENTION)),
        "absorbed": opt.Option(False, opt.boolean),
    }

    def __init__(self, model, **options):
        super().__init__(model, **options)
        self.weights = WeightCache()
        self._plan = MergePlan()  # where batch norm merged last time (tribute.lrp.merge_plan)
        # set once the ε gradient form met an op it does not cover on this explainer's model: later calls go straight
        # to the relevance form (which is right on every model, so a stale flag costs time, never values)
        self._relevance_form_only = False
        # the weight cache and merge plan serve one pass at a time: calls from two threads take turns
        self._lock = threading.RLock()

    def _namespace(self, options: dict) -> SimpleNamespace:
        o = super()._namespace(options)
        # a rule parameter the composite does not read would be accepted and ignored; defaults are not "given"
        refuse_unread(o.composite, {*self.defaults, *options})
        return o

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return x.shape[0] <= o.batch_size  # one chunk: the engine takes the prediction from its forward pass

    @property
    def absorbed(self) -> torch.Tensor | None:
        """The relevance constant leaves absorbed in the last call of the calling thread, per sample (N,), with
        ``absorbed=True`` (else None): with the input's relevance it sums to the score up to what the stabilisers
        absorb (:mod:`tribute.lrp.absorbed`); NaN where a share could not be placed on its sample."""
        return getattr(self._last_call, "absorbed", None)

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        self._last_call.absorbed = None
        with self._lock:
            if not o.absorbed:
                return self._propagate(x, target, o)
            totals = torch.zeros(x.shape[0], dtype=torch.float64)
            out = self._propagate(x, target, o, totals)
            self._last_call.absorbed = totals.to(x.dtype)
            return out

    def _propagate(self, x: torch.Tensor, target: Target, o: SimpleNamespace,
                   totals: torch.Tensor | None = None) -> torch.Tensor:
        if o.differentiable:
            raise ValueError("LRP composites do not support differentiable=True; lrp_epsilon (Ancona's form) does")
        if o.alpha - o.beta != 1:
            raise ValueError(f"the αβ rule needs alpha − beta = 1, got alpha={o.alpha}, beta={o.beta}")
        if not o.call.layout.single and (o.low is not None or o.high is not None):
            raise ValueError("low= and high= bound one input's pixels (the zᴮ rule at its first layer); with inputs "
                             "given as a tuple, use a composite without the box rule (e.g. 'epsilon_plus_flat')")
        composite = _composite(o, x.shape, o.input_transform)
        name = f"lrp[{getattr(composite, 'name', 'custom')}]"
        cache = self.weights if o.cache_weights else None
        at_nonlinearities = rules_of_kind(FAMILY, RuleKind.ELEMENTWISE)  # the pass rule
        rules = RuleSet(name, at_nonlinearities, ops=WithWeights(composite, cache, self._plan, o.attention))
        # ε everywhere: the same relevance as x ⊙ a modified gradient, in fewer passes (tribute.lrp.epsilon_form)
        gradient_form = o.strict is not True and totals is None and covers(composite) and not self._relevance_form_only
        fast = RuleSet(name, {"*": FusedEpsilonRelu()}, ops=EpsilonForm(composite, cache, self._plan)) \
            if gradient_form else None
        # relevance is taken at the model's own input
        xm = o.call.forward.transformed(x).detach()
        o = SimpleNamespace(**{**vars(o), "call": replace(o.call, forward=o.call.forward.untransformed())})

        def contribution(sample, _):
            nonlocal fast
            rows = xm[sample]
            if fast is not None:
                try:
                    return rows * self._gradients(rows, target, sample, o, rules=fast, relevance=True)
                except Replan:  # the model ran differently from the pass the plan came from
                    self._plan.clear()
                    return contribution(sample, _)
                except Unsupported:
                    fast = None  # this model needs the relevance form
                    self._relevance_form_only = True
            try:
                if totals is None:
                    return self._gradients(rows, target, sample, o, rules=rules, relevance=True)
                absorbed = Absorbed(rows.shape[0])  # this chunk's: counted in its backward pass
                counting = {k: r.with_options(absorbed=absorbed) if isinstance(r, PassRelevance) else r
                            for k, r in at_nonlinearities.items()}  # f(0)'s share too
                counted = RuleSet(name, counting, ops=WithWeights(composite, cache, self._plan, o.attention, absorbed))
                out = self._gradients(rows, target, sample, o, rules=counted, relevance=True)
                if absorbed.unplaced and len(sample) > 1:  # shares on tensors not batch-first: one sample at a time
                    return torch.cat([contribution(sample[i:i + 1], _) for i in range(len(sample))])
                totals[sample] = absorbed.per_sample()
                return out
            except Replan:
                self._plan.clear()
                return contribution(sample, _)

        return accumulate(x.shape[0], 1, contribution, batch_size=o.batch_size)


def _fixed_composite(method: str, composite: str, rule: str) -> dict[str, opt.Option]:
    """The options of ``method``, :class:`LRP` with one composite: that composite, and every rule parameter it does
    not read (its registration says which it reads) and ``composite=`` itself refused, never accepted and ignored."""
    reads = composite_parameters(composite)
    refuse = {n: f"{method} applies {rule} on every linear layer, which uses no {n}; lrp takes it with a composite "
                 "that does" for n in RULE_PARAMETERS if n not in reads}
    refuse["composite"] = f"{method} is lrp with composite={composite!r}; pass other composites to lrp"
    return {n: opt.Option(composite if n == "composite" else LRP.options[n].default, opt.refused(why))
            for n, why in refuse.items()}


@register("lrp_zplus")
class LRPZPlus(LRP):
    """LRP with the z⁺ rule on every linear layer (Montavon et al. 2017)."""

    options = _fixed_composite("lrp_zplus", "zplus", "the z⁺ rule")


@register("lrp_alpha_beta")
class LRPAlphaBeta(LRP):
    """LRP with the αβ rule on every linear layer (Bach et al. 2015); ``alpha``, ``beta`` (α − β = 1)."""

    options = _fixed_composite("lrp_alpha_beta", "alpha_beta", "the αβ rule")


@register("lrp_gamma")
class LRPGamma(LRP):
    """LRP with the γ rule on every linear layer (Montavon et al. 2019); ``gamma``."""

    options = _fixed_composite("lrp_gamma", "gamma", "the γ rule")
