"""DeepLIFT's RevealCancel rule (Shrikumar et al. 2017, §3.5.3): positive and negative parts apart.

Input and reference run as one batch of 2N rows.  Beside every tensor on the input's path the pass
carries the positive and negative parts of its difference from the reference, Δ = Δ⁺ + Δ⁻ (2N rows; the
reference rows hold zeros), built with autograd from Δx⁺ = max(x − x̄, 0) and Δx⁻ = min(x − x̄, 0):

- a linear layer z = Wx + b (the paper's Linear rule, §3.5.1, with the parts of §3.3): the parts of Δz are
  the sums of the positive and of the negative terms w_ij·Δx_j of Δz_i = Σ_j w_ij·Δx_j, each term taken from
  the *net* difference Δx = Δx⁺ + Δx⁻ of its input, Δz⁺ = Σ_j 1{w_ijΔx_j > 0} w_ijΔx_j.  As
  max(wΔx, 0) = ½(wΔx + |w||Δx|), Δz^± = ½(W·Δx ± |W|·|Δx|): two products of the layer, and autograd gives the
  paper's multipliers m_{Δx_j⁺Δz_i^±} = m_{Δx_j⁻Δz_i^±} = ½(w_ij ± |w_ij| sign(Δx_j)): w_ij/2 where Δx_j = 0,
  the choice of §3.5.1 (and of the authors' DeepLIFT code) for parts that cancel exactly;
- an elementwise nonlinearity y = f(z), reference z̄ (Eq. for Δy⁺ and Δy⁻ in §3.5.3):
  Δy⁺ = ½[f(z̄ + Δz⁺) − f(z̄)] + ½[f(z) − f(z̄ + Δz⁻)] and Δy⁻ = ½[f(z̄ + Δz⁻) − f(z̄)] + ½[f(z) − f(z̄ + Δz⁺)],
  with the paper's f(z̄ + Δz⁺ + Δz⁻) read as f(z) from the forward pass, so Δy⁺ + Δy⁻ = f(z) − f(z̄) exactly;
  the multipliers are m⁺ = Δy⁺/Δz⁺ and m⁻ = Δy⁻/Δz⁻ (backward of :class:`_RevealCancel`);
- sums, means, average pooling, reshapes and indexing act on both parts; a scaling (batch norm's γ/σ) splits
  by the sign of its factor; max pooling passes the parts of the entry selected at the input (where the
  reference selects another entry they do not sum to the pooled Δ; the next nonlinearity restores the sum, as
  it reads f(z) − f(z̄) from the forward pass and gives all of it to the nonzero part if the other is 0);
- a product a·b of two tensors on the path: the Shapley split between the positive and the negative parts,
  Δy^± = Δa^±·(b + b̄)/2 + Δb^±·(a + ā)/2 (:func:`product_parts`); a quotient of two has no rule;
- a constant of the input's shape (``zeros_like``, ``ones_like``, ``full_like``): no difference, both parts 0;
  ``masked_fill`` and ``where`` likewise where they write a value off the path (a masked score's −∞);
- softmax, log-softmax, softmin and the normalisations (LayerNorm, GroupNorm, RMSNorm, instance norm,
  ``F.normalize``): the same Shapley split between the two parts, read with vectors per softmax vector or
  normalised group, with matrix multipliers M^± such that M^±Δx^± = Δy^±; ``matmul``, ``bmm``, ``einsum``,
  ``addmm`` (attention's QKᵀ and AV, HF's ``Conv1D``): the product's split below, or the Linear rule with a
  parameter (:mod:`tribute.attribution.reveal_cancel_multivariate`).
Contributions are m⁺ ⊙ Δx⁺ + m⁻ ⊙ Δx⁻ and sum to S_c(x) − S_c(x̄).

Why the net difference at a linear layer (and not W⁺Δx⁺ + W⁻Δx⁻, each part through the layer on its own, as
this module did before): it is the paper's rule, and it survives depth.  Propagated apart, the parts are sums
of all the positive (negative) products along every path and grow like the product of the layers' ‖|W|‖ while
their sum stays near Δz; their cancellation lost Σφ = ΔS to 3e-3 relative after 8 bottleneck blocks of a float64
ResNet-50-like network, 0.7 after 9 and 6e14 after 16, and overflowed in float32.  Re-split from the net
difference at every layer, a part is bounded by one layer's |W|·|Δx| and a nonlinearity's parts by its input's,
|Δy^±| ≤ Lip(f)·|Δz^±|; along a residual stream the parts add up block by block (linear growth, not a product;
measured max|Δ⁺|/max|Δ| ≤ 2 at every block of that network).  The sum is re-anchored at every nonlinearity to
the forward pass's own f(z) − f(z̄), so rounding does not accumulate with depth either (Σφ = ΔS to 1e-14).
Only the input rows are computed: the references' parts are zeros.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from ..core.nonlinearities import Nonlinearity
from ..core.rule_registry import OpRule, RuleKind, register_rule, rule_table
from ..core.rules import ElementwiseRule, derivative
from ..core.strictness import UncoveredModelError
from ..core.summation import summation_miss
from ..core.tensors import per_channel
from ..lrp.layer_call import parse_linear
from ..lrp.ops import IN_PLACE, LINEAR_LAYERS, MOVES

FAMILY = "reveal_cancel"

_ATTR = "_tribute_twins"
# linear with non-negative coefficients: both parts go through unchanged
POSITIVE = {"sum", "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
             "adaptive_avg_pool3d", "interpolate", "upsample"}
#: every max pooling, with the functional that returns its indices and how many positional arguments follow
#: the input before ``return_indices``
_POOLS = {f"{kind}max_pool{d}d": (getattr(F, f"{kind}max_pool{d}d"), d, 1 if kind else 5)
          for kind in ("", "adaptive_") for d in (1, 2, 3)}
_MAXPOOL = {*_POOLS, *(f"{name}_with_indices" for name in _POOLS), *(f"_{name}" for name in _POOLS)}


def check_sum(total: torch.Tensor, score: torch.Tensor, reference: torch.Tensor) -> None:
    """Warn where the output's parts do not sum to S(x) − S(x̄) (Σφ = their sum, so summation-to-delta fails):
    after a max pooling that selects unlike entries in input and reference with no nonlinearity after it to
    restore the sum.  Rounding is allowed for: √ε of the largest of Σφ, S(x) and S(x̄)."""
    worst = summation_miss(total, score, reference)
    if worst is not None:
        delta = score - reference
        warnings.warn(f"deeplift_reveal_cancel: the attributions of sample {worst} sum to {float(total[worst]):.6g}, "
                      f"not S(x) − S(x̄) = {float(delta[worst]):.6g}: a max pooling selects other entries in the "
                      "input than in the reference and no nonlinearity follows it to restore the sum (DeepLIFT's "
                      "max pooling passes the difference of the entry the input selects)", stacklevel=3)


def twins(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pair = getattr(t, _ATTR, None)
    if pair is None:
        raise RuntimeError("RevealCancel lost track of a tensor's differences (an op it does not handle?)")
    return pair


def _split(c, pos, neg):
    """c ⊙ (pos, neg) with the parts swapped where c < 0."""
    if c.numel() <= 4096 and bool((c >= 0).all()):  # a small factor (batch norm's γ/σ) of one sign: no swap
        return c * pos, c * neg
    cp, cn = c.clamp(min=0), c.clamp(max=0)
    return cp * pos + cn * neg, cn * pos + cp * neg


def input_rows(t: torch.Tensor) -> torch.Tensor:
    """The first half of a 2N-row tensor: the inputs' rows (the references' parts are zeros)."""
    if t.dim() == 0 or t.shape[0] % 2:
        raise ValueError(f"deeplift_reveal_cancel runs inputs and references as one batch of 2N rows, but an op on "
                         f"the input's path received a tensor of shape {tuple(t.shape)}: the model must keep the "
                         "batch as the first dimension")
    return t[: t.shape[0] // 2]


def with_reference_rows(t: torch.Tensor) -> torch.Tensor:
    """The input rows ``t`` of a part, with the references' rows (zeros) below."""
    return torch.cat([t, torch.zeros_like(t)])


