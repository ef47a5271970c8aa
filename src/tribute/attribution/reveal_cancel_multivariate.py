"""RevealCancel at multivariate ops (softmax, log-softmax, softmin, LayerNorm, GroupNorm, RMSNorm, instance norm,
``F.normalize``) and at products of two tensors on the path through ``matmul``/``bmm``/``einsum`` (attention).

*The parts of a multivariate op.*  Shrikumar et al. (2017, §3.5.3) split a nonlinearity's Δy = f(x) − f(x̄)
between two players, the positive and the negative parts of its input's difference, by their Shapley values:

    Δy⁺ = ½[f(x̄ + Δx⁺) − f(x̄)] + ½[f(x̄ + Δx⁺ + Δx⁻) − f(x̄ + Δx⁻)],   Δy⁻ = Δy − Δy⁺.

For y = F(x) mapping each *group* of entries (one softmax vector, one normalised group) to a group of outputs the
same two players are the vectors Δx⁺ and Δx⁻ of the group, and the same formula, read with vectors, is their
Shapley split of the group's Δy (x̄ + Δx⁺ + Δx⁻ is read as x from the forward pass, as the elementwise rule
does, so Δy⁺ + Δy⁻ = F(x) − F(x̄) exactly).  *It reduces to the paper's rule when F is elementwise*: then
F(x̄ + Δx⁺)_i = f(x̄_i + Δx_i⁺) depends on entry i alone, and each entry's Δy_i^± is §3.5.3's value for
(Δx_i⁺, Δx_i⁻), whatever the grouping.

*Multipliers.*  DeepLIFT's chain rule (§3.3) needs M⁺ with M⁺Δx⁺ = Δy⁺ and M⁻ with M⁻Δx⁻ = Δy⁻ per group (the
paper's m^± = Δy^±/Δx^± on a group of one entry).  Each bracket of Δy⁺ is a change of F along a segment moved by
Δx⁺: from x̄ (J̄₁, the Jacobian averaged along x̄ → x̄ + Δx⁺) and from x̄ + Δx⁻ (J̄₂, along x̄ + Δx⁻ → x), so
J̄₁Δx⁺ and J̄₂Δx⁺ are the two brackets (fundamental theorem of calculus).  Hence

    M⁺ = M₀ + (Δy⁺ − M₀Δx⁺) Δx⁺ᵀ / ‖Δx⁺‖²,   M₀ = ½(J̄₁ + J̄₂),

and M⁻ likewise with the segments x̄ → x̄ + Δx⁻ and x̄ + Δx⁺ → x.  With exact integrals M₀Δx⁺ = Δy⁺ already; the
rank-one term (Broyden 1965, the least change of M₀ in Frobenius norm) removes what quadrature leaves, so
M⁺Δx⁺ = Δy⁺ to rounding.  The averaged Jacobians come from DeepLIFT's machinery
(:class:`tribute.attribution.deeplift_multivariate.GroupedOp`: closed forms for the norms, 8-node
Gauss–Legendre for the softmax family); the four segments run as one batch of 4N rows.  On a group of one
entry M^± = Δy^±/Δx^± exactly: the paper's multipliers.
*A part that is 0 in a group* (within rounding: ‖Δx⁺‖² ≤ ε²(1 + ‖x‖²)) is a null player: Δy⁺ = 0 and
Δy⁻ = Δy, as the elementwise rule does; its multiplier is M₀ uncorrected (the mean of the Jacobians at the two
ends, the limit of the elementwise rule's secant).  Masked attention scores (−∞ in input and reference) carry
parts 0 and stay at −∞ along every segment.

*Products through matmul, bmm, einsum, addmm, baddbmm* (attention's QKᵀ and AV; HF's ``Conv1D``): y = B(a, b)
bilinear in its two operands on the path.  The two players' Shapley split is, as for a·b
(:func:`tribute.attribution.reveal_cancel.product_parts`), Δy^± = B(Δa^±, b_mid) + B(a_mid, Δb^±) with
a_mid = (a + ā)/2: each bracket of the Shapley formula is a change of a bilinear map,
B(a₀ + α, b₀ + β) − B(a₀, b₀) = B(α, b₀ + β/2) + B(a₀ + α/2, β), and summing the two orderings gives the
midpoints.  With one operand on the path and a constant (a parameter) the op is linear and takes the paper's
Linear rule (§3.5.1) as ``F.linear`` does: Δy^± = ½(B(Δx, W) ± B(|Δx|, |W|)).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.rule_registry import register_rule
from ..core.strictness import UncoveredModelError
from .deeplift_multivariate import GROUPINGS, GroupedOp, OnGroups
from .deeplift_ops import Call, path_slots
from .reveal_cancel import FAMILY, PartsRule, input_rows, twins, with_reference_rows

#: bilinear in two tensor operands (products of two tensors on the path); ``mul`` keeps its own rule
PRODUCTS = ("matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "addmm", "baddbmm")
_ADDED = ("addmm", "baddbmm")  # c + a @ b


def _null(op: GroupedOp, d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Groups where the part ``d`` is within rounding of 0 (the threshold of ``GroupedOp.corrected``)."""
    sums = op.groups.sums
    finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return sums(d * d) <= torch.finfo(d.dtype).eps ** 2 * (1 + sums(finite * finite))


