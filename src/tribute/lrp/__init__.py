"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019): rules, composites, the handler.

- :mod:`.rules`: the rules at linear layers (ε, z⁺, αβ, γ, zᴮ, flat, w²) and the pass rule at nonlinearities
  (f(0) counted as an absorbed bias: :mod:`.zero_value`);
- :mod:`.elementwise`: ε-LRP in Ancona's form, the rule at nonlinearities of the family ``"lrp_epsilon"``;
- :mod:`.composites`: :class:`Composite` (which rule at which layer) and the registry of named composites;
- :mod:`.ops`: the family's rules at every other op (additions, pooling, moves, batch norm), registered in
  :mod:`tribute.core.rule_registry`;
- :mod:`.gates`, :mod:`.attention`: products of two tensors on the input's path (a gate takes nothing, signals share
  uniformly), softmax (CP-LRP or AttnLRP), normalisations held constant, constants joining the path;
  :mod:`.epsilon_ops`: the same rules for ``lrp_epsilon`` (Ancona's gradient form); :mod:`.absorbed`: the relevance
  constant leaves take, counted with ``absorbed=True``;
- :mod:`.linear_forms`: dense layers written as products with a parameter (``addmm``: Hugging Face's ``Conv1D``;
  ``x @ W.T + b``, ``mm``, ``bmm``, ``einsum``), recognised as layers like ``F.linear``;
- :mod:`.layer_call`, :mod:`.kept`, :mod:`.nodes`, :mod:`.propagation`: a linear layer's call and its transposed
  map, tensors kept for the backward pass, the autograd nodes, and the per-pass relevance handler;
- :mod:`.epsilon_form`, :mod:`.merge_plan`, :mod:`.weight_cache`: the ε composites as a modified gradient, batch
  norm merged from an earlier pass's plan, and the weights rules derive, kept between calls.

>>> from tribute.lrp import Composite, Epsilon, Gamma, Flat
>>> composite = Composite(first=Flat(), conv=Gamma(0.25), dense=Epsilon(1e-6))
"""

from . import epsilon_ops, ops  # register the families' op rules  # noqa: F401
from .composites import (
    RULE_PARAMETERS,
    Composite,
    RuleParameters,
    composite_parameters,
    composites,
    make_composite,
    register_composite,
    unregister_composite,
)
from .elementwise import ElementwiseEpsilon
from .rules import STABILIZER, AlphaBeta, Box, Epsilon, Flat, Gamma, LinearRule, PassRelevance, WSquare, ZPlus

__all__ = [
    "RULE_PARAMETERS", "STABILIZER", "AlphaBeta", "Box", "Composite", "ElementwiseEpsilon", "Epsilon", "Flat",
    "Gamma", "LinearRule", "PassRelevance", "RuleParameters", "WSquare", "ZPlus", "composite_parameters",
    "composites", "make_composite", "register_composite", "unregister_composite",
]
