"""What a method under rules does when its rules do not cover the model: an error by default, a warning on request.

A rule method (rule set other than the plain gradient) that meets a nonlinear op on the input's float path with no
rule would silently return the plain gradient there, and one whose rules modify no op of the model returns the
gradient under another name.  Neither is the method the user asked for, so both are errors unless the call passes
``strict=False``, which accepts them with one :class:`UserWarning` per explainer and problem (not one per call).
Integer, boolean and shape-only ops never count: :mod:`tribute.core.interception` keeps them off the path.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field

from .interception import Coverage, op_key
from .rules import GRADIENT, RuleSet


class UncoveredModelError(ValueError):
    """A rule method met ops its rules do not cover (or its rules change nothing on the model)."""


@dataclass
class WarnOnce:
    """The problems an explainer already warned about: each is warned once, across calls and threads."""

    _seen: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def first_time(self, message: str) -> bool:
        with self._lock:
            if message in self._seen:
                return False
            self._seen.add(message)
            return True


@dataclass(frozen=True)
class Strictness:
    """The ``strict`` option of one call: None (the default) and True refuse what the rules do not cover, False
    warns once per explainer; True also records coverage for gradient methods (None and False run those without
    the engine's function mode, at no cost)."""

    strict: bool | None = None
    method: str = "this method"
    warned: WarnOnce | None = None

    def records(self, rules: RuleSet) -> bool:
        """Whether a pass under ``rules`` runs the function mode (and so fills the coverage)."""
        return rules != GRADIENT or self.strict is True

    def check(self, rules: RuleSet, coverage: Coverage) -> None:
        """Raise (or warn, with ``strict=False``) if ``coverage`` shows ops on the input's float path that ``rules``
        do not cover, or no op that they modify."""
        if rules == GRADIENT:
            return
        message = problem(rules, coverage, self.method)
        if message is None:
            return
        if self.strict is not False:
            raise UncoveredModelError(message)
        if self.warned is None or self.warned.first_time(message):
            warnings.warn(message, UserWarning, stacklevel=2)


# Ops of several inputs or of a whole vector, which no model uses to write a rectifier: a method defined as the
# gradient wherever its rules do not apply (guided backprop, DeconvNet) has them covered.  A one-input op the
# engine does not know (``torch.clamp(x, min=0)``, ``torch.erf``) may be a rectifier in another spelling, so it
# stays a gap for those methods too.
_NO_RECTIFIER = frozenset({
    "mul", "__mul__", "__rmul__", "__imul__", "mul_", "multiply", "div", "__truediv__", "__rtruediv__", "div_",
    "__itruediv__", "true_divide", "divide", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "softmax",
    "log_softmax", "layer_norm", "group_norm", "rms_norm", "normalize", "scaled_dot_product_attention",
    "multi_head_attention_forward",
})


def _gaps(rules: RuleSet, coverage: Coverage) -> list[str]:
    """The ops of ``coverage`` without a rule that ``rules`` leave uncovered."""
    if rules.exact_elsewhere:
        return []
    if rules.gradient_elsewhere:
        return [name for name in coverage.unruled if op_key(name) not in _NO_RECTIFIER]
    return list(coverage.unruled)


def problem(rules: RuleSet, coverage: Coverage, method: str) -> str | None:
    """The message naming what ``rules`` do not cover in ``coverage``, or None."""
    gaps = _gaps(rules, coverage)
    if gaps:
        ops = ", ".join(sorted(gaps))
        return (f"strict: {method}: ops on the input's path have no {rules.name} rule and would get the plain "
                f"gradient: {ops}. Register a rule (an elementwise op with tribute.register_nonlinearity, another "
                f"op with tribute.core.register_rule(family, op, rule)), or pass strict=False to accept the plain "
                f"gradient there (with a warning)")
    if not coverage.ruled and coverage.plain:  # (a path with no nonlinearity at all is every method's own answer)
        seen = ", ".join(sorted(coverage.plain)) or "none"
        return (f"strict: {method}: the {rules.name} rules changed nothing on this model: no op on the input's "
                f"path is one they modify (nonlinearities seen: {seen}), so the result would be the plain gradient "
                f"under another name. Use a gradient method, register a rule, or pass strict=False to accept it "
                f"(with a warning)")
    return None
