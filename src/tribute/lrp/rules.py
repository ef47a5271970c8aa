"""LRP's rules at linear layers (Bach et al. 2015; Montavon et al. 2017, 2019), and its rule at nonlinearities.

A rule redistributes the relevance R_j at a layer's output z = Wx + b over its inputs: ``relevance(layer, x, z, R)``
gives R_i.  Each rule's equation is in its docstring; the code computes it with as few passes over the layer as
the rule allows (the *fast paths*, named in comments: x ≥ 0 after a ReLU halves the signed terms, relevance
that no ReLU passes where z ≤ 0 needs one transposed layer, two transposed layers stacked into one, and for x of
both signs the identity (x w)^± = ½(x w ± |x||w|), which takes one layer on |x| and two transposed layers where
x⁺ and x⁻ apart take two and four: γ always, αβ and z⁺ where no output makes it ill-conditioned).  A
:class:`tribute.lrp.Composite` says which rule applies at which layer.

Stabiliser: stab_e(d) = d + e·sign(d) with sign(0) = +1, added, never clipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import torch

from ..core.rule_registry import BackwardRule, RuleKind
from ..core.rules import ElementwiseRule, stab
from .layer_call import LayerCall, vjp
from .zero_value import absorbed_value, zero_value

STABILIZER = 1e-6


def norm_stabilizer(composite) -> float:
    """The ε of stab_ε at the Norm rule's ops in a pass of ``composite``: its ``stabilizer``, or :data:`STABILIZER`
    (read at the call, so that a test may lower it)."""
    eps = getattr(composite, "stabilizer", None)
    return STABILIZER if eps is None else eps


def _pos(t):
    return t.clamp(min=0)


def _neg(t):
    return t.clamp(max=0)



class LinearRule(BackwardRule):
    """Base class of LRP rules at a linear layer (the linear kind of :mod:`tribute.core.rule_registry`):
    ``relevance(layer, x, z, R) -> R_in``."""

    kind = RuleKind.LINEAR
    name = "linear_rule"
    #: whether the relevance it gives an input is its value times something finite (R = x ⊙ …), so zero
    #: where the input is zero (see :class:`PassFacts`)
    proportional = False
    #: whether, where no relevance reaches z ≤ 0 (:attr:`LayerCall.relu_only`), ReLU(z) in place of z gives the
    #: same relevance (z then only matters where it is > 0, and a zero denominator stays finite); a layer
    #: whose output an in-place ReLU overwrote recomputes z for a rule that does not say so
    positive_z_suffices = False

    def relevance(self, layer: LayerCall, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _nonnegative(x: torch.Tensor, layer: LayerCall) -> bool:
    """Whether x ≥ 0 (after a ReLU), where (x w)^± = x w^± and half the terms vanish."""
    return layer.nonnegative_input or not bool(x.min() < 0)  # known, or one reduction (no mask)


class _SignedInput:
    """A layer's input with negative entries, as its parts x = x⁺ + x⁻: for a product x w, (x w)⁺ = x⁺w⁺ + x⁻w⁻.

    ``forward((a, b), bias)`` is op(x⁺, a) + op(x⁻, b) + bias; ``transpose(s, name, make)`` gives the parts'
    transposed layers [Jᵀ_a s, Jᵀ_b s] for ``make(W, b) -> (a, b)``; ``weigh(parts)`` is x⁺ ⊙ part₁ + x⁻ ⊙ part₂.
    (Stacking the parts side by side on the input-channel axis, one call instead of two, was measured slower on
    a batch-1 ResNet-18's first layer; the transposed layers are stacked so where it pays, see :meth:`transpose`.)
    """

    def __init__(self, layer: LayerCall, x: torch.Tensor):
        self.layer, self.op, self.x = layer, layer.op, x
        self.xp, self.xn = _pos(x), _neg(x)

    def forward(self, weights, bias) -> torch.Tensor:
        return self.op(self.xp, weights[0], bias).add_(self.op(self.xn, weights[1], None))

    def transpose(self, s: torch.Tensor, name: Hashable, make: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """[Jᵀ_a s, Jᵀ_b s] for ``make(W, b) -> (a, b)`` (derived, cached).

        For a convolution without groups or a dense layer (:attr:`LayerOp.stackable`) both come from one transposed
        layer with [a, b] side by side on the input-channel axis, which gives the two parts side by side: the same
        arithmetic, and for few input channels about half the time (a first layer's 3 channels: 64→6 channels took
        what 64→3 took, 12.5 ms at batch 8, 64×64; 46 ms against 2 × 44 at batch 1, 224×224; on a busy machine).
        Others take the two one by one (a depthwise convolution so stacked is no longer depthwise: measured slower on
        ConvNeXt's 7×7 depthwise convolutions)."""
        layer, x = self.layer, self.x
        if not layer.op.stackable:
            return tuple(vjp(self.op, x, w, s) for w in layer.derived(name, make))
        (w2,) = layer.derived(("input_stacked", name), lambda w, b: (torch.cat(make(w, b), 1),))
        axis = x.dim() - 1 if layer.kind == "dense" else 1
        shape = list(x.shape)
        shape[axis] *= 2
        return vjp(self.op, x.new_empty(shape), w2, s).chunk(2, axis)  # the stand-in's geometry only is read

    def weigh(self, parts) -> torch.Tensor:
        """x⁺ ⊙ part₁ + x⁻ ⊙ part₂."""
        first, second = parts
        return torch.mul(first, self.xp).addcmul_(second, self.xn)

    @staticmethod
    def difference(p, q) -> list[torch.Tensor]:
        """p − q, part by part (``p`` is consumed)."""
        return [a.sub_(b) for a, b in zip(p, q, strict=True)]


class _TwoSignals:
    """Two signals s₁, s₂ of a layer's output shape, taken back through two weights at once: W₁ᵀs₁ + W₂ᵀs₂.

    For a convolution without groups and a dense layer, s₁ and s₂ are written side by side on the output-channel
    axis of one buffer (``first``, ``second``) and meet [W₁; W₂] stacked (cached so): one transposed layer with
    twice the channels.  Measured on ResNet-18 layer shapes, ratios included: 0-16% faster than two at batch 1
    and 0-10% at batch 32.  Other layers take the two one by one (``first``/``second`` are None: the signals are
    fresh tensors).
    """

    def __init__(self, layer: LayerCall, like: torch.Tensor):
        self.layer = layer
        self.stacked = layer.op.stackable
        self.first = self.second = self.buffer = None
        if self.stacked:
            dim = like.dim() - 1 if layer.kind == "dense" else 1
            shape = list(like.shape)
            shape[dim] *= 2
            self.buffer = like.new_empty(shape)
            self.first, self.second = self.buffer.chunk(2, dim)

    def transpose(self, x: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, name: Hashable,
                  fill: Callable) -> torch.Tensor:
        """W₁ᵀs₁ + W₂ᵀs₂ where ``fill(W, W₁, W₂)`` writes W₁ and W₂ into the two tensors it is given (derived once,
        cached; written in place into one buffer rather than made apart and concatenated: a first call on VGG-11's
        25088×4096 layer spent most of its time allocating and filling copies of that weight)."""
        layer = self.layer
        if self.stacked:
            return layer.transposed(("stacked", name), self.buffer, x, make=lambda w, b: _filled(w, fill, 2))
        w1, w2 = layer.derived(name, lambda w, b: _filled(w, fill, 2).chunk(2, 0))
        return vjp(layer.op, x, w1, s1).add_(vjp(layer.op, x, w2, s2))


def _filled(w: torch.Tensor, fill: Callable, parts: int) -> torch.Tensor:
    """A new tensor of ``parts`` blocks of w's shape stacked on axis 0, written by ``fill(w, *blocks)``."""
    out = w.new_empty((parts * w.shape[0], *w.shape[1:]))
    fill(w, *out.chunk(parts, 0))
    return out


def _bias(b: torch.Tensor | None, add: float, like: torch.Tensor, layer: LayerCall) -> torch.Tensor | None:
    """``b + add`` per output channel (a layer without a bias gets the constant)."""
    if add == 0:
        return b
    if b is not None:
        return b + add
    return layer.op.constant(like, add)


def _positive_part(layer: LayerCall, z: torch.Tensor, scale: float = 1.0) -> Callable:
    """``make(W, b)`` of (c·W⁺, c·b⁺ + ε), c = ``scale``: with x⁺ (and c·W⁻ for x⁻) the layer gives
    c·z⁺ + ε, z⁺ = Σ (x w)⁺ + b⁺ ≥ 0."""
    def make(w, b):
        wp = _pos(w) if scale == 1 else _pos(w).mul_(scale)  # one copy of W (a large layer's costs)
        return wp, _bias(None if b is None else scale * _pos(b), STABILIZER, z, layer)

    return make


def _magnitude_part(layer: LayerCall, z: torch.Tensor, scale: float) -> Callable:
    """``make(W, b)`` of (c·|W|, c·|b| + ε), c = ``scale``: on |x| the layer gives c·(Σ_i |x_i w_ij| + |b_j|) + ε."""
    return lambda w, b: (scale * w.abs(), _bias(None if b is None else scale * b.abs(), STABILIZER, z, layer))


#: the αβ and z⁺ rules on inputs of both signs take z^± as differences (:meth:`AlphaBeta._by_magnitudes`) only where
#: no output has z⁺ or |z⁻| below 1/CONDITION of the scale of its contributions, ½Σ|x w|: the rounding error of a
#: difference is then at most CONDITION·u (u the unit roundoff) relative to z^±, and likewise the relevance's
#: relative to the relevance each output hands down (4e-6 in float32, 7e-15 in float64)
CONDITION = 64.0
#: layers whose outputs read fewer inputs than this skip that attempt: among few contributions an output whose
#: contributions all have one sign (z⁺ or z⁻ = 0) is common (ConvNeXt's 7×7 depthwise convolutions on 4×4 maps
#: failed the condition on 13 of 18 layers), and the failed attempt costs a layer on |x|
MAGNITUDES_MIN_FAN_IN = 64


class Epsilon(LinearRule):
    """ε rule (Ancona et al. 2019, Eq 15): R_i = x_i Σ_j w_ij R_j / stab_ε(z_j), the bias inside z."""

    name = "epsilon"
    proportional = True
    positive_z_suffices = True

    def __init__(self, epsilon: float = 1e-6):
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def relevance(self, layer, x, z, r):
        den = stab(layer.output(z), self.epsilon)
        # den and the transposed layer's output are fresh tensors: divide and multiply in place
        return layer.transpose(torch.div(r, den, out=den), x).mul_(x)


class AlphaBeta(LinearRule):
    """αβ rule (Bach et al. 2015), α − β = 1:
    R_i = Σ_j [α (x_i w_ij)⁺ / stab(z⁺_j) − β (x_i w_ij)⁻ / stab(z⁻_j)] R_j,
    z^± = Σ_i (x_i w_ij)^± + b_j^±.  Negative inputs count by the sign of the product x_i w_ij.
    """

    name = "alpha_beta"
    proportional = True
    positive_z_suffices = True

    def __init__(self, alpha: float = 2.0, beta: float = 1.0):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-12:
            raise ValueError(f"the αβ rule needs α, β >= 0 and α − β = 1; got α={alpha}, β={beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def relevance(self, layer, x, z, r):
        # R = x⁺ ⊙ (α Jᵀ_{w⁺} s₊ − β Jᵀ_{w⁻} s₋) + x⁻ ⊙ (α Jᵀ_{w⁻} s₊ − β Jᵀ_{w⁺} s₋), s₊ = R / (z⁺ + ε),
        # s₋ = R / (z⁻ − ε); z⁺ + ε from one layer with (W⁺, b⁺ + ε) (and W⁻ on x⁻), z⁻ − ε = z − that
        op, a, b = layer.op, self.alpha, self.beta
        signed = None
        if not _nonnegative(x, layer):
            fast = self._by_magnitudes(layer, x, z, r)
            if fast is not None:
                return fast
            signed = _SignedInput(layer, x)
        elif b and op.stackable and op.rotated_adjoint(layer.weight.shape) is None:
            return self._halves(layer, x, z, r)
        wp, bp = layer.derived("positive_part", _positive_part(layer, z))
        if signed is None:
            zp = op(x, wp, bp)
        else:
            zp = signed.forward(layer.derived("signs", lambda w, _: (_pos(w), _neg(w))), bp)
        if signed is None and not b:  # z⁺ (α = 1) for x ≥ 0
            return layer.transposed("positive_part", torch.div(r, zp, out=zp), x, w=wp).mul_(x)
        pair = _TwoSignals(layer, r) if signed is None else None
        if b:
            # z⁻ ≤ 0: clamping at −ε keeps rounding in z − z⁺ from flipping its sign (where z⁻ = 0 every
            # contribution (x w)⁻ is 0, so that entry's denominator does not matter)
            # written straight into the pair's buffer: a fresh tensor per layer measured 2% slower at batch 32
            sn = torch.sub(layer.output(z), zp, out=None if pair is None else pair.second).clamp_(max=-STABILIZER)
            sn = torch.div(r, sn, out=sn)
        sp = torch.div(r, zp, out=zp if pair is None or pair.first is None else pair.first)
        if signed is None:  # x ≥ 0: x ⊙ (α W⁺ᵀs₊ − β W⁻ᵀs₋)
            return pair.transpose(x, sp, sn, ("alpha_beta", a, b), lambda w, up, down: (
                torch.clamp(w, min=0, out=up).mul_(a), torch.clamp(w, max=0, out=down).mul_(-b))).mul_(x)
        parts = signed.transpose(sp, ("alpha_signs", a), lambda w, _: (a * _pos(w), a * _neg(w)))
        if b:
            parts = signed.difference(parts, signed.transpose(sn, ("beta_signs", b),
                                                              lambda w, _: (b * _neg(w), b * _pos(w))))
        return signed.weigh(parts)

    def _halves(self, layer, x, z, r) -> torch.Tensor:
        """x ≥ 0 on a layer that takes two signals back stacked (:class:`_TwoSignals`): W⁺ and −W⁻ = W⁺ − W derived
        side by side in one buffer, whose first half is the weight of z⁺ + ε = op(x, W⁺, b⁺ + ε) and whose whole
        is the transposed layer of [α s₊; β s₋], giving α W⁺ᵀs₊ − β W⁻ᵀs₋ (the same numbers as [αW⁺; −βW⁻] with
        [s₊; s₋] for α = 2, β = 1).  One copy of W's size less than W⁺ and [αW⁺; −βW⁻] apart, in two passes over
        W: a first call on VGG-11 at 224×224 spent most of its time deriving those for the 25088×4096 layer.  Not
        for a convolution whose transposed layer runs rotated (:meth:`LayerCall.transposed`), which keeps the
        rotated weights in place of [αW⁺; −βW⁻] and would keep both halves here for W⁺ alone."""
        a, b = self.alpha, self.beta
        both, bp = layer.derived("positive_negative_halves", lambda w, bias: (
            _filled(w, lambda w, up, down: (torch.clamp(w, min=0, out=up), torch.sub(up, w, out=down)), 2),
            _bias(None if bias is None else _pos(bias), STABILIZER, z, layer)))
        pair = _TwoSignals(layer, r)
        zp = layer.op(x, both[: both.shape[0] // 2], bp)  # z⁺ + ε
        # z⁻ − ε ≤ −ε: clamped so that rounding in z − z⁺ cannot flip its sign (see relevance)
        sn = torch.sub(layer.output(z), zp, out=pair.second).clamp_(max=-STABILIZER)
        torch.div(r, sn, out=sn).mul_(b)  # β s₋, to meet −W⁻
        torch.div(r, zp, out=pair.first).mul_(a)  # α s₊, to meet W⁺
        return layer.transposed(("stacked", "positive_negative_halves"), pair.buffer, x, w=both).mul_(x)

    def _by_magnitudes(self, layer, x, z, r) -> torch.Tensor | None:
        """The rule for x of both signs from x and |x|, or None where that would be ill-conditioned.

        (x w)^± = ½(x w ± |x||w|), so with p = ½(Σ_i |x_i w_ij| + |b_j|) + ε, one layer with (½|W|, ½|b| + ε) on |x|,
        z⁺ + ε = ½z + p and z⁻ − ε = ½z − p, and the relevance
        R_i = ½ x_i Σ_j w_ij (α s₊ − β s₋)_j + |x_i| Σ_j ½|w_ij| (α s₊ + β s₋)_j: one layer forward and two
        transposed, where x⁺ and x⁻ apart take two forward and four transposed.  z^± are then differences, exact
        up to rounding of order u·p: taken only if every output has z⁺ + ε and −(z⁻ − ε) ≥ p / :data:`CONDITION`
        (a patch whose contributions all have one sign fails this, and the caller takes x⁺ and x⁻ apart)."""
        a, b = self.alpha, self.beta
        if layer.weight[0].numel() < MAGNITUDES_MIN_FAN_IN and layer.kind != "conv_transpose":
            return None
        zo = layer.output(z)
        wh, bh = layer.derived("half_magnitude", _magnitude_part(layer, zo, 0.5))
        ax = x.abs()
        p = layer.op(ax, wh, bh)
        zp = torch.add(p, zo, alpha=0.5)  # z⁺ + ε
        zn = torch.sub(p, zo, alpha=0.5) if b else None  # −(z⁻ − ε)
        low = zp * CONDITION if zn is None else torch.minimum(zp, zn).mul_(CONDITION)
        if bool((low < p).any()):
            return None
        sp = torch.div(r, zp, out=zp).mul_(a)  # α s₊
        if zn is None:
            first, second = sp * 0.5, sp
        else:
            sn = torch.div(r, zn, out=zn).mul_(b)  # −β s₋ (zn is −(z⁻ − ε))
            first, second = torch.add(sp, sn).mul_(0.5), sp.sub_(sn)
        out = layer.transpose(first, x).mul_(x)
        return out.add_(vjp(layer.op, x, wh, second).mul_(ax))


class ZPlus(AlphaBeta):
    """z⁺ rule (Montavon et al. 2017): αβ with α = 1, β = 0.  For non-negative inputs (after a ReLU) it is
    the classical R_i = x_i Σ_j w_ij⁺ R_j / Σ_i' x_i' w_i'j⁺ (+ b⁺); a negative input with a negative weight
    counts as a positive contribution (x⁻ w⁻ ≥ 0), as in Zennit's ZPlus."""

    name = "zplus"

    def __init__(self):
        super().__init__(1.0, 0.0)


class Gamma(LinearRule):
    """γ rule (Montavon et al. 2019), generalised to signed inputs and outputs.

    Where z_j > 0, contributions x_i w_ij + γ (x_i w_ij)⁺ over z_j + γ(Σ (x w)⁺ + b⁺); where z_j < 0, the
    same with the negative parts; where z_j = 0 the relevance is dropped.
    """

    name = "gamma"
    proportional = True
    positive_z_suffices = True

    def __init__(self, gamma: float = 0.25):
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def relevance(self, layer, x, z, r):
        if not _nonnegative(x, layer):
            return self._by_magnitudes(layer, x, z, r)
        g, op = self.gamma, layer.op
        if layer.relu_only:
            # R = 0 where z ≤ 0 (LayerCall.relu_only): only z > 0 counts, where z + γz⁺ > 0.  The contributions
            # there, x w + γ(x w)⁺ = x(w + γw⁺) for x ≥ 0, sum to it: the layer with (W + γW⁺, b + γb⁺ + ε)
            # gives it plus ε; clamping at ε leaves it and keeps z ≤ 0 finite.  One transposed layer, W + γW⁺
            wg, bg = layer.derived(("gamma_up", g), lambda w, b: (
                _pos(w).mul_(g).add_(w), _bias(None if b is None else b + g * _pos(b), STABILIZER, z, layer)))
            den = op(x, wg, bg).clamp_(min=STABILIZER)
            return layer.transposed(("gamma_up", g), torch.div(r, den, out=den), x, w=wg).mul_(x)
        zo = layer.output(z)
        wu, bu = layer.derived(("gamma_part", g), _positive_part(layer, z, g))
        u = op(x, wu, bu)  # γz⁺ + ε
        up_mask, down_mask = _sign_masks(zo)
        # where z > 0: z + γz⁺ + ε; where z < 0: −(z + γz⁻ − ε) = γz⁺ − (1 + γ)z + ε (z⁻ = z − z⁺), both > ε
        # there; clamped at ε elsewhere, where the mask zeroes the ratio.  s₋ = R / (z + γz⁻ − ε) = −R / down
        pair = _TwoSignals(layer, r)
        up = torch.add(zo, u, out=pair.first).clamp_(min=STABILIZER)
        down = u.sub_(zo, alpha=1 + g).clamp_(min=STABILIZER)
        sp = torch.div(r, up, out=up).mul_(up_mask)
        sd = torch.div(r, down, out=down if pair.second is None else pair.second).mul_(down_mask)
        # x ≥ 0: (x w)^± = x w^±, so each sign of z has its transposed layer, W + γW^± (sd = −s₋)
        return pair.transpose(x, sp, sd, ("gamma", g), lambda w, up, down: (  # W + γW⁺ and −(W + γW⁻)
            torch.clamp(w, min=0, out=up).mul_(g).add_(w), torch.clamp(w, max=0, out=down).mul_(-g).sub_(w))).mul_(x)

    def _by_magnitudes(self, layer, x, z, r):
        """The rule for x of both signs, from x and |x|.

        (x w)^± = ½(x w ± |x||w|), so the contributions are x w + γ(x w)^± = c·x w ± (γ/2)|x||w|, c = 1 + γ/2.  With
        v = (γ/2)(Σ_i |x_i w_ij| + |b_j|) + ε, one layer with ((γ/2)|W|, (γ/2)|b| + ε) on |x|, the denominators are
        z + γz⁺ + ε = v + c·z where z > 0 and −(z + γz⁻ − ε) = v − c·z where z < 0, and with s₊ = R / (v + c·z) there,
        s₋' = R / (v − c·z) there (0 elsewhere):

            R_in = c·x ⊙ Wᵀ(s₊ − s₋') + |x| ⊙ ((γ/2)|W|)ᵀ(s₊ + s₋'),

        one layer forward and two transposed, where x⁺ and x⁻ apart take two forward and four transposed.  Each
        denominator is a sum of two non-negative terms where it is used, so this is as accurate as the parts apart.
        """
        g = self.gamma
        c = 1 + g / 2
        zo = layer.output(z)
        wh, bh = layer.derived(("gamma_magnitude", g), _magnitude_part(layer, zo, g / 2))
        ax = x.abs()
        v = layer.op(ax, wh, bh)
        if layer.relu_only:  # R = 0 where z ≤ 0: only z > 0 counts (the clamp keeps z ≤ 0 finite)
            den = torch.add(v, zo, alpha=c).clamp_(min=STABILIZER)
            second = torch.div(r, den, out=den)
            first = second * c
        else:
            up_mask, down_mask = _sign_masks(zo)
            up = torch.add(v, zo, alpha=c).clamp_(min=STABILIZER)
            down = v.sub_(zo, alpha=c).clamp_(min=STABILIZER)
            sp = torch.div(r, up, out=up).mul_(up_mask)
            sd = torch.div(r, down, out=down).mul_(down_mask)
            first, second = torch.sub(sp, sd).mul_(c), sp.add_(sd)
        out = layer.transpose(first, x).mul_(x)
        return out.add_(vjp(layer.op, x, wh, second).mul_(ax))


def _sign_masks(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([z > 0], [z < 0]) by arithmetic (a comparison and torch.where cost five elementwise passes each): with
    σ = sign z, [z > 0] = max(σ, 0) and [z < 0] = [z > 0] − σ; z = 0 is in neither."""
    sigma = torch.sign(z)
    up = sigma.clamp(min=0)
    return up, torch.sub(up, sigma, out=sigma)


class Box(LinearRule):
    """zᴮ rule for the first layer (Montavon et al. 2017, Eq 13; Montavon et al. 2019, Eq 6) with bounds
    l ≤ x ≤ h on the layer's input:
    R_i = Σ_j (x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻) R_j / stab(Σ_i' x_i' w_i'j − l_i' w_i'j⁺ − h_i' w_i'j⁻).
    The bias cancels.  Bounds are in the model's input space (after any input transform), which is the first
    layer's input space where that layer reads the model's input (an image's first convolution, a dense layer on
    token embeddings); a layer that reads something computed from it (GPT-2's first layer reads ``ln_1``'s output)
    checks that input against the bounds and refuses one outside them.

    A bound is a number, one value per input feature (placed by :meth:`placed` on the axis the layer reads as
    features), or a tensor that broadcasts to the layer's input as the layer reads it."""

    name = "box"
    positive_z_suffices = True  # z unused

    def __init__(self, low, high):
        self.low = torch.as_tensor(low, dtype=torch.float64)
        self.high = torch.as_tensor(high, dtype=torch.float64)
        if bool((self.low > self.high).any()):
            raise ValueError("box rule: low must not exceed high")

    def key(self) -> tuple:
        return (type(self).__name__, tuple(self.low.shape), tuple(self.low.flatten().tolist()),
                tuple(self.high.flatten().tolist()))

    @staticmethod
    def placed(bound: torch.Tensor, layer: LayerCall, x: torch.Tensor) -> torch.Tensor:
        """``bound`` broadcast to the layer's input ``x`` as the layer reads it.

        A 1-D bound has one value per input feature: a convolution's channels are on dim 1, a dense layer's
        (``F.linear``, ``addmm``, ``matmul``, ``einsum``) on the last dim, so per-feature bounds meet (N, C),
        (N, T, C) and the (N·T, C) a layer reads after a reshape alike.  Anything else must broadcast to ``x``."""
        b = bound.to(x.device, x.dtype)
        axis = x.dim() - 1 if layer.kind == "dense" else 1
        if b.dim() == 1 and x.dim() > 1 and b.shape[0] not in (1, x.shape[axis]):
            raise ValueError(
                f"box rule: {b.shape[0]} bounds per input feature, but the first layer{_named(layer)} ({layer.kind}) "
                f"reads its input as shape {tuple(x.shape)}, with {x.shape[axis]} features on dim {axis}")
        if b.dim() == 1 and x.dim() > 1:
            b = b.reshape(*([1] * axis), -1, *([1] * (x.dim() - axis - 1)))
        try:
            return torch.broadcast_to(b, x.shape)
        except RuntimeError:
            raise ValueError(
                f"box rule: bounds of shape {tuple(b.shape)} do not broadcast to the input of the first "
                f"layer{_named(layer)} as it reads it, shape {tuple(x.shape)} (a layer may read the model's input "
                "reshaped, as GPT-2's Conv1D reads (N·T, C)); give one number, or one value per input "
                "feature") from None

    def relevance(self, layer, x, z, r):
        w, _ = layer.params()
        lo, hi = self.placed(self.low, layer, x), self.placed(self.high, layer, x)
        # a bound taken from the same values computed in another pass may differ from x by rounding: not refused
        slack = 16 * torch.finfo(x.dtype).eps * (1 + float(x.abs().max()))
        if bool((x < lo - slack).any() or (x > hi + slack).any()):
            span = f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"
            raise ValueError(
                f"box rule: the input of the first linear layer{_named(layer)} lies outside [low, high] (its values "
                f"span {span}); widen the bounds.  They bound what that layer reads: the model's input where the "
                "layer reads it, else what the model computes from it first (a transformer's first LayerNorm)")
        wp, wn = _pos(w), _neg(w)
        op = layer.op
        zb = op(x, w, None) - op(lo, wp, None) - op(hi, wn, None)
        s = r / stab(zb, STABILIZER)
        return x * vjp(op, x, w, s) - lo * vjp(op, x, wp, s) - hi * vjp(op, x, wn, s)


def _named(layer: LayerCall) -> str:
    return f" {layer.name!r}" if layer.name else ""


class Flat(LinearRule):
    """Flat rule (Lapuschkin et al. 2019): relevance spread uniformly over each output's receptive field,
    R_i = Σ_j c_ij R_j / Σ_i' c_i'j with c_ij = 1 where input i feeds output j.  Ignores x, w and b."""

    name = "flat"
    positive_z_suffices = True  # z unused

    def relevance(self, layer, x, z, r):
        w, _ = layer.params()
        ones_w = torch.ones_like(w)
        n = layer.op(torch.ones_like(x), ones_w, None)
        return vjp(layer.op, x, ones_w, r / stab(n, STABILIZER))


class WSquare(LinearRule):
    """w² rule (Montavon et al. 2017): R_i = Σ_j w_ij² R_j / stab(Σ_i' w_i'j² + b_j²).  Ignores x.

    The squared bias stays in the denominator (as in Zennit), so the rule absorbs relevance when b ≠ 0.
    """

    name = "wsquare"
    positive_z_suffices = True  # z unused

    def relevance(self, layer, x, z, r):
        w, b = layer.params()
        w2 = w * w
        n = layer.op(torch.ones_like(x), w2, None if b is None else b * b)
        return vjp(layer.op, x, w2, r / stab(n, STABILIZER))



class PassRelevance(ElementwiseRule):
    """The composites' rule at an elementwise nonlinearity y = f(z), with f(0) counted as an absorbed bias.

    As a ratio (Ancona et al. 2019's view) the rule is the slope g = (f(z) − f(0)) / z (f'(0) at z = 0): y =
    f(0) + g·z is an affine map whose constant f(0) absorbs relevance like a bias.  In relevance form:

        R_z = R_y · (f(z) − f(0)) / stab(f(z)),    the share f(0)·R_y / f(z) absorbed,

    with stab(v) = v + ε·sign v (ε = :data:`STABILIZER`), and R_z = 0 where f(z) = 0.  Where f(0) = 0 (ReLU,
    GELU, SiLU, tanh, Mish, hardswish, ELU) it is Zennit's 'Pass', R_z = R_y: the ratio f(z)/z.  Where f(0) ≠ 0
    (sigmoid, hardsigmoid, softplus, exp) relevance per unit of z stays bounded by |R_y / y|·|f(z) − f(0)|,
    whereas passing R_y unchanged and dividing by z at the layer before (AttnLRP's identity rule followed by
    the ε rule, equivalently Ancona's f(z)/(z + ε)) is unbounded near z = 0.

    ``absorbed`` (:class:`tribute.lrp.absorbed.Absorbed`, set per call by ``absorbed=True``): where the absorbed
    shares f(0)·R_y / stab(f(z)) (all of R_y where f(z) = 0) are counted.
    """

    name = "pass"

    def __init__(self, absorbed=None):
        self.absorbed = absorbed

    def save(self, nl, z, y, params):
        return () if zero_value(nl, params, z) == 0 else (z,)

    def backward(self, nl, gy, saved, params):
        if not saved:  # f(0) = 0: relevance passes unchanged
            return gy
        (z,) = saved
        if not math.isfinite(zero_value(nl, params, z)):
            # no rule (rsqrt, log): refused where relevance reaches it; as a gate (RMSNorm's rsqrt, tribute.lrp.gates)
            # it receives none, and needs none
            if bool(gy.any()):
                absorbed_value(nl, params, z)  # raises, naming the nonlinearity
            return torch.zeros_like(gy)
        y, f0 = nl(z, **params), zero_value(nl, params, z)
        den = stab(y, STABILIZER)
        share = torch.where(y == 0, torch.zeros_like(y), (y - f0) / den)
        if self.absorbed is not None:
            self.absorbed.add(gy * torch.where(y == 0, torch.ones_like(y), f0 / den))
        return gy * share

    def apply_inplace(self, nl, z, params, phase):
        if zero_value(nl, params, z) != 0:
            return False  # the rule reads z backward: computed out of place from a copy
        # The backward is the identity, so autograd need not see the op at all: writing z in place with
        # grad mode off keeps z's graph, and spares a fresh output and its copy into z.
        with torch.no_grad():
            if nl.name == "relu":
                z.relu_()
            else:
                z.copy_(nl(z, **params))
        return True

    def forward_derivative(self, nl, gy, saved, params):
        raise RuntimeError("LRP composites do not support differentiable=True")

