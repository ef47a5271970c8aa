"""Which tensors on the input's path are *gates*: multiplicative weights that take no relevance (Arras et al. 2017).

In a product y = a · g of two tensors on the input's path, LRP's signal-take-all rule (Arras et al. 2017, "Explaining
Recurrent Neural Network Predictions in Sentiment Analysis", §3: the gate "only reweights the signal") gives all of
R_y to the signal a and none to the gate g.  Which operand is the gate is known from how it was made, so the handler
of a pass marks tensors by provenance (a mark on the tensor, with the version it was made at; an in-place write
afterwards voids it):

- the output of a *squashing* nonlinearity, whose values are weights rather than features: sigmoid, hardsigmoid
  (:data:`GATE_NONLINEARITIES`), and the reciprocals that normalisations multiply by: rsqrt, reciprocal (RMSNorm
  written as x · rsqrt(mean(x²) + ε)); tanh's output is a *weak* gate (below);
- a softmax's output under CP-LRP (attention weights held constant: :mod:`tribute.lrp.attention`);
- the divisor of a division a / b with both on the path (a hand-written LayerNorm's (x − μ) / sqrt(σ² + ε): the
  normalisation held constant, Ali et al. 2022);
- a tensor computed from gates only, through moves (reshape, dropout in eval, expand), affine maps with constants
  (1 + tanh(u), 0.5 · (…), masked_fill with a constant) and products of gates: GPT-2's gelu_new
  0.5·x·(1 + tanh(…)) multiplies the signal 0.5·x by the gate 1 + tanh(…).

A product of two tensors on the path where neither is a gate is *bilinear* (attention's QKᵀ, GLU): AttnLRP's uniform
rule for multiplications gives each operand half (Achtibat et al. 2024).  tanh is a gate against a signal
(gelu_new's 1 + tanh(…) against 0.5·x) but a signal against a strong gate: an LSTM's candidate state tanh(g) times
its input gate sigmoid(i) gives all to tanh(g), as in Arras et al.  Operands that are all gates of the same strength
share the relevance uniformly, and their product is a gate of that strength.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

_GATE = "_tribute_gate"  # on a gate: (its version when marked, its strength)

#: elementwise nonlinearities whose output is a gate (see the module doc; tanh's is weak)
GATE_NONLINEARITIES = frozenset({"sigmoid", "hardsigmoid", "tanh", "rsqrt", "reciprocal"})
#: divisions, whose divisor on the input's path is held like a gate
DIVISIONS = frozenset({"div", "__truediv__", "div_", "__itruediv__", "true_divide", "divide"})


STRONG, WEAK = 2, 1  # gate strengths (0: not a gate)


def made_gate(name: str) -> int:
    """The gate strength of the output of the nonlinearity ``name`` (tanh's is weak)."""
    if name == "tanh":
        return WEAK
    return STRONG if name in GATE_NONLINEARITIES else 0


def mark_gate(out: Any, strength: int = STRONG) -> None:
    """Mark ``out`` (a tensor, or each tensor of a list or tuple) as a gate of ``strength``."""
    if not strength:
        return
    if isinstance(out, torch.Tensor):
        try:
            setattr(out, _GATE, (out._version, strength))
        except (AttributeError, RuntimeError):  # some tensor subclasses refuse attributes
            pass
    elif isinstance(out, (list, tuple)):
        for o in out:
            mark_gate(o, strength)


def gate_strength(t: Any) -> int:
    """The gate strength of ``t`` (0: not a gate, or written in place since it was marked)."""
    mark = getattr(t, _GATE, None) if isinstance(t, torch.Tensor) else None
    return mark[1] if mark is not None and mark[0] == t._version else 0


def is_gate(t: Any) -> bool:
    """Whether ``t`` is a tensor marked as a gate and not written in place since."""
    return gate_strength(t) > 0


def path_tensors(args: tuple, kwargs: dict, tagged: Callable[[Any], bool]) -> list[torch.Tensor]:
    """The tensor arguments on the input's path (in lists too), in order."""
    found: list[torch.Tensor] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, (list, tuple)):
            found.extend(b for b in a if tagged(b))
        elif tagged(a):
            found.append(a)
    return found


def gates_only(tensors: Iterable[torch.Tensor]) -> int:
    """The weakest gate strength among ``tensors`` (0 if one is no gate, or there are none): a tensor computed
    from them and constants only is a gate of that strength."""
    weakest = None
    for t in tensors:
        s = gate_strength(t)
        if not s:
            return 0
        weakest = s if weakest is None else min(weakest, s)
    return weakest or 0


def gates_only_on_path(args: tuple, kwargs: dict, tagged: Callable[[Any], bool]) -> int:
    """``gates_only(path_tensors(args, kwargs, tagged))``, stopping at the first tensor on the path that is no gate
    (a move of a signal, the usual case, asks one mark)."""
    weakest = 0
    for a in (*args, *kwargs.values()) if kwargs else args:
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if tagged(t):
                s = gate_strength(t)
                if not s:
                    return 0
                weakest = s if not weakest else min(weakest, s)
    return weakest


def divisor(name: str, args: tuple, kwargs: dict) -> Any:
    """The divisor of a division ``name`` (None for any other op)."""
    if name not in DIVISIONS:
        return None
    return args[1] if len(args) > 1 else kwargs.get("other")


def factors(name: str, args: tuple, kwargs: dict, tagged: Callable[[Any], bool]) -> tuple[list, list]:
    """(signals, gates): the operands on the input's path of a product or division ``name``, split by the rule of the
    module doc (a divisor on the path counts as a gate)."""
    d = divisor(name, args, kwargs)
    operands = path_tensors(args, kwargs, tagged)
    strength = [STRONG + 1 if t is d else gate_strength(t) for t in operands]
    # the weakest operands are the signals: non-gates if any, else the weakest gates (tanh against a sigmoid)
    weakest = min(strength, default=0)
    if weakest and all(s == weakest for s in strength) and d is None:  # gates of one strength: none is the other's
        return operands, []
    signals = [t for t, s in zip(operands, strength, strict=True) if s == weakest and t is not d]
    return signals, [t for t, s in zip(operands, strength, strict=True) if s != weakest or t is d]


def among(tensors: list[torch.Tensor]) -> Callable[[Any], bool]:
    """``tagged`` for a rule that treats only ``tensors`` as on the path (the others as constants)."""
    ids = {id(t) for t in tensors}
    return lambda a: isinstance(a, torch.Tensor) and id(a) in ids
