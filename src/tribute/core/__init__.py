"""The engine: interception of nonlinearities, backward rules, targets, batching.  Knows no method."""

from .engine import DisconnectedInputError, PassCount, count_passes
from .family_rules import FamilyRules, family_rules
from .forward_args import constant
from .interception import Coverage, apply_rules
from .layer_names import LayerError, resolve_layer
from .layers import find_default_layer
from .method import Method, NonFiniteAttributionError
from .nonlinearities import known_nonlinearities, register_nonlinearity
from .reduce import REDUCTIONS, reduce
from .registry import explain, get_method, methods, register
from .rule_registry import BackwardRule, OpRule, RuleKind, register_rule, rule_table, unregister_rule
from .rules import GRADIENT, ElementwiseRule, RuleSet
from .strictness import UncoveredModelError
from .transforms import Normalize

__all__ = [
    "GRADIENT", "REDUCTIONS", "BackwardRule", "Coverage", "DisconnectedInputError", "ElementwiseRule", "FamilyRules",
    "LayerError", "Method", "NonFiniteAttributionError", "Normalize", "OpRule", "PassCount", "RuleKind", "RuleSet",
    "UncoveredModelError", "apply_rules", "constant", "count_passes", "explain", "family_rules", "find_default_layer",
    "get_method",
    "known_nonlinearities", "methods", "reduce", "register", "register_nonlinearity", "register_rule", "resolve_layer",
    "rule_table", "unregister_rule",
]
