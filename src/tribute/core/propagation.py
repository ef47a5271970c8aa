"""Layer-wise relevance propagation at linear layers (Bach et al. 2015; Montavon et al. 2019).

In LRP mode the backward signal *is* the relevance R (not relevance per unit of input as in Ancona's
modified-gradient view), so the attribution is the signal arriving at the input, with no multiplier:

- a linear layer (conv, transposed conv, dense) z = Wx + b, called as a module or functionally,
  redistributes R_j over its inputs with the rule a composite assigns it (:class:`LinearRule` subclasses);
- batch norm right after a linear layer whose output nothing else reads is merged into that layer
  (W' = W·γ/σ, b' = (b − μ)·γ/σ + β) and passes relevance unchanged; the model is not modified (from an
  explainer's second call on, such layers run with W', b' and the batch-norm op is skipped:
  :mod:`tribute.core.merge_plan`);
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

from .merge_plan import Merge, MergePlan, Replan, batch_norm_affine, fold_affine, has_forward_hooks
from .rules import Rule, stab
from .weight_cache import PassCache, WeightCache

STABILIZER = 1e-6


class Kept:
    """A tensor a rule reads in the backward pass, kept by reference rather than copied.

    The forward pass of a model may overwrite it afterwards (an in-place ReLU on a layer's output, an in-place
    residual ``out += identity``).  Every in-place op on the input's path goes through the interception,
    which calls :meth:`Propagation.before_write` first: only then is the tensor copied (copy-on-write).  A
    write the interception could not see is caught by the version counter and reported, never used; a write
    through ``.data`` moves no version counter and stays invisible, here as to autograd (so do the marks that
    say a ReLU's output is still ≥ 0).
    """

    __slots__ = ("tensor", "version", "unneeded", "rectify", "rectified")

    def __init__(self, tensor: torch.Tensor, unneeded: Callable[[], bool] | None = None, rectify: bool = False):
        self.tensor = tensor.detach()
        self.version = tensor._version
        #: asked when the tensor is about to be overwritten: True drops it instead of copying (it has a
        #: cheaper source, and the write shows it will not be wanted)
        self.unneeded = unneeded
        #: if unneeded and the write is a ReLU's, keep what it writes instead of dropping it (``rectified``)
        self.rectify = rectify
        self.rectified = False

    def geometry(self) -> tuple:
        t = self.tensor
        return t.shape, t.stride(), t.storage_offset(), t.dtype

    def copy(self, clone: torch.Tensor | None = None) -> None:
        """Hold a copy from now on (``clone``: one already made of the same view)."""
        self.tensor = self.tensor.clone() if clone is None else clone
        self.version = self.tensor._version

    def drop(self) -> None:
        self.tensor = None

    def get_or_none(self) -> torch.Tensor | None:
        """The tensor, or None if it was dropped or written where the interception could not see."""
        t = self.tensor
        return t if t is not None and t._version == self.version else None

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
    cache: PassCache | None = field(default=None, repr=False)
    # who reads the (merged) output: reads in all, and by a ReLU (see :attr:`relu_only`)
    z_relu_reads: int = 0
    out_reads: int = 0
    out_relu_reads: int = 0
    z_version: int = -1  # the version of z, and of the merged output, when they were made (a write ends them)
    out_version: int = -1
    out_kept: Kept | None = field(default=None, repr=False)  # the merged output (batch norm's), by reference
    nonnegative_input: bool = False  # the input is a ReLU's output, unchanged since
    facts: PassFacts | None = field(default=None, repr=False)
    # the planned batch norm (core.merge_plan) this layer ran with merged, until that norm reads its output
    pending: Merge | None = field(default=None, repr=False)
    planned: bool = field(default=False, repr=False)  # run with batch norm merged by an earlier pass's plan
    _entry: Any = field(default=_UNSET, repr=False)

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def merged(self) -> bool:
        """Batch norm is merged only into a layer whose output nothing but that batch norm reads."""
        return self.bn is not None and self.consumers == 1

    def only_read_by_relu(self) -> bool:
        """Whether a ReLU is the only op that read the layer's own output so far (asked as that ReLU overwrites it
        in place: nothing can read it after)."""
        return self.consumers == 1 and self.z_relu_reads == 1

    def sole_relu_read(self) -> bool:
        """Whether a ReLU is the only op that read the merged output so far (asked as that ReLU overwrites it
        in place: nothing can read it after, and the rule will not need it if :attr:`relu_only` holds)."""
        return self.out_reads == 1 and self.out_relu_reads == 1

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
        return self.cache.get(self._cache_entry(), name, lambda: make(*self.params()))

    def _cache_entry(self):
        if self._entry is _UNSET:
            values = self.bn if self.merged else (None, None)
            # the kind and groups fix which dimension holds the outputs: a weight shared by a convolution and a
            # transposed one derives different biases for each
            self._entry = self.cache.entry((self.weight, self.bias), values, tag=(self.kind, self.op.groups))
        return self._entry

    def transposed(self, name: Hashable, s: torch.Tensor, x: torch.Tensor, w: torch.Tensor | None = None,
                   make: Callable | None = None) -> torch.Tensor:
        """Jᵀs for the weight ``w`` this layer derived as ``name`` (or that ``make(W, b)`` gives, derived here).

        Where it is the same map, this is a convolution of s with rotate(w), derived once and kept in w's place
        (:attr:`LayerOp.rotated_adjoint`: measured faster than the transposed convolution), from the explainer's
        second call on: a single call would pay for a copy of w it uses once."""
        conv = None if self.cache is None else self.op.rotated_adjoint((w if w is not None else self.weight).shape)
        # not on an explainer's first call; a layer run as planned (batch norm merged) shows the explainer is reused
        if conv is not None and (self.planned or self.cache.warm(self._cache_entry())):
            (r,) = self.derived(("rotated", name), lambda W, b: (rotate(w if w is not None else make(W, b)),))
            if w is None:
                self.cache.forget(self._entry, name)  # kept by the first call, superseded
            return conv(s, r)
        if w is None:
            (w,) = self.derived(name, lambda W, b: (make(W, b),))
        return _vjp(self.op, x, w, s)

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
        kept = None if self.out_kept is None else self.out_kept.get_or_none()
        if kept is not None:  # batch norm's own output, still there or copied before it was overwritten
            return kept
        scale, shift = self.bn
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return torch.addcmul(shift.view(shape), z, scale.view(shape))

    def params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b), with a following batch norm folded in when it is merged."""
        w, b = self.weight.detach(), None if self.bias is None else self.bias.detach()
        if not self.merged:
            return w, b
        return fold_affine(self.kind, self.op.groups, w, b, *self.bn)


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
    return kind, x, w, b, LayerOp(func, kind, tuple(args), kwargs)


