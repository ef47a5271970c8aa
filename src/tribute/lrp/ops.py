"""LRP's rules at the ops other than nonlinearities, registered as the family ``"lrp"``
(:mod:`tribute.core.rule_registry`).

- a linear layer (conv, transposed conv, dense) takes the rule its composite assigns it (:class:`LinearLayer`),
  also written as a product with one operand off the input's path (:class:`ProductLayer`);
- batch norm right after such a layer merges into it, else it is an affine map under the Norm rule;
- ops linear or affine in their inputs on the input's path (additions, means, pooling, scaling) split relevance
  in proportion to the contributions of their inputs, the Norm rule R_i = x_i Σ_j ∂y_j/∂x_i R_j / stab(y_j)
  (:class:`Proportional`); a product of two factors on the input's path holds a gate constant and splits the rest
  uniformly (:mod:`tribute.lrp.gates`);
- softmax (CP-LRP, or AttnLRP's rule) and LayerNorm/GroupNorm/RMSNorm with 1/σ held constant
  (:mod:`tribute.lrp.attention`);
- moves (reshapes, concatenation, indexing, max pooling, dropout in eval) pass relevance as their gradient does.

The rules say what an op is; the handler of the pass says how its form computes it: the relevance form
(:class:`tribute.lrp.propagation.Propagation`) and the ε gradient form (:mod:`tribute.lrp.epsilon_form`) read the
same table.  A rule of this family the gradient form does not know (``gradient_form = False``) sends the pass to
the relevance form.
"""

from __future__ import annotations

from ..core.rule_registry import OpRule, RuleKind, register_rule
from .attention import Normalisation, Softmax
from .linear_forms import PRODUCTS, parse_product
from .rules import PassRelevance

FAMILY = "lrp"

LINEAR_LAYERS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear")
# Ops that only move entries around: their gradient moves relevance unchanged.
MOVES = frozenset({
    "reshape", "view", "view_as", "flatten", "unflatten", "permute", "transpose", "t", "T", "mT", "contiguous",
    "squeeze", "unsqueeze", "__getitem__", "chunk", "split", "narrow", "select", "cat", "concat",
    "concatenate", "stack", "hstack", "vstack", "flip", "roll", "movedim", "unbind", "clone", "to", "float",
    "double", "detach", "pad", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "dropout", "dropout1d", "dropout2d", "dropout3d", "pixel_shuffle",
    "pixel_unshuffle", "type_as", "index_select", "gather", "repeat", "tile", "expand", "expand_as",
    "masked_fill", "masked_fill_", "where", "repeat_interleave", "diagonal",
})
# Ops linear or affine in their tagged inputs: the Norm rule splits relevance ∝ contributions.
PROPORTIONAL = frozenset({
    "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "neg", "__neg__", "mul", "__mul__",
    "__rmul__", "div", "__truediv__", "sum", "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "interpolate", "upsample",
    "cumsum", "einsum", "matmul", "__matmul__", "mm", "bmm",
})
# In-place forms, by the op they compute.
IN_PLACE = {"add_": "add", "__iadd__": "add", "sub_": "sub", "__isub__": "sub", "mul_": "mul",
            "__imul__": "mul", "div_": "div", "__itruediv__": "div"}
# Bilinear ops are linear only when one operand lies on the input's path.
BILINEAR = frozenset({"mul", "__mul__", "__rmul__", "div", "__truediv__", "einsum", "matmul", "__matmul__", "mm",
                      "bmm"})


class LinearLayer(OpRule):
    """A conv, transposed conv or dense call: the rule the composite assigns the layer."""

    kind = RuleKind.LINEAR
    name = "linear_layer"
    gradient_form = True

    def apply(self, handler, func, args, kwargs, tagged, name):
        return handler.linear(func, args, kwargs, tagged, name)


class ProductLayer(OpRule):
    """``addmm``, ``matmul``/``@``/``mm``/``bmm`` or a two-operand ``einsum`` with one operand on the input's path
    and the other off it: a dense layer under the composite's rule (:mod:`tribute.lrp.linear_forms`).  A form
    that is not such a layer (both operands on the path: attention) keeps ``fallback``, the Norm rule for a
    product (which refuses two operands on the path: plain gradient, listed as unruled), or None: no rule."""

    kind = RuleKind.LINEAR
    name = "product_layer"
    gradient_form = True

    def __init__(self, fallback: Proportional | None):
        self.fallback = fallback

    def apply(self, handler, func, args, kwargs, tagged, name):
        parsed = parse_product(func, name, args, kwargs, tagged)
        if parsed is not None:
            return handler.layer(parsed, args, kwargs, tagged, name)
        if self.fallback is not None:
            return self.fallback.apply(handler, func, args, kwargs, tagged, name)
        return handler.no_rule(func, args, kwargs, tagged, name)


class BatchNorm(OpRule):
    """Eval-mode batch norm: merged into the linear layer before it, else the Norm rule."""

    name = "batch_norm"
    gradient_form = True

    def apply(self, handler, func, args, kwargs, tagged, name):
        return handler.batch_norm(func, args, kwargs, tagged)


class Move(OpRule):
    """An op that moves entries: relevance follows its gradient."""

    name = "move"
    gradient_form = True

    def apply(self, handler, func, args, kwargs, tagged, name):
        return handler.move(func, args, kwargs, tagged, name)


class Proportional(OpRule):
    """The Norm rule at an op linear in its inputs (``base``: the op it computes; ``inplace``: written into its
    first argument; ``bilinear``: linear only while one operand is on the input's path)."""

    name = "proportional"
    gradient_form = True

    def __init__(self, base: str, *, inplace: bool = False):
        self.base, self.inplace, self.bilinear = base, inplace, base in BILINEAR

    def apply(self, handler, func, args, kwargs, tagged, name):
        if self.base == "einsum" and len(args) == 2 and isinstance(args[1], (list, tuple)):
            args = (args[0], *args[1])  # einsum(eq, [a, b]) = einsum(eq, a, b)
        return handler.proportional(func, args, kwargs, tagged, name, self)


register_rule(FAMILY, "*", PassRelevance())  # every elementwise nonlinearity
register_rule(FAMILY, LINEAR_LAYERS, LinearLayer())
register_rule(FAMILY, "batch_norm", BatchNorm())
register_rule(FAMILY, MOVES, Move())
register_rule(FAMILY, "softmax", Softmax())
for _op in ("layer_norm", "group_norm", "rms_norm"):
    register_rule(FAMILY, _op, Normalisation(_op))
for _op in PROPORTIONAL:
    register_rule(FAMILY, _op, Proportional(_op))
for _op in PRODUCTS:
    register_rule(FAMILY, _op, ProductLayer(Proportional(_op) if _op in PROPORTIONAL else None), replace=True)
for _op, _base in IN_PLACE.items():
    register_rule(FAMILY, _op, Proportional(_base, inplace=True))
