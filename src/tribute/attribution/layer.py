"""Layer attribution: gradient methods computed with respect to an intermediate layer's activation A.

For a layer ℓ (``layer="layer4"``, named as in ``model.named_modules()``; see :mod:`tribute.core.layers`)
with activation A = A_ℓ(x), the network above the layer is a function F(A) and each method is the same
rule / multiplier / aggregation as at the input (Ancona et al. 2019, Table 1), in the layer's activation space:

======================================  ======================================================  ==========
method                                  φ(x), the layer's shape                                  rule
======================================  ======================================================  ==========
``layer_gradient``                      ∂^g S_c / ∂A                                             any
``layer_gradient_x_activation``         A ⊙ ∂^g S_c / ∂A                                         any
``layer_integrated_gradients``          (A − Ā) ⊙ ∫_0^1 ∂S_c(Ā + α(A − Ā))/∂A dα, Ā = A_ℓ(x̄)      f'
``layer_deeplift``                      (A − Ā) ⊙ ∂^g S_c/∂A, g = Rescale against Ā = A_ℓ(x̄)     Rescale
======================================  ======================================================  ==========

``rules=`` (a :class:`tribute.core.RuleSet`) swaps the backward rule above the layer (guided backprop,
DeconvNet, ε-LRP at a layer); :func:`LayerAttribution` maps tribute's input-level method names to these.

Only the part of the network above the layer is differentiated.  The rows still run through the layers
below it, so a branch that bypasses the layer (a residual connection around a block inside the layer's
stage) sees the sample's own input; completeness of layer IG and DeepLIFT, Σ φ = S_c(x) − S_c(x̄), then
holds exactly when the layer is a *cut* (every path from input to output passes through it).

Why dedicated classes rather than a ``layer=`` option on every method: the engine hands the model rows,
not sample indices, so a wrapper that fed activations to an unchanged method could not tell which input a
row of activations belongs to (needed whenever a branch bypasses the layer); and the multipliers and
paths must live in the activation space (Ā, A − Ā), which each method defines differently.  The classes
are short because :func:`tribute.core.layers.layer_gradient_rows` does at a layer what
:func:`tribute.core.engine.gradient_rows` does at the input, rules included.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import accumulate, accumulation_dtype
from ..core.family_rules import family_rules
from ..core.layer_names import Site, check_layer, resolve_layer
from ..core.layers import LayerRows, find_default_layer, layer_activations, layer_gradient_rows
from ..core.method import Method
from ..core.quadrature import RULES, path_nodes
from ..core.randomness import SampleStreams, draw_references
from ..core.reduce import REDUCTIONS, reduce
from ..core.registry import register
from ..core.rules import GRADIENT, RuleSet
from ..core.targets import Target
from ..core.tensors import per_sample
from ..core.tokens import (
    TOKEN_REDUCTIONS,
    check_baseline_token,
    per_token,
    special_ids,
    token_baseline,
    token_id,
)
from ..lrp.elementwise import FAMILY as LRP_EPSILON
from .deeplift import FAMILY as DEEPLIFT
from .integrated import check_references, renamed_baselines

#: options of the methods whose result has the layer's shape
RESULT_OPTIONS = {
    "reduce": opt.Option(None, opt.optional(opt.choice(sorted({*REDUCTIONS, *TOKEN_REDUCTIONS}))),
                         "None, or one value per token ('sum' or 'l2' over the embedding) for token inputs, or a "
                         "channel reduction ('sum', 'abs_sum', 'max_abs', 'l2') for image layers"),
}
#: the baseline input of the layer methods that compare with one (layer IG, layer DeepLIFT)
BASELINE_OPTIONS = {
    "baseline": opt.Option("zero", check_baseline, per_input="baseline"),
    "baseline_options": opt.Option(None, opt.anything),
    "seed": opt.Option(None, opt.optional(opt.integer(0)), "seed of random baselines"),
    "baseline_token": opt.Option(None, check_baseline_token,
                                 "token inputs: the token that replaces every token in the baseline (an id, or "
                                 "'pad', 'mask', 'unk' with tokenizer=)"),
    "keep_tokens": opt.Option(None, opt.anything,
                              "token ids left as they are in the baseline (default: the tokenizer's special tokens)"),
    "tokenizer": opt.Option(None, opt.anything, "a Hugging Face tokenizer, to name tokens and find special ones"),
}

LAYER_OPTION = {
    "layer": opt.Option(None, check_layer,
                        "module name as in model.named_modules() ('layer4', 'block.relu#1' for a module's 2nd call), "
                        "a submodule, or None for the last spatial feature map"),
}


def check_rules(name: str, v: Any) -> RuleSet | None:
    if v is not None and not isinstance(v, RuleSet):
        raise TypeError(f"{name} must be a tribute.core.RuleSet or None, got {type(v).__name__}")
    return v


class LayerMethod(Method):
    """Shared by the layer methods: resolve ``layer=`` (early, so an unknown name fails at construction).

    The inputs only run through the model (nothing is differentiated below the layer), so a layer method
    takes several inputs (their layer's activation is what is attributed) and integer inputs such as token
    ids, attributed at the embedding layer's output (:mod:`tribute.core.tokens`).
    """

    #: what the attribution's shape follows: "input", "layer" or "map" (N, 1, H, W)
    returns: ClassVar[str] = "layer"
    accepts_integer_inputs = True
    options = {
        **LAYER_OPTION,
        "rules": opt.Option(None, check_rules, "backward rules above the layer (default: the plain gradient)"),
    }

    def __init__(self, model: nn.Module, **options: Any):
        super().__init__(model, **options)
        #: the layer of the last call (its name, or the function call that made the default layer)
        self.layer: Site | None = None
        layer = self._defaults.get("layer")
        if layer is not None:
            resolve_layer(model, layer)

    def rule_set(self, o: SimpleNamespace) -> RuleSet:
        return GRADIENT if o.rules is None else o.rules

    def _check_layout(self, layout, o: SimpleNamespace) -> None:
        if self.returns != "layer":
            super()._check_layout(layout, o)

    def _postprocess(self, a: torch.Tensor, x: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
        """``reduce=``: one value per token (token inputs) or one map over the channels (dim 1)."""
        how = getattr(o, "reduce", None) if self.returns == "layer" else None
        if how is None:
            return a
        if not x.is_floating_point():
            if how not in TOKEN_REDUCTIONS:
                raise ValueError(f"reduce={how!r}: token attributions reduce over the embedding by "
                                 f"{' or '.join(map(repr, TOKEN_REDUCTIONS))}")
            return per_token(a, how)
        return reduce(a, how)

    def _baseline(self, x: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
        """The baseline input x̄: ``baseline=`` as at the input, or, for token ids, ``baseline_token=``."""
        if o.baseline_token is None:
            unused = [k for k in ("keep_tokens", "tokenizer") if getattr(o, k) is not None]
            if unused:
                raise ValueError(f"{' and '.join(k + '=' for k in unused)} go with baseline_token= (a token baseline)")
            if not x.is_floating_point() and not isinstance(o.baseline, torch.Tensor) and o.baseline != "zero":
                raise ValueError(f"baseline={o.baseline!r} looks at pixel values; for token ids pass baseline_token= "
                                 "(a token id, or 'pad'/'mask'/'unk' with tokenizer=) or a tensor of ids")
            return make_baseline(o.baseline, x, o.baseline_options, o.seed)
        if not o.call.layout.single or x.is_floating_point():
            raise ValueError("baseline_token= replaces the tokens of one input of token ids; pass other inputs "
                             "(attention masks, token types) with forward_kwargs=")
        token = token_id(o.baseline_token, o.tokenizer)
        return token_baseline(x, token, special_ids(o.tokenizer, o.keep_tokens))

    def _site(self, x: torch.Tensor, o: SimpleNamespace) -> Site:
        """The layer of this call; the default is found by a one-row probe (:func:`find_default_layer`)."""
        site = find_default_layer(o.call.forward, x) if o.layer is None else resolve_layer(self.model, o.layer)
        self.layer = site
        return site

    def _layer_rows(self, rows: torch.Tensor, target: Target, sample: torch.Tensor, o: SimpleNamespace,
                    site: Site, **kw: Any) -> LayerRows:
        return layer_gradient_rows(o.call.forward, rows, site, target, sample, rules=self.rule_set(o),
                                   create_graph=o.differentiable, coverage=o.call.coverage,
                                   strict=o.call.strictness, **kw)


@register("layer_gradient")
class LayerGradient(LayerMethod):
    """∂^g S_c / ∂A, the gradient at the layer's activation A (under ``rules``, default the plain one)."""

    options = RESULT_OPTIONS

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return x.shape[0] <= o.batch_size  # one chunk: the engine takes the prediction from its forward pass

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        site = self._site(x, o)

        def contribution(sample, _):
            r = self._layer_rows(x[sample], target, sample, o, site)
            return self.combine(r.activation, r.grad)

        return accumulate(x.shape[0], 1, contribution, batch_size=o.batch_size)

    def combine(self, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad


@register("layer_gradient_x_activation")
class LayerGradientXActivation(LayerGradient):
    """A ⊙ ∂^g S_c / ∂A: gradient × input (Ancona et al. 2019, Eq 6) with the layer's activation as the input."""

    def combine(self, activation, grad):
        return activation * grad


@register("layer_integrated_gradients")
class LayerIntegratedGradients(LayerMethod):
    """Integrated gradients in the layer's activation space (Sundararajan et al. 2017; Ancona et al. 2019, Eq 19).

    φ(x) = (A − Ā) ⊙ Σ_k w_k ∂S_c/∂A at Ā + α_k(A − Ā), with A = A_ℓ(x) and Ā = A_ℓ(x̄) the activation at
    the baseline *input* x̄; the network continues from each point on the straight path between them.
    Σ φ = S_c(x) − S_c(x̄) up to quadrature error when the layer is a cut (module doc).

    Options
    -------
    baseline, baseline_options, seed : the input baseline x̄ (see :mod:`tribute.core.baselines`).
    steps, quadrature : the quadrature (α_k, w_k) on [0, 1] (default 64 Gauss–Legendre nodes).
    """

    options = {
        **BASELINE_OPTIONS,
        **RESULT_OPTIONS,
        "steps": opt.Option(64, opt.integer(1)),
        "quadrature": opt.Option(None, opt.optional(opt.choice(RULES))),
    }
    example_options = {"steps": 8}

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return True  # the activations at the inputs come with the outputs

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        if o.differentiable:
            raise ValueError("layer_integrated_gradients does not support differentiable=True")
        site = self._site(x, o)
        base = self._baseline(x, o)
        a_x, out = layer_activations(o.call.forward, x, site, o.batch_size)
        target.resolve(out)
        a_b, _ = layer_activations(o.call.forward, base, site, o.batch_size)
        nodes = path_nodes(o.quadrature or "gauss_legendre", o.steps, a_x)
        delta = a_x - a_b

        def contribution(sample, step):
            points = nodes.point(a_b[sample], delta[sample], step)
            r = self._layer_rows(x[sample], target, sample, o, site, replace=points)
            return nodes.weigh(r.grad, step)

        avg = accumulate(x.shape[0], o.steps, contribution, batch_size=o.batch_size, progress=o.progress)
        return delta * avg


@register("layer_expected_gradients")
class LayerExpectedGradients(LayerMethod):
    """Expected gradients in the layer's activation space (Erion et al. 2021):
    φ(x) = E_{x̄∼D, α∼U(0,1)} [(A − Ā) ⊙ ∂S_c/∂A at Ā + α(A − Ā)], A = A_ℓ(x), Ā = A_ℓ(x̄), estimated with
    ``samples`` draws per input from its own seeded stream (the draws of ``expected_gradients``).

    Options
    -------
    references : a tensor of M reference inputs (M, ...), the distribution Ā's inputs are drawn from (the old
        spelling ``baselines=`` is refused); samples (default 50); seed.
    """

    options = {
        **RESULT_OPTIONS,
        "references": opt.Option(None, opt.anything, per_input="references"),
        **renamed_baselines("layer_expected_gradients"),
        "samples": opt.Option(50, opt.integer(1)),
        "seed": opt.Option(None, opt.optional(opt.integer(0)), "seed of the per-sample random streams"),
    }
    example_options = {"samples": 4, "seed": 0}

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return True  # the activations at the inputs come with the outputs

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        if o.differentiable:
            raise ValueError("layer_expected_gradients does not support differentiable=True")
        refs = check_references(o.references, x, self.name)
        if o.call.forward.args is not None and o.call.forward.args.per_sample:
            # a reference's activation would depend on whose forward arguments it ran with
            raise ValueError("layer_expected_gradients takes no per-sample forward arguments (tensors in "
                             "forward_args= or forward_kwargs=): its references' activations are computed once for all "
                             "samples; wrap an argument that is the same for every sample in tribute.constant(...)")
        site = self._site(x, o)
        a_x, out = layer_activations(o.call.forward, x, site, o.batch_size)
        target.resolve(out)
        a_r, _ = layer_activations(o.call.forward, refs, site, o.batch_size)
        streams = SampleStreams(x, o.seed)
        acc = accumulation_dtype(a_x.dtype)

        def contribution(sample, _):
            j, alpha = draw_references(streams, sample, refs.shape[0], dtype=a_x.dtype, device=a_x.device)
            delta = a_x[sample] - a_r[j]
            r = self._layer_rows(x[sample], target, sample, o, site, replace=a_r[j] + per_sample(alpha, a_x) * delta)
            return (delta * r.grad).to(acc)

        total = accumulate(x.shape[0], o.samples, contribution, batch_size=o.batch_size, progress=o.progress)
        return total / o.samples


@register("layer_deeplift")
class LayerDeepLift(LayerMethod):
    """DeepLIFT Rescale at a layer (Shrikumar et al. 2017; Ancona et al. 2019, Prop 2): (A − Ā) ⊙ ∂^g S_c/∂A.

    g = (f(z) − f(z̄))/(z − z̄) at every nonlinearity above the layer, z̄ from the baseline input x̄; input
    and baseline run as one batch of 2N rows.  Summation-to-delta Σ φ = S_c(x) − S_c(x̄) holds when the
    layer is a cut and the network above it has linear layers and elementwise nonlinearities.

    Options
    -------
    baseline, baseline_options, seed : the input baseline x̄ (see :mod:`tribute.core.baselines`).
    """

    options = {**BASELINE_OPTIONS, **RESULT_OPTIONS}

    def rule_set(self, o):
        if o.rules is not None:
            raise TypeError("layer_deeplift uses the Rescale rule; it takes no rules=")
        return family_rules(DEEPLIFT)

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return x.shape[0] <= max(1, o.batch_size // 2)  # the inputs score in the first 2N-row pass

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        site = self._site(x, o)
        base = self._baseline(x, o)
        pairs = max(1, o.batch_size // 2)

        def contribution(sample, _):
            m = len(sample)
            r = self._layer_rows(torch.cat([x[sample], base[sample]]), target, sample, o, site, score_rows=m)
            return (r.activation[:m] - r.activation[m:]) * r.grad[:m]

        return accumulate(x.shape[0], 1, contribution, batch_size=pairs)


def _epsilon_rules(options: dict) -> RuleSet:
    eps = opt.real(0, low_open=True)("epsilon", options.pop("epsilon", 1e-9))
    if opt.boolean("unbounded", options.pop("unbounded", False)):  # the ratio at f(0) ≠ 0 (see LRPEpsilon)
        return family_rules(LRP_EPSILON, epsilon=eps, unbounded=True)
    return family_rules(LRP_EPSILON, epsilon=eps)


def _named_rules(name: str) -> RuleSet:
    from . import guided  # noqa: F401  (registers the families "guided_backprop" and "deconvnet")

    return family_rules(name)


#: input-level method name → (layer method, how to build its rule set from the options, or None)
_LAYER_VERSIONS: dict[str, tuple[type[LayerMethod], Any]] = {
    "gradient": (LayerGradient, None),
    "input_x_gradient": (LayerGradientXActivation, None),
    "integrated_gradients": (LayerIntegratedGradients, None),
    "expected_gradients": (LayerExpectedGradients, None),
    "deeplift": (LayerDeepLift, None),
    "guided_backprop": (LayerGradient, lambda options: _named_rules("guided_backprop")),
    "deconvnet": (LayerGradient, lambda options: _named_rules("deconvnet")),
    "lrp_epsilon": (LayerGradientXActivation, _epsilon_rules),
}


def LayerAttribution(method: str, model: nn.Module, layer: str | nn.Module | None = None,  # noqa: N802
                     **options: Any) -> LayerMethod:
    """The layer version of the gradient method ``method``, as a method object.

    ``tribute.LayerAttribution("integrated_gradients", model, layer="layer4", steps=32).attribute(x, target=3)``
    computes integrated gradients in ``layer4``'s activation space; the result has ``layer4``'s output shape.
    Supported: ``gradient``, ``input_x_gradient``, ``integrated_gradients``, ``deeplift``,
    ``guided_backprop``, ``deconvnet`` and ``lrp_epsilon`` (``epsilon=``, ``unbounded=``); see the module doc.
    """
    if method not in _LAYER_VERSIONS:
        import difflib

        near = difflib.get_close_matches(str(method), _LAYER_VERSIONS, n=2)
        hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
        known = ", ".join(sorted(_LAYER_VERSIONS))
        raise ValueError(f"no layer version of method {method!r}{hint} Layer versions exist for: {known}")
    cls, make_rules = _LAYER_VERSIONS[method]
    options = dict(options)
    if make_rules is not None:
        if "rules" in options:
            raise TypeError(f"LayerAttribution({method!r}) sets rules= itself")
        options["rules"] = make_rules(options)
    return cls(model, layer=layer, **options)


__all__ = ["LayerAttribution"]  # the registered layer methods are exported by the package as every method is
