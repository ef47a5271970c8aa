"""DeepLIFT at products and quotients of two tensors on the input's path: exact multipliers, Shapley-split.

Input and reference run as one batch of 2N rows (inputs first), so a rule finds the reference of every row
in the other half (:func:`halves`).  Let y = B(a, b) be *separately affine* in its two operands on the path
(bilinear plus terms linear in one of them: a·b, a @ b, ``einsum``, ``addmm``, ``baddbmm``).  Then, with
a_mid = (a + ā)/2 and Δa = a − ā against the reference (likewise for b),

    B(a, b) − B(ā, b̄) = B(Δa, b_mid) + B(a_mid, Δb)            (for B bilinear; affine terms add Δ linearly)

holds exactly, so the multiplier of a is the vector–Jacobian product of B(·, b_mid) and that of b the one of
B(a_mid, ·) (:class:`BilinearRule`).  For the elementwise product this is Δ(ab) = ½(b + b̄)Δa + ½(a + ā)Δb,
the Shapley values of the two factors: each takes its own term and half the interaction ΔaΔb, as Deep SHAP
composes DeepLIFT's multipliers with the Shapley values of small components (Lundberg & Lee 2017, §4.2).

A quotient a / b with the divisor on the path is a · (1/b) with DeepLIFT's exact multiplier for the reciprocal,
the secant (1/b − 1/b̄)/(b − b̄) = −1/(b·b̄), which is −1/b² where b = b̄ (:class:`QuotientRule`).  An op with
one operand on the path (c·a, a @ W, a / c) is linear there: its gradient is the rule, and the rule steps aside.

The rules answer the attribution's backward pass with these multipliers and any later one (derivatives of the
attribution, ``differentiable=True``) with the true derivatives (see :class:`tribute.core.rules.Phase`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.rule_registry import OpRule

#: separately affine in any two tensor operands: the generic bilinear rule serves them
BILINEAR = ("mul", "__mul__", "__rmul__", "multiply", "mul_", "__imul__", "matmul", "__matmul__", "__rmatmul__",
            "mm", "bmm", "einsum", "addmm", "baddbmm")
#: divisions: linear in the numerator, nonlinear in the divisor
QUOTIENTS = ("div", "__truediv__", "true_divide", "divide", "div_", "__itruediv__", "__rtruediv__")
# c + a·b: the input added may be a third operand on the path (it enters linearly)
_ADDED_INPUT = ("addmm", "baddbmm")
# in-place spellings and the out-of-place op the rules compute before writing back
_OUT_OF_PLACE = {"mul_": torch.mul, "__imul__": torch.mul, "div_": torch.div, "__itruediv__": torch.div}


def call_arg(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of an intercepted call, given at ``position`` or by keyword."""
    return args[position] if len(args) > position else kwargs.get(name, default)


def check_pairs(t: torch.Tensor, what: str) -> None:
    """Refuse a tensor on the input's path that is not a batch of 2N rows (inputs, then their references)."""
    if t.dim() == 0 or t.shape[0] % 2:
        raise ValueError(
            f"DeepLIFT runs inputs and references as one batch of 2N rows, but a {what} received a tensor of shape "
            f"{tuple(t.shape)}: the model must keep the batch as the first dimension"
        )


