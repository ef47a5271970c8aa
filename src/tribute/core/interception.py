"""Route nonlinearity calls through rules with a ``TorchFunctionMode``.

Module hooks see modules, but a model may call ``F.relu``, ``Tensor.relu`` or reuse one in-place
``nn.ReLU`` many times.  A torch-function mode sees every function call, whatever module or code made
it, so one rule set applies identically to every way of writing the same architecture.

Rules act only on tensors *derived from the input*: the mode tags the input and every tensor computed
from a tagged tensor, so parameter-only computations (``logit_scale.exp()``) keep their plain forward
and backward.  The tags also give a coverage report: every op on the input's path, and which of them
are nonlinear with no rule.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode, resolve_name

from .attention import BY_PARTS
from .nonlinearities import call_form, writes_inplace_by_argument
from .rules import Phase, RuleSet

_TAG = "_tribute_path"
_state = threading.local()


def _active() -> list[RuleMode]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


# Ops on the input's path that need no rule: linear in the input (given the parameters) or structural.
# Max pooling and other "switch" ops route the gradient to the selected entry; that is documented as
# their rule (the choice DeepLIFT's authors make for max pooling in the Rescale rule's absence).
_LINEAR_SUFFIXES = {
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
    "add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "__isub__", "sub_",
    "neg", "__neg__", "sum", "mean", "cat", "concat", "concatenate", "stack", "hstack", "vstack",
    "reshape", "view", "view_as", "flatten", "unflatten", "permute", "transpose", "t", "T", "mT", "contiguous",
    "squeeze", "unsqueeze", "expand", "expand_as", "__getitem__", "chunk", "split", "narrow", "select",
    "pad", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "batch_norm", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "clone", "to", "float", "double", "half", "type_as", "detach", "copy_",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "interpolate", "upsample", "flip", "roll", "repeat", "tile", "gather", "index_select", "movedim",
    "unbind", "__setitem__", "zero_", "fill_", "masked_fill", "masked_fill_", "cumsum",
    "pixel_shuffle", "pixel_unshuffle", "unfold", "fold", "real", "requires_grad_", "where",
}
#: the ops linear or structural in their arguments on the input's path, whichever those are (no rule needed)
LINEAR_OPS = frozenset(_LINEAR_SUFFIXES)
# Ops whose result carries no value of the input's that a gradient could follow: comparisons and masks, indices,
# piecewise-constant roundings (zero gradient almost everywhere) and tensors that take only the input's shape.
# They run plainly, their results stay off the input's path, and they never count as ops without a rule.
_VALUELESS_SUFFIXES = {
    "gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal", "not_equal", "equal",
    "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__", "isnan", "isinf", "isfinite", "isclose", "allclose",
    "isposinf", "isneginf", "signbit", "logical_and", "logical_or", "logical_not", "logical_xor",
    "argmax", "argmin", "argsort", "argwhere", "nonzero", "bucketize", "searchsorted", "sign", "sgn",
    "round", "floor", "ceil", "trunc", "fix", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
    "randn_like", "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "bernoulli",
    "__int__", "__float__", "__bool__", "__index__", "item", "tolist", "long", "int", "bool", "short", "byte",
}
# Binary ops that are linear when only one operand lies on the input's path.
_BILINEAR_SUFFIXES = {
    "mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__", "__itruediv__", "div_",
    "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "baddbmm", "einsum", "true_divide", "divide",
}
# Divisions among them: linear in the numerator only (x / y is no linear function of y).
_DIVISIONS = {"div", "__truediv__", "__itruediv__", "div_", "true_divide", "divide"}


# Reductions that select one entry (``x.max(dim)``), switches like max pooling, when they take one tensor alone;
# ``torch.max(a, b)`` of two tensors is a nonlinearity (ReLU(a − b) + b).
_SELECTING_SUFFIXES = {"max", "min", "amax", "amin", "median", "nanmedian", "kthvalue", "topk", "sort", "cummax",
                       "cummin"}
# Ops that leave the input's path in place but carry no gradient to be plain about: ``x.data`` (detached) and
# overwrites with a constant.
_UNCOUNTED_NAMES = {"torch.Tensor.data.__get__", "torch.Tensor.zero_", "torch.Tensor.fill_", "torch.Tensor.detach_"}


_KEYS: dict[str, str] = {}


def op_key(name: str) -> str:
    """The part of an op's name that rule tables are keyed by: the last one (``torch.Tensor.transpose`` →
    ``transpose``), or the property for a property getter (``torch.Tensor.T.__get__`` → ``T``).  Remembered:
    the op handlers ask it for every op on the input's path."""
    try:
        return _KEYS[name]
    except KeyError:
        pass
    parts = name.rsplit(".", 2)
    key = _KEYS[name] = parts[-2] if parts[-1] == "__get__" and len(parts) > 1 else parts[-1]
    return key


