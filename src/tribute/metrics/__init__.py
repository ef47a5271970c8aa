"""Metrics: how good, how faithful, how sane is an explanation (seed 000 §4.1, seed 001 §2.4, seed 003 §3)."""

from .common import as_explainer, as_map, check_attributions, resolve_target

__all__ = ["as_explainer", "as_map", "check_attributions", "resolve_target"]