class LayerOp:
    """``op(x, w, b)``: the layer's function with its other arguments as called; ``op.adjoint`` (made when
    first asked: the ε gradient form never asks) is ``(s, w, x) ↦ Jᵀs`` or None (see :func:`_adjoint`)."""

    __slots__ = ("func", "kind", "rest", "kwargs", "_adjoint", "_rotated")

    def __init__(self, func, kind: str, rest: tuple, kwargs: dict):
        self.func, self.kind, self.rest, self.kwargs = func, kind, rest, kwargs
        self._adjoint = self._rotated = _UNSET

    def __call__(self, xx, ww, bb=None):
        return self.func(xx, ww, bb, *self.rest, **self.kwargs)

    @property
    def groups(self) -> int:
        position = {"conv": 3, "conv_transpose": 3}.get(self.kind)  # after stride, padding(, output_padding)
        return self.kwargs.get("groups", self.rest[position] if position is not None and len(self.rest) > position
                               else 1)

    @property
    def adjoint(self) -> Callable | None:
        if self._adjoint is _UNSET:
            self._adjoint = _adjoint(self.func, self.kind, self.rest, self.kwargs)
        return self._adjoint

    def rotated_adjoint(self, weight_shape) -> Callable | None:
        """``(s, R) ↦ Jᵀs`` given R = :func:`rotate` (W) for a weight of ``weight_shape``, for a convolution with
        stride 1, dilation 1, one group and zero padding p ≤ k − 1: the convolution of s with R and padding
        k − 1 − p; else None."""
        if self._rotated is _UNSET:
            self._rotated = _rotation_padding(self.func, self.kind, self.rest, self.kwargs)
        if self._rotated is None:
            return None
        pad = tuple(k - 1 - q for k, q in zip(weight_shape[2:], self._rotated, strict=True))
        if min(pad) < 0:  # padding wider than the kernel: the transposed layer crops, not a convolution
            return None
        func = self.func
        return lambda s, r: func(s, r, None, 1, pad)


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