def linear_on_path(op: str, n_tagged: int, n_tensors: int | None = None, *, denominator: bool = False) -> bool:
    """Whether the op named ``op`` (the last part of its name) needs no rule when ``n_tagged`` of its tensor
    arguments (``n_tensors`` of them in all, if known) lie on the input's path: it is linear or structural in them,
    so its gradient is every family's rule.  ``denominator``: a division's divisor is on the path (then it is not
    linear; see :func:`divisor_on_path`)."""
    return op in _LINEAR_SUFFIXES or (op in _BILINEAR_SUFFIXES and n_tagged == 1 and not denominator) or (
        op in _SELECTING_SUFFIXES and n_tensors == 1)


def divisor_on_path(op: str, args: tuple, kwargs: dict, on_path) -> bool:
    """Whether ``op`` is a division whose divisor lies on the input's path (``on_path(t)``)."""
    if op not in _DIVISIONS:
        return False
    divisor = args[1] if len(args) > 1 else kwargs.get("other")
    return on_path(divisor)


def count_tensors(args, kwargs) -> int:
    """The number of tensor arguments of a call (in lists too)."""
    n = 0
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            n += 1
        elif isinstance(a, (list, tuple)):
            n += sum(isinstance(b, torch.Tensor) for b in a)
    return n


def current_phase() -> Phase | None:
    """The phase of this thread's innermost pass under rules (None outside :func:`apply_rules`): an op handler
    whose rules answer the attribution's backward pass differently from later ones reads it."""
    stack = _active()
    return stack[-1].phase if stack else None


def note_inputs(inputs: tuple[torch.Tensor, ...]) -> None:
    """Tell this thread's innermost pass under rules that ``inputs`` are the model's inputs, unpacked from the
    packed rows of several inputs (:mod:`tribute.core.inputs`).  An op handler that treats each input apart
    (LRP's composites give every input's first layer the first-layer rule) takes them as ``inputs_unpacked``."""
    stack = _active()
    hook = getattr(stack[-1].propagation, "inputs_unpacked", None) if stack else None
    if hook is not None:
        hook(inputs)


_NAMES: dict = {}


def op_name(func) -> str:
    """``torch.overrides.resolve_name(func)``, remembered: torch's resets the warning filters on every call,
    which cost about 1 ms per batch-1 ResNet-18 pass when asked for every op."""
    try:
        return _NAMES[func]
    except KeyError:
        name = resolve_name(func) or getattr(func, "__name__", None) or repr(func)
    except TypeError:  # an unhashable callable
        return resolve_name(func) or getattr(func, "__name__", None) or repr(func)
    _NAMES[func] = name
    return name


# Queries that read a tensor's metadata, never its values: answered without looking at the call (batch norm
# alone asks ``input.dim()`` once per layer).
_METADATA = frozenset({
    torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.stride, torch.Tensor.is_contiguous,
    torch.Tensor.ndimension, torch.Tensor.nelement, torch.Tensor.element_size, torch.Tensor.is_floating_point,
    torch.Tensor.is_complex, torch.Tensor.storage_offset,
    *(getattr(torch.Tensor, a).__get__ for a in ("shape", "ndim", "dtype", "device", "is_cuda", "layout",
                                                  "requires_grad", "is_sparse", "is_quantized", "is_meta")),
})


