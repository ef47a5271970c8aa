"""The engine: interception of nonlinearities, backward rules, targets, batching.  Knows no method."""

from .engine import PassCount, count_passes
from .interception import Coverage, apply_rules
from .method import Method, NonFiniteAttributionError
from .nonlinearities import known_nonlinearities, register_nonlinearity
from .registry import explain, get_method, methods, register
from .rules import GRADIENT, Rule, RuleSet
from .transforms import Normalize

__all__ = [
    "GRADIENT", "Coverage", "Method", "NonFiniteAttributionError", "Normalize", "PassCount", "Rule",
    "RuleSet", "apply_rules", "count_passes", "explain", "get_method", "known_nonlinearities", "methods",
    "register", "register_nonlinearity",
]
