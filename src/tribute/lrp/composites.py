"""Composites: which LRP rule applies at which linear layer, and the registry of named composites.

A :class:`Composite` assigns a rule to each linear-layer call (by the module's name, the first layer, or the
layer's kind); a composite has a name in the registry when a factory makes it from the LRP method's rule
options (:class:`RuleParameters`), and declares the options it reads.  A user's composite is one registration::

    register_composite("gamma_flat", lambda p: Composite(first=Flat(), conv=Gamma(p.gamma), dense=Epsilon(p.epsilon)),
                       parameters=("gamma", "epsilon"))
    tribute.explain(model, x, "lrp", composite="gamma_flat", gamma=0.5, target=3)

The LRP method refuses a rule parameter given explicitly to a composite that does not declare it
(:func:`refuse_unread`): an option is never accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..core import options as opt
from . import rules as lrp_rules
from .absorbed import Absorbed
from .layer_call import LayerCall
from .merge_plan import MergePlan
from .propagation import Propagation
from .rules import AlphaBeta, Box, Epsilon, Flat, Gamma, LinearRule, ZPlus
from .weight_cache import WeightCache


class Composite:
    """Assigns an LRP rule to each linear-layer call.

    ``Composite(first=…, conv=…, dense=…, by_name={"features.0": …})``: ``by_name`` wins, then ``first``
    (the first linear layer on the input's path; for a model taking several inputs, on each input's path: an
    image's first convolution and a table's first dense layer), then the layer's kind (``conv`` also covers
    transposed convolutions).  For anything else, subclass and override :meth:`rule`.

    ``stabilizer``: the ε of stab_ε at the ops that are not linear layers, the Norm rule's
    R_i = x_i Σ_j ∂y_j/∂x_i R_j / stab_ε(y_j) (residual additions, pooling, LayerNorm with σ held, unmerged batch
    norm); None: :data:`tribute.lrp.STABILIZER` (1e-6).  It guards the division; it is not the ε rule's filter of
    weak or contradictory relevance, which the composite places at the layers it names (Montavon et al. 2019, §10.2.1
    and §10.3: a layer-specific ε, and a tiny increment everywhere else, 1e-9 in their tutorial).  The registered
    composites with an ε rule take min(ε, 1e-6): a large ε then stays at the layers chosen for it, and a small one
    (ε → 0, LRP-0 in the limit, as LXT computes with the plain gradient at additions) is not spoilt by a larger
    increment at every addition and normalisation.
    """

    def __init__(self, *, conv: LinearRule, dense: LinearRule, first: LinearRule | None = None,
                 by_name: dict[str, LinearRule] | None = None, name: str = "composite",
                 stabilizer: float | None = None):
        self.conv, self.dense, self.first = conv, dense, first
        self.by_name = dict(by_name or {})
        self.name = name
        if stabilizer is not None and not stabilizer > 0:
            raise ValueError(f"stabilizer must be > 0, got {stabilizer}")
        self.stabilizer = None if stabilizer is None else float(stabilizer)

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
                tuple(sorted((k, v.key()) for k, v in self.by_name.items())), self.stabilizer)

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, first={self.first}, conv={self.conv}, dense={self.dense})"


class WithWeights:
    """A composite whose forward passes keep the weights their rules derive in ``cache`` (None: none kept) and
    follow ``plan`` (where batch norm merged before), treat attention's softmax as ``attention`` says
    (:mod:`tribute.lrp.attention`) and count the relevance constants absorb in ``absorbed`` (None: not counted)."""

    def __init__(self, composite: Composite, cache: WeightCache | None, plan: MergePlan | None = None,
                 attention: str = "cp", absorbed: Absorbed | None = None):
        self.composite, self.cache, self.plan = composite, cache, plan
        self.attention, self.absorbed = attention, absorbed

    def start(self) -> Propagation:
        prop = self.composite.start(cache=self.cache, plan=self.plan)
        prop.attention, prop.absorbed = self.attention, self.absorbed
        return prop

    def key(self) -> tuple:
        return self.composite.key(), self.attention, self.absorbed is not None



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
    """A bound given as a number, per input feature or as a tensor, in the model's input space.

    Without an input transform, a number stays 0-dim and a 1-D bound (one value per feature) stays 1-D: the zᴮ rule
    places it on the feature axis of its layer's input *as the layer reads it* (:meth:`tribute.lrp.rules.Box.placed`:
    a convolution's channels on dim 1, a dense/addmm/matmul layer's features on the last dim, which also holds for a
    layer reading the input reshaped to (N·T, C), as GPT-2's ``Conv1D`` does).  With a transform (pixel space to
    the model's input, an image normalisation), the bound is laid out per channel (1, C, 1, …) for the transform to
    read, as a convolution reads it (a model may pad its input before the first convolution)."""
    t = torch.as_tensor(value, dtype=torch.float64)
    if transform is None:
        return t
    if t.dim() <= 1 and len(x_shape) > 2:
        t = t.reshape(1, -1, *([1] * (len(x_shape) - 2)))
        if t.shape[1] == 1:
            t = t.expand(1, x_shape[1], *t.shape[2:])
    return transform(t)


#: the LRP method's options a composite factory may read from :class:`RuleParameters`
RULE_PARAMETERS = ("epsilon", "gamma", "alpha", "beta", "low", "high")


@dataclass(frozen=True)
class _Registration:
    factory: Callable[[RuleParameters], Composite]
    parameters: frozenset[str]


_COMPOSITES: dict[str, _Registration] = {}


def register_composite(name: str, factory: Callable[[RuleParameters], Composite], *,
                       parameters: Iterable[str] = ()) -> None:
    """Make the composite that ``factory(parameters)`` gives available as ``composite=name`` of the LRP methods.

    ``parameters`` names the options of :data:`RULE_PARAMETERS` the factory reads (none by default); the LRP
    method refuses the others when given explicitly.  A name already registered is refused."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a composite's name must be a non-empty string, got {name!r}")
    if name in _COMPOSITES:
        raise ValueError(f"a composite named {name!r} is already registered")
    if not callable(factory):
        raise TypeError(f"a composite factory must be callable (RuleParameters -> Composite), got {factory!r}")
    if isinstance(parameters, str):
        raise TypeError(f"parameters= must be a sequence of names, got the string {parameters!r}")
    parameters = frozenset(parameters)
    unknown = sorted(parameters - set(RULE_PARAMETERS))
    if unknown:
        raise ValueError(f"composite {name!r}: parameters= names {unknown}, which are not rule parameters; "
                         f"they are {', '.join(RULE_PARAMETERS)}")
    _COMPOSITES[name] = _Registration(factory, parameters)


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
    made = _COMPOSITES[check_composite("composite", composite)].factory(parameters)
    if not isinstance(made, Composite):
        raise TypeError(f"the factory of composite {composite!r} returned {made!r}, not a Composite")
    if made.name == "composite":  # unnamed: it goes by its registered name
        made.name = composite
    return made


