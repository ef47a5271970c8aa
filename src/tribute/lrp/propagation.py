"""The relevance handler of LRP: one :class:`Propagation` per forward pass (Bach et al. 2015; Montavon et al. 2019).

In LRP mode the backward signal *is* the relevance R (not relevance per unit of input as in Ancona's
modified-gradient view), so the attribution is the signal arriving at the input, with no multiplier.  The
handler sees every op on the input's path and applies the rule of the ``"lrp"`` family at it
(:mod:`tribute.lrp.ops`):

- a linear layer (conv, transposed conv, dense) z = Wx + b, called as a module or functionally, or written as a
  product with a parameter (``addmm``, ``@``, ``einsum``: :mod:`tribute.lrp.linear_forms`), redistributes R_j
  over its inputs with the rule a composite assigns it (:mod:`tribute.lrp.rules`);
- batch norm right after a linear layer whose output nothing else reads is merged into that layer
  (W' = W·γ/σ, b' = (b − μ)·γ/σ + β) and passes relevance unchanged; the model is not modified (from an
  explainer's second call on, such layers run with W', b' and the batch-norm op is skipped:
  :mod:`tribute.lrp.merge_plan`);
- every other op that is linear or affine in the input's path — residual additions, means, average
  pooling, scaling, unmerged batch norm — splits relevance in proportion to the contributions of its
  inputs (the "Norm" rule R_i = x_i Σ_j ∂z_j/∂x_i R_j / z_j, stabilised), so an addition x + y gives
  x/(x+y) and y/(x+y) of the relevance to each branch, however the addition is written;
- a product of two tensors on the path gives a gate nothing and the signals equal shares (:mod:`tribute.lrp.gates`:
  signal-take-all, Arras et al. 2017; AttnLRP's uniform rule, Achtibat et al. 2024); softmax and the
  normalisations take the rules of :mod:`tribute.lrp.attention` (CP-LRP or AttnLRP; 1/σ held constant);
- with :attr:`Propagation.absorbed`, the relevance that constants take (biases, β, embeddings added on the path, a
  class token) is counted per sample (:mod:`tribute.lrp.absorbed`);
- elementwise nonlinearities y = f(z) pass relevance unchanged where f(0) = 0, and R_y·(f(z) − f(0))/f(z) where
  f(0) ≠ 0, f(0) counted as an absorbed bias (:class:`tribute.lrp.rules.PassRelevance`); reshapes,
  concatenations and indexing move it;
  max pooling routes it to the selected entry (its gradient).

Tensors the rules read backward are kept by reference (:class:`tribute.lrp.kept.Kept`) and copied only
before an in-place op writes them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.interception import op_key
from ..core.rule_registry import rule_table
from .absorbed import Absorbed
from .attention import joins_constants, move_with_constants
from .gates import among, factors, gates_only, gates_only_on_path, made_gate, mark_gate
from .kept import Kept
from .layer_call import LayerCall, PassFacts, parse_linear
from .linear_forms import added_bias
from .merge_plan import Merge, MergePlan, Replan, batch_norm_affine, batch_norm_arguments, has_forward_hooks
from .nodes import BatchNormFunction, LinearLayerFunction, NormFunction, elementwise_vjp
from .ops import FAMILY
from .rules import norm_stabilizer
from .weight_cache import WeightCache

if TYPE_CHECKING:
    from .composites import Composite


@contextlib.contextmanager
def modules_of_this_thread(stack: list[nn.Module]):
    """Context: ``stack`` holds the modules running in the calling thread, innermost last.

    Module hooks are process-wide; a call from another thread (another model, or this one) is not this
    pass's, so the hooks ignore it."""
    owner = threading.get_ident()

    def push(module, args):
        if threading.get_ident() == owner:
            stack.append(module)

    def pop(module, args, out):
        if threading.get_ident() == owner and stack and stack[-1] is module:
            stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(push)
    post = nn.modules.module.register_module_forward_hook(pop, always_call=True)
    try:
        yield
    finally:
        pre.remove()
        post.remove()
        stack.clear()


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