class _RevealCancel(torch.autograd.Function):
    """(Δy⁺, Δy⁻) of y = f(z) from (Δz⁺, Δz⁻) (module doc), computed on the inputs' rows: z̄ and f(z̄) are the
    references' rows of z and y.  Backward: the multipliers Δy^±/Δz^± (the references' rows carry none)."""

    @staticmethod
    def forward(ctx, dp, dn, z, y, nl, params):
        n = input_rows(z).shape[0]
        dp, dn, zbar = dp[:n], dn[:n], z[n:].clone()  # a copy: an in-place nonlinearity then overwrites z with y
        fp, fn, f0, fx = nl(zbar + dp, **params), nl(zbar + dn, **params), y[n:], y[:n]
        yp = 0.5 * (fp - f0) + 0.5 * (fx - fn)
        yn = 0.5 * (fn - f0) + 0.5 * (fx - fp)
        # a part within rounding of zero (|Δz^±| ≤ 4 ε the magnitudes it is computed from) is a null player: its
        # share is 0 and the other part's is all of f(z) − f(z̄) (the same up to rounding where the parts sum to
        # Δz; after a max pooling that selects unlike in input and reference they do not, and Δy stays whole)
        tiny = 4 * torch.finfo(dp.dtype).eps * (dp.abs() + dn.abs() + z[:n].abs() + zbar.abs())
        null_p, null_n = dp.abs() <= tiny, dn.abs() <= tiny
        yp, yn = (torch.where(null, 0.0, torch.where(other_null, fx - f0, share))
                  for null, other_null, share in ((null_p, null_n, yp), (null_n, null_p, yn)))
        ctx.save_for_backward(dp, dn, zbar, yp, yn, tiny)
        ctx.nl, ctx.params = nl, params
        return with_reference_rows(yp), with_reference_rows(yn)

    @staticmethod
    def backward(ctx, gp, gn):
        dp, dn, zbar, yp, yn, tiny = ctx.saved_tensors

        def ratio(y, d, other):  # where d is within rounding of 0: the limit, the mean slope of the two halves
            small = d.abs() <= tiny
            if not bool(small.any()):
                return y / d
            limit = 0.5 * (derivative(ctx.nl, zbar, ctx.params) + derivative(ctx.nl, zbar + other, ctx.params))
            return torch.where(small, limit, y / torch.where(small, 1.0, d))

        mp, mn = input_rows(gp) * ratio(yp, dp, dn), input_rows(gn) * ratio(yn, dn, dp)
        return with_reference_rows(mp), with_reference_rows(mn), None, None, None, None


