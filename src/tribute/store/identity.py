"""What a run is, as JSON: the method's options, the model and the settings, summarised so that two runs compare.

A resumed run must be the same computation as the run that wrote the finished shards, so each ingredient is
recorded in a form that changes whenever the computation would:

- numbers, strings, booleans and None as they are; tuples and lists as lists; dicts with their keys as strings;
- a tensor as its dtype, shape and the SHA-256 of its bytes (:func:`tribute.checkpoint.digest`);
- a module (the model, or a module passed as an option) as its class's qualified name (without its Python
  module: a script's class is ``__main__``'s) and the digest of its state dict;
- a function as its qualified name and the SHA-256 of its code (bytecode, constants, names) and of the values
  it closes over and its defaults;
- another object (e.g. :class:`tribute.Normalize`) as its class and the summary of its attributes.

Anything else cannot be recorded and is an error naming the option (a change to it would go unnoticed).
"""

from __future__ import annotations

import hashlib
import json
import math
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoint import digest

_MAX_DEPTH = 6


class UnrecordableOptionError(TypeError):
    """An option whose value the manifest cannot summarise, so a resumed run could not check it."""


def summarise(value: Any, name: str = "value", depth: int = 0) -> Any:
    """A JSON-serialisable summary of ``value`` that changes whenever ``value`` does (see the module docstring)."""
    if depth > _MAX_DEPTH:
        raise UnrecordableOptionError(f"{name} is nested too deeply to be recorded in the store's manifest")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, torch.Tensor):
        return {"tensor_sha256": digest(value), "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [summarise(v, f"{name}[{k}]", depth + 1) for k, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): summarise(v, f"{name}[{k!r}]", depth + 1) for k, v in value.items()}
    if isinstance(value, nn.Module):
        return model_identity(value)
    if isinstance(value, (types.FunctionType, types.MethodType)):
        return _function(value, name, depth)
    if isinstance(value, type):
        return {"class": _qualname(value)}
    if hasattr(value, "__dict__"):
        state = {k: v for k, v in vars(value).items() if not k.startswith("__")}
        return {"object": _qualname(type(value)), "state": summarise(state, name, depth + 1)}
    raise UnrecordableOptionError(
        f"{name} (a {type(value).__name__}) cannot be recorded in the store's manifest, so a resumed run could not "
        "check that it is unchanged; pass a number, string, tensor, module, function or plain object instead")


def model_identity(model: Any) -> dict[str, Any]:
    """The model's class and the SHA-256 of its state dict (every parameter and buffer, by name, in order);
    a plain function (a model need not be a module) by its code."""
    if isinstance(model, nn.Module):
        return {"class": _qualname(type(model)), "state_dict_sha256": digest(dict(model.state_dict()))}
    if isinstance(model, (types.FunctionType, types.MethodType)):
        return _function(model, "model", 0)
    return summarise(model, "model")


def json_sha256(content: Any) -> str:
    """SHA-256 of ``content`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _function(f: Any, name: str, depth: int) -> dict[str, Any]:
    bound = None
    if isinstance(f, types.MethodType):
        bound, f = summarise(f.__self__, f"{name}.__self__", depth + 1), f.__func__
    closure = [c.cell_contents for c in (f.__closure__ or ())]
    parts = {"code": _code(f.__code__), "defaults": summarise(f.__defaults__, name, depth + 1),
             "kwdefaults": summarise(f.__kwdefaults__, name, depth + 1),
             "closure": summarise(closure, f"{name} (closure)", depth + 1), "self": bound}
    return {"function": f.__qualname__, "sha256": json_sha256(parts)}


def _code(code: types.CodeType) -> list:
    consts = [_code(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, list(code.co_names)]


def _qualname(cls: type) -> str:
    # without the module: a class defined in a script is __main__'s when it runs and the script's when imported
    return cls.__qualname__
