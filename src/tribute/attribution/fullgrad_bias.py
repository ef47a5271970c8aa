"""Gradients at every biased layer, for the full-gradient representation (Srinivas & Fleuret 2019).

:func:`bias_gradient_rows` finds the layers with a bias on the input's path (conv, transposed conv, dense, eval
batch norm), whichever module or function calls them, and takes ∂S/∂x and ∂S/∂z_l at every such layer's output in
one forward and backward pass; FullGrad (:mod:`tribute.attribution.cam`) sums bias ⊙ gradient over them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..core.engine import Forward, disconnected, record_passes
from ..core.layers import PathMode, outputs_of
from ..core.targets import Target
from ..core.tensors import per_channel

_CONV = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


def _layer_bias(func: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """(kind, bias broadcast to ``out``'s shape) of a conv / linear / eval batch-norm call, or None."""
    if func in _CONV or func is F.linear:
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        if b is None:
            return None
        if func is F.linear:
            return "linear", b.expand_as(out)
        return "conv", per_channel(b, out).expand_as(out)
    if func is F.batch_norm:
        p = {**dict(zip(_BN_ARGS, args, strict=False)), **kwargs}
        if p.get("training", False) or p.get("running_mean") is None:
            raise ValueError(
                "a batch norm on the input's path normalises with batch statistics (training, or no running "
                "statistics), so it has no fixed bias; the full-gradient decomposition needs eval-mode batch norm"
            )
        mean, var, eps = p["running_mean"], p["running_var"], p.get("eps", 1e-5)
        gamma, beta = p.get("weight"), p.get("bias")
        scale = torch.rsqrt(var + eps) if gamma is None else gamma * torch.rsqrt(var + eps)
        b = -mean * scale if beta is None else beta - mean * scale
        return "batch_norm", per_channel(b, out).expand_as(out)
    return None


class _BiasMode(PathMode):
    """Records the output z and the bias b of every conv / linear / batch-norm call on the input's path."""

    def __init__(self):
        super().__init__()
        self.layers: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def on_call(self, func, args, kwargs, ins):
        out = func(*args, **kwargs)
        first = args[0] if args else kwargs.get("input")
        if isinstance(out, torch.Tensor) and self.tag_of(first) is not None:
            found = _layer_bias(func, args, kwargs, out)
            if found is not None:
                self.layers.append((found[0], out, found[1]))
                out = out.clone()  # downstream in-place ops cannot touch the recorded z
        for _, o in outputs_of(out):
            self.mark(o)
        return out


class BiasRows(NamedTuple):
    input_grad: torch.Tensor
    """∂S/∂x for every row"""
    grads: list[torch.Tensor]
    """∂S/∂z_l at the output z_l of every biased layer l the score depends on, in the order of the forward pass"""
    biases: list[torch.Tensor]
    """the bias b_l of each of those layers, broadcast to z_l's shape (batch norm: its effective bias)"""
    kinds: list[str]
    """"conv", "linear" or "batch_norm" for each layer"""
    scores: torch.Tensor
    """S for every row"""


def bias_gradient_rows(forward: Forward, rows: torch.Tensor, target: Target, sample: torch.Tensor, *,
                       create_graph: bool = False) -> BiasRows:
    """∂S/∂x and ∂S/∂z_l at the output of every layer with a bias, in one forward and backward pass.

    The layers are found by intercepting calls of ``F.conv1d/2d/3d``, ``F.conv_transpose1d/2d/3d``,
    ``F.linear`` and ``F.batch_norm`` (eval mode: effective bias β − μγ/√(σ² + ε)) whose input is computed
    from the rows, whichever module or function makes them.  Plain gradients (no rules).
    """
    inp = rows if (create_graph and rows.requires_grad) else rows.detach().requires_grad_()
    mode = _BiasMode()
    mode.mark(inp)
    with torch.enable_grad():
        with mode:
            out = forward(inp, sample)
        if target.needs_argmax:
            target.set_argmax(out)
        s = target.scores(out, sample)
        live = [layer for layer in mode.layers if layer[1].requires_grad]  # not those run under no_grad
        if not s.requires_grad:
            raise disconnected()
        grads = torch.autograd.grad(s.sum(), [inp, *(z for _, z, _ in live)], create_graph=create_graph,
                                    allow_unused=True)
    if grads[0] is None:
        raise disconnected()
    record_passes(backward=out.shape[0])
    kept = [(k, b, g) for (k, _, b), g in zip(live, grads[1:], strict=True) if g is not None]
    return BiasRows(grads[0], [g for _, _, g in kept], [b for _, b, _ in kept], [k for k, _, _ in kept], s)