class RevealCancelRule(ElementwiseRule):
    """At a nonlinearity: the plain forward, and the RevealCancel parts of its difference beside it."""

    name = "reveal_cancel"
    saves_input = False  # the parts are saved by _RevealCancel; z itself is not

    def apply(self, nl: Nonlinearity, z, params, phase):
        y = nl(z, **params)
        dp, dn = twins(z)
        y._tribute_twins = _RevealCancel.apply(dp, dn, z.detach(), y.detach(), nl, params)
        return y

    def apply_inplace(self, nl: Nonlinearity, z, params, phase):
        y = self.apply(nl, z, params, phase)  # reads z (and its parts) before the write
        z.copy_(y)
        z._tribute_twins = y._tribute_twins
        return True


class RevealCancelOps:
    """The op handler of the RevealCancel rule set (see the module doc)."""

    name = FAMILY

    def key(self) -> tuple:
        return (FAMILY,)

    def start(self) -> _Pass:
        return _Pass()


class _Pass:
    """One forward pass: every op on the input's path runs with its parts beside it (its rule in the family's
    table), or is refused."""

    unruled: list[str]

    def __init__(self):
        self.unruled = []
        self.table = rule_table(FAMILY)

    def track_modules(self, model):
        return contextlib.nullcontext()

    def count_consumers(self, args, kwargs, tagged) -> None:
        pass

    def before_write(self, t, writer=None) -> None:  # keeps nothing by reference
        pass

    def handle(self, func, args, kwargs, tagged, name):
        rule = self.table.get(name.rsplit(".", 1)[-1])
        if rule is not None:
            return rule.apply(self, func, args, kwargs, tagged, name)
        out = func(*args, **kwargs)
        if not _holds_floats(out):  # comparisons, indices, metadata: no differences; the engine keeps them off the path
            return NotImplemented
        if _holds_tensors(out):  # the differences have no plain-gradient fallback: strict=False cannot help here
            raise UncoveredModelError(
                f"deeplift_reveal_cancel: RevealCancel has no rule for {name} on the input's path; register one "
                f"with tribute.core.register_rule({FAMILY!r}, op, rule) (strict=False does not apply: "
                "RevealCancel's differences cannot pass an op by its plain gradient)")
        return out  # metadata (x.shape, x.dim()) carries no differences


