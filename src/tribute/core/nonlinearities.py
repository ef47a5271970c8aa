"""Elementwise nonlinearities the engine knows, and every way a model can call them.

A model may apply a ReLU as ``nn.ReLU``, ``nn.ReLU(inplace=True)``, ``F.relu``, ``F.relu_``,
``torch.relu`` or ``Tensor.relu_``.  A ``TorchFunctionMode`` sees the *function* that was called, so
each calling form is listed here with how to read its arguments; all forms of one nonlinearity map to
the same :class:`Nonlinearity`, which is what rules are written against.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Nonlinearity:
    """An elementwise function ``y = fn(z, **params)`` with ``fn`` out of place.

    ``family`` groups functions that rules treat alike: ``"relu"`` marks rectifiers, which guided
    backprop and DeconvNet modify (see :func:`rectifier_gate`).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    family: str = ""

    def __call__(self, z: torch.Tensor, **params: Any) -> torch.Tensor:
        return self.fn(z, **params)


@dataclass(frozen=True)
class CallForm:
    """How one public function spells a call to a nonlinearity.

    ``arg_names`` name the positional arguments after the input, ``defaults`` their default values;
    ``inplace`` is ``True``/``False`` for functions that always/never work in place, or the name of
    the boolean argument that decides it.
    """

    nonlinearity: Nonlinearity
    arg_names: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    inplace: bool | str = False

    def parse(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict[str, Any], bool]:
        """Return ``(input, params, inplace)`` for one call."""
        if args:
            z, rest = args[0], args[1:]
        else:
            kwargs = dict(kwargs)
            z, rest = kwargs.pop("input", kwargs.pop("self", None)), ()
        params = dict(self.defaults)
        params.update(zip(self.arg_names, rest, strict=False))
        params.update(kwargs)
        if isinstance(self.inplace, str):
            inplace = bool(params.pop(self.inplace, False))
        else:
            inplace = self.inplace
        return z, params, inplace


_REGISTRY: dict[Any, CallForm] = {}
_NONLINEARITIES: dict[str, Nonlinearity] = {}


def _overridable(fn: Any) -> bool:
    """Whether calls to ``fn`` reach a torch-function mode by themselves (torch's own API)."""
    global _OVERRIDABLE
    if _OVERRIDABLE is None:
        _OVERRIDABLE = {f for fs in torch.overrides.get_overridable_functions().values() for f in fs}
    return fn in _OVERRIDABLE


_OVERRIDABLE: set | None = None


