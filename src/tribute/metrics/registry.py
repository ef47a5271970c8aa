"""Metric names → what each metric takes and which direction is better, declared next to the metric's code.

A metric function registers itself with :func:`register_metric` (a decorator; a function registers under several
names with different options, e.g. the MoRF and LeRF orders of one curve).  :func:`tribute.evaluate` runs the
registered metrics by name, and :func:`metric_specs` lists them with their metadata:

- ``takes``: ``"attributions"`` (``fn(model, inputs, attributions, target, **options)``: scores given
  attributions) or ``"method"`` (``fn(model, inputs, method, target, **options)``: calls the method itself);
- ``better``: ``"higher"`` or ``"lower"`` (``""``: no direction, for a user's callable);
- ``per_sample``: the metric returns one score per sample, shape (N,), or an object whose ``score`` is (the
  metrics :func:`tribute.evaluate` tabulates); the others return a result of their own (the sanity checks);
- ``options``: the options the name stands for (``{"order": "morf"}``);
- ``absolute``: the name reports |score| (a signed gap whose errors would cancel in a mean).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ATTRIBUTIONS, METHOD = "attributions", "method"
TAKES = (ATTRIBUTIONS, METHOD)
BETTER = ("higher", "lower")


@dataclass(frozen=True)
class MetricSpec:
    """A metric: ``fn(model, inputs, attributions or method, target, **options)`` and its metadata (module doc)."""

    fn: Callable
    kind: str
    better: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    absolute: bool = False
    per_sample: bool = True

    def takes(self, option: str) -> bool:
        """Whether ``fn`` accepts the keyword ``option`` (by name or through ``**kwargs``)."""
        try:
            params = inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return False
        return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


_METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, *, takes: str, better: str, per_sample: bool = True,
                    options: dict[str, Any] | None = None, absolute: bool = False) -> Callable[[Callable], Callable]:
    """Function decorator: make the metric available to :func:`tribute.evaluate` as ``name``; see the module doc."""
    if takes not in TAKES:
        raise ValueError(f"takes must be one of {', '.join(map(repr, TAKES))}; got {takes!r}")
    if better not in BETTER:
        raise ValueError(f"better must be one of {', '.join(map(repr, BETTER))}; got {better!r}")

    def deco(fn: Callable) -> Callable:
        spec = MetricSpec(fn, takes, better, dict(options or {}), absolute, per_sample)
        if name in _METRICS and _METRICS[name].fn is not fn:
            raise ValueError(f"a metric named {name!r} is already registered ({_METRICS[name].fn.__name__})")
        _METRICS[name] = spec
        return fn
    return deco


def metric_specs() -> dict[str, MetricSpec]:
    """Every registered metric by name (sorted), with its metadata."""
    return {name: _METRICS[name] for name in sorted(_METRICS)}


def metric_names() -> list[str]:
    """The metrics :func:`tribute.evaluate` knows by name: the registered per-sample metrics."""
    return sorted(name for name, spec in _METRICS.items() if spec.per_sample)


def get_metric(name: str) -> MetricSpec:
    """The per-sample metric registered as ``name``; unknown names raise a ValueError naming the nearest ones."""
    if name not in _METRICS or not _METRICS[name].per_sample:
        near = difflib.get_close_matches(name, metric_names(), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"unknown metric {name!r}{hint} Known metrics: {', '.join(metric_names())} (or a callable)")
    return _METRICS[name]


__all__ = ["MetricSpec", "get_metric", "metric_names", "metric_specs", "register_metric"]