class OpFacts:
    """What the mode needs to know of a function whatever its arguments, decided once per function object (the
    mode asks for every op on the input's path): its name, the keys rule tables use, whether its results stay off
    the path (:data:`_VALUELESS_SUFFIXES`), whether it is linear or structural in any arguments
    (:data:`_LINEAR_SUFFIXES`: no need to count them) and whether its name says it writes in place."""

    __slots__ = ("name", "key", "last", "valueless", "always_linear", "inplace_by_name")

    def __init__(self, func):
        self.name = name = op_name(func)
        self.key = key = op_key(name)
        self.last = last = name.rsplit(".", 1)[-1]  # the key of FamilyPass.handle (no property unwrapping)
        self.valueless = last in _VALUELESS_SUFFIXES
        self.always_linear = key in _LINEAR_SUFFIXES or name in _UNCOUNTED_NAMES
        self.inplace_by_name = (key.endswith("_") and not key.startswith("__")) or key == "__setitem__" or (
            key.startswith("__i") and key.endswith("__") and key not in ("__init__", "__index__", "__int__",
                                                                          "__invert__", "__iter__"))


_FACTS: dict = {}


def op_facts(func) -> OpFacts:
    """The :class:`OpFacts` of ``func``, remembered per function object."""
    try:
        return _FACTS[func]
    except KeyError:
        facts = _FACTS[func] = OpFacts(func)
        return facts
    except TypeError:  # an unhashable callable
        return OpFacts(func)


def _holds_float(out) -> bool:
    """Whether ``out`` holds a floating-point tensor: integer and boolean results carry no gradient."""
    if isinstance(out, torch.Tensor):
        return out.is_floating_point() or out.is_complex()
    return isinstance(out, (list, tuple)) and any(_holds_float(o) for o in out)


def _tagged(x, token) -> bool:
    return isinstance(x, torch.Tensor) and getattr(x, _TAG, None) is token


def _any_tagged(args, kwargs, token) -> bool:
    """Whether an argument is tagged (stops at the first: every op on the path asks this)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            if getattr(a, _TAG, None) is token:
                return True
        elif isinstance(a, (list, tuple)) and any(_tagged(b, token) for b in a):
            return True
    return any(_tagged(a, token) for a in kwargs.values()) if kwargs else False


def _count_tagged(args, kwargs, token) -> int:
    n = 0
    for a in args:
        if isinstance(a, torch.Tensor):
            n += getattr(a, _TAG, None) is token
        elif isinstance(a, (list, tuple)):
            n += sum(_tagged(b, token) for b in a)
    for a in kwargs.values():
        n += _tagged(a, token)
    return n


def _tag(out, token) -> None:
    if isinstance(out, torch.Tensor):
        try:
            setattr(out, _TAG, token)
        except (AttributeError, RuntimeError):  # some tensor subclasses refuse attributes
            pass
    elif isinstance(out, (list, tuple)):
        for o in out:
            _tag(o, token)


def _written(facts: OpFacts, args, kwargs, func=None):
    """The tensor an in-place op writes into, or None: every spelling, ``x.add_``, ``x += y``, ``x[i] = v``,
    ``out=`` and an ``inplace=True`` argument (``F.hardswish(x, inplace=True)``, positional in
    ``nn.Hardswish(inplace=True)``), which the name does not show."""
    if kwargs and kwargs.get("out") is not None:
        return kwargs["out"]
    inplace = facts.inplace_by_name
    if not inplace and func is not None and args:
        inplace = writes_inplace_by_argument(func, args, kwargs)
    return args[0] if inplace and args else None


def _holds_tensor(out) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, (list, tuple)) and any(isinstance(o, torch.Tensor) for o in out)


def _inside_checkpoint() -> bool:
    """Whether non-reentrant activation checkpointing is packing saved tensors right now."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None:
        return False
    hooks = top(False)
    return bool(hooks) and getattr(hooks[0], "__module__", "") == "torch.utils.checkpoint"


@dataclass
class Coverage:
    """Which ops a forward pass applied to tensors derived from the input."""

    ruled: Counter = field(default_factory=Counter)
    """nonlinearities routed through a rule of the active rule set"""
    plain: Counter = field(default_factory=Counter)
    """nonlinearities the rule set leaves at the plain gradient"""
    linear: Counter = field(default_factory=Counter)
    """linear or structural ops that need no rule"""
    unruled: Counter = field(default_factory=Counter)
    """nonlinear ops the engine has no rule for: their plain gradient is used"""
    passes: int = 0
    """forward passes that filled this record"""

    def add(self, other: Coverage) -> None:
        """Count ``other``'s ops in this record too."""
        for name in ("ruled", "plain", "linear", "unruled"):
            getattr(self, name).update(getattr(other, name))

    def __str__(self) -> str:
        lines = []
        for name in ("ruled", "plain", "linear", "unruled"):
            c = getattr(self, name)
            items = ", ".join(f"{k}×{v}" for k, v in sorted(c.items())) or "—"
            lines.append(f"{name:8s} {items}")
        return "\n".join(lines)