def composite_parameters(composite: str | Composite) -> tuple[str, ...]:
    """The rule parameters ``composite`` reads (in :data:`RULE_PARAMETERS`' order): those its registration
    declares; none for a :class:`Composite` given as is, whose rules hold their own."""
    if isinstance(composite, Composite):
        return ()
    declared = _COMPOSITES[check_composite("composite", composite)].parameters
    return tuple(n for n in RULE_PARAMETERS if n in declared)


def refuse_unread(composite: str | Composite, given: Iterable[str]) -> None:
    """Raise a TypeError naming the first option of ``given`` that is a rule parameter ``composite`` does not read
    (an option accepted and ignored would be a silent wrong answer)."""
    reads = composite_parameters(composite)
    unread = [n for n in RULE_PARAMETERS if n in set(given) and n not in reads]
    if not unread:
        return
    name = unread[0]
    if isinstance(composite, Composite):
        raise TypeError(f"{name}= is not read by the Composite given as composite= (its rules hold their own "
                        f"parameters); set it on the rule, or give a registered composite that reads {name}")
    readers = [c for c, r in _COMPOSITES.items() if name in r.parameters]
    raise TypeError(f"{name}= is not read by composite {composite!r}, which reads "
                    f"{', '.join(reads) or 'no rule parameter'}; composites that read {name}: "
                    f"{', '.join(readers) or 'none'} (a registration declares what it reads: "
                    "register_composite(..., parameters=...))")


def check_composite(name: str, value: Any) -> Any:
    """An option's check: a :class:`Composite` or the name of a registered one."""
    if isinstance(value, Composite):
        return value
    return opt.choice(_COMPOSITES)(name, value)


def _same_everywhere(rule: Callable[[RuleParameters], LinearRule]) -> Callable[[RuleParameters], Composite]:
    return lambda p: Composite(conv=rule(p), dense=rule(p))


def _guard(p: RuleParameters) -> float:
    """The Norm rule's stabiliser of a composite with an ε rule: min(ε, :data:`STABILIZER`) (see :class:`Composite`;
    read when the composite is made, so that a test may lower the module's constant)."""
    return min(p.epsilon, lrp_rules.STABILIZER)


register_composite("epsilon", lambda p: Composite(conv=Epsilon(p.epsilon), dense=Epsilon(p.epsilon),
                                                  stabilizer=_guard(p)), parameters=("epsilon",))
register_composite("zplus", _same_everywhere(lambda p: ZPlus()))
register_composite("alpha_beta", _same_everywhere(lambda p: AlphaBeta(p.alpha, p.beta)), parameters=("alpha", "beta"))
register_composite("gamma", _same_everywhere(lambda p: Gamma(p.gamma)), parameters=("gamma",))
register_composite("epsilon_plus", lambda p: Composite(conv=ZPlus(), dense=Epsilon(p.epsilon), stabilizer=_guard(p)),
                   parameters=("epsilon",))
register_composite("epsilon_plus_flat", lambda p: Composite(first=Flat(), conv=ZPlus(), dense=Epsilon(p.epsilon),
                                                            stabilizer=_guard(p)), parameters=("epsilon",))
register_composite("epsilon_alpha2_beta1", lambda p: Composite(conv=AlphaBeta(2.0, 1.0), dense=Epsilon(p.epsilon),
                                                               stabilizer=_guard(p)), parameters=("epsilon",))
register_composite("epsilon_gamma_box", lambda p: Composite(
    first=Box(*p.bounds("epsilon_gamma_box")), conv=Gamma(p.gamma), dense=Epsilon(p.epsilon), stabilizer=_guard(p)),
    parameters=("epsilon", "gamma", "low", "high"))
