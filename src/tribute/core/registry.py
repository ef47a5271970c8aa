"""Method names → classes, and :func:`explain`, the one-call front over them."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from .method import Method

_METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: make a :class:`Method` available under ``name``."""
    def deco(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"a method named {name!r} is already registered ({_METHODS[name].__name__})")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The class registered as ``name``; unknown names raise a ValueError suggesting the nearest ones."""
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {type(name).__name__}")
    try:
        return _METHODS[name]
    except KeyError:
        near = difflib.get_close_matches(name, _METHODS, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"unknown method {name!r}{hint} Known methods: {', '.join(methods())}") from None


def explain(model: nn.Module, inputs: torch.Tensor, method: str, target=None, **options: Any) -> torch.Tensor:
    """Attributions of ``model``'s ``target`` score for ``inputs`` by the registered ``method``.

    Equivalent to ``tribute.<Class>(model, **options).attribute(inputs, target)``.

    Examples
    --------
    >>> import torch, tribute
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    >>> x = torch.randn(2, 4)
    >>> tribute.explain(model, x, "integrated_gradients", target=0, steps=16).shape
    torch.Size([2, 4])
    """
    return get_method(method)(model, **options).attribute(inputs, target)
