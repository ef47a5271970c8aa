"""The class a command explains: ``predicted`` (the model's top class per sample), an index, or a class name.

A class name matches, case and surrounding spaces aside, a class's full name or one of its comma-separated
synonyms (ImageNet's ``"tabby, tabby cat"`` is found as ``tabby cat``); a name that matches nothing is an error
listing the closest names.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from . import CommandError

PREDICTED = "predicted"


def output_classes(model: nn.Module, sample: torch.Tensor, transform=None) -> int:
    """The number of scores ``model`` gives for one sample (one forward pass); a model that fails on the inputs is
    an error naming the inputs' shape."""
    x = sample[:1]
    try:
        with torch.no_grad():
            out = model(transform(x) if transform is not None else x)
    except Exception as e:
        raise CommandError(f"the model fails on inputs of shape {tuple(x.shape)} ({type(e).__name__}: {e}); check "
                           "--size, --channels or the input file") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CommandError(f"the model must return (N, classes) scores; it returned "
                           f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out.shape[1]


def _synonyms(name: str) -> list[str]:
    return [name.strip().lower(), *(s.strip().lower() for s in name.split(",") if s.strip())]


def class_index(text: str, classes: list[str] | None, count: int) -> int:
    """The class named by ``text`` (an index in [0, count) or a class name) among ``count`` classes."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < count:
            raise CommandError(f"--target {index} is not a class of the model, which has classes 0 to {count - 1}")
        return index
    if not classes:
        raise CommandError(f"--target {text!r}: the model's class names are unknown; give --classes FILE (one name "
                           "per line), declare CLASSES in the model's module, or give a class index")
    wanted = text.lower()
    for i, name in enumerate(classes):
        if wanted in _synonyms(name):
            return i
    every = {s: name for name in classes for s in _synonyms(name)}
    near = difflib.get_close_matches(wanted, list(every), n=5, cutoff=0.6)
    closest = dict.fromkeys(every[s] for s in near)  # closest first, each class once
    hint = f"; the closest: {', '.join(map(repr, closest))}" if near else ""
    raise CommandError(f"--target {text!r} is not a class name of the model{hint}")


def resolve_target(text: str, classes: list[str] | None, count: int) -> int | None:
    """None for ``predicted`` (each sample's top class), else the class index ``text`` names."""
    return None if text.strip().lower() == PREDICTED else class_index(text, classes, count)
