"""The engine: interception of nonlinearities, backward rules, targets, batching.  Knows no method."""

from .engine import DisconnectedInputError, PassCount, count_passes
from .interception import Coverage, apply_rules
from .layers import LayerError, find_default_layer, resolve_layer
from .method import Method, NonFiniteAttributionError
from .nonlinearities import known_nonlinearities, register_nonlinearity
from .reduce import REDUCTIONS, reduce
from .registry import explain, get_method, methods, register
from .rules import GRADIENT, Rule, RuleSet
from .transforms import Normalize

__all__ = [
    "GRADIENT", "REDUCTIONS", "Coverage", "DisconnectedInputError", "LayerError", "Method",
    "NonFiniteAttributionError", "Normalize",
    "PassCount", "Rule", "RuleSet", "apply_rules", "count_passes", "explain", "find_default_layer", "get_method",
    "known_nonlinearities", "methods", "reduce", "register", "register_nonlinearity", "resolve_layer",
]