def _holds_floats(out) -> bool:
    if isinstance(out, torch.Tensor):
        return out.is_floating_point()
    return isinstance(out, (list, tuple)) and any(_holds_floats(o) for o in out)


def _holds_tensors(out) -> bool:
    return isinstance(out, torch.Tensor) or (isinstance(out, (list, tuple)) and bool(out)
                                             and all(isinstance(o, torch.Tensor) for o in out))


class PartsRule(OpRule):
    """A RevealCancel rule at an op: :meth:`parts` gives (Δ⁺, Δ⁻) of the op's output from its inputs' parts."""

    def apply(self, handler, func, args, kwargs, tagged, name):
        out = func(*args, **kwargs)
        if not _holds_tensors(out):
            return out  # metadata (x.shape, x.dim()) carries no differences
        parts = self.parts(func, args, kwargs, tagged, name, out)
        if isinstance(out, torch.Tensor):
            out._tribute_twins = parts
        else:
            for o, p, q in zip(out, *parts, strict=True):
                o._tribute_twins = (p, q)
        return out

    def parts(self, func, args, kwargs, tagged, name, out) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _on_path(args, kwargs, tagged) -> list[torch.Tensor]:
    return [a for a in args if tagged(a)] + [v for v in kwargs.values() if tagged(v)]


class SignedWeights(PartsRule):
    """A linear layer (the paper's Linear rule, see the module doc): Δz^± = ½(W·Δx ± |W|·|Δx|) from the net
    difference Δx = Δx⁺ + Δx⁻ (the bias cancels)."""

    kind = RuleKind.LINEAR

    def parts(self, func, args, kwargs, tagged, name, out):
        parsed = parse_linear(func, args, kwargs)
        if parsed is None:
            raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} on the input's "
                                      "path")
        _, x, w, _, op = parsed
        if not tagged(x) or tagged(w):
            raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} with weights "
                                      "computed from the input")
        dp, dn = twins(x)
        d = input_rows(dp + dn)  # both parts get the net difference's multiplier
        w = w.detach()
        net, gross = op(d, w, None), op(d.abs(), w.abs(), None)
        return with_reference_rows(0.5 * (net + gross)), with_reference_rows(0.5 * (net - gross))


class Sum(PartsRule):
    """a + b: the parts add."""

    def parts(self, func, args, kwargs, tagged, name, out):
        if kwargs.get("alpha", 1) != 1:
            raise ValueError("RevealCancel: add with alpha is not supported")
        pairs = [twins(a) for a in _on_path(args, kwargs, tagged)]
        return sum(p for p, _ in pairs), sum(q for _, q in pairs)


class Difference(PartsRule):
    """a − b: Δ⁺ = Δa⁺ − Δb⁻, Δ⁻ = Δa⁻ − Δb⁺ (``reflected``: b − a, as ``__rsub__`` is called)."""

    def __init__(self, reflected: bool = False):
        self.reflected = reflected

    def parts(self, func, args, kwargs, tagged, name, out):
        if kwargs.get("alpha", 1) != 1 or len(args) > 2:
            raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} with alpha")
        first, second = (args[1], args[0]) if self.reflected else (args[0], args[1])
        zero = (0, 0)
        (ap, an), (bp, bn) = (twins(first) if tagged(first) else zero), (twins(second) if tagged(second) else zero)
        return ap - bn, an - bp


class Negation(PartsRule):
    """−a: the parts swap and change sign."""

    def parts(self, func, args, kwargs, tagged, name, out):
        p, q = twins(args[0])
        return -q, -p


class Scaling(PartsRule):
    """c·a (or a / c) with c off the input's path: the parts scale, swapped where c < 0.  A product a·b of two
    tensors on the path takes :func:`product_parts`; a quotient of two has no rule."""

    def __init__(self, divides: bool = False):
        self.divides = divides

    def apply(self, handler, func, args, kwargs, tagged, name):
        on_path = _on_path(args, kwargs, tagged)
        if len(on_path) == 2 and not self.divides:
            parts = product_parts(*on_path)  # before the call: an in-place product overwrites a
            out = func(*args, **kwargs)
            out._tribute_twins = parts
            return out
        return super().apply(handler, func, args, kwargs, tagged, name)

    def parts(self, func, args, kwargs, tagged, name, out):
        on_path = _on_path(args, kwargs, tagged)
        if len(on_path) != 1:
            raise UncoveredModelError("deeplift_reveal_cancel: RevealCancel has no rule for a quotient of two "
                                      "tensors on the input's path")
        t = on_path[0]
        if self.divides and kwargs.get("rounding_mode") is not None:
            raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} with rounding")
        if self.divides and (len(args) < 2 or args[1] is t):  # c / x: a reciprocal, not a scaling
            raise UncoveredModelError(f"deeplift_reveal_cancel: RevealCancel has no rule for {name} with the "
                                      "divisor on the input's path")
        other = next(a for a in args if a is not t)
        c = torch.as_tensor(other, dtype=t.dtype, device=t.device).detach()
        return _split(1 / c if self.divides else c, *twins(t))


