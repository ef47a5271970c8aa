"""The model a command works on: ``module:factory`` (the working directory on the import path), its state dict
(``--weights``), or ``demo`` (the demo's pretrained EfficientNet-Lite0, :func:`tribute.data.efficientnet_lite0`).

A factory's module may declare what the command should know about the model:

- ``CLASSES``: the class names, index → name;
- ``INPUT_SIZE``: the image size the model takes, an int (square) or (height, width);
- ``MEAN`` and ``STD``: the per-channel normalisation the model was trained with (pixels in [0, 1]).

Options on the command line win over what the module declares.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import CommandError

DEMO = "demo"


@dataclass
class LoadedModel:
    """A model ready to explain, and what is known about it.

    ``transform`` is the normalisation given as ``input_transform=`` (inputs stay pixels in [0, 1]); ``size`` the
    (height, width) images are brought to (None: their own); ``prepare`` how one (C, H, W) image in [0, 1] becomes
    the model's input size (None: :func:`tribute.commands.inputs.fit_size` to ``size``); ``spec`` how the user named
    the model.
    """

    model: nn.Module
    spec: str
    classes: list[str] | None = None
    size: tuple[int, int] | None = None
    transform: Any = None
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    channels: int | None = None


def parse_size(text: str | int | tuple | list | None, what: str = "--size") -> tuple[int, int] | None:
    """``"32"``, ``"224x224"``, 32 or (224, 224) as (height, width); None stays None."""
    if text is None:
        return None
    try:
        if isinstance(text, str):
            parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
        elif isinstance(text, int):
            parts = [text]
        else:
            parts = [int(p) for p in text]
    except (TypeError, ValueError):
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise CommandError(f"{what} must be a positive size such as 32 or 224x224, got {text!r}")
    return parts[0], parts[1]


def import_factory(spec: str) -> tuple[Callable, Any]:
    """``module:factory`` → (the factory, its module), with the working directory appended to the import path (the
    ``tribute`` console script, unlike ``python -m tribute``, does not put it there)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CommandError(f"--model must be 'module:factory' (e.g. mymodels:make) or '{DEMO}', got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CommandError(f"cannot import module {module_name!r} ({e}); the working directory {cwd} is on the import "
                           f"path: run the command from the folder that holds {module_name.replace('.', '/')}.py or "
                           "set PYTHONPATH") from None
    except Exception as e:  # the user's module failed while running: say where, without our traceback
        raise CommandError(f"importing module {module_name!r} failed: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise CommandError(f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no {attr!r}")
    if not callable(factory):
        raise CommandError(f"{spec} is not callable (it is a {type(factory).__name__}): --model needs a function "
                           "or class that returns the model")
    return factory, module


def load_weights(model: nn.Module, path: str) -> None:
    """Load the state dict saved at ``path`` into ``model``; a mismatch names the first keys that do not fit."""
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"--weights: no such file: {path}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CommandError(f"--weights: cannot read {path} as a torch.save'd state dict: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CommandError(f"--weights: {path} holds a {type(state).__name__}, not a state dict (name → tensor); "
                           "save one with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs the model's {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = [f"{what}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}" for what, keys in
                (("missing from the file", missing), ("not in the model", unexpected), ("other shapes", shapes))
                if keys]
    if problems:
        raise CommandError(f"--weights: {path} does not fit the model ({'; '.join(problems)})")
    model.load_state_dict(state)


def _declared(module: Any, name: str) -> Any:
    return getattr(module, name, None) if module is not None else None


def load_model(spec: str, weights: str | None = None, *, size: str | None = None, mean=None, std=None,
               classes_file: str | None = None) -> LoadedModel:
    """The model named by ``spec`` (``module:factory`` or ``demo``) in eval mode, with what is known about it."""
    if spec == DEMO:
        return _demo_model(weights, size, mean, std, classes_file)
    factory, module = import_factory(spec)
    try:
        model = factory()
    except Exception as e:
        raise CommandError(f"{spec}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise CommandError(f"{spec}() returned {type(model).__name__!r}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    mean = mean if mean is not None else _declared(module, "MEAN")
    std = std if std is not None else _declared(module, "STD")
    classes = read_classes(classes_file) if classes_file else _declared(module, "CLASSES")
    return LoadedModel(model.eval(), spec, list(classes) if classes is not None else None,
                       parse_size(size if size is not None else _declared(module, "INPUT_SIZE"),
                                  "--size" if size is not None else f"{spec.partition(':')[0]}.INPUT_SIZE"),
                       normalization(mean, std))


def normalization(mean, std):
    """``tribute.Normalize(mean, std)`` from both given, None from neither; one alone is an error."""
    from ..core import Normalize

    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise CommandError("give both --mean and --std (one value per channel), or neither")
    try:
        return Normalize(list(mean), list(std))
    except (TypeError, ValueError) as e:
        raise CommandError(f"--mean/--std: {e}") from None


def read_classes(path: str) -> list[str]:
    """Class names from a text file, one per line (blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CommandError(f"--classes: cannot read {path}: {e.strerror or e}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise CommandError(f"--classes: {path} holds no class names (one per line)")
    return names


def _demo_model(weights, size, mean, std, classes_file) -> LoadedModel:
    """The demo's EfficientNet-Lite0 with its own preprocessing (:mod:`tribute.data.models`, :mod:`.photos`)."""
    from ..data import efficientnet_lite0, imagenet_classes, resize_and_crop
    from ..data.models import IMAGE_SIZE

    given = [name for name, v in (("--weights", weights), ("--size", size), ("--mean", mean), ("--std", std))
             if v is not None]
    if given:
        raise CommandError(f"{', '.join(given)} do(es) not apply to --model demo, which has its own weights, "
                           f"{IMAGE_SIZE}x{IMAGE_SIZE} inputs and normalisation")
    model, normalize = efficientnet_lite0()
    classes = read_classes(classes_file) if classes_file else list(imagenet_classes())
    return LoadedModel(model, DEMO, classes, (IMAGE_SIZE, IMAGE_SIZE), normalize, resize_and_crop, 3)


class Transformed(nn.Module):
    """``model(transform(x))`` as one module, for code that runs the model itself (``tribute.evaluate``'s metrics
    perturb pixels and score the model on them, so the normalisation must be part of the model they see)."""

    def __init__(self, model: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


def whole_model(loaded: LoadedModel) -> nn.Module:
    """The loaded model with its normalisation inside (the model itself when it has none)."""
    return loaded.model if loaded.transform is None else Transformed(loaded.model, loaded.transform).eval()
