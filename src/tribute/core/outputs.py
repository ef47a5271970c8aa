"""Structured model outputs: which tensor holds the scores a target picks from (``output=``).

A model may return a tensor, a tuple or list, a dict, a dataclass or a Hugging Face ``ModelOutput`` (an
ordered dict whose fields are also attributes).  ``output=`` picks the tensor of scores:

- a string: a key or field name (``output="logits"``);
- an int: a position in a tuple or list (``output=0``);
- a callable: ``output(raw) -> tensor``, for anything else (``lambda out: out.logits[:, -1]``, GPT-2's last
  token).

With no ``output=``: a tensor is itself; otherwise the ``logits`` field when there is one, else the output's
only tensor.  "The first tensor" would be wrong: Hugging Face puts ``loss`` first when labels are passed.
Anything else is an error that lists the fields, so the user can name one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch


def check_output(name: str, v: Any) -> Any:
    """The check of the ``output=`` option."""
    if v is None or callable(v) or (isinstance(v, (str, int)) and not isinstance(v, bool)):
        return v
    raise TypeError(f"{name} must be a field name, a position, a callable or None, got {type(v).__name__}")


def select_output(raw: Any, output: Any = None) -> torch.Tensor:
    """The tensor of scores in the model's output ``raw`` (see the module doc)."""
    if callable(output):
        picked = output(raw)
        if not isinstance(picked, torch.Tensor):
            raise TypeError(f"output= returned {type(picked).__name__}; it must return the tensor of scores")
        return picked
    if isinstance(raw, torch.Tensor):
        if output is None:
            return raw
        raise TypeError(f"output={output!r} names a field, but the model returned a tensor {tuple(raw.shape)}, which "
                        "has none: leave output= unset (or pass a callable)")
    fields = _fields(raw)
    if fields is None:
        raise TypeError(
            f"the model returned {type(raw).__name__}; it must return a tensor, a tuple, a dict, a dataclass or a "
            "ModelOutput (or pass output= a callable that takes the output and returns the scores)"
        )
    if output is None:
        if "logits" in fields and isinstance(fields["logits"], torch.Tensor):
            return fields["logits"]
        tensors = [k for k, v in fields.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return fields[tensors[0]]
        raise ValueError(
            f"the model returned {type(raw).__name__} with {_listing(fields)}: say which holds the scores with "
            "output= (a field name or position, or a callable)"
        )
    if output not in fields:
        raise KeyError(f"output={output!r} is not in the model's {type(raw).__name__}, which has {_listing(fields)}")
    picked = fields[output]
    if not isinstance(picked, torch.Tensor):
        raise TypeError(f"output={output!r} is {type(picked).__name__}, not a tensor of scores")
    return picked


def _fields(raw: Any) -> dict | None:
    if isinstance(raw, Mapping):
        return dict(raw.items())
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        return {f.name: getattr(raw, f.name) for f in dataclasses.fields(raw)}
    if isinstance(raw, (tuple, list)):
        return dict(enumerate(raw))
    return None


def _listing(fields: dict) -> str:
    parts = []
    for k, v in fields.items():
        what = f"tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        parts.append(f"{k!r}: {what}")
    return "fields " + ", ".join(parts) if parts else "no fields"
