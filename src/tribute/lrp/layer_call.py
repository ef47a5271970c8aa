"""One call of a linear layer on the input's path, and the layer's transposed map (its adjoint).

:class:`LayerCall` is what LRP's rules (:mod:`tribute.lrp.rules`) and composites read of a conv, transposed conv
or dense call: its weight and bias (batch norm merged when it is), its position and module name, who read its
output.  :class:`LayerOp` is the call with its other arguments, and its transposed map Jᵀs computed without a
forward pass where the layer allows (:func:`vjp`), or as a convolution with the rotated weight (:func:`rotate`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.tensors import per_channel
from .kept import Kept
from .merge_plan import Merge, fold_affine
from .weight_cache import PassCache

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
    # the planned batch norm (tribute.lrp.merge_plan) this layer ran with merged, until that norm reads its output
    pending: Merge | None = field(default=None, repr=False)
    planned: bool = field(default=False, repr=False)  # run with batch norm merged by an earlier pass's plan
    #: with several inputs, whether this is the first linear layer on one of their paths (None: one input, where
    #: the first layer is the first call, index 0)
    first_of_input: bool | None = None
    #: the layer's input (kept by a product without a bias, until a bias added after it joins the layer)
    input: torch.Tensor | None = field(default=None, repr=False)
    _entry: Any = field(default=_UNSET, repr=False)

    def with_bias(self, b: torch.Tensor) -> LayerCall:
        """This layer with bias ``b`` (added to its output right after: :func:`tribute.lrp.linear_forms.added_bias`),
        at the same position, with its own cache entry and no reads counted yet."""
        return replace(self, bias=b, consumers=0, z_relu_reads=0, out_reads=0, out_relu_reads=0, input=None,
                       _entry=_UNSET)

    @property
    def first(self) -> bool:
        """The first linear layer on the input's path; with several inputs, on any one input's path (each input's
        first layer meets the composite's first-layer rule)."""
        return self.index == 0 if self.first_of_input is None else self.first_of_input

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
            self._entry = self.cache.entry((self.weight, self.bias), values, tag=self.op.cache_tag)
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
        return vjp(self.op, x, w, s)

    def transpose(self, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Jᵀs for the layer's own (merged) weights, reusing the forward pass's graph when there is one."""
        adjoint = getattr(self.op, "adjoint", None)
        if self.graph is None and adjoint is None:
            return vjp(self.op, like, self.params()[0], s)
        w = self.weight.detach()
        if self.merged:  # W' = W·scale per output channel: Jᵀ_{W'} s = Jᵀ_W (scale ⊙ s)
            if adjoint is not None and w.numel() < s.numel():  # scale the smaller of the two
                w = self.params()[0]
            else:
                s = s * per_channel(self.bn[0], s)
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
        return torch.addcmul(per_channel(shift, z), z, per_channel(scale, z))

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
    mergeable = True  # batch norm may merge into it (see merges_norm); an earlier pass's plan may say it did
    fuses_bias = False  # its bias is an argument of the call

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
    def cache_tag(self) -> tuple:
        return (self.kind, self.groups)

    @property
    def stackable(self) -> bool:
        """Whether two signals may go back through two weights at once, stacked on the output-channel axis
        (the weight's axis 0): a convolution without groups, or a dense layer."""
        return self.kind in ("conv", "dense") and self.groups == 1

    def constant(self, like: torch.Tensor, value: float) -> torch.Tensor:
        """A bias of ``value`` for every output channel of ``like``, the layer's output."""
        return like.new_full((like.shape[-1] if self.kind == "dense" else like.shape[1],), value)

    def merges_norm(self, z: torch.Tensor) -> bool:
        """Whether batch norm reading the output ``z`` normalises the layer's output channels (its axis 1), so
        that it can be merged into the weight: always for a convolution, for a dense layer when z is (N, out)."""
        return self.kind != "dense" or z.dim() == 2

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


def vjp(op, x_like: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Jᵀs of the linear map x ↦ op(x, w) (no bias): the 'transposed' layer applied to s."""
    adjoint = getattr(op, "adjoint", None)
    if adjoint is not None:
        return adjoint(s, w, x_like)
    with torch.enable_grad():
        xx = torch.zeros_like(x_like, requires_grad=True)
        (g,) = torch.autograd.grad(op(xx, w, None), xx, s)
    return g