def product_parts(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RevealCancel at y = a·b with both factors on the input's path: the Shapley split of Δy between two
    players, the positive parts P = (Δa⁺, Δb⁺) and the negative parts N = (Δa⁻, Δb⁻), as §3.5.3 splits a
    nonlinearity's Δy between Δz⁺ and Δz⁻ (Shrikumar et al. 2017), with g(S) = y with the players of S on:

        Δy⁺ = ½[g(P) − g(∅)] + ½[g(P ∪ N) − g(N)],   Δy⁻ = ½[g(N) − g(∅)] + ½[g(P ∪ N) − g(P)].

    Each bracket is a change of a product, (a₀ + α)(b₀ + β) − a₀b₀ = α(b₀ + β/2) + β(a₀ + α/2), split between
    its two factors by their own Shapley values; summed, Δy⁺ = Δa⁺·(b + b̄)/2 + Δb⁺·(a + ā)/2 and
    Δy⁻ = Δa⁻·(b + b̄)/2 + Δb⁻·(a + ā)/2 (the same as the four-player Shapley value over Δa^±, Δb^±: every
    pairwise term α·β goes half to each).  So every part of a has the multiplier (b + b̄)/2 and every part of b
    (a + ā)/2, DeepLIFT's product rule (Deep SHAP, Lundberg & Lee 2017 §4.2), and Δy⁺ + Δy⁻ = ab − āb̄ exactly.
    Δy⁺ is the positive parts' share, not necessarily ≥ 0 (it is < 0 where the other factor is negative), as a
    decreasing nonlinearity's Δy⁺ is.  Factors broadcast as in the product."""
    am, bm = (0.5 * (input_rows(t) + t[t.shape[0] // 2:]).detach() for t in (a, b))
    (ap, an), (bp, bn) = (tuple(input_rows(p) for p in twins(t)) for t in (a, b))
    return with_reference_rows(ap * bm + bp * am), with_reference_rows(an * bm + bn * am)


class BatchNormScale(PartsRule):
    """Eval-mode batch norm: the parts scale by γ/σ per channel (the shift cancels)."""

    def parts(self, func, args, kwargs, tagged, name, out):
        p_ = dict(zip(("input", "running_mean", "running_var", "weight", "bias", "training"), args, strict=False))
        p_.update(kwargs)
        scale = torch.rsqrt(p_["running_var"].detach() + p_.get("eps", kwargs.get("eps", 1e-5)))
        if p_.get("weight") is not None:
            scale = scale * p_["weight"].detach()
        return _split(per_channel(scale, out), *twins(p_["input"]))


class SelectedAtInput(PartsRule):
    """Max pooling (1-, 2-, 3-d, adaptive; DeepLIFT's gradient mode for max pooling): the parts of the entry
    selected at the input.  Each part pooled on its own would mix entries (one entry's Δ⁺ beside another's Δ⁻)."""

    def apply(self, handler, func, args, kwargs, tagged, name):
        out = func(*args, **kwargs)
        values = out[0] if isinstance(out, (tuple, list)) else out  # return_indices=True: (values, indices)
        values._tribute_twins = self.parts(func, args, kwargs, tagged, name, values)
        return out

    def parts(self, func, args, kwargs, tagged, name, out):
        pool, dims, positional = _POOLS[name.rsplit(".", 1)[-1].removeprefix("_").removesuffix("_with_indices")]
        x = args[0]
        kw = {k: v for k, v in kwargs.items() if k != "return_indices"}
        _, idx = pool(input_rows(x).detach(), *args[1:1 + positional], return_indices=True, **kw)
        return tuple(with_reference_rows(input_rows(t).flatten(-dims).gather(-1, idx.flatten(-dims)).view_as(idx))
                     for t in twins(x))


class NoDifference(PartsRule):
    """A constant made in the shape of a tensor on the input's path (``zeros_like(x)``): the same values in the
    input and the reference rows, so both parts are 0."""

    def parts(self, func, args, kwargs, tagged, name, out):
        zero = torch.zeros_like(out)
        return zero, zero


class PartsApart(PartsRule):
    """A linear op with non-negative coefficients or a move: each part goes through it alone.

    A tensor off the input's path inside a list (``torch.cat([x, c])``: a constant, a learned token, a forward
    argument) is data with the same value in the input and the reference rows, so its parts are zeros; other
    arguments off the path (indices, shapes, integer index tensors in a tuple) are passed as they are."""

    def parts(self, func, args, kwargs, tagged, name, out):
        def sub(a, k, listed=False):
            if isinstance(a, (list, tuple)):
                return type(a)(sub(b, k, listed=True) for b in a)
            if tagged(a):
                return twins(a)[k]
            data = listed and isinstance(a, torch.Tensor) and a.is_floating_point()  # not an index (x[rows, -1])
            return torch.zeros_like(a) if data else a

        return tuple(func(*(sub(a, k) for a in args), **{key: sub(v, k) for key, v in kwargs.items()}) for k in (0, 1))


class Padding(PartsApart):
    """``pad``: each part padded alone, with zeros where the mode is "constant" (a padded value is the same in
    input and reference rows: no difference), by reflection or replication of the part otherwise."""

    def parts(self, func, args, kwargs, tagged, name, out):
        args, kwargs = list(args), dict(kwargs)
        if len(args) > 3:
            args[3] = 0.0
        elif "value" in kwargs:
            kwargs["value"] = 0.0
        return super().parts(func, args, kwargs, tagged, name, out)


class Masked(PartsApart):
    """``masked_fill``, ``where``: each part where the op keeps the input's entries, 0 where it writes a value off
    the input's path (the same in input and reference rows: a masked attention score's −∞ is no difference)."""

    def parts(self, func, args, kwargs, tagged, name, out):
        args, kwargs = list(args), dict(kwargs)
        fills = range(2, len(args)) if name.rsplit(".", 1)[-1].startswith("masked_fill") else range(1, len(args))
        for i in fills:  # where's condition (a boolean tensor, first or, as x.where(cond, y), second) stays
            if not tagged(args[i]) and not (isinstance(args[i], torch.Tensor) and args[i].dtype == torch.bool):
                args[i] = torch.zeros_like(args[i]) if isinstance(args[i], torch.Tensor) else 0.0
        for key in ("value", "other", "input"):
            if key in kwargs and not tagged(kwargs[key]):
                kwargs[key] = torch.zeros_like(kwargs[key]) if isinstance(kwargs[key], torch.Tensor) else 0.0
        return super().parts(func, args, kwargs, tagged, name, out)


def _with_in_place(ops) -> set[str]:
    """``ops`` and their in-place forms."""
    return {*ops, *(op for op, base in IN_PLACE.items() if base in ops)}


register_rule(FAMILY, "*", RevealCancelRule())
register_rule(FAMILY, LINEAR_LAYERS, SignedWeights())
register_rule(FAMILY, _with_in_place({"add", "__add__", "__radd__"}), Sum())
register_rule(FAMILY, _with_in_place({"sub", "__sub__"}), Difference())
register_rule(FAMILY, "__rsub__", Difference(reflected=True))
register_rule(FAMILY, ("neg", "__neg__"), Negation())
register_rule(FAMILY, _with_in_place({"mul", "__mul__", "__rmul__"}), Scaling())
register_rule(FAMILY, _with_in_place({"div", "__truediv__"}), Scaling(divides=True))
register_rule(FAMILY, "batch_norm", BatchNormScale())
register_rule(FAMILY, _MAXPOOL, SelectedAtInput())
register_rule(FAMILY, ("zeros_like", "ones_like", "full_like", "new_zeros", "new_ones", "new_full"), NoDifference())
_MASKED = {"masked_fill", "masked_fill_", "where"}
register_rule(FAMILY, (POSITIVE | MOVES) - _MAXPOOL - _MASKED - {"pad"}, PartsApart())
register_rule(FAMILY, _MASKED, Masked())
register_rule(FAMILY, "pad", Padding())
