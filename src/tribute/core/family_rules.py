"""A family's rule set, made from the registry (:mod:`tribute.core.rule_registry`): how a method gets its rules.

``family_rules("deeplift")`` is the :class:`~tribute.core.rules.RuleSet` of the family: its elementwise rules, set
to this call's options (``family_rules("lrp_epsilon", epsilon=1e-3)``, :meth:`BackwardRule.with_options`), and,
only if the family has registered rules at other ops (linear layers, n-ary ops such as products), an op handler
(:class:`FamilyOps`) that runs each op on the input's path under the family's rule at it.  A family with
elementwise rules alone gets no op handler, so the gradient methods' hot path costs nothing more than before.

A method names its family once, as a class attribute ``rules = FamilyRules("guided_backprop")``, or calls
:func:`family_rules` with its options in ``rule_set``.  Rule sets are cached until a rule is registered or
removed.  LRP and RevealCancel keep handlers of their own that satisfy the same contract.
This module knows no method: only families, their tables and the handler contract of
:class:`tribute.core.interception.RuleMode` (``start``, ``key``; per pass ``handle``, ``unruled``,
``before_write``, ``count_consumers``, ``track_modules``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from .interception import LINEAR_OPS, count_tensors, current_phase, divisor_on_path, linear_on_path
from .rule_registry import RuleKind, families, registry_version, rule_table, rules_of_kind
from .rules import RuleSet

_CACHE: dict[tuple, tuple[int, RuleSet]] = {}
_CACHE_SIZE = 64  # distinct (family, options) kept; a loop over many ε values must not grow it without bound


def family_rules(family: str, **options: Any) -> RuleSet:
    """The rule set of ``family`` with ``options`` given to its elementwise rules (see the module doc)."""
    key = (family, _options_key(options))
    try:
        version, rules = _CACHE[key]
    except (KeyError, TypeError):  # not built yet, or an option that cannot be a key
        version, rules = -1, None
    if version == registry_version():
        return rules
    rules = _build(family, options)
    try:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = (registry_version(), rules)
    except TypeError:
        pass
    return rules


def _options_key(options: Mapping[str, Any]) -> tuple:
    return tuple(sorted(options.items()))


def _build(family: str, options: dict[str, Any]) -> RuleSet:
    table = rule_table(family)
    if not table:
        raise ValueError(f"no rules are registered for the family {family!r}; families: {', '.join(families())}")
    elementwise = rules_of_kind(family, RuleKind.ELEMENTWISE)
    if options and not elementwise:
        raise TypeError(f"the family {family!r} has no elementwise rule to take the options {sorted(options)}")
    configured = {op: rule.with_options(**options) for op, rule in elementwise.items()}
    at_ops = any(rule.kind is not RuleKind.ELEMENTWISE for rule in table.values())
    name = family if not options else f"{family}({', '.join(f'{k}={v!r}' for k, v in sorted(options.items()))})"
    return RuleSet(name, configured, ops=FamilyOps(family, options) if at_ops else None)


class FamilyRules:
    """``rules = FamilyRules(family)`` on a method class: the family's rule set (no options), read from the
    registry whenever it is asked for, so a rule registered later is seen by the method."""

    def __init__(self, family: str):
        self.family = family

    def __get__(self, instance: Any, owner: type | None = None) -> RuleSet:
        return family_rules(self.family)


class FamilyOps:
    """The op handler of a family with rules at ops other than nonlinearities; :meth:`start` gives one pass's."""

    def __init__(self, family: str, options: Mapping[str, Any]):
        self.family = family
        self.options = dict(options)

    def key(self) -> tuple:
        return ("family", self.family, _options_key(self.options))

    def start(self) -> FamilyPass:
        return FamilyPass(self.family, self.options)


class FamilyPass:
    """One forward pass: each op on the input's path runs under the family's rule at it (``rule.apply(self, …)``,
    which may read :attr:`options` and :attr:`phase`); an op with no rule runs plainly, which is right where it
    is linear in its inputs on the path (:func:`tribute.core.interception.linear_on_path`); any other op is listed
    in :attr:`unruled` (the coverage report shows it and ``strict=True`` refuses it)."""

    def __init__(self, family: str, options: Mapping[str, Any]):
        self.family = family
        self.options = options
        self.table = rule_table(family)
        #: the pass's phase: whether the attribution's backward pass is still to come (see :class:`.rules.Phase`)
        self.phase = current_phase()
        self.unruled: list[str] = []
        #: whether the last op handled ran under a rule that computes the op's own gradient (a faster form of the
        #: plain op, e.g. DeepLIFT's linear layer skipping the references' zero rows): counted as linear, not ruled
        self.gradient_form = False
        #: the ops (the last part of their names) :meth:`handle` would give back unruled and unlisted whatever their
        #: arguments — linear or structural, no rule of the family at them — and whose reads and writes this pass
        #: notes nothing of: the mode runs them without asking (its fast path; per-op overhead dominates on small
        #: transformers)
        self.plainly = plain_ops(family, self.table) if _notes_nothing(type(self)) else frozenset()

    def handle(self, func: Callable, args: tuple, kwargs: dict, tagged: Callable[[Any], bool], name: str) -> Any:
        op = name.rsplit(".", 1)[-1]
        rule = self.table.get(op)
        if rule is not None and rule.kind is not RuleKind.ELEMENTWISE:
            self.gradient_form = getattr(rule, "gradient_form", False)
            return rule.apply(self, func, args, kwargs, tagged, name)
        if not linear_on_path(op, _count_on_path(args, kwargs, tagged), count_tensors(args, kwargs),
                              denominator=divisor_on_path(op, args, kwargs, tagged)):
            self.unruled.append(name)
        return NotImplemented

    def track_modules(self, model: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the family's rules see ops, not modules

    def count_consumers(self, args: tuple, kwargs: dict, tagged: Callable[[Any], bool]) -> None:
        pass  # nothing is kept per tensor

    def before_write(self, t: Any, writer: str | None = None) -> None:
        pass  # nothing is kept by reference


_PLAIN: dict[str, tuple[int, frozenset[str]]] = {}


def plain_ops(family: str, table: Mapping[str, Any]) -> frozenset[str]:
    """The ops of :data:`tribute.core.interception.LINEAR_OPS` with no rule of ``family`` other than an elementwise
    one (``table`` is the family's), remembered until a rule is registered or removed."""
    version = registry_version()
    known = _PLAIN.get(family)
    if known is not None and known[0] == version:
        return known[1]
    ops = frozenset(op for op in LINEAR_OPS if table.get(op) is None or table[op].kind is RuleKind.ELEMENTWISE)
    _PLAIN[family] = (version, ops)
    return ops


def _notes_nothing(cls: type) -> bool:
    """Whether a pass class keeps :class:`FamilyPass`'s handling of unruled ops: no reads counted, no writes
    watched, ops without a rule judged by :meth:`FamilyPass.handle` (then its :attr:`~FamilyPass.plainly` holds)."""
    return (cls.handle is FamilyPass.handle and cls.count_consumers is FamilyPass.count_consumers
            and cls.before_write is FamilyPass.before_write)


def _count_on_path(args: tuple, kwargs: dict, tagged: Callable[[Any], bool]) -> int:
    n = 0
    for a in (*args, *kwargs.values()):
        n += sum(map(tagged, a)) if isinstance(a, (list, tuple)) else tagged(a)
    return n
