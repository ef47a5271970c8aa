"""Layer-wise relevance propagation at linear layers (Bach et al. 2015; Montavon et al. 2019).

In LRP mode the backward signal *is* the relevance R (not relevance per unit of input as in Ancona's
modified-gradient view), so the attribution is the signal arriving at the input, with no multiplier:

- a linear layer (conv, transposed conv, dense) z = Wx + b, called as a module or functionally,
  redistributes R_j over its inputs with the rule a composite assigns it (:class:`LinearRule` subclasses);
- batch norm right after a linear layer whose output nothing else reads is merged into that layer
  (W' = W·γ/σ, b' = (b − μ)·γ/σ + β) and passes relevance unchanged; the model is not modified;
- every other op that is linear or affine in the input's path — residual additions, means, average
  pooling, scaling, unmerged batch norm — splits relevance in proportion to the contributions of its
  inputs (the "Norm" rule R_i = x_i Σ_j ∂z_j/∂x_i R_j / z_j, stabilised), so an addition x + y gives
  x/(x+y) and y/(x+y) of the relevance to each branch, however the addition is written;
- elementwise nonlinearities pass relevance unchanged; reshapes, concatenations and indexing move it;
  max pooling routes it to the selected entry (its gradient).

Stabiliser: stab_e(d) = d + e·sign(d) with sign(0) = +1, added, never clipped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .rules import Rule
from .weight_cache import WeightCache

STABILIZER = 1e-6


def stab(d: torch.Tensor, e: float) -> torch.Tensor:
    """d + e·sign(d) with sign(0) = +1 (−0.0 counts as 0).

    Written as ±e chosen by the sign, then d added in place: three passes over d where
    ``where(d >= 0, d + e, d − e)`` takes four and allocates three temporaries; the sums are the same.
    """
    e_pos, e_neg = d.new_tensor(e), d.new_tensor(-e)
    return torch.where(d >= 0, e_pos, e_neg).add_(d)


class Kept:
    """A tensor a rule reads in the backward pass, kept by reference rather than copied.

    The forward pass of a model may overwrite it afterwards (an in-place ReLU on a layer's output, an in-place
    residual ``out += identity``).  Every in-place op on the input's path goes through the interception,
    which calls :meth:`Propagation.before_write` first: only then is the tensor copied (copy-on-write).  A
    write the interception could not see is caught by the version counter and reported, never used.
    """

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor.detach()
        self.version = tensor._version

    def copy(self) -> None:
        self.tensor = self.tensor.clone()
        self.version = self.tensor._version

    def get(self) -> torch.Tensor:
        if self.tensor._version != self.version:
            raise RuntimeError(
                "LRP: a tensor its rules read in the backward pass was overwritten in place by an op the engine "
                "did not see (e.g. through .data); write the model without that in-place op"
            )
        return self.tensor


# -- linear layers: call forms ---------------------------------------------------------------------------
# (function, kind, names of the positional arguments after (input, weight, bias))
_LINEAR_FORMS: dict[Any, str] = {
    F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv",
    F.conv_transpose1d: "conv_transpose", F.conv_transpose2d: "conv_transpose",
    F.conv_transpose3d: "conv_transpose", F.linear: "dense",
}


_UNSET = object()


@dataclass
class PassFacts:
    """What one forward pass learned about the relevance its backward pass will carry."""

    #: every rule and op downstream of the first layer gives an input relevance ∝ its value (R = x ⊙ …):
    #: ε, z⁺, αβ, γ, the Norm rule, moves and ReLUs.  Flat, w², zᴮ (past the first layer), other
    #: nonlinearities' pass rule, or an output that a linear op did not make, end it; so do ops with no
    #: rule (their plain gradient), listed in ``plain``.
    proportional: bool = True
    plain: list[str] = field(default_factory=list)

    @property
    def all_proportional(self) -> bool:
        return self.proportional and not self.plain


@dataclass
class LayerCall:
    """One call of a linear layer during the forward pass, with what rules and composites need."""

    kind: str  # "conv", "conv_transpose" or "dense"
    op: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    weight: torch.Tensor
    bias: torch.Tensor | None
    index: int  # position among the linear-layer calls on the input's path (0 = the first layer)
    name: str  # the module's name in the model ("" if called functionally outside any module)
    module: nn.Module | None
    consumers: int = 0  # ops that read the layer's own output z
    bn: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    graph: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # (x leaf, z) of the forward
    cache: WeightCache | None = field(default=None, repr=False)
    # who reads the (merged) output: reads in all, and by a ReLU (see :attr:`relu_only`)
    z_relu_reads: int = 0
    out_reads: int = 0
    out_relu_reads: int = 0
    z_version: int = -1  # the version of z, and of the merged output, when they were made (a write ends them)
    out_version: int = -1
    facts: PassFacts | None = field(default=None, repr=False)
    _entry: Any = field(default=_UNSET, repr=False)

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def merged(self) -> bool:
        """Batch norm is merged only into a layer whose output nothing but that batch norm reads."""
        return self.bn is not None and self.consumers == 1

    @property
    def relu_only(self) -> bool:
        """Whether the relevance at the (merged) output is zero wherever that output is ≤ 0.

        It is when a ReLU is the output's only reader and every rule downstream gives relevance in proportion
        to its input's value (R = x ⊙ …; :attr:`PassFacts.proportional`): then the ReLU's output y carries
        no relevance where y = 0, and the pass rule hands that on to z ≤ 0."""
        if self.facts is None or not self.facts.all_proportional:
            return False
        if self.merged:
            return self.out_reads == 1 and self.out_relu_reads == 1
        return self.consumers == 1 and self.z_relu_reads == 1

    def derived(self, name: Hashable, make: Callable[[torch.Tensor, torch.Tensor | None], tuple]) -> tuple:
        """``make(W, b)`` for the layer's (merged) parameters, kept in the explainer's weight cache while
        the parameters and batch norm statistics it came from are unchanged."""
        if self.cache is None:
            return make(*self.params())
        if self._entry is _UNSET:
            values = self.bn if self.merged else (None, None)
            self._entry = self.cache.entry((self.weight, self.bias), values)
        return self.cache.get(self._entry, name, lambda: make(*self.params()))

    def transpose(self, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Jᵀs for the layer's own (merged) weights, reusing the forward pass's graph when there is one."""
        adjoint = getattr(self.op, "adjoint", None)
        if self.graph is None and adjoint is None:
            return _vjp(self.op, like, self.params()[0], s)
        w = self.weight.detach()
        if self.merged:  # W' = W·scale per output channel: Jᵀ_{W'} s = Jᵀ_W (scale ⊙ s)
            if adjoint is not None and w.numel() < s.numel():  # scale the smaller of the two
                w = self.params()[0]
            else:
                shape = (1, -1) + (1,) * (s.dim() - 2)
                s = s * self.bn[0].view(shape)
        if adjoint is not None:
            return adjoint(s, w, like)
        xx, z = self.graph
        (g,) = torch.autograd.grad(z, xx, s, retain_graph=True)
        return g

    def output(self, z: torch.Tensor) -> torch.Tensor:
        """The (merged) layer's output from ``z``, the output of the layer itself (before batch norm)."""
        if not self.merged:
            return z
        scale, shift = self.bn
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return torch.addcmul(shift.view(shape), z, scale.view(shape))

    def params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b), with a following batch norm folded in when it is merged."""
        w, b = self.weight.detach(), None if self.bias is None else self.bias.detach()
        if not self.merged:
            return w, b
        scale, shift = self.bn
        out_dim = 1 if self.kind == "conv_transpose" else 0
        shape = [1] * w.dim()
        shape[out_dim] = -1
        w = w * scale.view(shape)
        b = shift if b is None else b * scale + shift
        return w, b


def parse_linear(func, args, kwargs) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None, Callable] | None:
    """(kind, input, weight, bias, op) for a linear-layer call, ``op(x, w, b)`` repeating its other arguments."""
    kind = _LINEAR_FORMS.get(func)
    if kind is None:
        return None
    args = list(args)
    kwargs = dict(kwargs)
    x = args.pop(0) if args else kwargs.pop("input")
    w = args.pop(0) if args else kwargs.pop("weight")
    b = args.pop(0) if args else kwargs.pop("bias", None)
    rest = tuple(args)

    def op(xx, ww, bb=None):
        return func(xx, ww, bb, *rest, **kwargs)

    op.adjoint = _adjoint(func, kind, rest, kwargs)
    return kind, x, w, b, op


_TRANSPOSED_ADJOINT = {F.conv_transpose1d: F.conv1d, F.conv_transpose2d: F.conv2d, F.conv_transpose3d: F.conv3d}


def _tuple(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _adjoint(func, kind, rest, kwargs) -> Callable | None:
    """``(s, w, x) ↦ Jᵀs`` of x ↦ op(x, w) without a forward pass, or None (then autograd does it).

    For a convolution this is ``aten.convolution_backward`` given the real input tensor ``x`` (only its
    geometry is read): ``torch.nn.grad.conv2d_input`` passes a stride-0 stand-in for the input, which
    sends oneDNN down a path measured 2.5× slower on a 64-channel 32×32 layer.
    """
    if kind == "dense":
        return lambda s, w, x: s @ w
    if kind == "conv":
        p = dict(zip(("stride", "padding", "dilation", "groups"), rest, strict=False))
        p.update(kwargs)
        if isinstance(p.get("padding", 0), str):  # "same"/"valid": let autograd work out the geometry
            return None
        n = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}[func]
        stride, padding, dilation = (_tuple(p.get(k, d), n) for k, d in (("stride", 1), ("padding", 0),
                                                                          ("dilation", 1)))
        groups = p.get("groups", 1)

        def conv_adjoint(s, w, x):
            return torch.ops.aten.convolution_backward(
                s, x, w, None, stride, padding, dilation, False, (0,) * n, groups, (True, False, False))[0]

        return conv_adjoint
    p = dict(zip(("stride", "padding", "output_padding", "groups", "dilation"), rest, strict=False))
    p.update(kwargs)
    conv = _TRANSPOSED_ADJOINT[func]  # the adjoint of a transposed convolution is the convolution
    return lambda s, w, x: conv(s, w, None, p.get("stride", 1), p.get("padding", 0), p.get("dilation", 1),
                                p.get("groups", 1))


def _pos(t):
    return t.clamp(min=0)


def _neg(t):
    return t.clamp(max=0)


def _vjp(op, x_like: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Jᵀs of the linear map x ↦ op(x, w) (no bias): the 'transposed' layer applied to s."""
    adjoint = getattr(op, "adjoint", None)
    if adjoint is not None:
        return adjoint(s, w, x_like)
    with torch.enable_grad():
        xx = torch.zeros_like(x_like, requires_grad=True)
        (g,) = torch.autograd.grad(op(xx, w, None), xx, s)
    return g


