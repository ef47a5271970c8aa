"""A ``method`` argument resolved once: what every metric, attack on explanations, ROAR and sanity check call.

A user names the explanation to evaluate in one of four ways: a registry name (``"integrated_gradients"``),
a :class:`tribute.Method` class, a :class:`tribute.Method` instance, or any callable
``(model, inputs, target) -> attributions``.  :func:`resolve_method` checks it once and gives a
:class:`ResolvedMethod`: its label (for tables), its options, and :meth:`ResolvedMethod.bind`, an explainer
bound to one model.  The caller's ``seed`` and ``batch_size`` go to a method that takes them unless the user set
them (in the options or on the instance); a per-call ``noise_key`` goes to a method that draws noise (SmoothGrad
and its variants), so that two calls keyed alike draw the same noise (common random numbers: the robustness
metrics at x and x + δ, input invariance at x and at the shifted x).  A plain callable gets none of these: it
is called as it is, and options for it are an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attribution.random_map import uniform_draws
from ..core.method import Method
from ..core.registry import get_method

#: the option through which a stochastic method takes the tensor that keys its noise
NOISE_KEY = "noise_key"
#: the label (and, when no method of that name is registered, the name) of :func:`random_attribution`
RANDOM = "random"
#: options a caller supplies when the method takes them and the user left them unset
AUTOMATIC = ("seed", "batch_size")


def random_attribution(model: nn.Module, inputs: torch.Tensor, target=None, *, seed: int | None = 0) -> torch.Tensor:
    """Uniform noise on [0, 1) of the inputs' shape: the random ranking of ROAR's and evaluate's baseline row.

    The registered method ``"random"`` (:class:`tribute.attribution.random_map.RandomAttribution`) as a callable
    ``(model, inputs, target)``: the same draw (:func:`~tribute.attribution.random_map.uniform_draws`), each sample
    from its own stream seeded from ``seed`` and the sample's bytes, so a sample gets the same map in any batch.
    ``model`` and ``target`` are ignored.
    """
    return uniform_draws(inputs, seed)


@dataclass(frozen=True)
class ResolvedMethod:
    """A checked ``method`` argument: its label, the user's options, and what it accepts.

    ``klass`` is the Method class (None for a plain callable); ``preset`` the options a Method instance was
    built with; ``accepted`` the option names the method takes (None: a plain callable, which takes none).
    """

    label: str
    method: Any
    options: dict[str, Any] = field(default_factory=dict)
    klass: type[Method] | None = None
    preset: dict[str, Any] = field(default_factory=dict)
    accepted: frozenset[str] | None = None

    def takes(self, option: str) -> bool:
        """Whether the caller may supply ``option``: the method takes it and the user did not set it."""
        return (self.accepted is not None and option in self.accepted and option not in self.options
                and self.preset.get(option) is None)

    def bind(self, model: nn.Module, *, seed: int | None = None, batch_size: int | None = None,
             **fixed: Any) -> BoundExplainer:
        """An explainer of ``model``: ``seed`` and ``batch_size`` go to a method that takes them and where the
        user left them unset; ``fixed`` options are imposed (a caller's own, e.g. ``differentiable=True``)."""
        if fixed and self.klass is None:
            raise TypeError(f"method {self.label!r} is a plain callable; it takes no options ({sorted(fixed)})")
        automatic = {k: v for k, v in (("seed", seed), ("batch_size", batch_size)) if v is not None and self.takes(k)}
        options = {**automatic, **self.options, **fixed}
        if self.klass is None:
            return BoundExplainer(model, functools.partial(self.method, model, **options), None, False)
        if isinstance(self.method, Method) and model is self.method.model and not options:
            return BoundExplainer(model, self.method.attribute, self.method, self.takes(NOISE_KEY))
        instance = self.klass(model, **{**self.preset, **options})
        return BoundExplainer(model, instance.attribute, instance, self.takes(NOISE_KEY))

    def with_options(self, **options: Any) -> ResolvedMethod:
        """The same method with more options (checked when bound)."""
        if options and self.klass is None:
            raise TypeError(f"method {self.label!r} is a plain callable; it takes no options ({sorted(options)})")
        return ResolvedMethod(self.label, self.method, {**self.options, **options}, self.klass, self.preset,
                              self.accepted)


@dataclass(frozen=True)
class BoundExplainer:
    """``bound(inputs, target, noise_key=None) -> attributions``: a resolved method bound to ``model``.

    ``instance`` is the Method doing the work (None for a plain callable); ``keyed`` whether ``noise_key`` is
    passed on (the method draws noise and the user did not fix its key).
    """

    model: nn.Module
    explain: Callable
    instance: Method | None
    keyed: bool

    def __call__(self, inputs: torch.Tensor, target=None, *, noise_key: torch.Tensor | None = None) -> torch.Tensor:
        if noise_key is not None and self.keyed:
            return self.explain(inputs, target, **{NOISE_KEY: noise_key})
        return self.explain(inputs, target)


def resolve_method(method, options: dict[str, Any] | None = None, *, label: str | None = None,
                   name: str = "method") -> ResolvedMethod:
    """``method`` (a registry name, a Method class or instance, or a callable) checked, with its ``options``.

    Unknown names raise a ValueError naming the nearest ones; ``"random"`` is the registered
    :class:`~tribute.attribution.random_map.RandomAttribution`, whose draws are :func:`random_attribution`'s.
    Options for a plain callable are refused; options a method does not take are refused when it is bound.
    """
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"{name}: options must be a dict, got {type(options).__name__}")
    options = dict(options or {})
    if isinstance(method, str):  # an unknown name raises here, with the nearest names
        klass = get_method(method)
        return ResolvedMethod(label or method, method, options, klass, {}, frozenset(klass.schema()))
    if isinstance(method, type) and issubclass(method, Method):
        return ResolvedMethod(label or method_label(method), method, options, method, {}, frozenset(method.schema()))
    if isinstance(method, Method):
        preset = dict(method.defaults)  # the options the instance was built with
        klass = type(method)
        return ResolvedMethod(label or method_label(method), method, options, klass, preset, frozenset(klass.schema()))
    if method is random_attribution:
        return ResolvedMethod(label or RANDOM, method, options, None, {}, frozenset({"seed"}))
    if not callable(method):
        raise TypeError(f"{name}: a method must be a registered name, a tribute Method or a callable "
                        f"(model, inputs, target) -> attributions; got {type(method).__name__}")
    if options:
        raise TypeError(f"{name}: options {sorted(options)} for {label or method_label(method)!r} can only be given "
                        "with a method name or Method class (or instance)")
    return ResolvedMethod(label or method_label(method), method, {}, None, {}, None)


