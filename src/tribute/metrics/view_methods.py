"""A method run on the rows of a metric's :class:`tribute.metrics.common.ModelInputs`, and its maps.

A metric that explains rows of the user's samples (the samples themselves, repeated once per class, perturbed
copies) hands the method the rows in the user's structure (a tensor, or one tensor per input), with the
forward arguments of the samples the rows belong to and ``output=``, so that the method sees the model the
metric scores.  A plain callable ``(model, inputs, target)`` takes no options: with forward arguments or
``output=`` it is refused (bind them in the callable, or use a tribute method).

Attributions of a sample with several inputs are compared as one vector: each input's attribution made a map
by ``reduce=`` (an image's channels summed, a table as it is), flattened and laid end to end, in the inputs'
order, unless ``input_index=`` names the one input to compare.
"""

from __future__ import annotations

from typing import Any

import torch

from .common import ModelInputs, as_map, check_attributions
from .methods import BoundExplainer, ResolvedMethod, random_attribution


def refuse_options_for_callable(resolved: ResolvedMethod, options: dict[str, Any], owner: str) -> None:
    """A plain callable method cannot be given forward arguments or ``output=``: a clear error, before any work."""
    if resolved.klass is None and resolved.method is not random_attribution and options:
        raise TypeError(_callable_message(resolved.label, options, owner))


def _callable_message(label: str, options: dict[str, Any], owner: str) -> str:
    return (f"{owner}: method {label!r} is a plain callable (model, inputs, target), which cannot be given "
            f"{', '.join(sorted(options))}; bind them in the callable (e.g. lambda model, x, target: "
            "tribute.explain(model, x, ..., forward_args=...)) or pass a tribute method name or Method")


def explain_rows(bound: BoundExplainer, view: ModelInputs, rows: torch.Tensor, target,
                 sample: torch.Tensor | None = None, *, noise_key: torch.Tensor | None = None, owner: str = "metric"):
    """``bound``'s attributions of the packed ``rows`` (rows of the samples ``sample``; None: the samples
    themselves, in order), in the user's structure, with those samples' forward arguments and ``output=``."""
    inputs = view.user_rows(rows)
    options = view.method_options if sample is None else view.method_options_for(sample)
    if not options:
        return bound(inputs, target, noise_key=noise_key)
    if bound.instance is None:
        func = getattr(bound.explain, "func", bound.explain)  # a plain callable is bound by functools.partial
        if func is random_attribution:  # it ignores the model: nothing to pass
            return bound(inputs, target)
        raise TypeError(_callable_message(getattr(func, "__name__", type(func).__name__), options, owner))
    if noise_key is not None and bound.keyed:
        options = {**options, "noise_key": noise_key}
    return bound.explain(inputs, target, **options)


def attribution_maps(inputs, attributions, reduce: str | None, input_index: int | None = None) -> torch.Tensor:
    """Checked attributions of ``inputs`` (a tensor, or a tuple with one attribution per input) as maps by
    ``reduce`` (None: as they are): for several inputs one (N, D) row per sample, each input's map flattened
    and laid end to end, or the map of input ``input_index`` alone."""
    if isinstance(inputs, torch.Tensor):
        if input_index not in (None, 0, -1):
            raise ValueError(f"input_index must be None or 0 for a model taking one input, got {input_index!r}")
        return _map(inputs, attributions, reduce)
    count = len(inputs)
    if not isinstance(attributions, (tuple, list)) or len(attributions) != count:
        got = f"{len(attributions)} tensors" if isinstance(attributions, (tuple, list)) else \
            type(attributions).__name__
        raise ValueError(f"attributions of a model with {count} inputs must be a tuple with one tensor per input, "
                         f"got {got}")
    maps = [_map(x, a, reduce) for x, a in zip(inputs, attributions, strict=True)]
    if input_index is not None:
        return maps[check_input_index(input_index, count)]
    dtype = maps[0].dtype
    for m in maps[1:]:
        dtype = torch.promote_types(dtype, m.dtype)
    return torch.cat([m.flatten(1).to(dtype) for m in maps], 1)


def check_input_index(input_index, count: int) -> int:
    """``input_index`` as a position among ``count`` inputs (negative counts from the end)."""
    if isinstance(input_index, bool) or not isinstance(input_index, int) or not -count <= input_index < count:
        raise ValueError(f"input_index must be an integer in [0, {count}) for a model taking {count} "
                         f"input{'s' if count > 1 else ''}, got {input_index!r}")
    return input_index % count


def _map(x: torch.Tensor, a, reduce: str | None) -> torch.Tensor:
    a = check_attributions(x, a)
    return a if reduce is None else as_map(a, reduce)


__all__: list[str] = []