def halves(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs' rows, references' rows) of a 2N-row batch."""
    return t.chunk(2)


def midpoint(t: torch.Tensor) -> torch.Tensor:
    """(t + t̄)/2 in both halves of a 2N-row batch: the value halfway between each input row and its reference."""
    x, r = halves(t)
    m = torch.add(x, r).mul_(0.5)  # (x + r)/2 to the bit, one buffer
    return torch.cat([m, m])


def in_attribution_pass(phase: Any) -> bool:
    """Whether a backward call is the attribution's own (rule multipliers) rather than a later one (f')."""
    return phase is None or phase.first_order


class Call:
    """One op call with its tensors on the path taken out: ``call(t₁, t₂)`` runs it with them put back.

    ``slots`` locate them: ``(i,)`` is ``args[i]``, ``(i, j)`` item j of a list argument (``einsum(eq, [a, b])``),
    ``(key,)`` a keyword argument."""

    def __init__(self, func: Callable, args: tuple, kwargs: dict, slots: list[tuple], kind: str | None = None):
        self.func, self.args, self.kwargs, self.slots = func, args, kwargs, slots
        #: "mul" (a·b) or "matmul" (a @ b, both at least 2-D) where the rule writes the VJPs out
        self.kind = kind

    def __call__(self, *tensors: torch.Tensor) -> Any:
        args, kwargs = list(self.args), dict(self.kwargs)
        for slot, t in zip(self.slots, tensors, strict=True):
            if isinstance(slot[0], str):
                kwargs[slot[0]] = t
            elif len(slot) == 1:
                args[slot[0]] = t
            else:
                seq = list(args[slot[0]])
                seq[slot[1]] = t
                args[slot[0]] = type(args[slot[0]])(seq)
        return self.func(*args, **kwargs)

    def value(self, slot: tuple) -> Any:
        """The argument at ``slot`` as the model passed it."""
        if isinstance(slot[0], str):
            return self.kwargs[slot[0]]
        return self.args[slot[0]] if len(slot) == 1 else self.args[slot[0]][slot[1]]


def path_slots(args: tuple, kwargs: dict, tagged: Callable[[Any], bool]) -> list[tuple]:
    """Where the tensors on the input's path sit in a call (see :class:`Call`)."""
    slots: list[tuple] = []
    for i, a in enumerate(args):
        if isinstance(a, (list, tuple)):
            slots += [(i, j) for j, b in enumerate(a) if tagged(b)]
        elif tagged(a):
            slots.append((i,))
    return slots + [(k,) for k, v in kwargs.items() if tagged(v)]


def vjp(f: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """gᵀ ∂f/∂t for f affine in t (its value at ``like`` is then irrelevant); differentiable when grad mode is
    on (the attribution's backward pass run with ``create_graph``), so the multipliers can be differentiated."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaf = like.detach().requires_grad_()
        (d,) = torch.autograd.grad(f(leaf), leaf, g, create_graph=create_graph)
    return d


class _Bilinear(torch.autograd.Function):
    """y = call(*ts) forward; in the attribution's backward pass the VJP for each operand of call with the others
    at their midpoints (t + t̄)/2, in any later one with the others as they are (the true derivatives)."""

    @staticmethod
    def forward(ctx, call: Call, phase, *ts):
        ctx.call, ctx.phase = call, phase
        ctx.save_for_backward(*ts)
        return call(*ts)

    @staticmethod
    def backward(ctx, g):
        ts = ctx.saved_tensors
        kind = ctx.call.kind
        # (with create_graph, the attribution differentiated: the full product, as autograd would record it)
        if kind is not None and in_attribution_pass(ctx.phase) and not torch.is_grad_enabled() \
                and _references_silent(g, ts):
            return None, None, *_inputs_half(kind, g, ts)
        others = [midpoint(t) for t in ts] if in_attribution_pass(ctx.phase) else list(ts)
        if kind == "mul":  # the VJPs written out: no forward pass of the op again
            return None, None, (g * others[1]).sum_to_size(ts[0].shape), (g * others[0]).sum_to_size(ts[1].shape)
        if kind == "matmul":
            a, b = others
            return None, None, (g @ b.mT).sum_to_size(ts[0].shape), (a.mT @ g).sum_to_size(ts[1].shape)
        grads = []
        for i, t in enumerate(ts):
            grads.append(vjp(lambda v, i=i: ctx.call(*others[:i], v, *others[i + 1:]), t, g))
        return None, None, *grads


def _references_silent(g: torch.Tensor, ts: tuple) -> bool:
    """Whether g is zero on the references' rows (what every rule of the family gives them: only the inputs' rows
    carry the score) for operands batched like g: their VJPs are then zero there and need not be computed."""
    if any(t.dim() != g.dim() or t.shape[0] != g.shape[0] for t in ts) or g.shape[0] % 2:
        return False
    low, high = torch.aminmax(g[g.shape[0] // 2:])  # NaN is not zero
    return float(low) == 0 and float(high) == 0


def _inputs_half(kind: str, g: torch.Tensor, ts: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The written-out VJPs of :class:`_Bilinear` on the inputs' rows only, zeros on the references' (a zero row of
    g gives zero VJPs for finite midpoints; a non-finite midpoint takes the full product, as 0·∞ would)."""
    n = g.shape[0] // 2
    a, b = (torch.add(x, r).mul_(0.5) for x, r in (halves(t) for t in ts))  # (x + r)/2 to the bit, one buffer
    if not bool((a.sum() + b.sum()).isfinite()):  # a finite sum means finite entries
        a, b = (torch.cat([t, t]) for t in (a, b))
        n = g.shape[0]
    gx = g[:n]
    if kind == "mul":
        da, db = (gx * b).sum_to_size(ts[0][:n].shape), (gx * a).sum_to_size(ts[1][:n].shape)
    else:
        da, db = (gx @ b.mT).sum_to_size(ts[0][:n].shape), (a.mT @ gx).sum_to_size(ts[1][:n].shape)
    if n == g.shape[0]:
        return da, db
    return torch.cat([da, torch.zeros_like(da)]), torch.cat([db, torch.zeros_like(db)])


