"""One registry of backward rules, keyed by method family and op: the seam every propagation method plugs into.

A *family* is one way of propagating a signal backwards ("lrp", "reveal_cancel", …); an *op* is the last part of
the name torch gives the function called (``"add"``, ``"__iadd__"``, ``"conv2d"``, ``"relu"``), or ``"*"`` for
every elementwise nonlinearity.  A rule is one of three kinds (:class:`RuleKind`):

- **elementwise**: y = f(z) with one input, at the engine's nonlinearities (:class:`.rules.ElementwiseRule`);
- **linear**: a layer z = op(x, W, b) whose weight and bias do not depend on the input (conv, dense);
- **n-ary**: any other op with one or more tensor inputs on the input's path: additions, products, pooling,
  moves, normalisations (:class:`OpRule`).

Each family registers its rules from its own package (``register_rule("lrp", ("add", "__add__"), Proportional())``);
adding a rule for a new op is one small class and one registration, whichever method reads the family.  A
family's op handler takes :func:`rule_table` once per pass; every intercepted op then costs one dict lookup.
This module knows no method: only keys, kinds, registration and lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from types import MappingProxyType
from typing import Any


class RuleKind(Enum):
    """What an op a rule serves looks like (see the module doc)."""

    ELEMENTWISE = "elementwise"
    LINEAR = "linear"
    NARY = "n-ary"


class BackwardRule:
    """Base of every rule: a kind, a name, and a :meth:`key` that says when two rules are the same."""

    kind = RuleKind.NARY
    name = "rule"

    def key(self) -> tuple:
        """What makes two rules the same (rule sets compare by it)."""
        return (type(self).__name__, tuple(sorted(vars(self).items())))

    def with_options(self, **options: Any) -> BackwardRule:
        """This rule with ``options`` set (ε, a tolerance, β): a configured copy, the registered rule untouched.

        The options are the rule's constructor arguments, which it keeps as attributes of the same names;
        an option the rule does not take is refused.  No options: the rule itself."""
        if not options:
            return self
        unknown = sorted(set(options) - set(vars(self)))
        if unknown:
            takes = ", ".join(sorted(vars(self))) or "none"
            raise TypeError(f"the {self.name!r} rule takes no option {', '.join(unknown)} (its options: {takes})")
        return type(self)(**{**vars(self), **options})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class OpRule(BackwardRule):
    """A rule at an op with tensor inputs (n-ary, or a linear layer's call).

    :meth:`apply` runs the op during the forward pass with whatever autograd node gives the family's backward
    step; ``handler`` is the family's per-pass handler (what the rule may read or record of the pass), ``tagged``
    tells the tensors on the input's path.  Returning ``NotImplemented`` leaves the op to run plainly."""

    def apply(self, handler: Any, func: Callable, args: tuple, kwargs: dict, tagged: Callable[[Any], bool],
              name: str) -> Any:
        raise NotImplementedError


_TABLES: dict[str, dict[str, BackwardRule]] = {}
_VERSION = [0]  # changes with every registration or removal, so that what is built from the tables can be cached


def register_rule(family: str, ops: str | Iterable[str], rule: BackwardRule, *, replace: bool = False) -> None:
    """Make ``rule`` the rule of ``family`` at each op in ``ops``; an op that already has one is refused unless
    ``replace`` is true."""
    if not isinstance(rule, BackwardRule):
        raise TypeError(f"a rule must be a BackwardRule (ElementwiseRule, LinearRule or OpRule), got {rule!r}")
    names = (ops,) if isinstance(ops, str) else tuple(ops)
    table = _TABLES.setdefault(family, {})
    taken = [op for op in names if op in table and table[op] is not rule]
    if taken and not replace:
        raise ValueError(f"family {family!r} already has a rule at {', '.join(taken)}; pass replace=True to change it")
    for op in names:
        table[op] = rule
    _VERSION[0] += 1


def unregister_rule(family: str, op: str) -> BackwardRule:
    """Remove the rule of ``family`` at ``op`` and return it."""
    try:
        rule = _TABLES[family].pop(op)
    except KeyError:
        raise KeyError(f"family {family!r} has no rule at {op!r}") from None
    _VERSION[0] += 1
    return rule


def registry_version() -> int:
    """A number that changes whenever a rule is registered or removed (for caches of what the tables give)."""
    return _VERSION[0]


def rule_table(family: str) -> Mapping[str, BackwardRule]:
    """The live, read-only table op → rule of ``family`` (an op handler keeps it for its pass)."""
    return MappingProxyType(_TABLES.setdefault(family, {}))


def rules_of_kind(family: str, kind: RuleKind) -> dict[str, BackwardRule]:
    """The ops of ``family`` whose rule is of ``kind`` (e.g. the elementwise ones, for a rule set)."""
    return {op: r for op, r in _TABLES.get(family, {}).items() if r.kind is kind}


def families() -> list[str]:
    """The names of the families that registered rules, sorted."""
    return sorted(_TABLES)
