"""Composites: which LRP rule applies at which linear layer, and the registry of named composites.

A :class:`Composite` assigns a rule to each linear-layer call (by the module's name, the first layer, or the
layer's kind); a composite has a name in the registry when a factory makes it from the LRP method's rule
options (:class:`RuleParameters`).  A user's composite is one registration::

    register_composite("gamma_flat", lambda p: Composite(first=Flat(), conv=Gamma(p.gamma), dense=Epsilon(p.epsilon)))
    tribute.explain(model, x, "lrp", composite="gamma_flat", target=3)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core import options as opt
from .layer_call import LayerCall
from .merge_plan import MergePlan
from .propagation import Propagation
from .rules import AlphaBeta, Box, Epsilon, Flat, Gamma, LinearRule, ZPlus
from .weight_cache import WeightCache


class Composite:
    """Assigns an LRP rule to each linear-layer call.

    ``Composite(first=…, conv=…, dense=…, by_name={"features.0": …})``: ``by_name`` wins, then ``first``
    (the first linear layer on the input's path), then the layer's kind (``conv`` also covers transposed
    convolutions).  For anything else, subclass and override :meth:`rule`.
    """

    def __init__(self, *, conv: LinearRule, dense: LinearRule, first: LinearRule | None = None,
                 by_name: dict[str, LinearRule] | None = None, name: str = "composite"):
        self.conv, self.dense, self.first = conv, dense, first
        self.by_name = dict(by_name or {})
        self.name = name

    def rule(self, layer: LayerCall) -> LinearRule:
        if layer.name in self.by_name:
            return self.by_name[layer.name]
        if layer.first and self.first is not None:
            return self.first
        return self.dense if layer.kind == "dense" else self.conv

    def needs_modules(self) -> bool:
        """Whether :meth:`rule` reads a layer's module or name (``by_name``, or a subclass's own ``rule``)."""
        return bool(self.by_name) or type(self).rule is not Composite.rule

    def start(self, cache: WeightCache | None = None, plan: MergePlan | None = None) -> Propagation:
        """The handler for one forward pass (``cache``: where layers keep the weights their rules derive; ``plan``:
        where batch norm merged in an earlier pass, :mod:`tribute.lrp.merge_plan`)."""
        return Propagation(self, cache=cache, plan=plan)

    def key(self) -> tuple:
        return (type(self).__name__, self.conv.key(), self.dense.key(),
                None if self.first is None else self.first.key(),
                tuple(sorted((k, v.key()) for k, v in self.by_name.items())))

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, first={self.first}, conv={self.conv}, dense={self.dense})"


class WithWeights:
    """A composite whose forward passes keep the weights their rules derive in ``cache`` (None: none kept) and
    follow ``plan`` (where batch norm merged before)."""

    def __init__(self, composite: Composite, cache: WeightCache | None, plan: MergePlan | None = None):
        self.composite, self.cache, self.plan = composite, cache, plan

    def start(self) -> Propagation:
        return self.composite.start(cache=self.cache, plan=self.plan)

    def key(self) -> tuple:
        return self.composite.key()



@dataclass(frozen=True)
class RuleParameters:
    """The LRP method's rule options, as a composite factory reads them (``p.epsilon``, ``p.gamma``, …)."""

    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: Any = None
    high: Any = None
    input_shape: tuple = ()
    input_transform: Callable | None = None

    def bounds(self, composite: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) in the model's input space, for the zᴮ rule of ``composite``."""
        if self.low is None or self.high is None:
            raise ValueError(f"composite {composite!r} needs the input's bounds: low= and high= (pixel space)")
        return _bound(self.low, self.input_shape, self.input_transform), \
            _bound(self.high, self.input_shape, self.input_transform)


def _bound(value, x_shape, transform) -> torch.Tensor:
    """A bound given as a number, per channel or as a tensor in pixel space, in the model's input space.

    Per-channel bounds stay (1, C, 1, …) so that they broadcast to whatever the first layer sees (a model
    may pad its input before the first convolution)."""
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.dim() <= 1 and len(x_shape) > 2:
        t = t.reshape(1, -1, *([1] * (len(x_shape) - 2)))
        if t.shape[1] == 1:
            t = t.expand(1, x_shape[1], *t.shape[2:])
    return t if transform is None else transform(t)


_COMPOSITES: dict[str, Callable[[RuleParameters], Composite]] = {}


def register_composite(name: str, factory: Callable[[RuleParameters], Composite]) -> None:
    """Make the composite that ``factory(parameters)`` gives available as ``composite=name`` of the LRP methods.
    A name already registered is refused."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a composite's name must be a non-empty string, got {name!r}")
    if name in _COMPOSITES:
        raise ValueError(f"a composite named {name!r} is already registered")
    if not callable(factory):
        raise TypeError(f"a composite factory must be callable (RuleParameters -> Composite), got {factory!r}")
    _COMPOSITES[name] = factory


def unregister_composite(name: str) -> None:
    """Remove the composite registered as ``name``."""
    if _COMPOSITES.pop(name, None) is None:
        raise KeyError(f"no composite named {name!r} is registered")


def composites() -> list[str]:
    """The names of the registered composites, in the order they were registered."""
    return list(_COMPOSITES)


def make_composite(composite: str | Composite, parameters: RuleParameters) -> Composite:
    """``composite`` itself, or the registered composite of that name made with ``parameters``."""
    if isinstance(composite, Composite):
        return composite
    made = _COMPOSITES[check_composite("composite", composite)](parameters)
    if not isinstance(made, Composite):
        raise TypeError(f"the factory of composite {composite!r} returned {made!r}, not a Composite")
    if made.name == "composite":  # unnamed: it goes by its registered name
        made.name = composite
    return made


def check_composite(name: str, value: Any) -> Any:
    """An option's check: a :class:`Composite` or the name of a registered one."""
    if isinstance(value, Composite):
        return value
    return opt.choice(_COMPOSITES)(name, value)


def _same_everywhere(rule: Callable[[RuleParameters], LinearRule]) -> Callable[[RuleParameters], Composite]:
    return lambda p: Composite(conv=rule(p), dense=rule(p))


register_composite("epsilon", _same_everywhere(lambda p: Epsilon(p.epsilon)))
register_composite("zplus", _same_everywhere(lambda p: ZPlus()))
register_composite("alpha_beta", _same_everywhere(lambda p: AlphaBeta(p.alpha, p.beta)))
register_composite("gamma", _same_everywhere(lambda p: Gamma(p.gamma)))
register_composite("epsilon_plus", lambda p: Composite(conv=ZPlus(), dense=Epsilon(p.epsilon)))
register_composite("epsilon_plus_flat", lambda p: Composite(first=Flat(), conv=ZPlus(), dense=Epsilon(p.epsilon)))
register_composite("epsilon_alpha2_beta1", lambda p: Composite(conv=AlphaBeta(2.0, 1.0), dense=Epsilon(p.epsilon)))
register_composite("epsilon_gamma_box", lambda p: Composite(
    first=Box(*p.bounds("epsilon_gamma_box")), conv=Gamma(p.gamma), dense=Epsilon(p.epsilon)))