_PRODUCTS = {"mul", "__mul__", "__rmul__", "multiply", "mul_", "__imul__"}
_MATMULS = {"matmul", "__matmul__", "mm", "bmm"}


def _kind(op: str, call: Call, ts: list[torch.Tensor]) -> str | None:
    """Which of the written-out VJPs serves this call, if one does (same dtypes, positional a @ b)."""
    if len(ts) != 2 or ts[0].dtype != ts[1].dtype:
        return None
    if op in _PRODUCTS and not call.kwargs:
        return "mul"
    if op in _MATMULS and call.slots == [(0,), (1,)] and not call.kwargs and min(t.dim() for t in ts) >= 2:
        return "matmul"
    return None


def _check_batched(name: str, *ts: torch.Tensor) -> None:
    for t in ts:
        check_pairs(t, name)
    if len({t.shape[0] for t in ts}) > 1:
        raise ValueError(f"DeepLIFT's rule at {name} needs the operands on the input's path batched alike (2N rows "
                         f"first), got shapes {', '.join(str(tuple(t.shape)) for t in ts)}")


def _write_back(func_name: str, first: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """An in-place op: computed out of place on a copy of the tensor written into (so that no tensor a rule saved
    is overwritten), then written back; an out-of-place op: computed."""
    if func_name not in _OUT_OF_PLACE:
        return compute(first)
    y = compute(first.clone())
    first.copy_(y)
    return first


class BilinearRule(OpRule):
    """DeepLIFT at an op separately affine in its two operands on the path (module doc; Lundberg & Lee 2017,
    §4.2): m_a = VJP of B(·, (b + b̄)/2), m_b = VJP of B((a + ā)/2, ·), so that m_a·Δa + m_b·Δb = ΔB exactly.

    ``addmm``/``baddbmm`` may have their added input on the path too: c + B(a, b) splits as Δc + the above.
    One operand on the path: linear, the gradient is the rule (``NotImplemented``).  Three or more otherwise (a
    trilinear ``einsum``, whose Shapley split differs) and ``out=`` are listed as unruled."""

    name = "bilinear"

    def apply(self, handler, func, args, kwargs, tagged, name):
        slots = path_slots(args, kwargs, tagged)
        if len(slots) < 2:
            return NotImplemented  # one factor on the path: linear, its gradient is the rule
        op = name.rsplit(".", 1)[-1]
        # three operands: exact only for c + a·b (the added input enters linearly), not for a trilinear einsum
        added = len(slots) == 3 and op in _ADDED_INPUT and slots[0] == (0,)
        if (len(slots) > 2 and not added) or kwargs.get("out") is not None:  # or a write the rule cannot follow
            handler.unruled.append(name)
            return NotImplemented
        call = Call(_OUT_OF_PLACE.get(op, func), args, kwargs, slots)
        ts = [call.value(slot) for slot in slots]
        _check_batched(name, *ts)
        call.kind = _kind(op, call, ts)
        phase = getattr(handler, "phase", None)
        first = ts[0]
        # x·x, written in place too: every operand that is the tensor written into is its copy
        return _write_back(op, first, lambda t: _Bilinear.apply(call, phase, *(t if u is first else u for u in ts)))


class _Quotient(torch.autograd.Function):
    """y = call(num, den) = num / den forward (``num`` None when the numerator is off the path: it is then
    ``constant``).  The attribution's backward pass: m_num = ((1/den) + (1/den̄))/2 and m_den = −num_mid/(den·den̄);
    any later one: 1/den and −num/den²."""

    @staticmethod
    def forward(ctx, num, den, call: Call, constant, phase):
        ctx.call, ctx.constant, ctx.phase = call, constant, phase
        ctx.on_path = num is not None
        ctx.save_for_backward(*((num, den) if ctx.on_path else (den,)))
        return call(num, den) if ctx.on_path else call(den)

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        num, den = saved if ctx.on_path else (ctx.constant, saved[0])
        if in_attribution_pass(ctx.phase):
            x, r = halves(den)
            secant = -1 / (x * r)  # (1/x − 1/r)/(x − r), exact; −1/x² where x = r
            inv, slope = midpoint(1 / den), torch.cat([secant, secant])
            num = midpoint(num) if ctx.on_path else num
        else:
            inv = 1 / den
            slope = -inv * inv
        g_den = (g * num * slope).sum_to_size(den.shape)
        g_num = (g * inv).sum_to_size(num.shape) if ctx.on_path else None
        return g_num, g_den, None, None, None


class QuotientRule(OpRule):
    """DeepLIFT at a / b with the divisor on the path: a · (1/b), the reciprocal with its exact multiplier
    −1/(b·b̄) (the secant of 1/b between reference and input, Shrikumar et al. 2017, Eq 2–3), and the product
    split as :class:`BilinearRule` splits it: Δ(a/b) = ½(1/b + 1/b̄)·Δa − ½(a + ā)/(b·b̄)·Δb, exactly.

    The divisor off the path: linear in the numerator, the gradient is the rule.  ``rounding_mode`` (a floor or
    truncated division, piecewise constant) and ``out=`` are listed as unruled."""

    name = "quotient"

    def apply(self, handler, func, args, kwargs, tagged, name):
        op = name.rsplit(".", 1)[-1]
        # ``c / b`` calls b.__rtruediv__(c): the divisor comes first
        num_slot, den_slot = ((1,), (0,)) if op == "__rtruediv__" else ((0,), (1,) if len(args) > 1 else ("other",))
        call = Call(_OUT_OF_PLACE.get(op, func), args, kwargs, [num_slot, den_slot])
        present = den_slot[0] in kwargs if isinstance(den_slot[0], str) else len(args) > den_slot[0]
        den = call.value(den_slot) if present else None
        if not tagged(den):
            return NotImplemented  # linear in the numerator
        if kwargs.get("rounding_mode") is not None or kwargs.get("out") is not None:
            handler.unruled.append(name)  # piecewise constant, or a write the rule cannot follow
            return NotImplemented
        num, phase = call.value(num_slot), getattr(handler, "phase", None)
        if tagged(num):
            _check_batched(name, num, den)
            if num is den:
                return _write_back(op, num, lambda t: _Quotient.apply(t, t, call, None, phase))
            return _write_back(op, num, lambda t: _Quotient.apply(t, den, call, None, phase))
        _check_batched(name, den)
        only_den = Call(call.func, args, kwargs, [den_slot])
        if op not in _OUT_OF_PLACE:
            return _Quotient.apply(None, den, only_den, num, phase)
        # ``c /= b`` with c off the path: the rule keeps a copy of c, which the write overwrites
        y = _Quotient.apply(None, den, only_den, num.clone(), phase)
        num.copy_(y)
        return num