_LINEAR_NODE = LinearLayerFunction._backward_cls  # a linear layer's node in the autograd graph
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

    form = "relevance"  # the backward signal is the relevance itself (rules with two forms read this)

    def __init__(self, composite: Composite, names: dict[int, str] | None = None,
                 cache: WeightCache | None = None, plan: MergePlan | None = None):
        self.composite = composite
        self.table = rule_table(FAMILY)  # op → rule, read once per op (tribute.lrp.ops)
        self.names = names or {}  # id(module) → name
        self.cache = None if cache is None else cache.for_pass()  # every layer's samples compared at once
        # where batch norm merged last time (tribute.lrp.merge_plan); merged weights live in the cache
        self.plan = plan if cache is not None else None
        self.merges: dict[int, Merge] = {}  # this pass's merges: the next plan
        self._norms: list[tuple[LayerCall, Merge]] = []  # batch norms right after a layer, merged if sole reader
        self.facts = PassFacts()
        self.count = 0
        self.module_stack: list[nn.Module] = []
        self.unruled: list[str] = self.facts.plain  # ops with no rule that made tensors (plain gradient)
        self._kept: dict[int, list[Kept]] = {}  # storage address → tensors kept by reference there
        self._rectifying: list[Kept] = []  # kept tensors a ReLU is writing in place right now
        # several inputs: the autograd edge of each unpacked input → its position, and those whose first layer is
        # still to come (see inputs_unpacked)
        self._inputs: dict[tuple, int] | None = None
        self._unclaimed: set[int] = set()
        #: where constant leaves' relevance is counted (:mod:`tribute.lrp.absorbed`; None: not counted)
        self.absorbed: Absorbed | None = None
        #: how attention's softmax is treated: "cp" (its output a gate, held constant) or "attnlrp"
        #: (:mod:`tribute.lrp.attention`)
        self.attention = "cp"
        #: the ε of stab_ε at the Norm rule's ops (:class:`tribute.lrp.Composite`'s ``stabilizer``)
        self.stabilizer = norm_stabilizer(composite)

    def inputs_unpacked(self, inputs: tuple[torch.Tensor, ...]) -> None:
        """The forward pass unpacked several inputs from the packed rows (:mod:`tribute.core.inputs`): from now on
        a layer is first when it is the first linear layer on one of these inputs' paths, so a composite's
        first-layer rule meets every input's first layer (an image's first convolution and a table's first dense
        layer), not only the first layer called."""
        self._inputs = {(t.grad_fn, t.output_nr): k for k, t in enumerate(inputs) if t.grad_fn is not None}
        self._unclaimed = set(self._inputs.values())

    def _first_of_inputs(self, x: torch.Tensor) -> bool:
        """Whether the layer reading ``x`` is the first linear layer on the path of an input not yet claimed by
        one: the inputs ``x`` is computed from through no linear layer (a walk up its autograd graph that stops
        at linear layers, whose inputs earlier layers have claimed)."""
        if not self._unclaimed:
            return False
        reached: set[int] = set()
        todo, seen = [(x.grad_fn, x.output_nr)], set()
        while todo:
            edge = todo.pop()
            k = self._inputs.get(edge)
            if k is not None:
                reached.add(k)
                continue
            node = edge[0]
            if node is None or node in seen or isinstance(node, _LINEAR_NODE):
                continue
            seen.add(node)
            todo.extend(node.next_functions)
        claimed = reached & self._unclaimed
        self._unclaimed -= claimed
        return bool(claimed)

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
        """Context: keep a stack of the modules this thread runs, so composites can address layers by name."""
        # hooks would see a planned layer's merged output (no merge planned: nothing to see, and no walk of the model)
        if self.plan is not None and self.plan.merges and has_forward_hooks(model):
            self.plan = None
        if not self.composite.needs_modules():  # global module hooks slow every module call down
            return contextlib.nullcontext()
        self.names = {id(m): n for n, m in model.named_modules()} if isinstance(model, nn.Module) else {}
        return modules_of_this_thread(self.module_stack)

    def count_consumers(self, args, kwargs, tagged: Callable[[Any], bool]) -> None:
        """Note every read of a linear layer's output (batch norm merges only into a sole reader's layer)
        and of its merged output."""
        for a in (*args, *kwargs.values()) if kwargs else args:
            if isinstance(a, (list, tuple)):
                self.count_consumers(a, {}, tagged)
            elif tagged(a):
                self._read(a, relu=False)

    def made_by_nonlinearity(self, y: torch.Tensor, name: str) -> None:
        """A nonlinearity made ``y`` (in place or not): a ReLU's output is ≥ 0 until something writes it; a
        sigmoid's (and the others of :mod:`tribute.lrp.gates`) is a gate."""
        if name == "relu":
            setattr(y, _NONNEGATIVE, y._version)
        else:
            mark_gate(y, made_gate(name))
        for k in self._rectifying:  # what a ReLU just wrote in place of a kept tensor is kept now
            k.version = k.tensor._version
            self._kept.setdefault(_storage(k.tensor), []).append(k)
        self._rectifying.clear()

    def read_by_nonlinearity(self, z: torch.Tensor, name: str) -> None:
        """A nonlinearity reads ``z`` (before an in-place call writes it)."""
        if name != "relu":
            self.facts.proportional = False  # not shown to give no relevance where z ≤ 0 (a rule may not say so)
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
        """The op's output under its rule in the family's table (:mod:`tribute.lrp.ops`), or ``NotImplemented``
        to run it plainly (moves, max pooling, and ops with no rule, which :attr:`unruled` lists)."""
        rule = self.table.get(op_key(name))
        if rule is None:
            self.unruled.append(name)
            return NotImplemented
        return rule.apply(self, func, args, kwargs, tagged, name)

    def linear(self, func, args, kwargs, tagged, name):
        """A linear layer's call (conv, transposed conv, ``F.linear``) under the rule its composite assigns it."""
        parsed = parse_linear(func, args, kwargs)
        if parsed is None:
            self.unruled.append(name)
            return NotImplemented
        return self.layer(parsed, args, kwargs, tagged, name)

    def layer(self, parsed, args, kwargs, tagged, name):
        """The layer ``parsed`` (kind, x, W, b, op: :func:`parse_linear`,
        :func:`tribute.lrp.linear_forms.parse_product`) under the rule its composite assigns it."""
        kind, x, w, b, op = parsed
        if not tagged(x) or tagged(w) or tagged(b):  # a weight computed from the input: plain gradient
            self.unruled.append(name)
            return NotImplemented
        self.count_consumers(args, kwargs, tagged)
        module = self.module_stack[-1] if self.module_stack else None
        found = None if self.plan is None or not op.mergeable else \
            self.plan.planned(self.count, kind, op.groups, w, b, self.cache)
        pending = None
        if found is not None:  # a layer with batch norm merged, run so: its output is batch norm's
            self.cache.discard((w, b), tag=op.cache_tag)  # what its rules derived from W unmerged
            pending, (w, b), _ = found
        layer = LayerCall(kind, op, w, b, self.count, self.names.get(id(module), ""), module,
                          cache=self.cache, facts=self.facts, pending=pending, planned=pending is not None,
                          first_of_input=None if self._inputs is None else self._first_of_inputs(x),
                          absorbed=self.absorbed)
        self.count += 1
        rule = self.composite.rule(layer)
        layer.nonnegative_input = _made_here(x, _NONNEGATIVE, lambda v: v) is not None
        if not (layer.first or getattr(rule, "proportional", False)):
            self.facts.proportional = False
        y = LinearLayerFunction.apply(x, layer, rule, self.keep)
        setattr(y, _LAYER, layer)
        layer.z_version = y._version
        if op.fuses_bias and b is None:  # a bias added right after may join it (see _fused_bias)
            layer.input = x
        return y

    def _fused_bias(self, rule, args, kwargs, tagged) -> torch.Tensor | None:
        """z + b where z is the output of a product without a bias (:mod:`tribute.lrp.linear_forms`), nothing has
        read it yet and b is a bias: the layer with that bias, computed again from its input, under its rule (z's
        own node then receives relevance only from later readers of z, if any)."""
        if rule.inplace:
            return None
        found = added_bias(rule.base, args, kwargs, tagged)
        if found is None:
            return None
        z, b = found
        layer = _made_here(z, _LAYER, lambda m: m.z_version)
        if layer is None or layer.input is None or layer.consumers or layer.bn is not None:
            return None
        layer.consumers += 1  # this addition read z
        fused = layer.with_bias(b)
        x, layer.input = layer.input, None
        return self._run_fused(fused, x)

    def _run_fused(self, fused: LayerCall, x: torch.Tensor) -> torch.Tensor:
        y = LinearLayerFunction.apply(x, fused, self.composite.rule(fused), self.keep)
        setattr(y, _LAYER, fused)
        fused.z_version = y._version
        return y

    @staticmethod
    def hold(t: torch.Tensor) -> torch.Tensor:
        """A factor the relevance form holds constant (a normalisation's 1/σ): detached."""
        return t.detach()

    def affine(self, op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``op(x)`` for ``op`` affine in ``x``, under the Norm rule (with its constant's share counted)."""
        self.count_consumers((x,), {}, lambda a: a is x)
        out = self._proportional(op, (x,), {}, lambda a: a is x)
        setattr(out, _NORM, out._version)
        return out

    def no_rule(self, func, args, kwargs, tagged, name):
        """An op the family has no rule for in this form: its plain gradient, listed in :attr:`unruled`."""
        self.unruled.append(name)
        return NotImplemented

    def move(self, func, args, kwargs, tagged, name):
        """An op that moves entries: its own gradient moves the relevance (``NotImplemented``: run plainly), a move
        of gates is a gate, and with constants joining the path (a class token concatenated) their share is counted
        if :attr:`absorbed` is on (:func:`tribute.lrp.attention.move_with_constants`)."""
        strength = gates_only_on_path(args, kwargs, tagged)
        if self.absorbed is not None and not strength and joins_constants(name, args, kwargs, tagged):
            if name.endswith("_") and args:
                return self._fill_in_place(name, args, kwargs, tagged)
            return move_with_constants(func, args, kwargs, tagged, self.absorbed)
        if not strength:
            return NotImplemented
        if name.endswith("_") and args:  # masked_fill_ of a gate: what is kept of it is copied first
            self.before_write(args[0])
        out = func(*args, **kwargs)
        mark_gate(out, strength)
        return out

    def _fill_in_place(self, name, args, kwargs, tagged) -> torch.Tensor:
        """``t.masked_fill_(mask, c)`` with the constant's share counted: the fill computed out of place from a copy
        of t (relevance by its gradient, what reaches the filled entries counted, as for ``masked_fill``), then written
        into t, which keeps its identity.  The copy, not t, is what the backward pass reads: t's old values are
        overwritten, and what else kept them by reference is copied first (:meth:`before_write`)."""
        target = args[0]
        if not tagged(target):  # a constant filled with a value on the path: no such move is known
            raise TypeError(f"{name} writes a value on the input's path into a tensor off it; LRP has no rule for it")
        self.before_write(target)
        source = target.clone()
        fill = getattr(torch, name.rsplit(".", 1)[-1].rstrip("_"))
        on_path = lambda a: a is source or (a is not target and tagged(a))  # noqa: E731 (a fill value on the path)
        out = move_with_constants(fill, (source, *args[1:]), kwargs, on_path, self.absorbed)
        return target.copy_(out)

    def proportional(self, func, args, kwargs, tagged, name, rule):
        """An op linear in its inputs on the input's path, under the Norm rule (``rule``: a
        :class:`tribute.lrp.ops.Proportional`)."""
        fused = self._fused_bias(rule, args, kwargs, tagged)
        if fused is not None:
            return fused
        on_path = [a for a in list(args) + list(kwargs.values()) if tagged(a)]
        # no tagged argument: the input's path runs through a list argument this rule cannot split
        if not on_path:
            self.unruled.append(name)
            return NotImplemented
        strength, share, inputs, held = gates_only(on_path), 1.0, tagged, ()
        if rule.bilinear:  # a product: gates held constant (signal-take-all), the signals share it uniformly
            signals, gates = factors(rule.base, args, kwargs, tagged)
            if not signals:  # c / b with only the divisor on the path: no linear map of it (plain gradient, listed)
                self.unruled.append(name)
                return NotImplemented
            if gates or len(signals) > 1:
                share, inputs, held = 1.0 / len(signals), among(signals), gates
        self.count_consumers(args, kwargs, tagged)  # before an in-place op writes its first input
        additive = rule.base == "add" and len(args) == 2 and not kwargs and len(on_path) == 2 and \
            args[0].shape == args[1].shape
        if rule.inplace and inputs(args[0]):  # written in place by the Norm rule's node, which keeps the old value
            out = self._proportional(getattr(torch, rule.base), args, kwargs, inputs, inplace_func=func,
                                     additive=additive, share=share, held=held)
        elif rule.inplace:  # args[0] is not on the input's path: write the result into it
            self.before_write(args[0])
            out = args[0].copy_(self._proportional(getattr(torch, rule.base), args, kwargs, inputs, share=share,
                                                   held=held))
        else:
            out = self._proportional(func, args, kwargs, inputs, additive=additive, share=share, held=held,
                                     base=rule.base)
        setattr(out, _NORM, out._version)
        mark_gate(out, strength)  # an affine map of gates (1 + tanh(u), 0.5·g) is a gate
        return out

    def _proportional(self, func, args, kwargs, tagged, inplace_func=None, additive: bool = False,
                      share: float = 1.0, held=(), base: str | None = None):
        """The op under the Norm rule; ``inplace_func`` (the op's in-place form, writing into ``args[0]``)
        is used when ``args[0]`` is on the input's path.  ``additive``: the op is a + b, same shapes.  ``share``:
        the part of each input's Norm-rule relevance it gets (AttnLRP's uniform rule, :class:`NormFunction`).
        ``held``: gates among the other arguments (held constant), which must not change before the backward pass
        reads them again.  ``base``: the op's name (an addition or product with a constant takes a closed form
        backward, :func:`tribute.lrp.nodes.elementwise_vjp`)."""
        versions = [(g, g._version) for g in held]
        positions = [i for i, a in enumerate(args) if tagged(a)]
        keys = [k for k, v in kwargs.items() if tagged(v)]
        inputs = [args[i] for i in positions] + [kwargs[k] for k in keys]
        # the closures keep the other arguments only: holding the inputs would make a reference cycle
        # (output → its backward node → closure → input, which for ``x += y`` is the output itself)
        rest = [None if i in positions else a for i, a in enumerate(args)]
        rest_kw = {k: None if k in keys else v for k, v in kwargs.items()}

        def with_inputs(f):
            def call(*xs):
                if any(g._version != v for g, v in versions):
                    raise RuntimeError("a gate held constant in a product was written in place before the backward "
                                       "pass: its relevance would be computed from the new values")
                a, kw = list(rest), dict(rest_kw)
                for i, v in zip(positions, xs[: len(positions)], strict=True):
                    a[i] = v
                for k, v in zip(keys, xs[len(positions):], strict=True):
                    kw[k] = v
                return f(*a, **kw)
            return call

        inplace = with_inputs(inplace_func) if inplace_func is not None and positions[:1] == [0] else None
        absorbed = None if additive else self.absorbed
        vjp = None if inplace is not None or base is None else elementwise_vjp(base, args, kwargs, tagged)
        return NormFunction.apply(with_inputs(func), self, inplace, additive, share, absorbed, vjp, *inputs)

    def batch_norm(self, func, args, kwargs, tagged):
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
        if layer is not None and not layer.op.merges_norm(z):  # it normalises another axis than the layer's outputs
            layer = None
        if layer is not None:
            layer.bn = (scale, shift)  # merged at backward time if nothing else read the layer's output
            if self.plan is not None:
                self._norms.append((layer, Merge(layer.weight, layer.bias, p)))
        else:  # not right after a linear layer: an affine map with the Norm rule
            layer = LayerCall("none", lambda *a: None, scale, None, -1, "", None)
        out = BatchNormFunction.apply(z, layer, scale, shift, self.keep, self.absorbed, self.stabilizer)
        if layer.index >= 0:
            setattr(out, _OUT, layer)
            layer.out_version = out._version
            # the merged layer's output: γ and αβ read it; kept by reference (an in-place ReLU that is its only
            # reader drops it rather than copying it: then the rule reads z > 0 only, or recomputes it)
            layer.out_kept = self.keep(out, unneeded=layer.sole_relu_read)
        else:
            setattr(out, _NORM, out._version)
        return out

