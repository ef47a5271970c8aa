"""Perturbation methods: attributions from the model's outputs on copies of the input with features removed.

They need forward passes only and answer the most direct question: what happens to the output when these
features are replaced by a baseline (Zeiler & Fergus 2014; Ancona et al. 2018, §4.3)?  :mod:`tribute.attribution`
imports every module of this package and exposes the methods registered in them.  The shared pieces:
:mod:`.base` (options, last-call state), :mod:`.scoring` (perturbed rows through the model in chunks),
:mod:`.groups` and :mod:`.segments` (which features move together).  The two mask games (meaningful and extremal
perturbation) optimise a mask through the model's gradient instead: :mod:`.mask_games`, :mod:`.smooth_masks`.
"""

from __future__ import annotations

from .extremal import ExtremalPerturbation
from .meaningful import MeaningfulPerturbation

__all__ = ["ExtremalPerturbation", "MeaningfulPerturbation"]
