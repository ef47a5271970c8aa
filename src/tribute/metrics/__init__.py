"""Metrics: how good, how faithful, how sane is an explanation (Nielsen et al. 2022, §4.1; Ancona et al. 2019,
§2.4; Abhishek & Kamath 2022, §3).

Each module says what it exports in its ``__all__``; this package re-exports all of them.
"""

import sys

from .alignment import *  # noqa: F403
from .axioms import *  # noqa: F403
from .class_sensitivity import *  # noqa: F403
from .common import *  # noqa: F403
from .evaluate import *  # noqa: F403
from .infidelity import *  # noqa: F403
from .methods import *  # noqa: F403
from .perturbation import *  # noqa: F403
from .registry import *  # noqa: F403
from .reinitialise import *  # noqa: F403
from .reliability import *  # noqa: F403
from .road import *  # noqa: F403
from .roar import *  # noqa: F403
from .robustness import *  # noqa: F403
from .sanity import *  # noqa: F403
from .similarity import *  # noqa: F403

_MODULES = ("alignment", "axioms", "class_sensitivity", "common", "evaluate", "infidelity", "methods", "perturbation",
            "registry", "reinitialise", "reliability", "road", "roar", "robustness", "sanity", "similarity")
__all__ = [name for module in _MODULES for name in sys.modules[f"{__name__}.{module}"].__all__]