def rotate(w: torch.Tensor) -> torch.Tensor:
    """A convolution's weight turned into its transpose's: input and output channels swapped, kernel flipped."""
    return w.flip(list(range(2, w.dim()))).transpose(0, 1).contiguous()


def _rotation_padding(func, kind, rest, kwargs) -> tuple | None:
    """The padding of a convolution whose transpose is a convolution with the rotated weight (stride 1,
    dilation 1, one group, zero padding given as numbers), else None.  Measured against
    ``aten.convolution_backward`` (the plain adjoint) on ResNet-18 layer shapes, that convolution takes 0.4-0.96×
    the time at batch 1 (512 channels at 4×4: 0.4×) and 0.8-1.1× at batch 32."""
    if kind != "conv":
        return None
    n = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}[func]
    p = dict(zip(("stride", "padding", "dilation", "groups"), rest, strict=False))
    p.update(kwargs)
    padding = p.get("padding", 0)
    if isinstance(padding, str) or p.get("groups", 1) != 1 or _tuple(p.get("stride", 1), n) != (1,) * n \
            or _tuple(p.get("dilation", 1), n) != (1,) * n:
        return None
    return _tuple(padding, n)


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
    #: whether, where no relevance reaches z ≤ 0 (:attr:`LayerCall.relu_only`), ReLU(z) in place of z gives the
    #: same relevance (z then only matters where it is > 0, and a zero denominator stays finite); a layer
    #: whose output an in-place ReLU overwrote recomputes z for a rule that does not say so
    positive_z_suffices = False

    def relevance(self, layer: LayerCall, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def key(self) -> tuple:
        return (type(self).__name__, tuple(sorted(vars(self).items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _nonnegative(x: torch.Tensor, layer: LayerCall) -> bool:
    """Whether x ≥ 0 (after a ReLU), where (x w)^± = x w^± and half the terms vanish."""
    return layer.nonnegative_input or not bool(x.min() < 0)  # known, or one reduction (no mask)


class _SignedInput:
    """A layer's input with negative entries, as its parts x = x⁺ + x⁻: for a product x w, (x w)⁺ = x⁺w⁺ + x⁻w⁻.

    ``forward((a, b), bias)`` is op(x⁺, a) + op(x⁻, b) + bias; ``transpose(s, (a, b))`` gives the parts' transposed
    layers [Jᵀ_a s, Jᵀ_b s]; ``weigh(parts)`` is x⁺ ⊙ part₁ + x⁻ ⊙ part₂.  (Stacking the parts side by side on
    the input-channel axis, one call instead of two, was measured slower on a batch-1 ResNet-18's first layer.)
    """

    def __init__(self, layer: LayerCall, x: torch.Tensor):
        self.op, self.x = layer.op, x
        self.xp, self.xn = _pos(x), _neg(x)

    def forward(self, weights, bias) -> torch.Tensor:
        return self.op(self.xp, weights[0], bias).add_(self.op(self.xn, weights[1], None))

    def transpose(self, s: torch.Tensor, weights) -> list[torch.Tensor]:
        return [_vjp(self.op, self.x, w, s) for w in weights]

    def weigh(self, parts) -> torch.Tensor:
        """x⁺ ⊙ part₁ + x⁻ ⊙ part₂ (``parts`` is consumed)."""
        first, second = parts
        return first.mul_(self.xp).add_(second.mul_(self.xn))

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
        self.stacked = layer.kind in ("conv", "dense") and layer.op.groups == 1
        self.first = self.second = self.buffer = None
        if self.stacked:
            dim = like.dim() - 1 if layer.kind == "dense" else 1
            shape = list(like.shape)
            shape[dim] *= 2
            self.buffer = like.new_empty(shape)
            self.first, self.second = self.buffer.chunk(2, dim)

    def transpose(self, x: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, name: Hashable,
                  make: Callable) -> torch.Tensor:
        """W₁ᵀs₁ + W₂ᵀs₂ with ``make(W, b) -> (W₁, W₂)`` (cached)."""
        layer = self.layer
        if self.stacked:
            return layer.transposed(("stacked", name), self.buffer, x, make=lambda w, b: torch.cat(make(w, b), 0))
        w1, w2 = layer.derived(name, make)
        return _vjp(layer.op, x, w1, s1).add_(_vjp(layer.op, x, w2, s2))


def _bias(b: torch.Tensor | None, add: float, like: torch.Tensor, layer: LayerCall) -> torch.Tensor | None:
    """``b + add`` per output channel (a layer without a bias gets the constant)."""
    if add == 0:
        return b
    if b is not None:
        return b + add
    n = like.shape[-1] if layer.kind == "dense" else like.shape[1]
    return like.new_full((n,), add)


def _positive_part(layer: LayerCall, z: torch.Tensor, scale: float = 1.0) -> Callable:
    """``make(W, b)`` of (c·W⁺, c·b⁺ + ε), c = ``scale``: with x⁺ (and c·W⁻ for x⁻) the layer gives
    c·z⁺ + ε, z⁺ = Σ (x w)⁺ + b⁺ ≥ 0."""
    return lambda w, b: (scale * _pos(w), _bias(None if b is None else scale * _pos(b), STABILIZER, z, layer))


class Epsilon(LinearRule):
    """ε rule (seed 001 Eq 15): R_i = x_i Σ_j w_ij R_j / stab_ε(z_j), the bias inside z."""

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
        signed = None if _nonnegative(x, layer) else _SignedInput(layer, x)
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
            return pair.transpose(x, sp, sn, ("alpha_beta", a, b), lambda w, _: (a * _pos(w), -b * _neg(w))).mul_(x)
        parts = signed.transpose(sp, layer.derived(("alpha_signs", a), lambda w, _: (a * _pos(w), a * _neg(w))))
        if b:
            parts = signed.difference(parts, signed.transpose(
                sn, layer.derived(("beta_signs", b), lambda w, _: (b * _neg(w), b * _pos(w)))))
        return signed.weigh(parts)


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
        g, op = self.gamma, layer.op
        signed = None if _nonnegative(x, layer) else _SignedInput(layer, x)
        if layer.relu_only:
            # R = 0 where z ≤ 0 (LayerCall.relu_only): only z > 0 counts, where z + γz⁺ > 0.  The contributions
            # there, x w + γ(x w)⁺ = x⁺(w + γw⁺) + x⁻(w + γw⁻), sum to it: the layer with (W + γW⁺, b + γb⁺ + ε)
            # on x⁺ (and W + γW⁻ on x⁻) gives it plus ε; clamping at ε leaves it and keeps z ≤ 0 finite.
            # One transposed layer, W + γW⁺, for x ≥ 0 (two for signed x)
            wg, bg = layer.derived(("gamma_up", g), lambda w, b: (
                w + g * _pos(w), _bias(None if b is None else b + g * _pos(b), STABILIZER, z, layer)))
            if signed is None:
                den = op(x, wg, bg).clamp_(min=STABILIZER)
                return layer.transposed(("gamma_up", g), torch.div(r, den, out=den), x, w=wg).mul_(x)
            weights = (wg, layer.derived(("gamma_up_negative", g), lambda w, _: (w + g * _neg(w),))[0])
            den = signed.forward(weights, bg).clamp_(min=STABILIZER)
            return signed.weigh(signed.transpose(torch.div(r, den, out=den), weights))
        zo = layer.output(z)
        wu, bu = layer.derived(("gamma_part", g), _positive_part(layer, z, g))
        if signed is None:
            u = op(x, wu, bu)  # γz⁺ + ε
        else:
            u = signed.forward(layer.derived(("gamma_signs", g), lambda w, _: (g * _pos(w), g * _neg(w))), bu)
        # masks by arithmetic (a comparison and torch.where cost five elementwise passes each): with σ = sign z,
        # [z > 0] = max(σ, 0) and [z < 0] = [z > 0] − σ; z = 0 is in neither (its relevance is dropped)
        sigma = torch.sign(zo)
        up_mask = sigma.clamp(min=0)
        down_mask = torch.sub(up_mask, sigma, out=sigma)
        # where z > 0: z + γz⁺ + ε; where z < 0: −(z + γz⁻ − ε) = γz⁺ − (1 + γ)z + ε (z⁻ = z − z⁺), both > ε
        # there; clamped at ε elsewhere, where the mask zeroes the ratio.  s₋ = R / (z + γz⁻ − ε) = −R / down
        pair = _TwoSignals(layer, r) if signed is None else None
        up = torch.add(zo, u, out=None if pair is None else pair.first).clamp_(min=STABILIZER)
        down = u.sub_(zo, alpha=1 + g).clamp_(min=STABILIZER)
        sp = torch.div(r, up, out=up).mul_(up_mask)
        sd = torch.div(r, down, out=down if pair is None or pair.second is None else pair.second).mul_(down_mask)
        if signed is None:  # x ≥ 0: (x w)^± = x w^±, so each sign of z has its transposed layer, W + γW^±
            return pair.transpose(x, sp, sd, ("gamma", g),
                                  lambda w, _: (w + g * _pos(w), -(w + g * _neg(w)))).mul_(x)  # sd = −s₋
        # R = x ⊙ Wᵀ(s₊ + s₋) + γ (x⁺ ⊙ A + x⁻ ⊙ B) with A = W⁺ᵀs₊ + W⁻ᵀs₋, B = W⁻ᵀs₊ + W⁺ᵀs₋ (so
        # Wᵀ(s₊ + s₋) = A + B); (A, B) = (W⁺ᵀs₊, W⁻ᵀs₊) − (W⁻ᵀ(−s₋), W⁺ᵀ(−s₋))
        wp, wn = layer.derived("signs", lambda w, _: (_pos(w), _neg(w)))
        pa, pb = signed.difference(signed.transpose(sp, (wp, wn)), signed.transpose(sd, (wn, wp)))
        return torch.add(pa, pb).mul_(x).add_(signed.weigh((pa, pb)), alpha=g)


class Box(LinearRule):
    """zᴮ rule for the first layer (Montavon et al. 2017) with bounds l ≤ x ≤ h (per channel or per entry):
    R_i = Σ_j (x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻) R_j / stab(Σ_i' x_i' w_i'j − l_i' w_i'j⁺ − h_i' w_i'j⁻).
    The bias cancels.  Bounds are in the model's input space (after any input transform)."""

    name = "box"
    positive_z_suffices = True  # z unused

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
    positive_z_suffices = True  # z unused

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
    positive_z_suffices = True  # z unused

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
        # an in-place ReLU that is z's only reader turns it into ReLU(z) rather than copying it first
        ctx.z = keep(z, unneeded=layer.only_read_by_relu, rectify=True)
        return z.detach()

    @staticmethod
    def backward(ctx, r):
        (x,) = ctx.saved_tensors
        layer, rule, kept = ctx.layer, ctx.rule, ctx.z
        x = x.detach()
        # rectified: the ReLU that overwrote z was its only reader, so with every rule downstream proportional no
        # relevance reaches z ≤ 0 (relu_only); dropped: overwritten by another op after only a ReLU read it
        if kept.tensor is None or (kept.rectified and not (layer.facts.all_proportional and rule.positive_z_suffices)):
            z = layer.op(x, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
        else:
            z = kept.get()
        return rule.relevance(layer, x, z, r), None, None, None


class _NormFunction(torch.autograd.Function):
    """y = op(*inputs) for an op linear or affine in its inputs; backward: R_k = x_k ⊙ J_kᵀ (R / stab(y)).

    The inputs are kept by reference (:class:`Kept`); the backward pass recomputes y with its graph, which
    for an addition or a pooling costs less than copying inputs and output in the forward pass."""

    @staticmethod
    def forward(ctx, op, prop: Propagation, inplace_op, additive: bool, *inputs):
        ctx.op, ctx.additive = op, additive
        ctx.kept = [prop.keep(t) for t in inputs]
        if inplace_op is None:
            return op(*(t.detach() for t in inputs))
        # ``x += y`` with x the first input: keep x's old value (one copy, shared with whatever else kept x),
        # then write the result straight into x
        target = inputs[0]
        prop.before_write(target)
        inplace_op(*inputs)
        ctx.mark_dirty(target)
        return target

    @staticmethod
    def backward(ctx, r):
        if ctx.additive:  # y = a + b: R_a = a ⊙ s, R_b = b ⊙ s with s = R / stab(y), no graph needed
            a, b = (k.get() for k in ctx.kept)
            s = stab(torch.add(a, b), STABILIZER)
            s = torch.div(r, s, out=s)
            return None, None, None, None, a * s, s.mul_(b)
        with torch.enable_grad():
            xs = [k.get().detach().requires_grad_() for k in ctx.kept]
            y = ctx.op(*xs)
            grads = torch.autograd.grad(y, xs, r / stab(y.detach(), STABILIZER), allow_unused=True)
        out = [None, None, None, None]
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

    def needs_modules(self) -> bool:
        """Whether :meth:`rule` reads a layer's module or name (``by_name``, or a subclass's own ``rule``)."""
        return bool(self.by_name) or type(self).rule is not Composite.rule

    def start(self, cache: WeightCache | None = None, plan: MergePlan | None = None) -> Propagation:
        """The handler for one forward pass (``cache``: where layers keep the weights their rules derive; ``plan``:
        where batch norm merged in an earlier pass, :mod:`tribute.core.merge_plan`)."""
        return Propagation(self, cache=cache, plan=plan)

    def key(self) -> tuple:
        return (type(self).__name__, self.conv.key(), self.dense.key(),
                None if self.first is None else self.first.key(),
                tuple(sorted((k, v.key()) for k, v in self.by_name.items())))

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, first={self.first}, conv={self.conv}, dense={self.dense})"


class WithWeights:
    """A composite whose forward passes keep the weights their rules derive in ``cache`` (None: none kept) and
    follow ``plan`` (where batch norm merged before)."""

    def __init__(self, composite: Composite, cache: WeightCache | None, plan: MergePlan | None = None):
        self.composite, self.cache, self.plan = composite, cache, plan

    def start(self) -> Propagation:
        return self.composite.start(cache=self.cache, plan=self.plan)

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
_NONNEGATIVE = "_tribute_nonnegative"  # on a ReLU's output: its version when made


def _made_here(t, attr: str, version_of) -> Any:
    """The mark ``attr`` on ``t`` if ``t`` still holds what was marked (no in-place write since)."""
    mark = getattr(t, attr, None)
    return mark if mark is not None and t._version == version_of(mark) else None


class Propagation:
    """The op handler of an LRP rule set: one instance per forward pass (it numbers the layers)."""

    def __init__(self, composite: Composite, names: dict[int, str] | None = None,
                 cache: WeightCache | None = None, plan: MergePlan | None = None):
        self.composite = composite
        self.names = names or {}  # id(module) → name
        self.cache = None if cache is None else cache.for_pass()  # every layer's samples compared at once
        # where batch norm merged last time (core.merge_plan); merged weights live in the cache
        self.plan = plan if cache is not None else None
        self.merges: dict[int, Merge] = {}  # this pass's merges: the next plan
        self._norms: list[tuple[LayerCall, Merge]] = []  # batch norms right after a layer, merged if sole reader
        self.facts = PassFacts()
        self.count = 0
        self.module_stack: list[nn.Module] = []
        self.unruled: list[str] = self.facts.plain  # ops with no rule that made tensors (plain gradient)
        self._kept: dict[int, list[Kept]] = {}  # storage address → tensors kept by reference there
        self._rectifying: list[Kept] = []  # kept tensors a ReLU is writing in place right now

    def keep(self, t: torch.Tensor, unneeded: Callable[[], bool] | None = None, rectify: bool = False) -> Kept:
        """Keep ``t`` for the backward pass by reference; :meth:`before_write` copies it if need be."""
        k = Kept(t, unneeded, rectify)
        self._kept.setdefault(_storage(t), []).append(k)
        return k

    def before_write(self, t, writer: str | None = None) -> None:
        """An in-place op (the nonlinearity ``writer``, if one) is about to write into ``t``: copy what is kept
        in its storage first (one copy per view, shared by everything that kept it)."""
        if isinstance(t, torch.Tensor) and self._kept:
            clones: dict[tuple, torch.Tensor] = {}
            for k in self._kept.pop(_storage(t), ()):
                if k.unneeded is not None and k.unneeded():
                    if k.rectify and writer == "relu":  # kept as ReLU(t): see made_by_nonlinearity
                        k.rectified = True
                        self._rectifying.append(k)
                    else:
                        k.drop()
                    continue
                geometry = k.geometry()
                if geometry not in clones:
                    clones[geometry] = k.tensor.clone()
                k.copy(clones[geometry])

    def track_modules(self, model: nn.Module):
        """Context: keep a stack of the modules running, so composites can address layers by name."""
        import contextlib

        if self.plan is not None and has_forward_hooks(model):  # they would see a planned layer's merged output
            self.plan = None
        if not self.composite.needs_modules():  # global module hooks slow every module call down
            return contextlib.nullcontext()
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

    def made_by_nonlinearity(self, y: torch.Tensor, name: str) -> None:
        """A nonlinearity made ``y`` (in place or not): a ReLU's output is ≥ 0 until something writes it."""
        if name == "relu":
            setattr(y, _NONNEGATIVE, y._version)
        for k in self._rectifying:  # what a ReLU just wrote in place of a kept tensor is kept now
            k.version = k.tensor._version
            self._kept.setdefault(_storage(k.tensor), []).append(k)
        self._rectifying.clear()

    def read_by_nonlinearity(self, z: torch.Tensor, name: str) -> None:
        """A nonlinearity reads ``z`` (before an in-place call writes it)."""
        if name != "relu":
            self.facts.proportional = False  # its pass rule may give relevance where z = 0 (sigmoid)
        self._read(z, relu=name == "relu")

    @staticmethod
    def _read(t: torch.Tensor, relu: bool) -> None:
        layer = _made_here(t, _LAYER, lambda m: m.z_version)
        if layer is not None:
            if layer.pending is not None:
                raise Replan("a linear layer's output was read before the batch norm merged into it last time")
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
        if self.plan is not None:
            for layer, merge in self._norms:  # batch norm merges into a layer its output's sole reader
                if layer.merged:
                    self.merges[layer.index] = merge
            self.plan.merges = self.merges
        return out

    def handle(self, func, args, kwargs, tagged: Callable[[Any], bool], name: str):
        """The op's output with its LRP rule, or ``NotImplemented`` to run it plainly (moves, max pooling,
        and ops with no rule, which :attr:`unruled` lists)."""
        parsed = parse_linear(func, args, kwargs)
        if parsed is not None:
            kind, x, w, b, op = parsed
            if not tagged(x) or tagged(w) or tagged(b):  # a weight computed from the input: plain gradient
                self.unruled.append(name)
                return NotImplemented
            self.count_consumers(args, kwargs, tagged)
            module = self.module_stack[-1] if self.module_stack else None
            found = None if self.plan is None else self.plan.planned(self.count, kind, op.groups, w, b, self.cache)
            pending = None
            if found is not None:  # a layer with batch norm merged, run so: its output is batch norm's
                self.cache.discard((w, b), tag=(kind, op.groups))  # what its rules derived from W unmerged
                pending, (w, b), _ = found
            layer = LayerCall(kind, op, w, b, self.count, self.names.get(id(module), ""), module,
                              cache=self.cache, facts=self.facts, pending=pending, planned=pending is not None)
            self.count += 1
            rule = self.composite.rule(layer)
            layer.nonnegative_input = _made_here(x, _NONNEGATIVE, lambda v: v) is not None
            if not (layer.first or getattr(rule, "proportional", False)):
                self.facts.proportional = False
            y = _LinearLayerFunction.apply(x, layer, rule, self.keep)
            setattr(y, _LAYER, layer)
            layer.z_version = y._version
            return y
        suffix = name.rsplit(".", 1)[-1]
        if suffix == "batch_norm":
            return self._batch_norm(func, args, kwargs, tagged)
        if suffix in _MOVES:
            return NotImplemented
        inplace = suffix in _INPLACE
        base = _INPLACE.get(suffix, suffix)
        if base == "einsum" and len(args) == 2 and isinstance(args[1], (list, tuple)):
            return self.handle(func, (args[0], *args[1]), kwargs, tagged, name)  # einsum(eq, [a, b]) = einsum(eq, a, b)
        if base in _PROPORTIONAL:
            n_tagged = sum(1 for a in list(args) + list(kwargs.values()) if tagged(a))
            if not n_tagged:  # the input's path runs through a list argument this rule cannot split
                self.unruled.append(name)
                return NotImplemented
            if base in _BILINEAR and n_tagged > 1:
                self.unruled.append(name)
                return NotImplemented
            self.count_consumers(args, kwargs, tagged)  # before an in-place op writes its first input
            additive = base == "add" and len(args) == 2 and not kwargs and n_tagged == 2 and \
                args[0].shape == args[1].shape
            if inplace and tagged(args[0]):  # written in place by the Norm rule's node, which keeps the old value
                out = self._proportional(getattr(torch, base), args, kwargs, tagged, inplace_func=func,
                                         additive=additive)
            elif inplace:  # args[0] is not on the input's path: write the result into it
                self.before_write(args[0])
                out = args[0].copy_(self._proportional(getattr(torch, base), args, kwargs, tagged))
            else:
                out = self._proportional(func, args, kwargs, tagged, additive=additive)
            setattr(out, _NORM, out._version)
            return out
        self.unruled.append(name)
        return NotImplemented

    def _proportional(self, func, args, kwargs, tagged, inplace_func=None, additive: bool = False):
        """The op under the Norm rule; ``inplace_func`` (the op's in-place form, writing into ``args[0]``)
        is used when ``args[0]`` is on the input's path.  ``additive``: the op is a + b, same shapes."""
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
        return _NormFunction.apply(with_inputs(func), self, inplace, additive, *inputs)

    def _batch_norm(self, func, args, kwargs, tagged):
        p = batch_norm_arguments(args, kwargs)
        z = p["input"]
        layer = _made_here(z, _LAYER, lambda m: m.z_version)
        if layer is not None and layer.pending is not None:  # the layer ran with this norm merged (its plan)
            if not layer.pending.same_norm(p):
                raise Replan("a different batch norm read a linear layer's output than last time")
            self.merges[layer.index], layer.pending = layer.pending, None
            return z  # read from now on as the layer's own output, with nothing merged into it
        self.count_consumers(args, kwargs, tagged)
        scale, shift = batch_norm_affine(p)
        if layer is not None:
            layer.bn = (scale, shift)  # merged at backward time if nothing else read the layer's output
            if self.plan is not None:
                self._norms.append((layer, Merge(layer.weight, layer.bias, p)))
        else:  # not right after a linear layer: an affine map with the Norm rule
            layer = LayerCall("none", lambda *a: None, scale, None, -1, "", None)
        out = _BatchNormFunction.apply(z, layer, scale, shift, self.keep)
        if layer.index >= 0:
            setattr(out, _OUT, layer)
            layer.out_version = out._version
            # the merged layer's output: γ and αβ read it; kept by reference (an in-place ReLU that is its only
            # reader drops it rather than copying it: then the rule reads z > 0 only, or recomputes it)
            layer.out_kept = self.keep(out, unneeded=layer.sole_relu_read)
        else:
            setattr(out, _NORM, out._version)
        return out
