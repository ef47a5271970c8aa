"""The experiment's data: the requested data set, or at the smoke scale scikit-learn's digits when it is missing."""

from __future__ import annotations

import torch

from ...data import Split, load_digits
from ...explainers import load_experiment_data
from .scales import DATA_SETS, WHOLE_AT_FULL_SCALE, Scale


def experiment_data(name: str, scale: Scale, seed: int = 0) -> tuple[Split, str]:
    """``(split, used)``: the data set ``name`` cut to the scale's sizes, and the name of the data set used.

    ``"digits"`` is scikit-learn's 8×8 digits (:func:`tribute.data.load_digits`) shown at 16×16, the others the
    Debian data sets of :func:`tribute.explainers.load_experiment_data`.  At the smoke scale a missing Debian
    package falls back to the digits (``used`` says so); at the full scale it is the loader's FileNotFoundError
    naming the package.
    """
    if name not in DATA_SETS:
        raise ValueError(f"unknown data set {name!r}; the data sets are {', '.join(map(repr, DATA_SETS))}")
    if name != "digits":
        whole = scale.name == "full" and name in WHOLE_AT_FULL_SCALE
        try:
            return load_experiment_data(name, seed=seed, train_size=None if whole else scale.train_size,
                                        test_size=None if whole else scale.test_size), name
        except FileNotFoundError as e:
            if scale.name != "smoke":
                raise
            fallback = f"digits (fallback: {name} is not installed: {e})"
    else:
        fallback = "digits"
    split = load_digits(seed=seed)
    g = torch.Generator().manual_seed(seed)
    train, test = _subset(split.train, scale.train_size, g), _subset(split.test, scale.test_size, g)
    return Split(train=(_double(train[0]), train[1]), test=(_double(test[0]), test[1])), fallback


def _double(x: torch.Tensor) -> torch.Tensor:
    """8×8 digits as 16×16 (each pixel a 2×2 block): at 8×8 the ResNet's last stage is 1×1, so the explainer would
    read ``layer3`` (the last map with a spatial extent) and the last block's re-initialisation could not reach it;
    at 16×16 ``layer4`` is a 2×2 map, as 28×28 images give 4×4."""
    return x.repeat_interleave(2, -2).repeat_interleave(2, -1)


def _subset(pair, n: int | None, g: torch.Generator):
    """A seeded random subset of n samples in the data set's order (all of them when there are fewer)."""
    x, y = pair
    if n is None or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=g)[:n].sort().values
    return x[keep], y[keep]
