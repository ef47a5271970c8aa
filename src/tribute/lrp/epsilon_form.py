"""ε-LRP composites as a modified gradient (the "gradient form" of the relevance form, :mod:`tribute.lrp.propagation`).

Write the relevance at every tensor v as R_v = v ⊙ t_v, t the relevance per unit of v.  Then

- the ε rule at a linear layer z = Wx + b (batch norm merged), R_x = x ⊙ Wᵀ(R_z / stab(z)), reads
  t_x = Wᵀ(t_z ⊙ z / stab(z));
- the Norm rule at an op linear in its inputs (additions, means, pooling, unmerged batch norm) reads the same
  with the op's Jacobian, t_in = Jᵀ(t_y ⊙ y / stab(y));
- ReLU's pass rule, R_z = R_y, reads t_z = t_y ⊙ y / z = t_y ⊙ 1[z > 0]: ReLU's own gradient;
- moves (reshapes, concatenation, max pooling) pass t as their gradient does.

So an ε composite is x ⊙ (the plain gradient, with the backward signal scaled by v / stab(v) at the output v
of every linear layer and every Norm op).  A ReLU reading such a v takes both factors at once,
1[v > 0]·v / stab(v) = y / (y + ε) with y = ReLU(v), computed in the forward pass; any other reader scales
its own edge by |v| / (|v| + ε) (= v / stab(v) exactly, the signs cancel); the factors distribute over the
readers because the relevance of v is the sum over them.  The model's output, the last linear layer's, is
scaled by 1 / stab(out) for the backward pass that starts from R = S_c(x).

This needs a few elementwise passes per layer where the relevance form needs several, and autograd's own
backward passes for the rest.  It covers models whose nonlinearities are ReLUs and whose ops the relevance
form handles with these rules; anything else raises :class:`Unsupported` during the forward pass and the
caller falls back to the relevance form, which gives the same relevance.

Batch norm merged into the layer before it is planned from the explainer's earlier passes
(:mod:`tribute.lrp.merge_plan`).  With a weight cache, a stride-1 convolution's backward pass is the convolution
with its rotated weight (:attr:`tribute.lrp.layer_call.LayerOp.rotated_adjoint`), which on CPU runs faster than
autograd's transposed convolution (at batch 1 on ResNet-18 it makes the whole ε pass about 10% faster).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.interception import op_key
from ..core.rules import ElementwiseRule, stab
from .composites import Composite
from .layer_call import LayerCall, parse_linear, rotate
from .linear_forms import added_bias
from .merge_plan import Merge, MergePlan, Replan, batch_norm_arguments
from .propagation import Propagation
from .rules import Epsilon
from .weight_cache import WeightCache

_EPS = "_tribute_eps"  # the stabiliser a tensor's readers owe it (it is a linear layer's or Norm op's output)
_PRODUCER = "_tribute_producer"  # the linear-layer call that made it (batch norm may merge into it)
_IN_PLACE_ADD = {"add": 1.0, "sub": -1.0}  # in-place additions, by the op they compute: their sign


class Unsupported(Exception):
    """The gradient form does not cover this model; the relevance form must run instead."""


def covers(composite: Any) -> bool:
    """Whether ``composite`` puts the ε rule on every linear layer (the only composites this form computes)."""
    if type(composite) is not Composite:  # a subclass may assign rules some other way
        return False
    rules = [composite.conv, composite.dense, composite.first, *composite.by_name.values()]
    return all(r is None or type(r) is Epsilon for r in rules) and composite.conv is not None


class EpsilonForm:
    """The ``ops`` of a rule set computing an ε composite in the gradient form (with ``cache`` and ``plan``:
    layers batch norm merged into in an earlier pass run with the merged weights)."""

    def __init__(self, composite: Composite, cache: WeightCache | None = None, plan: MergePlan | None = None):
        self.composite, self.cache, self.plan = composite, cache, plan

    def start(self) -> GradientForm:
        return GradientForm(self.composite, cache=self.cache, plan=self.plan if self.cache is not None else None)

    def key(self) -> tuple:
        return ("gradient_form", self.composite.key())


class _Producer:
    """A linear layer's output: how many ops read it, whether batch norm was merged into it, and the merge
    the layer already ran with (its output holds the batch norm's values: only that batch norm may read it)."""

    __slots__ = ("layer", "readers", "merged", "planned")

    def __init__(self, layer: LayerCall, planned: Merge | None):
        self.layer, self.planned = layer, planned
        self.readers = 0
        self.merged = False

    def read(self) -> None:
        if self.planned is not None:
            raise Replan("a linear layer's output was read before the batch norm merged into it last time")
        if self.merged:  # batch norm merged into the layer, and now something else reads the layer's output
            raise Unsupported("a linear layer's output is read by batch norm and by another op")
        self.readers += 1


class _EdgeFactor(torch.autograd.Function):
    """Identity forward; the backward signal scaled by |v| / (|v| + ε) (one reader's share of v / stab(v))."""

    @staticmethod
    def forward(ctx, v, eps: float):
        ctx.save_for_backward(_share(v, eps))
        return v.view_as(v)

    @staticmethod
    def backward(ctx, g):
        (factor,) = ctx.saved_tensors
        return factor.mul_(g), None  # the factor is this node's own and needed once


class _OutputFactor(torch.autograd.Function):
    """Identity forward; the backward signal divided by stab(out): the start R = S_c at the output over it."""

    @staticmethod
    def forward(ctx, out, eps: float):
        ctx.save_for_backward(stab(out.detach(), eps))
        return out.view_as(out)

    @staticmethod
    def backward(ctx, g):
        (den,) = ctx.saved_tensors
        return torch.div(g, den, out=den), None  # the denominator is this node's own and needed once


class _RotatedConvolution(torch.autograd.Function):
    """A stride-1 convolution op(x, W, b) whose backward pass convolves with R = rotate(W) (LayerOp.rotated_adjoint)."""

    @staticmethod
    def forward(ctx, x, w, b, op, conv, r):
        ctx.conv, ctx.r = conv, r
        return op(x, w, b)

    @staticmethod
    def backward(ctx, g):
        return ctx.conv(g, ctx.r), None, None, None, None, None


class _FusedRelu(torch.autograd.Function):
    """y = ReLU(v) (in place if asked); backward g · y / (y + ε), the ReLU and v's stabiliser in one factor."""

    @staticmethod
    def forward(ctx, v, eps: float, inplace: bool):
        y = v.relu_() if inplace else v.relu()
        ctx.eps = eps
        # y itself, not the factor: the next layer's node keeps y alive anyway, so this holds no extra memory
        ctx.save_for_backward(y)
        if inplace:
            ctx.mark_dirty(v)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        factor = y + ctx.eps
        return torch.div(y, factor, out=factor).mul_(g), None, None


class _InPlaceAdd(torch.autograd.Function):
    """``a += sign·alpha·b`` (an in-place residual addition), with the readers' factors of a and b."""

    @staticmethod
    def forward(ctx, a, b, scale: float, eps_a, eps_b):
        ctx.factors = [None if e is None else _share(t, e) for t, e in ((a, eps_a), (b, eps_b))]
        ctx.scale, ctx.b_shape = scale, b.shape
        a.add_(b, alpha=scale)
        ctx.mark_dirty(a)
        return a

    @staticmethod
    def backward(ctx, g):
        fa, fb = ctx.factors  # this node's own and needed once: multiplied in place
        ga = g if fa is None else fa.mul_(g)
        gb = g if fb is None else fb.mul_(g)
        if ctx.scale != 1:
            gb = gb * ctx.scale
        return ga, _sum_to(gb, ctx.b_shape), None, None, None


def _share(v: torch.Tensor, eps: float) -> torch.Tensor:
    """|v| / (|v| + ε), which is v / stab(v) exactly: the signs cancel."""
    a = v.detach().abs()
    den = a + eps
    return torch.div(a, den, out=den)


def _sum_to(g: torch.Tensor, shape) -> torch.Tensor:
    return g if g.shape == shape else g.sum_to_size(shape)


class FusedEpsilonRelu(ElementwiseRule):
    """The gradient form's rule at nonlinearities: ReLUs only (see the module doc); anything else is
    :class:`Unsupported`."""

    name = "epsilon_form"
    saves_input = False

    def apply(self, nl, z, params, phase):
        return self._relu(nl, z, inplace=False)

    def apply_inplace(self, nl, z, params, phase):
        self._relu(nl, z, inplace=True)
        for attr in (_EPS, _PRODUCER):  # z now holds the ReLU's output: nothing is owed to it any more
            if hasattr(z, attr):
                delattr(z, attr)
        return True

    @staticmethod
    def _relu(nl, z, *, inplace: bool):
        if nl.name != "relu":
            raise Unsupported(f"the gradient form needs ReLU nonlinearities, got {nl.name}")
        producer = getattr(z, _PRODUCER, None)
        if producer is not None:
            producer.read()
        eps = getattr(z, _EPS, None)
        if eps is None:  # relu of a tensor no stabiliser is owed to: its plain gradient is the pass rule
            return z.relu_() if inplace else z.relu()
        return _FusedRelu.apply(z, eps, inplace)

    def forward_derivative(self, nl, gy, saved, params):
        raise RuntimeError("LRP composites do not support differentiable=True")


class GradientForm(Propagation):
    """The op handler of one forward pass in the gradient form (module tracking as in the relevance form)."""

    def __init__(self, composite: Composite, cache: WeightCache | None = None, plan: MergePlan | None = None):
        super().__init__(composite, cache=cache, plan=plan)

    def count_consumers(self, args, kwargs, tagged) -> None:  # readers are counted where they matter
        pass

    def before_write(self, t, writer=None) -> None:  # nothing is kept by reference
        pass

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The model's output, scaled for the backward pass that starts from R = S_c (see module doc)."""
        eps = getattr(out, _EPS, None)
        if eps is None:
            raise Unsupported("the model's output is not the output of a linear layer or a linear op")
        if self.plan is not None:
            self.plan.merges = self.merges
        return _OutputFactor.apply(out, eps)

    def handle(self, func, args, kwargs, tagged, name):
        rule = self.table.get(op_key(name))
        if rule is not None and getattr(rule, "gradient_form", False):
            return rule.apply(self, func, args, kwargs, tagged, name)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) or (isinstance(out, (list, tuple))
                                             and any(isinstance(o, torch.Tensor) for o in out)):
            raise Unsupported(f"{name} has no rule in the gradient form")
        return out  # metadata (x.shape, x.dim()) carries no relevance

    def linear(self, func, args, kwargs, tagged, name):
        parsed = parse_linear(func, args, kwargs)
        if parsed is None:
            raise Unsupported(f"{name} has no rule in the gradient form")
        return self.layer(parsed, args, kwargs, tagged, name)

    def layer(self, parsed, args, kwargs, tagged, name):
        """The layer ``parsed`` (a conv, ``F.linear`` or a product: :mod:`tribute.lrp.linear_forms`) under ε."""
        kind, x, w, b, op = parsed
        if not tagged(x) or tagged(w) or tagged(b):
            raise Unsupported(f"{name} with a weight on the input's path")
        module = self.module_stack[-1] if self.module_stack else None
        layer = LayerCall(kind, op, w, b, self.count, self.names.get(id(module), ""), module)
        self.count += 1
        found = None if self.plan is None or not op.mergeable else \
            self.plan.planned(layer.index, kind, op.groups, w, b, self.cache)
        planned = None
        if found is None:
            out = self._linear(op, self._edge(x), w, b)
        else:
            self.cache.discard((w,), tag="rotated")  # kept for the layer's own weight before the plan
            planned, merged, entry = found
            out = self._linear(op, self._edge(x), *merged, entry=entry, planned=True)
        setattr(out, _EPS, self.composite.rule(layer).epsilon)
        setattr(out, _PRODUCER, _Producer(layer, planned))
        return out

    def no_rule(self, func, args, kwargs, tagged, name):
        raise Unsupported(f"{name} has no rule in the gradient form")

    def proportional(self, func, args, kwargs, tagged, name, rule):
        if rule.inplace:
            if rule.base not in _IN_PLACE_ADD:
                raise Unsupported(f"{name} has no rule in the gradient form")
            return self._in_place_add(args, kwargs, tagged, _IN_PLACE_ADD[rule.base])
        fused = None if rule.inplace else added_bias(rule.base, args, kwargs, tagged)
        producer = None if fused is None else getattr(fused[0], _PRODUCER, None)
        if producer is not None and producer.readers == 0 and producer.layer.op.fuses_bias \
                and producer.layer.bias is None:
            # z + b right after a product without a bias: the layer's bias (linear_forms.added_bias), so the
            # layer's stabiliser is owed at the sum, not at z
            producer.readers += 1
            out = func(*args, **kwargs)
            setattr(out, _EPS, getattr(fused[0], _EPS))
            return out
        if rule.bilinear and sum(1 for a in list(args) + list(kwargs.values()) if tagged(a)) > 1:
            raise Unsupported(f"{name} of two tensors on the input's path has no rule in the gradient form")
        out = func(*self._edges(args, tagged), **{k: self._edge(v) if tagged(v) else v for k, v in kwargs.items()})
        _owe(out, self.stabilizer)
        return out

    def _linear(self, op, x, w, b, entry=None, planned: bool = False):
        """op(x, w, b); for a convolution whose transposed layer is a convolution with rotate(w) (stride 1, …),
        with that as its backward pass, rotate(w) kept in the cache (measured faster than autograd's own): in
        ``entry`` if w was derived there, else in an entry of its own."""
        conv = None if self.cache is None else op.rotated_adjoint(w.shape)
        if conv is not None and entry is None:
            entry = self.cache.entry((w,), tag="rotated")
        # not on an explainer's first call (a copy of w used once); a planned layer shows the explainer is reused
        if conv is None or not (planned or self.cache.warm(entry)):
            return op(x, w, b)
        (r,) = self.cache.get(entry, "rotated", lambda: (rotate(w.detach()),))
        return _RotatedConvolution.apply(x, w.detach(), None if b is None else b.detach(), op, conv, r)

    def _edge(self, v):
        """v as one reader sees it: scaled by its share of v / stab(v) if a stabiliser is owed to v."""
        if not isinstance(v, torch.Tensor):
            return v
        producer = getattr(v, _PRODUCER, None)
        if producer is not None:
            producer.read()
        eps = getattr(v, _EPS, None)
        return v if eps is None else _EdgeFactor.apply(v, eps)

    def _edges(self, args, tagged):
        return [self._edge(a) if tagged(a) else a for a in args]

    def move(self, func, args, kwargs, tagged, name):
        """Moves pass what is owed to their output, when they read one tensor (a view, a max pooling)."""
        tagged_args = [a for a in list(args) + list(kwargs.values()) if tagged(a)]
        if len(tagged_args) != 1:
            return func(*self._edges(args, tagged), **kwargs)
        (v,) = tagged_args
        producer = getattr(v, _PRODUCER, None)
        if producer is not None:
            producer.read()
        out = func(*args, **kwargs)
        eps = getattr(v, _EPS, None)
        if eps is not None:
            _owe(out, eps)
        return out

    def _in_place_add(self, args, kwargs, tagged, sign: float):
        a, b = args[0], (args[1] if len(args) > 1 else kwargs.get("other"))
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        if not tagged(a) or not isinstance(b, torch.Tensor) or not isinstance(alpha, (int, float)):
            raise Unsupported("an in-place addition into a tensor off the input's path")
        eps_b = None
        if tagged(b):
            for t in (a, b):
                producer = getattr(t, _PRODUCER, None)
                if producer is not None:
                    producer.read()
            eps_b = getattr(b, _EPS, None)
        else:
            producer = getattr(a, _PRODUCER, None)
            if producer is not None:
                producer.read()
            b = b.detach()
        out = _InPlaceAdd.apply(a, b, sign * alpha, getattr(a, _EPS, None), eps_b)
        setattr(out, _EPS, self.stabilizer)
        if hasattr(out, _PRODUCER):
            delattr(out, _PRODUCER)
        return out

    def batch_norm(self, func, args, kwargs, tagged):
        p = batch_norm_arguments(args, kwargs)
        z = p["input"]
        producer = getattr(z, _PRODUCER, None)
        if producer is not None and producer.planned is not None:  # the layer ran with this norm merged
            if not producer.planned.same_norm(p):
                raise Replan("a different batch norm read a linear layer's output than last time")
            self.merges[producer.layer.index] = producer.planned
            delattr(z, _PRODUCER)  # z is the norm's output now, read like ``out`` below
            return z
        # merged into the layer (if it normalises the layer's output channels): z's stabiliser moves on
        if producer is not None and producer.readers == 0 and producer.layer.op.merges_norm(z):
            producer.readers, producer.merged = 1, True
            out = func(*args, **kwargs)
            setattr(out, _EPS, getattr(z, _EPS))
            if self.plan is not None:
                self.merges[producer.layer.index] = Merge(producer.layer.weight, producer.layer.bias, p)
            return out
        out = func(self._edge(z), *args[1:], **kwargs) if args else func(**{**kwargs, "input": self._edge(z)})
        _owe(out, self.stabilizer)
        return out


def _owe(out, eps: float) -> None:
    if isinstance(out, torch.Tensor):
        setattr(out, _EPS, eps)
    elif isinstance(out, (list, tuple)):
        for o in out:
            _owe(o, eps)
