"""Elementwise nonlinearities the engine knows, and every way a model can call them.

A model may apply a ReLU as ``nn.ReLU``, ``nn.ReLU(inplace=True)``, ``F.relu``, ``F.relu_``,
``torch.relu`` or ``Tensor.relu_``.  A ``TorchFunctionMode`` sees the *function* that was called, so
each calling form is listed here with how to read its arguments; all forms of one nonlinearity map to
the same :class:`Nonlinearity`, which is what rules are written against.
"""

from __future__ import annotations

import functools
import inspect
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
    the boolean argument that decides it.  ``numbers`` name the parameters that must be plain numbers for the
    call to be this elementwise function of one tensor (``torch.pow(x, 3)`` is; ``torch.pow(x, y)`` of two
    tensors is a product-like op of two inputs, left to the op rules).
    """

    nonlinearity: Nonlinearity
    arg_names: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    inplace: bool | str = False
    numbers: tuple[str, ...] = ()

    def accepts(self, params: dict[str, Any]) -> bool:
        """Whether a call with ``params`` is this nonlinearity (its ``numbers`` parameters are numbers)."""
        return all(isinstance(params.get(n), (int, float)) for n in self.numbers)

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
    """Whether ``fn`` is on torch's list of overridable functions (those need no probe)."""
    global _OVERRIDABLE
    if _OVERRIDABLE is None:
        _OVERRIDABLE = {f for fs in torch.overrides.get_overridable_functions().values() for f in fs}
    return fn in _OVERRIDABLE


_OVERRIDABLE: set | None = None


class _Probe(torch.overrides.TorchFunctionMode):
    """Record the functions a call hands to torch-function modes."""

    def __init__(self):
        super().__init__()
        self.seen: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def dispatches_to_modes(fn: Any, defaults: dict[str, Any] | None = None) -> bool:
    """Whether calling ``fn`` on a tensor hands the call, as ``fn`` itself, to torch-function modes.

    Torch's list of overridable functions misses some that do dispatch (``F.hardswish``, ``F.silu``), so a
    function off the list is called once on a small tensor under a recording mode."""
    if _overridable(fn):
        return True
    probe = _Probe()
    with probe, torch.no_grad():
        try:
            fn(torch.linspace(-1.0, 1.0, 4, dtype=torch.float64), **(defaults or {}))
        except Exception as e:  # noqa: BLE001 - the reason is reported to the caller
            raise TypeError(
                f"register_nonlinearity could not call {fn!r} on a small tensor to check that torch-function "
                f"modes see it ({type(e).__name__}: {e}); give the defaults of its parameters"
            ) from e
    return fn in probe.seen