def multivariate_parts(op: GroupedOp, dp: torch.Tensor, dn: torch.Tensor, xbar: torch.Tensor, x: torch.Tensor,
                       f0: torch.Tensor, fx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δy⁺, Δy⁻) of y = F(x) per group (module doc) from the parts (Δx⁺, Δx⁻), the reference x̄, the input x and
    F(x̄), F(x) (N rows each)."""
    fp, fn = op.f(xbar + dp), op.f(xbar + dn)
    yp = 0.5 * (fp - f0) + 0.5 * (fx - fn)
    yn = 0.5 * (fn - f0) + 0.5 * (fx - fp)
    null_p, null_n = _null(op, dp, x), _null(op, dn, x)
    yp, yn = (torch.where(null, 0.0, torch.where(other_null, fx - f0, share))
              for null, other_null, share in ((null_p, null_n, yp), (null_n, null_p, yn)))
    return yp, yn


def multivariate_multipliers(op: GroupedOp, dp, dn, xbar, x, yp, yn, gp, gn) -> tuple[torch.Tensor, torch.Tensor]:
    """(M⁺ᵀ g⁺, M⁻ᵀ g⁻) (module doc): the Jacobians averaged along the four segments in one batch of 4N rows,
    each pair's mean corrected so that M^± Δx^± = Δy^±."""
    starts = torch.cat([xbar, xbar + dn, xbar, xbar + dp])
    moves = torch.cat([dp, dp, dn, dn])
    (v,) = op.averaged_vjps(starts, moves, [torch.cat([gp, gp, gn, gn])])
    v1, v2, v3, v4 = v.chunk(4)
    return op.corrected(dp, yp, gp, 0.5 * (v1 + v2), x), op.corrected(dn, yn, gn, 0.5 * (v3 + v4), x)


class _Multivariate(torch.autograd.Function):
    """(Δy⁺, Δy⁻) from (Δx⁺, Δx⁻) on the inputs' rows (x̄, F(x̄) are the references' rows of x and y); backward:
    M⁺ᵀ g⁺ and M⁻ᵀ g⁻ (the references' rows carry none)."""

    @staticmethod
    def forward(ctx, dp, dn, x, y, op):
        n = input_rows(x).shape[0]
        dp, dn, xx, xbar = dp[:n], dn[:n], x[:n], x[n:]
        yp, yn = multivariate_parts(op, dp, dn, xbar, xx, y[n:], y[:n])
        ctx.save_for_backward(dp, dn, xbar, xx, yp, yn)
        ctx.op = op
        return with_reference_rows(yp), with_reference_rows(yn)

    @staticmethod
    def backward(ctx, gp, gn):
        dp, dn, xbar, xx, yp, yn = ctx.saved_tensors
        mp, mn = multivariate_multipliers(ctx.op, dp, dn, xbar, xx, yp, yn, input_rows(gp), input_rows(gn))
        return with_reference_rows(mp), with_reference_rows(mn), None, None, None


class MultivariateParts(OnGroups, PartsRule):
    """RevealCancel at softmax, log-softmax, softmin and the normalisations (module doc); ``nodes``: the
    Gauss–Legendre nodes of the softmax family's averaged Jacobians (the norms' are in closed form)."""

    name = "reveal_cancel_multivariate"

    def parts(self, func, args, kwargs, tagged, name, out):
        found = self.grouped(func, args, kwargs, tagged, name)
        if found is None:
            raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} over the batch "
                                      "dimension or with a parameter on the input's path")
        x, op = found
        dp, dn = twins(x)
        return _Multivariate.apply(dp, dn, x.detach(), out.detach(), op)


class BilinearParts(PartsRule):
    """``matmul``, ``bmm``, ``einsum``: with two operands on the path the Shapley split between the parts,
    Δy^± = B(Δa^±, b_mid) + B(a_mid, Δb^±); with one, the Linear rule ½(B(Δx, W) ± B(|Δx|, |W|)) (module doc)."""

    def parts(self, func, args, kwargs, tagged, name, out):
        if name.rsplit(".", 1)[-1] in _ADDED:  # c + a @ b (HF's Conv1D): the added constant cancels
            if tagged(args[0]) or kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
                raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} with the "
                                          "added input on the path or with alpha or beta")
            func, args, kwargs = torch.matmul, args[1:], {}
        slots = path_slots(args, kwargs, tagged)
        call = Call(func, args, kwargs, slots)
        if len(slots) == 2:
            a, b = (call.value(s) for s in slots)
            am, bm = (0.5 * (input_rows(t) + t[t.shape[0] // 2:]).detach() for t in (a, b))
            (ap, an), (bp, bn) = (tuple(input_rows(p) for p in twins(t)) for t in (a, b))
            return with_reference_rows(call(ap, bm) + call(am, bp)), with_reference_rows(call(an, bm) + call(am, bn))
        if len(slots) != 1:
            raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} with "
                                      f"{len(slots)} operands on the input's path")
        return self.linear(func, args, kwargs, slots[0], name)

    @staticmethod
    def linear(func, args, kwargs, slot, name) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and (i,) != slot]
        if len(tensors) != 1 or kwargs:
            raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} here")
        (j, w), (i,) = tensors[0], slot
        dp, dn = twins(args[i])
        d = input_rows(dp + dn)  # the net difference, split by the sign of its terms (§3.5.1)

        def run(x: Any, c: torch.Tensor) -> torch.Tensor:
            new = list(args)
            new[i], new[j] = x, c
            return func(*new)

        net, gross = run(d, w.detach()), run(d.abs(), w.detach().abs())
        return with_reference_rows(0.5 * (net + gross)), with_reference_rows(0.5 * (net - gross))


register_rule(FAMILY, tuple(GROUPINGS), MultivariateParts())
register_rule(FAMILY, PRODUCTS, BilinearParts())
