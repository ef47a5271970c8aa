"""The model as a trainer sees it, for the metrics that retrain one (ROAR, label randomisation).

A trainer (:func:`tribute.training.fit`, or a user's ``train_fn``) calls ``model(x)`` and reads logits.  A
model that needs more (an argument that is the same for every sample, ``output=`` to pick its logits from a
structured output) is trained through :class:`FixedArguments`, a module whose ``forward(*inputs)`` is
``select_output(model(*inputs, *forward_args, **forward_kwargs), output)``: its parameters are the model's, so
training it trains the model.

Only arguments that are the same for every sample can be held so: these metrics train on one set of samples
and test or explain on another, and a per-sample tensor cannot follow both.  Such a tensor is refused, with the
way out (``tribute.constant`` for an argument that is in fact the same for all samples).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.forward_args import constant
from ..core.outputs import check_output, select_output


class FixedArguments(nn.Module):
    """``model(*inputs, *args, **kwargs)``, the scores picked by ``output`` (see the module doc)."""

    def __init__(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], output=None):
        super().__init__()
        self.model = model
        self.args, self.kwargs, self.output = args, kwargs, output
        self.train(model.training)  # the wrapper's own flag follows the model's (check_model reads it)

    def forward(self, *inputs):
        out = self.model(*inputs, *self.args, **self.kwargs)
        if isinstance(out, torch.Tensor) and self.output is None:
            return out
        return select_output(out, self.output)


def fixed_arguments(owner: str, forward_args, forward_kwargs, output) -> dict[str, Any] | None:
    """The checked arguments of :class:`FixedArguments` (constants unwrapped), or None when there are none.

    A tensor not wrapped in :class:`tribute.constant` is per sample by the library's convention, and refused.
    """
    if forward_args is not None and not isinstance(forward_args, (tuple, list)):
        raise TypeError(f"forward_args must be a tuple or list of arguments, got {type(forward_args).__name__}")
    if forward_kwargs is not None and not isinstance(forward_kwargs, dict):
        raise TypeError(f"forward_kwargs must be a dict of keyword arguments, got {type(forward_kwargs).__name__}")
    check_output("output", output)
    args = tuple(forward_args or ())
    kwargs = dict(forward_kwargs or {})
    named = [(f"forward_args[{k}]", v) for k, v in enumerate(args)] + \
        [(f"forward_kwargs[{k!r}]", v) for k, v in kwargs.items()]
    for name, v in named:
        if isinstance(v, torch.Tensor):
            raise ValueError(
                f"{owner}: {name} is a tensor, so it is taken as per sample; {owner} trains a model on one set of "
                "samples and evaluates it on another, and a per-sample argument cannot follow both. Wrap an "
                "argument that is the same for every sample in tribute.constant(...)"
            )
    if not args and not kwargs and output is None:
        return None
    return {"args": tuple(_value(v) for v in args), "kwargs": {k: _value(v) for k, v in kwargs.items()},
            "output": output}


def trainable(model: nn.Module, fixed: dict[str, Any] | None) -> nn.Module:
    """``model`` as a trainer calls it: the model itself, or :class:`FixedArguments` around it."""
    return model if fixed is None else FixedArguments(model, **fixed)


def inner(model: nn.Module) -> nn.Module:
    """The user's model inside a :class:`FixedArguments` (the model itself otherwise)."""
    return model.model if isinstance(model, FixedArguments) else model


def _value(v: Any) -> Any:
    return v.value if isinstance(v, constant) else v


__all__: list[str] = []
