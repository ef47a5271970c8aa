"""Linear layers written as products: ``torch.addmm`` (Hugging Face's ``Conv1D``), ``matmul``/``@``/``mm``/``bmm``
and two-operand ``einsum`` with one operand on the input's path and the other off it (a parameter, or a tensor
computed from parameters only, such as ``W.T``).

Such a call z = x·W (+ b) is a dense layer to LRP: :func:`parse_product` gives it as (kind, x, W, b, op) like
:func:`tribute.lrp.layer_call.parse_linear` does for ``F.linear``, so every rule (ε, z⁺, αβ, γ, flat, w², zᴮ) and
every composite (which treats it as ``dense``) applies.  The rules only ever transform W entrywise (W⁺, W + γW⁺,
W², ones), so W keeps the layout of the call: ``op(x, w, b)`` places ``w`` where the parameter was.

A bias added right after (``x @ W.T + b``, ``einsum(...) + b``) is the layer's bias, as ``addmm``'s is: an
addition whose other operand is off the input's path and does not widen the output (:func:`added_bias`), and that
is the first op to read the product's output, joins the layer (so ``x @ W.T + b`` is ``F.linear(x, W, b)`` to
every rule).

Not mapped here (:func:`parse_product` gives None, and the op keeps its earlier treatment: the Norm rule for
``matmul``/``einsum`` with one operand on the path, the plain gradient otherwise): both operands on the input's
path (attention's scores and mixing, which is not linear in the input), einsum with more than two operands,
``addmm`` whose added term is on the input's path, and operands that are not tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# the ops this module reads, by the last part of their name
# (torch.mm resolves to the name "spmm")
PRODUCTS = ("addmm", "matmul", "__matmul__", "__rmatmul__", "mm", "spmm", "bmm", "einsum")


class ProductOp:
    """``op(x, w, b)``: the product call with ``x`` in the input's operand slot and ``w`` in the weight's, plus
    ``b`` (broadcast against the output, as ``addmm`` adds its first argument)."""

    kind = "dense"
    groups = 1
    adjoint = None  # Jᵀs by autograd (the forward graph, or a vjp through op)
    stackable = False  # two signals are taken back one by one (see rules._TwoSignals)
    mergeable = False  # batch norm is never merged into it (see merges_norm)
    fuses_bias = True  # a bias added to its output right after is the layer's (see added_bias)

    __slots__ = ("product", "form")

    def __init__(self, product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], form: tuple):
        self.product, self.form = product, form

    def __call__(self, xx, ww, bb=None):
        z = self.product(xx, ww)
        return z if bb is None else z + bb

    @property
    def cache_tag(self) -> tuple:
        return (self.kind, self.form)

    def rotated_adjoint(self, weight_shape) -> None:
        return None

    @staticmethod
    def constant(like: torch.Tensor, value: float) -> torch.Tensor:
        """A bias of ``value`` at every output (a 0-dim tensor, broadcast by :meth:`__call__`)."""
        return like.new_full((), value)

    @staticmethod
    def merges_norm(z: torch.Tensor) -> bool:
        """Batch norm is not merged into a product (its channel axis need not be the weight's output axis): it
        stays an affine map under the Norm rule."""
        return False


def _tensor(a) -> bool:
    return isinstance(a, torch.Tensor)


def _pair(a, b, tagged) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(position of the operand on the input's path, it, the other) if exactly one of ``a``, ``b`` is on it."""
    if not (_tensor(a) and _tensor(b)) or tagged(a) == tagged(b):
        return None
    return (0, a, b) if tagged(a) else (1, b, a)


def _placed(func, position: int, *, left: tuple = (), right: tuple = (), kwargs=None):
    """``(x, w) ↦ func(*left, x, w, *right)`` or ``func(*left, w, x, *right)``, x at ``position``."""
    kwargs = kwargs or {}
    if position == 0:
        return lambda x, w: func(*left, x, w, *right, **kwargs)
    return lambda x, w: func(*left, w, x, *right, **kwargs)


def _matmul(func, name, args, kwargs, tagged):
    if kwargs or len(args) != 2:  # out= and the like: not a layer
        return None
    a, b = args
    if name == "__rmatmul__":  # a.__rmatmul__(b) = b @ a
        a, b = b, a
    found = _pair(a, b, tagged)
    if found is None:
        return None
    position, x, w = found
    return x, w, None, ProductOp(_placed(torch.matmul, position), ("matmul", position))


def _addmm(args, kwargs, tagged):
    names = ("input", "mat1", "mat2")
    p = dict(zip(names, args, strict=False))
    p.update(kwargs)
    beta, alpha = p.pop("beta", 1), p.pop("alpha", 1)
    if set(p) != set(names) or len(args) > 3 or not _tensor(p["input"]) or tagged(p["input"]):
        return None
    found = _pair(p["mat1"], p["mat2"], tagged)
    if found is None or not isinstance(alpha, (int, float)) or not isinstance(beta, (int, float)):
        return None
    position, x, w = found
    # α·(x W) + β·b: the layer's weight is αW (so that W⁺ means the positive part of what multiplies x)
    w = w if alpha == 1 else alpha * w
    b = p["input"] if beta == 1 else beta * p["input"]
    return x, w, b, ProductOp(_placed(torch.mm, position), ("mm", position))


def _einsum(args, kwargs, tagged):
    if kwargs or not args or not isinstance(args[0], str):
        return None
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if len(operands) != 2:
        return None
    found = _pair(*operands, tagged)
    if found is None:
        return None
    position, x, w = found
    return x, w, None, ProductOp(_placed(torch.einsum, position, left=(equation,)), ("einsum", equation, position))


def parse_product(func, name: str, args, kwargs, tagged) -> tuple | None:
    """(kind, input, weight, bias, op) if the call named ``name`` is a product with exactly one operand on the
    input's path (``tagged``), as a dense layer; None for a form this cannot map (see the module doc)."""
    op = name.rsplit(".", 1)[-1]
    if op in ("matmul", "__matmul__", "__rmatmul__", "mm", "spmm", "bmm"):
        parsed = _matmul(func, op, args, kwargs, tagged)
    elif op == "addmm":
        parsed = _addmm(args, kwargs, tagged)
    elif op == "einsum":
        parsed = _einsum(args, kwargs, tagged)
    else:
        return None
    if parsed is None:
        return None
    x, w, b, product = parsed
    if b is not None and not _tensor(b):
        b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
    return ("dense", x, w, b, product)


ADDITIONS = ("add", "__add__", "__radd__")


def added_bias(base: str, args, kwargs, tagged) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(z, b) if the op ``base`` is z + b with z on the input's path and b a tensor off it of z's shape or one that
    broadcasts to it (a bias); else None."""
    if base not in ADDITIONS or kwargs or len(args) != 2 or not all(_tensor(a) for a in args):
        return None
    found = _pair(*args, tagged)
    if found is None:
        return None
    _, z, b = found
    try:
        widened = torch.broadcast_shapes(z.shape, b.shape) != z.shape
    except RuntimeError:
        return None
    return None if widened or b.dtype != z.dtype else (z, b)
