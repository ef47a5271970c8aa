"""DeepLIFT with the Rescale rule (Shrikumar et al. 2017; Ancona et al. 2019, Eq 17–18, Prop 2).

Its rules are registered as the family ``"deeplift"`` (:mod:`tribute.core.rule_registry`): :class:`Rescale` at
every elementwise nonlinearity; at products and quotients of two tensors on the input's path the exact
Shapley split (:mod:`.deeplift_ops`); at softmax and the normalisations the averaged Jacobian, corrected so that
M Δx = Δy (:mod:`.deeplift_multivariate`).  Input and reference run as one batch of 2N rows (inputs first), so a
rule finds the reference of every row in the other half.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import accumulate, disconnected
from ..core.family_rules import FamilyRules
from ..core.interception import apply_rules
from ..core.method import Method
from ..core.registry import register
from ..core.rule_registry import RuleKind, register_rule, rules_of_kind
from ..core.rules import ElementwiseRule, RuleSet, derivative
from ..core.strictness import UncoveredModelError
from ..core.summation import summation_miss
from ..core.targets import Target
from .deeplift_linear import PRODUCTS, PairedLinear, PairedProduct
from .deeplift_multivariate import GROUPINGS, AveragedJacobian
from .deeplift_ops import BILINEAR, QUOTIENTS, BilinearRule, QuotientRule, check_pairs
from .deeplift_pooling import SELECTIONS, MaxPoolRule, SelectionCheck
from .reveal_cancel import FAMILY as REVEAL_CANCEL
from .reveal_cancel import RevealCancelOps, check_sum

FAMILY = "deeplift"


class Rescale(ElementwiseRule):
    """DeepLIFT Rescale (Ancona et al. 2019, Prop 2): g = (f(z) − f(z̄)) / (z − z̄).

    The batch holds the inputs in its first half and their references in the second half (one 2N
    pass).  Where |z − z̄| ≤ ``tolerance``·(1 + |z|) the ratio is replaced by its limit, f' at the
    midpoint.  Both halves get the same multiplier; only the first half carries the score.
    """

    name = "rescale"

    def __init__(self, tolerance: float = 1e-6):
        self.tolerance = float(tolerance)

    def apply(self, nl, z, params, phase):
        check_pairs(z, nl.name)
        return super().apply(nl, z, params, phase)

    def save(self, nl, z, y, params):
        # f(z) − f(z̄) from the forward pass's output, so the backward pass need not evaluate f twice again; a new
        # tensor, which a later in-place write into y (``a *= b``) leaves alone
        if y is None:
            return (z,)
        yx, yr = y.chunk(2)
        return z, yx - yr

    def backward(self, nl, gy, saved, params):
        z = saved[0]
        zx, zr = z.chunk(2)
        dz = zx - zr
        if torch.is_grad_enabled():  # the attribution differentiated (create_graph): as autograd records it
            close = dz.abs() <= self.tolerance * (1 + zx.abs())
            dy = nl(zx, **params) - nl(zr, **params)  # f(z) recomputed where autograd sees it
        else:  # the same test in place, in a buffer the ratio then reuses (a layer's worth each: fewer allocations)
            bound = zx.abs().add_(1).mul_(self.tolerance)
            close = torch.le(dz.abs(), bound)
            dy = saved[1] if len(saved) > 1 else nl(zx, **params) - nl(zr, **params)
        some_close = bool(close.any())
        safe_dz = torch.where(close, 1.0, dz) if some_close else dz  # (usually none: no pass for the where)
        reuse = not torch.is_grad_enabled() and dy.dtype == dz.dtype and dy.shape == dz.shape
        ratio = torch.div(dy, safe_dz, out=bound) if reuse else dy / safe_dz
        if some_close and not torch.is_grad_enabled() and not any(map(torch.is_tensor, params.values())):
            # f' at the close entries alone, not over the layer (a few close entries per GELU layer in Swin); their
            # flat indices found once (each boolean index would search the mask again)
            at = close.reshape(-1).nonzero().squeeze(1)
            mid = (zx.reshape(-1)[at] + zr.reshape(-1)[at]) / 2
            ratio = ratio.reshape(-1).index_copy_(0, at, derivative(nl, mid, params)).view(ratio.shape)
        elif some_close:  # a parameter tensor broadcast over z (PReLU's weight), or derivatives of the attribution
            ratio = torch.where(close, derivative(nl, (zx + zr) / 2, params), ratio)
        # both halves take the same ratio: broadcast over the pair instead of concatenating it
        return (gy.unflatten(0, (2, -1)) * ratio).flatten(0, 1)

    def forward_derivative(self, nl, gy, saved, params):
        return super().forward_derivative(nl, gy, saved[:1], params)


register_rule(FAMILY, "*", Rescale())
register_rule(FAMILY, tuple(op for op in BILINEAR if op not in PRODUCTS), BilinearRule())
register_rule(FAMILY, PRODUCTS, PairedProduct())
register_rule(FAMILY, QUOTIENTS, QuotientRule())
register_rule(FAMILY, tuple(GROUPINGS), AveragedJacobian())
register_rule(FAMILY, "max_pool2d", MaxPoolRule())
register_rule(FAMILY, "linear", PairedLinear())
register_rule(FAMILY, SELECTIONS, SelectionCheck())


@register("deeplift")
class DeepLift(Method):
    """DeepLIFT (Rescale): (x − x̄) ⊙ ∂^g S_c(x)/∂x with g = (f(z) − f(z̄)) / (z − z̄) (Ancona et al. 2019, Prop 2).

    z̄ are the pre-activations at the baseline x̄; input and baseline go through the model as one batch
    of 2N rows, so the references cost no separate pass (the model must keep the batch as its first dimension).
    Each op on the input's path gets multipliers m with Σ m·Δ(inputs) = Δ(output) exactly (Shrikumar et al.
    2017, §3.3), so summation-to-delta, Σ_i φ_i = S_c(x) − S_c(x̄), holds to rounding on networks built from:

    - linear layers, additions, reshapes (their gradient; a large ``F.linear``, x @ W or ``addmm`` (Hugging Face's
      Conv1D) multiplies only the inputs' rows in the backward pass, the references' carrying zeros:
      :mod:`tribute.attribution.deeplift_linear`);
    - elementwise nonlinearities, including powers, square roots and reciprocals: Rescale's secant;
    - products of two tensors on the path (a·b, a @ b, ``einsum``, ``bmm``, gates, attention's QKᵀ and AV) and
      quotients a / b: the Shapley split Δ(ab) = ½(b + b̄)Δa + ½(a + ā)Δb (Lundberg & Lee 2017), with 1/b's
      secant −1/(b·b̄) for a divisor (:mod:`tribute.attribution.deeplift_ops`);
    - softmax, log-softmax, LayerNorm, GroupNorm, RMSNorm, instance norm, ``F.normalize``: per softmax vector or
      normalised group M = J̄ + (Δy − J̄Δx)Δxᵀ/‖Δx‖², J̄ the op's Jacobian averaged from x̄ to x (in closed form
      for the norms, by 8-node Gauss–Legendre quadrature for the others, 4 where they integrate to rounding;
      Ancona et al. 2018), so M Δx = Δy
      (:mod:`tribute.attribution.deeplift_multivariate`).  Attention (``sdpa``, ``nn.MultiheadAttention``) is
      taken apart into its products and softmax.

    - 2-d max pooling: per window max's Jacobian averaged over the segment (by default the mean of the selections
      at its two ends) and corrected the same way, exact also where input and reference select unlike entries;
      a window where both select the same entry keeps the gradient, as in Shrikumar et al.
      (:mod:`tribute.attribution.deeplift_pooling`).

    Measured in float64: relative gap below 1e-14 on Hugging Face ConvNeXt, EfficientNet, ViT, Swin, BERT and
    GPT-2 (tests/test_deeplift_modern.py), below 3e-13 on torchvision's ResNet-18/50, VGG-11, DenseNet-121,
    SqueezeNet 1.1, MobileNetV3, EfficientNet-B0, RegNetY, ConvNeXt-T, a small Swin-T and ViT
    (benchmarks/zoo_torchvision.py).  Other switches (1-d, 3-d, adaptive, dilated max pooling, ``return_indices``,
    ``x.max(dim)``, ``amax``) keep the gradient where that is exact (input and reference select entries of equal
    values, checked per call) and are refused elsewhere.  An op on the path with none of these rules is refused
    (``strict=False``: a warning, and its plain gradient).  Every call checks Σφ = S(x) − S(x̄) to rounding and
    refuses a miss (a model that mixes the rows of its batch, a target not linear in the output).

    Options
    -------
    baseline : see :mod:`tribute.core.baselines` (default ``"zero"``); ``baseline_options``, ``seed``.
    """

    options = {
        "baseline": opt.Option("zero", check_baseline, per_input="baseline"),
        "baseline_options": opt.Option(None, opt.anything),
        "seed": opt.Option(None, opt.optional(opt.integer(0))),
    }
    rules = FamilyRules(FAMILY)

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return x.shape[0] <= max(1, o.batch_size // 2)  # the inputs score in the first 2N-row pass

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        base = make_baseline(o.baseline, x, o.baseline_options, o.seed)
        pairs = max(1, o.batch_size // 2)
        delta = x - base

        def contribution(sample, _):
            rows, n, outputs = torch.cat([x[sample], base[sample]]), len(sample), []
            grad = self._gradients(rows, target, sample, o, score_rows=n, outputs=outputs)
            phi = delta[sample] * grad[:n]
            check_summation(phi, target.scores(outputs[0][:n], sample), target.scores(outputs[0][n:], sample), o)
            return phi

        return accumulate(x.shape[0], 1, contribution, batch_size=pairs)


def check_summation(phi: torch.Tensor, score: torch.Tensor, reference: torch.Tensor, o: SimpleNamespace) -> None:
    """Refuse (``strict=False``: warn once per explainer) attributions that miss S(x) − S(x̄) beyond rounding: every
    rule of the family is exact (Shrikumar et al. 2017, Eq 1), so a miss is a wrong answer no op announced."""
    worst = summation_miss(phi.flatten(1).sum(1), score, reference)
    if worst is None:
        return
    message = (f"deeplift: the attributions of sample {worst} sum to {float(phi[worst].sum()):.6g}, not "
               f"S(x) − S(x̄) = {float(score[worst] - reference[worst]):.6g}. DeepLIFT's rules are exact, so the model "
               "does something they cannot see: it mixes rows of the batch (inputs and references run as one batch "
               "of 2N rows, which must stay along dimension 0), or the target function is not linear in the model's "
               "output, or an op without a rule ran with strict=False. Pass strict=False to accept the result "
               "(with a warning)")
    strictness = o.call.strictness
    if strictness.strict is not False:
        raise UncoveredModelError(message)
    if strictness.warned is None or strictness.warned.first_time(message.split(" sum to ")[0]):
        warnings.warn(message, UserWarning, stacklevel=4)


@register("deeplift_reveal_cancel")
class DeepLiftRevealCancel(Method):
    """DeepLIFT with the RevealCancel rule at nonlinearities (Shrikumar et al. 2017, §3.5.3).

    Positive and negative parts of every difference from the reference are propagated apart, so that
    evidence that cancels out is revealed rather than netted (see :mod:`tribute.attribution.reveal_cancel`):
    φ = m⁺ ⊙ (x − x̄)⁺ + m⁻ ⊙ (x − x̄)⁻, with Σφ = S_c(x) − S_c(x̄) exactly.  A linear layer splits the terms
    w_ij·Δx_j of its input's net difference by sign (the paper's Linear rule, §3.5.1), which keeps the parts
    bounded on deep networks (float64 ResNet-50-like: Σφ within 1e-14 relative of the score's difference).
    Max pooling passes the parts of the entry selected at the input (where input and reference select unlike
    entries, the next nonlinearity, reading f(z) − f(z̄) from the forward pass, restores the sum).  A product of
    two tensors on the input's path splits Δ(ab) between the positive and the negative parts by their Shapley
    values, Δy^± = Δa^±(b + b̄)/2 + Δb^±(a + ā)/2 (attention's QKᵀ and AV too).  Softmax and the normalisations
    take the rule of §3.5.3 with the parts as two players, Δy⁺ = ½[F(x̄ + Δx⁺) − F(x̄)] + ½[F(x) − F(x̄ + Δx⁻)]
    (:mod:`tribute.attribution.reveal_cancel_multivariate`), so transformers are covered.

    Options
    -------
    baseline : see :mod:`tribute.core.baselines` (default ``"zero"``); ``baseline_options``, ``seed``.
    """

    options = DeepLift.options
    rules = RuleSet("deeplift_reveal_cancel", rules_of_kind(REVEAL_CANCEL, RuleKind.ELEMENTWISE),
                    ops=RevealCancelOps())

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        if o.differentiable:
            raise ValueError("deeplift_reveal_cancel does not support differentiable=True")
        base = make_baseline(o.baseline, x, o.baseline_options, o.seed)
        pairs = max(1, o.batch_size // 2)

        def contribution(sample, _):
            n = len(sample)
            delta = (x[sample] - base[sample]).detach()
            zeros = torch.zeros_like(delta)
            dp = torch.cat([delta.clamp(min=0), zeros]).requires_grad_()
            dn = torch.cat([delta.clamp(max=0), zeros]).requires_grad_()
            rows = torch.cat([x[sample], base[sample]]).detach()
            with torch.enable_grad(), apply_rules(self.rules, coverage=o.call.coverage) as mode:
                mode.tag_input(rows)
                rows._tribute_twins = (dp, dn)
                out = o.call.forward(rows, torch.cat([sample, sample]))
            o.call.coverage.passes += 1
            o.call.strictness.check(self.rules, o.call.coverage)
            if not hasattr(out, "_tribute_twins"):
                if not mode.on_path(out):  # computed without the input (a constant): no difference reaches it
                    raise disconnected()
                raise RuntimeError("RevealCancel: the model's output lost track of the differences")
            out_p, out_n = out._tribute_twins
            diff = (out_p + out_n)[:n]
            with torch.no_grad():
                scores = target.scores(out[:n], sample), target.scores(out[n:], sample)
            s = target.scores(diff, sample)  # the score's difference is linear in the output's
            if target.fn is not None:  # a callable target need not be linear: check it on the totals
                torch.testing.assert_close(s.detach(), scores[0] - scores[1], rtol=1e-4, atol=1e-6)
            check_sum(s.detach(), *scores)
            if not s.requires_grad:
                raise disconnected()
            mp, mn = torch.autograd.grad(s.sum(), [dp, dn], allow_unused=True)
            mp = torch.zeros_like(dp) if mp is None else mp
            mn = torch.zeros_like(dn) if mn is None else mn
            return (mp * dp + mn * dn)[:n].detach()

        return accumulate(x.shape[0], 1, contribution, batch_size=pairs)