def method_label(method) -> str:
    """A method's name for tables: the registry name, a Method's name, a callable's ``__name__``."""
    if isinstance(method, str):
        return method
    if isinstance(method, functools.partial):
        return method_label(method.func)
    if method is random_attribution:
        return RANDOM
    return getattr(method, "name", None) or getattr(method, "__name__", None) or type(method).__name__


def named_methods(methods, *, name: str = "methods") -> list[ResolvedMethod]:
    """The user's ``methods`` resolved and labelled (:func:`resolve_method`), for functions that compare several.

    Each item is a method (as :func:`resolve_method` takes), a ``(label, method)`` pair or a
    ``(label, method, options)`` triple; two methods with the same label are an error.
    """
    if isinstance(methods, (str, Method)) or (callable(methods) and not isinstance(methods, Sequence)):
        methods = [methods]
    if not isinstance(methods, Sequence):
        raise TypeError(f"{name} must be a list of method names, Methods, callables or (label, method) pairs; "
                        f"got {type(methods).__name__}")
    if len(methods) == 0:
        raise ValueError(f"{name} is empty: give at least one method")
    out: list[ResolvedMethod] = []
    for item in methods:
        label, options = None, None
        if isinstance(item, tuple):
            if len(item) not in (2, 3) or not isinstance(item[0], str):
                raise TypeError(f"{name}: a tuple must be (label, method) or (label, method, options); got {item!r}")
            if len(item) == 3 and not isinstance(item[2], dict):
                raise TypeError(f"{name}: the options of {item[0]!r} must be a dict, got {type(item[2]).__name__}")
            label, item, options = item[0], item[1], (item[2] if len(item) == 3 else None)
        resolved = resolve_method(item, options, label=label, name=name)
        if any(m.label == resolved.label for m in out):
            raise ValueError(f"{name}: two methods are labelled {resolved.label!r}; pass (label, method) pairs to "
                             "tell them apart")
        out.append(resolved)
    return out


def as_explainer(method, **options: Any) -> Callable[[nn.Module, torch.Tensor, Any], torch.Tensor]:
    """``method`` as a callable ``(model, inputs, target) -> attributions`` with ``options`` (one binding per
    model: chunks of one model share a Method instance and what it keeps between calls)."""
    resolved = resolve_method(method, options)
    last: list = []

    def explain(model, inputs, target):
        if not last or last[0] is not model:
            last[:] = [model, resolved.bind(model)]
        return last[1](inputs, target)
    return explain


__all__ = ["BoundExplainer", "ResolvedMethod", "as_explainer", "method_label", "named_methods", "random_attribution",
           "resolve_method"]