class RuleMode(TorchFunctionMode):
    """Apply ``rules`` to every known nonlinearity computed from the tagged input."""

    def __init__(self, rules: RuleSet, *, coverage: Coverage | None = None):
        super().__init__()
        self.rules = rules
        self.coverage = coverage
        self.token = object()  # tags from another pass never match this one
        self.phase = Phase()
        self.propagation = None
        #: ops (by the last part of their name) the handler runs plainly and notes nothing of: the mode runs them
        #: itself, without offering them to the handler (:attr:`tribute.core.family_rules.FamilyPass.plainly`)
        self._plainly: frozenset[str] = frozenset()

    def _is_tagged(self, a) -> bool:
        return isinstance(a, torch.Tensor) and getattr(a, _TAG, None) is self.token

    def on_path(self, t) -> bool:
        """Whether ``t`` was computed from this pass's tagged input (by ops the mode saw)."""
        return self._is_tagged(t)

    def tag(self, t: torch.Tensor) -> None:
        """Put ``t`` on the input's path of the current pass (e.g. a layer's replaced output)."""
        _tag(t, self.token)

    def tag_input(self, x: torch.Tensor, differentiable: bool = True) -> Phase:
        """Tag the input of one forward pass; the returned phase must be ended after its first backward.

        ``differentiable=False`` promises that the attribution will not be differentiated (rules may then
        save less).  Integer inputs (token ids) are not tagged: the input's float path starts at the layer a
        layer method replaces (tagged with :meth:`tag`)."""
        if x.is_floating_point():
            _tag(x, self.token)
        self.phase = Phase(differentiable)
        if self.rules.ops is not None:
            self.propagation = self.rules.ops.start()
            self._plainly = getattr(self.propagation, "plainly", frozenset())
        return self.phase

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:
            return func(*args, **kwargs)
        token = self.token
        if not _any_tagged(args, kwargs, token):
            return func(*args, **kwargs)
        facts = op_facts(func)
        prop = self.propagation
        if facts.valueless and prop is None:  # (an ops handler sees it below: it may count the read)
            return func(*args, **kwargs)
        form = call_form(func)
        if form is not None:
            z, params, inplace = form.parse(args, kwargs)
            if _tagged(z, token) and form.accepts(params):
                return self._nonlinearity(form.nonlinearity, z, params, inplace)
        if prop is not None and facts.last not in self._plainly:
            return self._handled(prop, func, facts, args, kwargs)
        # no handler, or one that runs this op plainly and notes nothing (its ``plainly``): run it, tag its result
        out = func(*args, **kwargs)
        if not _holds_float(out):  # metadata, integers, booleans: no gradient to be plain about
            return out
        _tag(out, token)
        if self.coverage is not None:
            if prop is None:
                self._record(facts, args, kwargs)
            else:
                self.coverage.linear[facts.name] += 1
        return out

    def _handled(self, prop, func, facts: OpFacts, args: tuple, kwargs: dict):
        """An op on the input's path offered to the pass's op handler, which runs it under its family's rule or
        answers ``NotImplemented``: then it runs plainly here, the handler told of its writes and reads."""
        parts = BY_PARTS.get(func)
        if parts is not None:  # fused attention: its parts meet their rules
            with self:
                return parts(*args, **kwargs)
        name, tagged = facts.name, self._is_tagged
        n_unruled = len(prop.unruled)
        out = prop.handle(func, args, kwargs, tagged, name)  # counts the reads of what it handles
        if out is not NotImplemented:
            _tag(out, self.token)
            if self.coverage is not None:
                plain = getattr(prop, "gradient_form", False)  # the op's gradient, computed faster
                (self.coverage.linear if plain else self.coverage.ruled)[name] += 1
            return out
        unruled = len(prop.unruled) > n_unruled
        written = _written(facts, args, kwargs, func)
        if written is not None:
            prop.before_write(written)
        out = func(*args, **kwargs)
        if _holds_tensor(out):  # metadata queries (x.dim(), x.shape) read no values
            prop.count_consumers(args, kwargs, tagged)
        if facts.valueless or not _holds_float(out):  # metadata, integers, booleans: no gradient to be plain about
            if unruled:
                prop.unruled.pop()
            return out
        _tag(out, self.token)
        if self.coverage is not None:
            counted = unruled and name not in _UNCOUNTED_NAMES
            (self.coverage.unruled if counted else self.coverage.linear)[name] += 1
        return out

    def _nonlinearity(self, nl, z, params, inplace):
        if not torch.is_grad_enabled():
            raise RuntimeError(
                f"{nl.name} on the input's path ran with gradients disabled: the engine cannot apply "
                "its rule there. Reentrant activation checkpointing (use_reentrant=True) and "
                "torch.no_grad() inside forward() hide the path from autograd; use "
                "torch.utils.checkpoint(..., use_reentrant=False) or remove the no_grad block."
            )
        rule = self.rules.rule_for(nl, params)
        if rule is not None and _inside_checkpoint():
            raise RuntimeError(
                f"{nl.name} on the input's path runs inside torch.utils.checkpoint: checkpointing recomputes "
                "forward() during the backward pass, outside the engine's interception, so the "
                f"{self.rules.name} rule would silently be lost. Attribute a model without activation "
                "checkpointing"
            )
        if self.coverage is not None:
            (self.coverage.ruled if rule is not None else self.coverage.plain)[nl.name] += 1
        read = getattr(self.propagation, "read_by_nonlinearity", None)
        if read is not None:
            read(z, nl.name)
        if rule is not None and inplace:
            if self.propagation is not None:
                self.propagation.before_write(z, writer=nl.name)
            if rule.apply_inplace(nl, z, params, self.phase):
                _tag(z, self.token)
                self._made(z, nl)
                return z
        if rule is None:
            # out of place on a copy: the plain backward saves its input (SiLU's z), which the write below
            # would overwrite under autograd
            y = nl(z.clone() if inplace else z, **params)
        else:
            # an in-place call may not overwrite a tensor the rule saved: give the rule a copy
            src = z.clone() if (inplace and rule.keeps_input(self.phase)) else z
            y = rule.apply(nl, src, params, self.phase)
        if inplace:
            if self.propagation is not None:
                self.propagation.before_write(z, writer=nl.name)
            z.copy_(y)
            y = z
        _tag(y, self.token)
        self._made(y, nl)
        return y

    def _made(self, y, nl) -> None:
        made = getattr(self.propagation, "made_by_nonlinearity", None)
        if made is not None:
            made(y, nl.name)

    def _record(self, facts: OpFacts, args: tuple, kwargs: dict) -> None:
        if facts.always_linear:  # whatever its arguments: no need to count them
            self.coverage.linear[facts.name] += 1
            return
        op = facts.key
        divisor = divisor_on_path(op, args, kwargs, self._is_tagged)
        linear = linear_on_path(op, _count_tagged(args, kwargs, self.token), count_tensors(args, kwargs),
                                denominator=divisor)
        (self.coverage.linear if linear else self.coverage.unruled)[facts.name] += 1


@contextmanager
def apply_rules(rules: RuleSet, *, coverage: Coverage | None = None) -> Iterator[RuleMode]:
    """Context in which ``rules`` apply to tensors derived from inputs tagged with ``mode.tag_input``.

    Nesting the same rule set composes (the inner context reuses the outer one); a different rule set
    inside an active one is an error, since one backward pass cannot follow two rules at once.
    ``coverage``, if given, is filled with the ops the pass applied to the input's path.
    """
    stack = _active()
    if stack:
        outer = stack[-1]
        if outer.rules != rules:
            raise RuntimeError(
                f"conflicting rule sets in one pass: {rules.name!r} requested inside {outer.rules.name!r}"
            )
        # the inner pass's ops go to both records: the inner caller checks its own (a method's strictness)
        prev, fresh = outer.coverage, Coverage()
        outer.coverage = fresh
        try:
            yield outer
        finally:
            outer.coverage = prev
            for c in (prev, coverage):
                if c is not None:
                    c.add(fresh)
        return
    mode = RuleMode(rules, coverage=coverage)
    stack.append(mode)
    try:
        with mode:
            yield mode
    finally:
        stack.pop()
