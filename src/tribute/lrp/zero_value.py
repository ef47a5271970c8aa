"""f(0) of an elementwise nonlinearity: what LRP counts as an absorbed bias (:class:`tribute.lrp.PassRelevance`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core.nonlinearities import Nonlinearity

_CACHE: dict[tuple, float] = {}  # f(0) by (nonlinearity, params, dtype): one scalar op per kind of call
_CACHE_SIZE = 256


def zero_value(nl: Nonlinearity, params: dict[str, Any], like: torch.Tensor) -> float:
    """f(0) for ``nl`` with ``params``, evaluated in ``like``'s dtype (one scalar op on the CPU, then cached);
    ±inf or NaN where f has no finite value at 0 (``log``)."""
    try:
        key = (nl.name, nl.fn, tuple(sorted(params.items())), like.dtype)
        return _CACHE[key]
    except TypeError:  # a parameter that cannot be a key: computed each time
        key = None
    except KeyError:
        pass
    with torch.no_grad():
        f0 = float(nl(torch.zeros((), dtype=like.dtype), **params))
    if key is not None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = f0
    return f0


def absorbed_value(nl: Nonlinearity, params: dict[str, Any], like: torch.Tensor) -> float:
    """f(0), the value the composites' rule counts as an absorbed bias.  A nonlinearity with no finite f(0)
    (``log``) has no such rule: that is a clear error, never a ratio that silently divides by infinity."""
    f0 = zero_value(nl, params, like)
    if not math.isfinite(f0):
        raise ValueError(f"LRP has no rule at {nl.name}: f(0) = {f0} is not finite, so the composites' rule "
                         "(f(z) − f(0))/z is not defined; use a gradient method (integrated_gradients, deeplift) "
                         "for this model")
    return f0
