"""Keyword options with validated values: every error names the option and what it allows."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Option:
    """An option's default and its check; ``check(name, value)`` returns the value to use or raises.

    ``per_input`` marks an option that describes the inputs, which takes a tuple with one entry per input of a
    multi-input model (each entry checked by ``check``); it names how an entry is resolved against its input
    (:data:`tribute.core.method.PER_INPUT`): ``"baseline"``, ``"references"`` or ``"elementwise"``.
    """

    default: Any
    check: Callable[[str, Any], Any]
    doc: str = ""
    per_input: str | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(low: int, high: int | None = None) -> Callable[[str, Any], int]:
    def check(name, v):
        if not _is_int(v) or v < low or (high is not None and v > high):
            rng = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name} must be an integer {rng}, got {v!r}")
        return v
    return check


def optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def opt(name, v):
        return None if v is None else check(name, v)
    return opt


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable:
    def check(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise TypeError(f"{name} must be a real number, got {v!r}")
        bad_low = low is not None and (v <= low if low_open else v < low)
        bad_high = high is not None and v > high
        if bad_low or bad_high:
            lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
            hi = "" if high is None else f"<= {high}"
            raise ValueError(f"{name} must be {' and '.join(s for s in (lo, hi) if s)}, got {v!r}")
        return float(v)
    return check


def choice(values: Iterable[str]) -> Callable[[str, Any], str]:
    values = tuple(values)

    def check(name, v):
        if v not in values:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, values))}; got {v!r}")
        return v
    return check


def boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v


def function(name: str, v: Any) -> Any:
    if v is not None and not callable(v):
        raise TypeError(f"{name} must be callable or None, got {type(v).__name__}")
    return v


def tensor_or(check_other: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """Accept a tensor (or a callable making one) as is; anything else goes to ``check_other``."""
    def check(name, v):
        if isinstance(v, torch.Tensor) or (callable(v) and not isinstance(v, str)):
            return v
        return check_other(name, v)
    return check


def anything(name: str, v: Any) -> Any:
    return v


def refused(reason: str) -> Callable[[str, Any], Any]:
    """The check of an option a subclass inherits but has no use for: any value given is an error saying
    ``reason`` (an option must never be accepted and ignored)."""
    def check(name, v):
        raise TypeError(f"{name}= is not accepted here: {reason}")
    return check


def validate(schema: dict[str, Option], given: dict[str, Any], owner: str) -> dict[str, Any]:
    """Check ``given`` against ``schema``; unknown names raise a TypeError listing the valid ones."""
    out = {}
    for name, value in given.items():
        if name not in schema:
            import difflib

            near = difflib.get_close_matches(name, schema, n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise TypeError(
                f"{owner} has no option {name!r}{hint}; its options are: {', '.join(sorted(schema))}"
            )
        option = schema[name]
        if option.per_input is not None and isinstance(value, tuple):
            out[name] = tuple(option.check(f"{name}[{k}]", v) for k, v in enumerate(value))
        else:
            out[name] = option.check(name, value)
    return out


def broadcast_tensor(name: str, value: torch.Tensor, like: torch.Tensor, shape: tuple, what: str) -> torch.Tensor:
    """``value`` on ``like``'s device and dtype, broadcast to ``shape`` (``what`` names that shape in errors);
    a tensor that does not broadcast, or holds NaN or inf, is an error naming ``name``."""
    try:
        b = torch.broadcast_to(value.to(like.device, like.dtype), shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to {what} {tuple(shape)}"
        ) from None
    if not bool(torch.isfinite(b).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return b
