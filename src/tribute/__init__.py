"""tribute: attribution methods for PyTorch, and whether to trust them.

>>> import tribute
>>> attributions = tribute.explain(model, images, "integrated_gradients", target=3)  # doctest: +SKIP
"""

from . import attribution, explainers, metrics, robust, store, training
from .attribution import *  # noqa: F403  (every method class; attribution.__all__ names them)
from .core import (
    Coverage,
    DisconnectedInputError,
    LayerError,
    Method,
    NonFiniteAttributionError,
    Normalize,
    PassCount,
    constant,
    count_passes,
    explain,
    get_method,
    known_nonlinearities,
    methods,
    reduce,
    register_nonlinearity,
)
from .lrp import Composite, composites, register_composite
from .metrics.evaluate import evaluate
from .reporting import report  # the function: tribute.report(run_dir) writes the HTML report of a run directory
from .robust import attacks  # tribute.attacks.pgd, tribute.attacks.fgsm

__version__ = "0.1.0"

__all__ = [
    *attribution.__all__,
    "Composite", "Coverage", "DisconnectedInputError", "LayerError", "Method", "NonFiniteAttributionError",
    "Normalize", "PassCount", "constant", "count_passes", "explain", "explainers", "get_method", "known_nonlinearities",
    "methods",
    "reduce",
    "register_composite", "register_nonlinearity", "attacks", "composites", "evaluate", "metrics", "robust",
    "store", "training", "report",
]