def _dispatching(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap a plain Python function so that torch-function modes see calls to it."""

    @functools.wraps(fn)
    def wrapper(z, *args, **kwargs):
        if torch.overrides.has_torch_function_unary(z):
            return torch.overrides.handle_torch_function(wrapper, (z,), z, *args, **kwargs)
        return fn(z, *args, **kwargs)

    return wrapper


_INPLACE_AT: dict = {}


def inplace_position(func: Any) -> int | None:
    """The position of ``func``'s ``inplace`` argument (``F.hardswish(x, inplace)`` → 1), or None if it has none
    or no readable signature.  Remembered per function: the mode asks on every in-place check."""
    try:
        return _INPLACE_AT[func]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable
        return None
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        names = []
    at = _INPLACE_AT[func] = names.index("inplace") if "inplace" in names else None
    return at


def writes_inplace_by_argument(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a call asks ``func`` to write into its input through an ``inplace=True`` argument (by keyword or
    by position: ``nn.Hardswish(inplace=True)`` calls ``F.hardswish(x, True)``)."""
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    at = inplace_position(func)
    return at is not None and len(args) > at and args[at] is True


def _inplace_form(fn: Any, arg_names: tuple[str, ...], defaults: dict[str, Any]):
    """The positional names, defaults and in-place flag of a registered function with an ``inplace`` argument:
    the flag is read off each call and never reaches the rule, which computes out of place."""
    at = inplace_position(fn)
    if at is None:
        return arg_names, defaults, False
    if "inplace" not in arg_names:
        names = list(inspect.signature(fn).parameters)
        arg_names = tuple(names[1:at + 1]) if at >= 1 else arg_names
    return arg_names, {**defaults, "inplace": False}, "inplace"


def register_nonlinearity(
    fn: Callable[..., torch.Tensor],
    *,
    name: str | None = None,
    family: str = "",
    aliases: tuple[Any, ...] = (),
    arg_names: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    wrap: bool = False,
) -> Callable[..., torch.Tensor]:
    """Teach the engine a new elementwise nonlinearity, and return the function models should call.

    The engine intercepts calls through torch-function modes, so ``fn`` must hand its calls to them: every
    torch function does (``torch.erf``, ``F.mish``, and ``F.hardswish`` too, though torch's list of overridable
    functions misses it; a function off that list is checked by calling it once on a small tensor).  A plain
    Python function does not (a mode sees only the ops inside it) and is refused, since registering it would
    silently change nothing; ``wrap=True`` returns it wrapped instead, and the model must call the wrapper.

    A function with an ``inplace`` argument (``F.hardswish(x, inplace=True)``) is routed in either spelling;
    the flag never reaches the rule, which computes out of place before the engine writes the result back.

    Parameters
    ----------
    fn : callable
        The out-of-place function ``fn(z, *params)``; it must act elementwise and keep the shape.
    name : str, optional
        The name rules and coverage reports use (default: ``fn.__name__``).
    family : str
        ``"relu"`` marks a ReLU-like function that guided backprop and DeconvNet modify.
    aliases : tuple
        Further torch callables computing the same function (e.g. a ``Tensor`` method); one whose name ends in
        ``_`` writes into its input, one with an ``inplace`` argument does when it is true.
    arg_names, defaults : tuple, dict
        Names and defaults of ``fn``'s positional arguments after the input.
    wrap : bool
        Return a plain Python function wrapped so that modes see calls to the wrapper.

    Examples
    --------
    >>> import torch, tribute
    >>> cube = tribute.register_nonlinearity(lambda z: z ** 3, name="cube", wrap=True)
    >>> float(cube(torch.tensor(2.0)))
    8.0
    """
    if not callable(fn):
        raise TypeError(f"register_nonlinearity needs a callable, got {type(fn).__name__}")
    nl = Nonlinearity(name or getattr(fn, "__name__", repr(fn)), fn, family)
    arg_names, defaults, inplace = _inplace_form(fn, tuple(arg_names), dict(defaults or {}))
    plain = {k: v for k, v in defaults.items() if k != "inplace"}
    if wrap:
        public = _dispatching(fn)
    elif dispatches_to_modes(fn, plain):
        public = fn
    else:
        raise TypeError(
            f"register_nonlinearity({nl.name}): calls to this function never reach torch-function modes (they "
            "see only the torch ops inside it), so the engine could not apply a rule to it and registering it "
            "would change nothing. Pass wrap=True and call the returned wrapper in the model"
        )
    forms = {public: CallForm(nl, arg_names, defaults, inplace)}
    for f in aliases:  # each alias reads its own ``inplace`` argument, if it has one; ``relu_``-style names write
        names, alias_defaults, alias_inplace = _inplace_form(f, tuple(n for n in arg_names if n != "inplace"), plain)
        by_name = getattr(f, "__name__", "").endswith("_") and not getattr(f, "__name__", "").startswith("__")
        forms[f] = CallForm(nl, names, alias_defaults, alias_inplace or by_name)
    # what this registration covers up (a built-in's calling forms, a nonlinearity of the same name) comes back
    # when it is unregistered
    _SHADOWED.setdefault(nl.name, []).append(
        ({f: _REGISTRY[f] for f in forms if f in _REGISTRY}, _NONLINEARITIES.get(nl.name)))
    _REGISTRY.update(forms)
    _NONLINEARITIES[nl.name] = nl
    return public


_SHADOWED: dict[str, list[tuple[dict, Nonlinearity | None]]] = {}


def unregister_nonlinearity(name: str) -> None:
    """Forget the nonlinearity registered as ``name`` and every calling form of it (tests, notebooks)."""
    nl = _NONLINEARITIES.pop(name, None)
    if nl is None:
        raise KeyError(f"no nonlinearity named {name!r} is registered")
    for f in [f for f, form in _REGISTRY.items() if form.nonlinearity is nl]:
        del _REGISTRY[f]
    stack = _SHADOWED.get(name)
    if stack:  # restore what the registration covered up
        forms, previous = stack.pop()
        _REGISTRY.update(forms)
        if previous is not None:
            _NONLINEARITIES[name] = previous


def _builtin(name: str, fn: Callable, family: str, forms: list[tuple[Any, tuple, dict, bool | str]],
             numbers: tuple[str, ...] = ()):
    nl = Nonlinearity(name, fn, family)
    _NONLINEARITIES[name] = nl
    for func, arg_names, defaults, inplace in forms:
        if func is not None:
            _REGISTRY[func] = CallForm(nl, arg_names, defaults, inplace, numbers)


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
# Powers with a number as exponent, as models write them by hand (GPT-2's gelu_new: x + 0.044715 * x**3; RMSNorm:
# x * torch.rsqrt(x.pow(2).mean(-1) + eps)).  A tensor exponent is no function of one input: see CallForm.numbers.
_builtin("pow", lambda z, exponent: torch.pow(z, exponent), "", [
    (torch.pow, ("exponent",), {}, False), (torch.Tensor.pow, ("exponent",), {}, False),
    (torch.Tensor.__pow__, ("exponent",), {}, False), (torch.Tensor.pow_, ("exponent",), {}, True),
    (torch.Tensor.__ipow__, ("exponent",), {}, True),
], numbers=("exponent",))
for _name, _fn in (("sqrt", torch.sqrt), ("exp", torch.exp), ("log", torch.log), ("rsqrt", torch.rsqrt),
                   ("reciprocal", torch.reciprocal), ("square", torch.square)):
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
