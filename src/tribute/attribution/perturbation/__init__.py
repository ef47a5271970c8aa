"""Perturbation methods: attributions read from the model's response to perturbed inputs (issue 14).

Each module holds one method; the method classes are listed in ``__all__``, which is how
:mod:`tribute.attribution` exposes them.
"""

from __future__ import annotations

from .extremal import ExtremalPerturbation
from .meaningful import MeaningfulPerturbation

__all__ = ["ExtremalPerturbation", "MeaningfulPerturbation"]
