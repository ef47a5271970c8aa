"""Experiments that reproduce papers' evidence with tribute, one command each (``tribute experiment NAME``).

- ``alignment`` (:mod:`.alignment`): Zeng et al. (2021)'s tables and figures for the aligned explainer.
"""