# -- rules at linear layers ------------------------------------------------------------------------------
class LinearRule:
    """Base class of LRP rules at a linear layer: ``relevance(layer, x, z, R) -> R_in``."""

    name = "linear_rule"
    #: whether the relevance it gives an input is its value times something finite (R = x ⊙ …), so zero
    #: where the input is zero (see :class:`PassFacts`)
    proportional = False

    def relevance(self, layer: LayerCall, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def key(self) -> tuple:
        return (type(self).__name__, tuple(sorted(vars(self).items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _signed_split(op, x, w, s_plus, s_minus, x_negative: bool):
    """Σ over the four sign combinations: x⁺ ⊙ Jᵀ_{w⁺}s₊ + x⁻ ⊙ Jᵀ_{w⁻}s₊ (and the crossed terms for s₋).

    Returns (positive part, negative part): contributions (x w)⁺ weighted by s_plus and (x w)⁻ by s_minus.
    Inputs with no negative entry (after a ReLU) need half the transposed convolutions.
    """
    wp, wn = _pos(w), _neg(w)
    xp = _pos(x) if x_negative else x
    pos = xp * _vjp(op, x, wp, s_plus) if s_plus is not None else 0
    neg = xp * _vjp(op, x, wn, s_minus) if s_minus is not None else 0
    if x_negative:
        xn = _neg(x)
        if s_plus is not None:
            pos = pos + xn * _vjp(op, x, wn, s_plus)
        if s_minus is not None:
            neg = neg + xn * _vjp(op, x, wp, s_minus)
    return pos, neg


def _z_signed(op, x, w, b, x_negative: bool, negative_part: bool = True, z: torch.Tensor | None = None):
    """(z⁺, z⁻): Σ (x w)⁺ + b⁺ and Σ (x w)⁻ + b⁻; z⁻ is None unless ``negative_part``.

    For x ≥ 0 the two add up to the layer's output z = Σ x w + b, so given ``z`` the second costs a
    subtraction instead of a convolution (rounding: an absolute error of order ulp(|z⁺|)).
    """
    wp, wn = _pos(w), _neg(w)
    xp = _pos(x) if x_negative else x
    zp = op(xp, wp, None if b is None else _pos(b))
    if negative_part and z is not None and not x_negative:
        return zp, z - zp
    zn = op(xp, wn, None if b is None else _neg(b)) if negative_part else None
    if x_negative:
        xn = _neg(x)
        zp = zp + op(xn, wn, None)
        if negative_part:
            zn = zn + op(xn, wp, None)
    return zp, zn


def _ratio(r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """r / stab(d), dividing in place into the stabiliser's fresh tensor."""
    den = stab(d, STABILIZER)
    return torch.div(r, den, out=den)


def _has_negative(x: torch.Tensor) -> bool:
    return bool(x.min() < 0)  # one reduction, no mask


def _bias(b: torch.Tensor | None, add: float, like: torch.Tensor, layer: LayerCall) -> torch.Tensor | None:
    """``b + add`` per output channel (a layer without a bias gets the constant)."""
    if add == 0:
        return b
    if b is not None:
        return b + add
    n = like.shape[-1] if layer.kind == "dense" else like.shape[1]
    return like.new_full((n,), add)


def _positive_part(layer: LayerCall, z: torch.Tensor) -> Callable:
    """``make(W, b)`` of (W⁺, b⁺ + ε): the layer with them gives z⁺ + ε, which is > 0 for x ≥ 0."""
    return lambda w, b: (_pos(w), _bias(None if b is None else _pos(b), STABILIZER, z, layer))


class Epsilon(LinearRule):
    """ε rule (seed 001 Eq 15): R_i = x_i Σ_j w_ij R_j / stab_ε(z_j), the bias inside z."""

    name = "epsilon"
    proportional = True

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

    def __init__(self, alpha: float = 2.0, beta: float = 1.0):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-12:
            raise ValueError(f"the αβ rule needs α, β >= 0 and α − β = 1; got α={alpha}, β={beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def relevance(self, layer, x, z, r):
        if _has_negative(x):
            return self._signed(layer, x, z, r)
        # x ≥ 0: (x w)^± = x w^±, so R = x ⊙ (α Jᵀ_{w⁺} s₊ − β Jᵀ_{w⁻} s₋), with s₊ = R / (z⁺ + ε) and
        # s₋ = R / (z⁻ − ε); the layer with (W⁺, b⁺ + ε) gives z⁺ + ε at once, and z − that = z⁻ − ε.
        wp, bp = layer.derived("positive_part", _positive_part(layer, z))
        zp = layer.op(x, wp, bp)
        if not self.beta:  # z⁺: α = 1
            return _vjp(layer.op, x, wp, torch.div(r, zp, out=zp)).mul_(x)
        # z⁻ ≤ 0: clamping at −ε keeps rounding in z − z⁺ from flipping its sign (where z⁻ = 0 every
        # contribution (x w)⁻ is 0, so that entry's denominator does not matter)
        sn = torch.sub(layer.output(z), zp).clamp_(max=-STABILIZER)
        sn = torch.div(r, sn, out=sn)
        sp = torch.div(r, zp, out=zp)
        a, b = self.alpha, self.beta
        wa, wb = layer.derived(("alpha_beta", a, b), lambda w, _: (a * _pos(w), b * _neg(w)))
        return _vjp(layer.op, x, wa, sp).sub_(_vjp(layer.op, x, wb, sn)).mul_(x)

    def _signed(self, layer, x, z, r):
        w, b = layer.derived("params", lambda w, b: (w, b))
        zp, zn = _z_signed(layer.op, x, w, b, True, negative_part=self.beta != 0)
        s_plus = _ratio(r, zp)
        s_minus = _ratio(r, zn) if self.beta else None
        pos, neg = _signed_split(layer.op, x, w, s_plus, s_minus, True)
        return self.alpha * pos - self.beta * neg if self.beta else self.alpha * pos


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

    def __init__(self, gamma: float = 0.25):
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def relevance(self, layer, x, z, r):
        if _has_negative(x):
            return self._signed(layer, x, z, r)
        # x ≥ 0: (x w)^± = x w^±, so each sign of z needs one transposed layer, W + γW^±
        g, op = self.gamma, layer.op
        if layer.relu_only:
            # R = 0 where z ≤ 0 (LayerCall.relu_only): only z > 0 counts, where z + γz⁺ > 0.  The layer with
            # (W + γW⁺, b + γb⁺ + ε) gives that plus ε; clamping at ε leaves it and keeps z ≤ 0 finite
            wg, bg = layer.derived(("gamma_up", g), lambda w, b: (
                w + g * _pos(w), _bias(None if b is None else b + g * _pos(b), STABILIZER, z, layer)))
            den = op(x, wg, bg).clamp_(min=STABILIZER)
            return _vjp(op, x, wg, torch.div(r, den, out=den)).mul_(x)
        zo = layer.output(z)
        wu, bu = layer.derived(("gamma_part", g), lambda w, b: (g * _pos(w), None if b is None else g * _pos(b)))
        u = op(x, wu, bu)  # γz⁺
        up = torch.add(zo, u).add_(STABILIZER).masked_fill_(zo <= 0, float("inf"))  # z + γz⁺ + ε where z > 0
        down = u.sub_(zo, alpha=1 + g).add_(STABILIZER).masked_fill_(zo >= 0, float("inf"))  # −(z + γz⁻ − ε)
        # where z < 0: z⁻ = z − z⁺ for x ≥ 0; s₋ = R / (z + γz⁻ − ε) = −R / down, the sign in the weight
        w_up, w_down = layer.derived(("gamma", g), lambda w, _: (w + g * _pos(w), -(w + g * _neg(w))))
        grad = _vjp(op, x, w_up, torch.div(r, up, out=up))
        return grad.add_(_vjp(op, x, w_down, torch.div(r, down, out=down))).mul_(x)

    def _signed(self, layer, x, z, r):
        w, b = layer.derived("params", lambda w, b: (w, b))
        z = layer.output(z)
        zp, zn = _z_signed(layer.op, x, w, b, True)
        # one stabilised ratio for both signs: z + γz⁺ where z > 0, z + γz⁻ where z < 0 (z = 0 drops R)
        positive = z > 0
        den = stab(torch.where(positive, zp, zn).mul_(self.gamma).add_(z), STABILIZER)
        s = torch.div(r, den, out=den)
        s_pos, s_neg = torch.where(positive, s, 0.0), torch.where(z < 0, s, 0.0)
        plain = x * _vjp(layer.op, x, w, s_pos + s_neg)
        pos, _ = _signed_split(layer.op, x, w, s_pos, None, True)
        _, neg = _signed_split(layer.op, x, w, None, s_neg, True)
        return plain + self.gamma * (pos + neg)


class Box(LinearRule):
    """zᴮ rule for the first layer (Montavon et al. 2017) with bounds l ≤ x ≤ h (per channel or per entry):
    R_i = Σ_j (x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻) R_j / stab(Σ_i' x_i' w_i'j − l_i' w_i'j⁺ − h_i' w_i'j⁻).
    The bias cancels.  Bounds are in the model's input space (after any input transform)."""

    name = "box"

    def __init__(self, low, high):
        self.low = torch.as_tensor(low, dtype=torch.float64)
        self.high = torch.as_tensor(high, dtype=torch.float64)
        if bool((self.low > self.high).any()):
            raise ValueError("box rule: low must not exceed high")

    def key(self) -> tuple:
        return (type(self).__name__, tuple(self.low.flatten().tolist()), tuple(self.high.flatten().tolist()))

    def relevance(self, layer, x, z, r):
        w, _ = layer.params()
        lo = torch.broadcast_to(self.low.to(x.device, x.dtype), x.shape)
        hi = torch.broadcast_to(self.high.to(x.device, x.dtype), x.shape)
        if bool((x < lo).any() or (x > hi).any()):
            raise ValueError("box rule: the layer's input lies outside [low, high]; widen the bounds")
        wp, wn = _pos(w), _neg(w)
        op = layer.op
        zb = op(x, w, None) - op(lo, wp, None) - op(hi, wn, None)
        s = r / stab(zb, STABILIZER)
        return x * _vjp(op, x, w, s) - lo * _vjp(op, x, wp, s) - hi * _vjp(op, x, wn, s)


class Flat(LinearRule):
    """Flat rule (Lapuschkin et al. 2019): relevance spread uniformly over each output's receptive field,
    R_i = Σ_j c_ij R_j / Σ_i' c_i'j with c_ij = 1 where input i feeds output j.  Ignores x, w and b."""

    name = "flat"

    def relevance(self, layer, x, z, r):
        w, _ = layer.params()
        ones_w = torch.ones_like(w)
        n = layer.op(torch.ones_like(x), ones_w, None)
        return _vjp(layer.op, x, ones_w, r / stab(n, STABILIZER))


class WSquare(LinearRule):
    """w² rule (Montavon et al. 2017): R_i = Σ_j w_ij² R_j / stab(Σ_i' w_i'j² + b_j²).  Ignores x.

    The squared bias stays in the denominator (as in Zennit), so the rule absorbs relevance when b ≠ 0.
    """

    name = "wsquare"

    def relevance(self, layer, x, z, r):
        w, b = layer.params()
        w2 = w * w
        n = layer.op(torch.ones_like(x), w2, None if b is None else b * b)
        return _vjp(layer.op, x, w2, r / stab(n, STABILIZER))


class _LinearLayerFunction(torch.autograd.Function):
    """z = op(x, W, b) forward; the layer's LRP rule backward."""

    @staticmethod
    def forward(ctx, x, layer: LayerCall, rule: LinearRule, keep):
        bias = None if layer.bias is None else layer.bias.detach()
        if getattr(layer.op, "adjoint", None) is None:
            # no direct transposed op: keep the forward's own graph (x → z) so that Jᵀ needs no recompute
            with torch.enable_grad():
                xx = x.detach().requires_grad_()
                z = layer.op(xx, layer.weight.detach(), bias)
            layer.graph = (xx, z)
        else:
            z = layer.op(x.detach(), layer.weight.detach(), bias)
        ctx.layer, ctx.rule = layer, rule
        ctx.save_for_backward(x)
        ctx.z = keep(z)
        return z.detach()

    @staticmethod
    def backward(ctx, r):
        (x,) = ctx.saved_tensors
        return ctx.rule.relevance(ctx.layer, x.detach(), ctx.z.get(), r), None, None, None


class _NormFunction(torch.autograd.Function):
    """y = op(*inputs) for an op linear or affine in its inputs; backward: R_k = x_k ⊙ J_kᵀ (R / stab(y)).

    The inputs are kept by reference (:class:`Kept`); the backward pass recomputes y with its graph, which
    for an addition or a pooling costs less than copying inputs and output in the forward pass."""

    @staticmethod
    def forward(ctx, op, keep, inplace_op, *inputs):
        ctx.op = op
        if inplace_op is None:
            ctx.kept = [keep(t) for t in inputs]
            return op(*(t.detach() for t in inputs))
        # ``x += y`` with x the first input: keep x's old value, then write the result straight into x
        target = inputs[0]
        ctx.kept = [Kept(target.clone()), *(keep(t) for t in inputs[1:])]
        inplace_op(*inputs)
        ctx.mark_dirty(target)
        return target

    @staticmethod
    def backward(ctx, r):
        with torch.enable_grad():
            xs = [k.get().detach().requires_grad_() for k in ctx.kept]
            y = ctx.op(*xs)
            grads = torch.autograd.grad(y, xs, r / stab(y.detach(), STABILIZER), allow_unused=True)
        out = [None, None, None]
        for x, g in zip(xs, grads, strict=True):
            out.append(None if g is None else x.detach() * g)
        return tuple(out)


class _BatchNormFunction(torch.autograd.Function):
    """Batch norm (eval) after a linear layer: relevance passes if the norm is merged into that layer,
    else it is an affine map with the Norm rule."""

    @staticmethod
    def forward(ctx, z, layer: LayerCall, scale, shift, keep):
        shape = (1, -1) + (1,) * (z.dim() - 2)
        ctx.layer, ctx.scale, ctx.shift = layer, scale.view(shape), shift.view(shape)
        ctx.z = keep(z)
        return torch.addcmul(ctx.shift, z, ctx.scale)

    @staticmethod
    def backward(ctx, r):
        if ctx.layer.merged:
            return r, None, None, None, None
        z = ctx.z.get()
        contribution = z * ctx.scale
        return contribution * r / stab(contribution + ctx.shift, STABILIZER), None, None, None, None


class PassRelevance(Rule):
    """Elementwise nonlinearities pass relevance unchanged (Zennit's 'Pass')."""

    name = "pass"
    saves_input = False

    def save(self, nl, z, y, params):
        return ()

    def backward(self, nl, gy, saved, params):
        return gy

    def apply_inplace(self, nl, z, params, phase):
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


# Ops that only move entries around: their gradient moves relevance unchanged.
_MOVES = {
    "reshape", "view", "view_as", "flatten", "unflatten", "permute", "transpose", "t", "contiguous",
    "squeeze", "unsqueeze", "__getitem__", "chunk", "split", "narrow", "select", "cat", "concat",
    "concatenate", "stack", "hstack", "vstack", "flip", "roll", "movedim", "unbind", "clone", "to", "float",
    "double", "detach", "pad", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "dropout", "dropout1d", "dropout2d", "dropout3d", "pixel_shuffle",
    "pixel_unshuffle", "type_as", "index_select", "gather", "repeat", "tile", "expand", "expand_as",
}
# Ops linear or affine in their tagged inputs: the Norm rule splits relevance ∝ contributions.
_PROPORTIONAL = {
    "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "neg", "__neg__", "mul", "__mul__",
    "__rmul__", "div", "__truediv__", "sum", "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate", "upsample",
    "batch_norm", "cumsum", "einsum", "matmul", "__matmul__", "mm", "bmm",
}
_INPLACE = {"add_": "add", "__iadd__": "add", "sub_": "sub", "__isub__": "sub", "mul_": "mul",
            "__imul__": "mul", "div_": "div", "__itruediv__": "div"}
# Bilinear ops are linear only when one operand lies on the input's path.
_BILINEAR = {"mul", "__mul__", "__rmul__", "div", "__truediv__", "einsum", "matmul", "__matmul__", "mm", "bmm"}


class Composite:
    """Assigns an LRP rule to each linear-layer call.

    ``Composite(first=…, conv=…, dense=…, by_name={"features.0": …})``: ``by_name`` wins, then ``first``
    (the first linear layer on the input's path), then the layer's kind (``conv`` also covers transposed
    convolutions).  For anything else, subclass and override :meth:`rule`.
    """

    def __init__(self, *, conv: LinearRule, dense: LinearRule, first: LinearRule | None = None,
                 by_name: dict[str, LinearRule] | None = None, name: str = "composite"):
        self.conv, self.dense, self.first = conv, dense, first
        self.by_name = dict(by_name or {})
        self.name = name

    def rule(self, layer: LayerCall) -> LinearRule:
        if layer.name in self.by_name:
            return self.by_name[layer.name]
        if layer.first and self.first is not None:
            return self.first
        return self.dense if layer.kind == "dense" else self.conv

    def start(self, cache: WeightCache | None = None) -> Propagation:
        """The handler for one forward pass (``cache``: where layers keep the weights their rules derive)."""
        return Propagation(self, cache=cache)

    def key(self) -> tuple:
        return (type(self).__name__, self.conv.key(), self.dense.key(),
                None if self.first is None else self.first.key(),
                tuple(sorted((k, v.key()) for k, v in self.by_name.items())))

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, first={self.first}, conv={self.conv}, dense={self.dense})"


class WithWeights:
    """A composite whose forward passes keep the weights their rules derive in ``cache`` (None: none kept)."""

    def __init__(self, composite: Composite, cache: WeightCache | None):
        self.composite, self.cache = composite, cache

    def start(self) -> Propagation:
        return self.composite.start(cache=self.cache)

    def key(self) -> tuple:
        return self.composite.key()


def batch_norm_arguments(args, kwargs) -> dict[str, Any]:
    """``F.batch_norm``'s arguments by name; LRP refuses train mode (its statistics mix the batch)."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    p = dict(zip(names, args, strict=False))
    p.update(kwargs)
    if p.get("training", False):
        raise ValueError("LRP needs batch norm in eval mode (running statistics); call model.eval()")
    return p


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


_LAYER = "_tribute_layer"  # on a linear layer's output z: its LayerCall
_OUT = "_tribute_merged_out"  # on the output of batch norm right after a linear layer: that LayerCall
_NORM = "_tribute_norm_version"  # on the output of a Norm-rule op: its version when made


def _made_here(t, attr: str, version_of) -> Any:
    """The mark ``attr`` on ``t`` if ``t`` still holds what was marked (no in-place write since)."""
    mark = getattr(t, attr, None)
    return mark if mark is not None and t._version == version_of(mark) else None


class Propagation:
    """The op handler of an LRP rule set: one instance per forward pass (it numbers the layers)."""

    def __init__(self, composite: Composite, names: dict[int, str] | None = None,
                 cache: WeightCache | None = None):
        self.composite = composite
        self.names = names or {}  # id(module) → name
        self.cache = cache
        self.facts = PassFacts()
        self.count = 0
        self.module_stack: list[nn.Module] = []
        self.unruled: list[str] = self.facts.plain  # ops with no rule that made tensors (plain gradient)
        self._kept: dict[int, list[Kept]] = {}  # storage address → tensors kept by reference there

    def keep(self, t: torch.Tensor) -> Kept:
        """Keep ``t`` for the backward pass by reference; :meth:`before_write` copies it if need be."""
        k = Kept(t)
        self._kept.setdefault(_storage(t), []).append(k)
        return k

    def before_write(self, t) -> None:
        """An in-place op is about to write into ``t``: copy what is kept in its storage first."""
        if isinstance(t, torch.Tensor) and self._kept:
            for k in self._kept.pop(_storage(t), ()):
                k.copy()

    def track_modules(self, model: nn.Module):
        """Context: keep a stack of the modules running, so composites can address layers by name."""
        import contextlib

        self.names = {id(m): n for n, m in model.named_modules()} if isinstance(model, nn.Module) else {}
        stack = self.module_stack

        def push(module, args):
            stack.append(module)

        def pop(module, args, out):
            if stack and stack[-1] is module:
                stack.pop()

        @contextlib.contextmanager
        def tracking():
            pre = nn.modules.module.register_module_forward_pre_hook(push)
            post = nn.modules.module.register_module_forward_hook(pop, always_call=True)
            try:
                yield
            finally:
                pre.remove()
                post.remove()
                stack.clear()

        return tracking()

    def count_consumers(self, args, kwargs, tagged: Callable[[Any], bool]) -> None:
        """Note every read of a linear layer's output (batch norm merges only into a sole reader's layer)
        and of its merged output."""
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, (list, tuple)):
                self.count_consumers(a, {}, tagged)
            elif tagged(a):
                self._read(a, relu=False)

    def read_by_nonlinearity(self, z: torch.Tensor, name: str) -> None:
        """A nonlinearity reads ``z`` (before an in-place call writes it)."""
        if name != "relu":
            self.facts.proportional = False  # its pass rule may give relevance where z = 0 (sigmoid)
        self._read(z, relu=name == "relu")

    @staticmethod
    def _read(t: torch.Tensor, relu: bool) -> None:
        layer = _made_here(t, _LAYER, lambda m: m.z_version)
        if layer is not None:
            layer.consumers += 1
            layer.z_relu_reads += relu
        layer = _made_here(t, _OUT, lambda m: m.out_version)
        if layer is not None:
            layer.out_reads += 1
            layer.out_relu_reads += relu

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The model's output: relevance starts ∝ its value only if a linear op made it (see PassFacts)."""
        if not any(_made_here(out, attr, version) is not None
                   for attr, version in ((_LAYER, lambda m: m.z_version), (_OUT, lambda m: m.out_version),
                                         (_NORM, lambda m: m))):
            self.facts.proportional = False
        return out

    def handle(self, func, args, kwargs, tagged: Callable[[Any], bool], name: str):
        """The op's output with its LRP rule, or ``NotImplemented`` to run it plainly (moves, max pooling,
        and ops with no rule, which :attr:`unruled` lists)."""
        parsed = parse_linear(func, args, kwargs)
        if parsed is not None:
            kind, x, w, b, op = parsed
            if not tagged(x) or tagged(w) or tagged(b):
                return NotImplemented
            self.count_consumers(args, kwargs, tagged)
            module = self.module_stack[-1] if self.module_stack else None
            layer = LayerCall(kind, op, w, b, self.count, self.names.get(id(module), ""), module,
                              cache=self.cache, facts=self.facts)
            self.count += 1
            rule = self.composite.rule(layer)
            if not (layer.first or getattr(rule, "proportional", False)):
                self.facts.proportional = False
            y = _LinearLayerFunction.apply(x, layer, rule, self.keep)
            setattr(y, _LAYER, layer)
            layer.z_version = y._version
            return y
        suffix = name.rsplit(".", 1)[-1]
        if suffix == "batch_norm":
            self.count_consumers(args, kwargs, tagged)
            return self._batch_norm(func, args, kwargs)
        if suffix in _MOVES:
            return NotImplemented
        inplace = suffix in _INPLACE
        base = _INPLACE.get(suffix, suffix)
        if base in _PROPORTIONAL:
            n_tagged = sum(1 for a in list(args) + list(kwargs.values()) if tagged(a))
            if base in _BILINEAR and n_tagged > 1:
                self.unruled.append(name)
                return NotImplemented
            self.count_consumers(args, kwargs, tagged)  # before an in-place op writes its first input
            if inplace:
                self.before_write(args[0])
                out = self._proportional(getattr(torch, base), args, kwargs, tagged, inplace_func=func)
                if out is not args[0]:  # args[0] was not on the input's path: write the result into it
                    args[0].copy_(out)
                out = args[0]
            else:
                out = self._proportional(func, args, kwargs, tagged)
            setattr(out, _NORM, out._version)
            return out
        self.unruled.append(name)
        return NotImplemented

    def _proportional(self, func, args, kwargs, tagged, inplace_func=None):
        """The op under the Norm rule; ``inplace_func`` (the op's in-place form, writing into ``args[0]``)
        is used when ``args[0]`` is on the input's path."""
        positions = [i for i, a in enumerate(args) if tagged(a)]
        keys = [k for k, v in kwargs.items() if tagged(v)]
        inputs = [args[i] for i in positions] + [kwargs[k] for k in keys]
        # the closures keep the other arguments only: holding the inputs would make a reference cycle
        # (output → its backward node → closure → input, which for ``x += y`` is the output itself)
        rest = [None if i in positions else a for i, a in enumerate(args)]
        rest_kw = {k: None if k in keys else v for k, v in kwargs.items()}

        def with_inputs(f):
            def call(*xs):
                a, kw = list(rest), dict(rest_kw)
                for i, v in zip(positions, xs[: len(positions)], strict=True):
                    a[i] = v
                for k, v in zip(keys, xs[len(positions):], strict=True):
                    kw[k] = v
                return f(*a, **kw)
            return call

        inplace = with_inputs(inplace_func) if inplace_func is not None and positions[:1] == [0] else None
        return _NormFunction.apply(with_inputs(func), self.keep, inplace, *inputs)

    def _batch_norm(self, func, args, kwargs):
        p = batch_norm_arguments(args, kwargs)
        z = p["input"]
        inv = torch.rsqrt(p["running_var"].detach() + p.get("eps", 1e-5))
        gamma = p.get("weight")
        scale = inv if gamma is None else gamma.detach() * inv
        beta = p.get("bias")
        shift = -p["running_mean"].detach() * scale + (0 if beta is None else beta.detach())
        layer = _made_here(z, _LAYER, lambda m: m.z_version)
        if layer is not None:
            layer.bn = (scale, shift)  # merged at backward time if nothing else read the layer's output
        else:  # not right after a linear layer: an affine map with the Norm rule
            layer = LayerCall("none", lambda *a: None, scale, None, -1, "", None)
        out = _BatchNormFunction.apply(z, layer, scale, shift, self.keep)
        if layer.index >= 0:
            setattr(out, _OUT, layer)
            layer.out_version = out._version
        else:
            setattr(out, _NORM, out._version)
        return out