def _dispatching(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap a plain Python function so that torch-function modes see calls to it."""

    @functools.wraps(fn)
    def wrapper(z, *args, **kwargs):
        if torch.overrides.has_torch_function_unary(z):
            return torch.overrides.handle_torch_function(wrapper, (z,), z, *args, **kwargs)
        return fn(z, *args, **kwargs)

    return wrapper


def register_nonlinearity(
    fn: Callable[..., torch.Tensor],
    *,
    name: str | None = None,
    family: str = "",
    aliases: tuple[Any, ...] = (),
    arg_names: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> Callable[..., torch.Tensor]:
    """Teach the engine a new elementwise nonlinearity, and return the function models should call.

    A torch function (``torch.erf``, ``F.mish``, …) is intercepted wherever a model calls it, and is
    returned unchanged.  A plain Python function is invisible to torch-function modes, so it is
    returned wrapped: call the wrapper in the model (it computes the same values).

    Parameters
    ----------
    fn : callable
        The out-of-place function ``fn(z, *params)``; it must act elementwise and keep the shape.
    name : str, optional
        The name rules and coverage reports use (default: ``fn.__name__``).
    family : str
        ``"relu"`` marks a ReLU-like function that guided backprop and DeconvNet modify.
    aliases : tuple
        Further torch callables computing the same function out of place (e.g. a ``Tensor`` method).
    arg_names, defaults : tuple, dict
        Names and defaults of ``fn``'s positional arguments after the input.

    Examples
    --------
    >>> import torch, tribute
    >>> cube = tribute.register_nonlinearity(lambda z: z ** 3, name="cube")
    >>> float(cube(torch.tensor(2.0)))
    8.0
    """
    if not callable(fn):
        raise TypeError(f"register_nonlinearity needs a callable, got {type(fn).__name__}")
    nl = Nonlinearity(name or getattr(fn, "__name__", repr(fn)), fn, family)
    defaults = dict(defaults or {})
    public = fn if _overridable(fn) else _dispatching(fn)
    for f in (public, *aliases):
        _REGISTRY[f] = CallForm(nl, arg_names, defaults, False)
    _NONLINEARITIES[nl.name] = nl
    return public


def _builtin(name: str, fn: Callable, family: str, forms: list[tuple[Any, tuple, dict, bool | str]]):
    nl = Nonlinearity(name, fn, family)
    _NONLINEARITIES[name] = nl
    for func, arg_names, defaults, inplace in forms:
        if func is not None:
            _REGISTRY[func] = CallForm(nl, arg_names, defaults, inplace)


def _get(obj: Any, attr: str) -> Any:
    return getattr(obj, attr, None)


# The functions below are called with the interception mode switched off, so they reach torch directly.
_builtin("relu", torch.relu, "relu", [
    (torch.relu, (), {}, False), (torch.Tensor.relu, (), {}, False),
    (F.relu, ("inplace",), {"inplace": False}, "inplace"),
    (torch.relu_, (), {}, True), (torch.Tensor.relu_, (), {}, True),
])
_builtin("relu6", lambda z: F.hardtanh(z, 0.0, 6.0), "", [
    (F.relu6, ("inplace",), {"inplace": False}, "inplace"), (_get(torch._C._nn, "relu6"), (), {}, False),
    (_get(torch._C._nn, "relu6_"), (), {}, True),
])
_builtin("hardtanh", lambda z, min_val=-1.0, max_val=1.0: F.hardtanh(z, min_val, max_val), "", [
    (F.hardtanh, ("min_val", "max_val", "inplace"), {"min_val": -1.0, "max_val": 1.0, "inplace": False},
     "inplace"),
    (F.hardtanh_, ("min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0}, True),
])
_builtin("leaky_relu", lambda z, negative_slope=0.01: F.leaky_relu(z, negative_slope), "", [
    (F.leaky_relu, ("negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": False}, "inplace"),
    (F.leaky_relu_, ("negative_slope",), {"negative_slope": 0.01}, True),
])
_builtin("elu", lambda z, alpha=1.0: F.elu(z, alpha), "", [
    (F.elu, ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}, "inplace"),
    (F.elu_, ("alpha",), {"alpha": 1.0}, True),
])
_builtin("gelu", lambda z, approximate="none": F.gelu(z, approximate=approximate), "", [
    (F.gelu, (), {"approximate": "none"}, False),
])
_builtin("silu", F.silu, "", [
    (F.silu, ("inplace",), {"inplace": False}, "inplace"),
])
_builtin("softplus", lambda z, beta=1.0, threshold=20.0: F.softplus(z, beta, threshold), "", [
    (F.softplus, ("beta", "threshold"), {"beta": 1.0, "threshold": 20.0}, False),
])
_builtin("sigmoid", torch.sigmoid, "", [
    (torch.sigmoid, (), {}, False), (torch.Tensor.sigmoid, (), {}, False), (F.sigmoid, (), {}, False),
    (torch.sigmoid_, (), {}, True), (torch.Tensor.sigmoid_, (), {}, True),
])
_builtin("tanh", torch.tanh, "", [
    (torch.tanh, (), {}, False), (torch.Tensor.tanh, (), {}, False), (F.tanh, (), {}, False),
    (torch.tanh_, (), {}, True), (torch.Tensor.tanh_, (), {}, True),
])
_builtin("hardswish", F.hardswish, "", [
    (F.hardswish, ("inplace",), {"inplace": False}, "inplace"),
])
_builtin("hardsigmoid", F.hardsigmoid, "", [
    (F.hardsigmoid, ("inplace",), {"inplace": False}, "inplace"),
])
_builtin("mish", F.mish, "", [
    (F.mish, ("inplace",), {"inplace": False}, "inplace"),
])
_builtin("selu", F.selu, "", [
    (F.selu, ("inplace",), {"inplace": False}, "inplace"), (_get(torch, "selu_"), (), {}, True),
])
_builtin("celu", lambda z, alpha=1.0: F.celu(z, alpha), "", [
    (F.celu, ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}, "inplace"),
    (_get(torch, "celu_"), ("alpha",), {"alpha": 1.0}, True),
])
for _name, _fn in (("sqrt", torch.sqrt), ("exp", torch.exp), ("log", torch.log)):
    _builtin(_name, _fn, "", [
        (_fn, (), {}, False), (getattr(torch.Tensor, _name), (), {}, False),
        (getattr(torch, _name + "_"), (), {}, True), (getattr(torch.Tensor, _name + "_"), (), {}, True),
    ])


def rectifier_gate(nl: Nonlinearity, z: torch.Tensor, params: dict[str, Any]) -> torch.Tensor | None:
    """Where a rectifier passes its input (f' = 1), or ``None`` if ``nl`` is no rectifier.

    Rectifiers are the ReLU family, ReLU6 and a hardtanh clipping at 0 below (``nn.ReLU6`` calls
    ``F.hardtanh(z, 0, 6)``): the nonlinearities guided backprop and DeconvNet were defined for.
    """
    if not is_rectifier(nl, params):
        return None
    if nl.family == "relu":
        return z > 0
    upper = 6 if nl.name == "relu6" else params.get("max_val", 1.0)
    return (z > 0) & (z < upper)


def is_rectifier(nl: Nonlinearity, params: dict[str, Any]) -> bool:
    """Whether :func:`rectifier_gate` applies: the ReLU family, ReLU6, hardtanh with min_val = 0."""
    return nl.family == "relu" or nl.name == "relu6" or (nl.name == "hardtanh" and params.get("min_val", -1.0) == 0)


def call_form(func: Any) -> CallForm | None:
    """The :class:`CallForm` for an intercepted function, or ``None`` if it is no known nonlinearity."""
    return _REGISTRY.get(func)


def known_nonlinearities() -> list[str]:
    """Names of all nonlinearities the engine can route through rules."""
    return sorted(_NONLINEARITIES)
