"""Naming a layer: ``model.named_modules()`` names, the call of a reused module (``#k``) and the element of a
module's tuple or mapping output (``[k]``).

``"layer4"`` is a module's output; ``"layer4.1.relu#1"`` the second call of a module called more than once in one
forward pass; ``"swin.encoder.layers.0[0]"`` the first element of a module that returns a tuple (a Swin stage returns
its hidden states, the states before downsampling and the output size), ``"encoder[last_hidden_state]"`` an entry of
a mapping output (a Hugging Face ``ModelOutput``).  Unknown names are errors listing the nearest valid ones.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class LayerError(ValueError):
    """A layer that cannot be used: unknown name, never called, called more than once, wrong output."""


# -- naming ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ModuleSite:
    """The output of module ``name`` (at call ``call``, counted from 0, if the call is named); for a module that
    returns a tuple or a mapping, its element ``element`` (a position or a key)."""

    name: str
    module: nn.Module
    call: int | None = None
    element: int | str | None = None

    def __str__(self) -> str:
        call = "" if self.call is None else f"#{self.call}"
        element = "" if self.element is None else f"[{self.element}]"
        return f"{self.name}{call}{element}"

    def describe(self) -> str:
        return f"layer {str(self)!r}"


@dataclass(frozen=True, eq=False)
class OpSite:
    """The output of the ``occurrence``-th call of ``func`` on the input's path (default layers only)."""

    func: Any
    occurrence: int
    output_index: int | None
    label: str

    def __str__(self) -> str:
        return self.label

    def describe(self) -> str:
        return f"the default layer ({self.label})"


Site = ModuleSite | OpSite


def check_layer(name: str, v: Any) -> Any:
    """Option check for ``layer=``: ``None`` (the default layer), a module name or a submodule."""
    if v is None or isinstance(v, (str, nn.Module)):
        return v
    raise TypeError(f"{name} must be a module name such as 'layer4' (see model.named_modules()), a submodule or "
                    f"None; got {type(v).__name__}")


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> ModuleSite:
    """The :class:`ModuleSite` a user's ``layer=`` names; unknown names raise, suggesting the nearest.

    A model given as a function has no module names: its layer is given as the module itself (whether the
    function calls it is checked when it runs: a layer never called is an error)."""
    if not isinstance(model, nn.Module):
        if isinstance(layer, nn.Module):
            return ModuleSite(type(layer).__name__, layer)
        raise LayerError(f"layer={layer!r}: a model given as a function has no module names; pass the module itself "
                         "(e.g. layer=net.layer4)")
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer:
                if not name:
                    raise LayerError("layer= names the model itself; name one of its submodules")
                return ModuleSite(name, m)
        raise LayerError(f"layer= is a {type(layer).__name__} that is not a submodule of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name or a submodule, got {type(layer).__name__}")
    layer, element = _split_element(layer)
    site = _module_site(model, layer)
    return site if element is None else ModuleSite(site.name, site.module, site.call, element)


def _split_element(layer: str) -> tuple[str, int | str | None]:
    """``"stage[0]"`` → ``("stage", 0)``, ``"encoder[last_hidden_state]"`` → ``("encoder", "last_hidden_state")``."""
    if not layer.endswith("]") or "[" not in layer:
        return layer, None
    name, _, key = layer[:-1].rpartition("[")
    if not key:
        raise LayerError(f"layer {layer!r}: between '[' and ']' comes the element of the layer's output to use, a "
                         f"position or a key (e.g. {name + '[0]'!r})")
    return name, int(key) if key.isdigit() else key


def _module_site(model: nn.Module, layer: str) -> ModuleSite:
    name, call = layer, None
    if "#" in layer:
        name, _, idx = layer.rpartition("#")
        if not idx.isdigit():
            raise LayerError(
                f"layer {layer!r}: after '#' comes the call's index, an integer >= 0 (e.g. {name + '#0'!r})"
            )
        call = int(idx)
    if name:
        try:  # walks the dotted path; listing every module is only needed for the error message
            return ModuleSite(name, model.get_submodule(name), call)
        except AttributeError:
            pass
    modules = {n: m for n, m in model.named_modules() if n}
    if name not in modules:
        near = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
        if near:
            hint = f"; the nearest layer names are {', '.join(map(repr, near))}"
        else:
            top = [n for n in modules if "." not in n][:12]
            hint = f"; the model's top-level layers are {', '.join(map(repr, top)) or 'none'}"
        raise LayerError(f"the model has no layer named {name!r}{hint} (names as in model.named_modules())")
    return ModuleSite(name, modules[name], call)




def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)}"
    return type(value).__name__


def _elements(out: Any) -> list[tuple[int | str, Any]]:
    if isinstance(out, Mapping):
        return list(out.items())
    if isinstance(out, (tuple, list)):
        return list(enumerate(out))
    return []


def output_element(site: ModuleSite, out: Any) -> torch.Tensor:
    """The tensor ``site`` names in a module's output ``out``: the output itself, or its element ``site.element``;
    an output that is no tensor (a tuple, a ``ModelOutput``) is an error listing the elements to choose from."""
    if site.element is None:
        if isinstance(out, torch.Tensor):
            return out
        elements = _elements(out)
        listing = ", ".join(f"[{k}]: {_describe(v)}" for k, v in elements[:6]) + (", …" if len(elements) > 6 else "")
        hint = (f" ({listing}): name the element to use, e.g. layer={f'{site}[{elements[0][0]}]'!r}"
                if elements else ": choose another layer")
        raise LayerError(f"{site.describe()} returns a {type(out).__name__}, not a tensor{hint}")
    elements = dict(_elements(out))
    if site.element not in elements:
        have = ", ".join(f"[{k}]" for k in elements) or "none"
        raise LayerError(f"{site.describe()}: the layer's output ({type(out).__name__}) has no element "
                         f"[{site.element}] (its elements: {have})")
    value = elements[site.element]
    if not isinstance(value, torch.Tensor):
        raise LayerError(f"{site.describe()} is a {type(value).__name__}, not a tensor: choose another element")
    return value


def with_element(out: Any, element: int | str, value: torch.Tensor) -> Any:
    """``out`` with its element ``element`` replaced by ``value`` (a tuple, named tuple, list or mapping)."""
    if isinstance(out, Mapping):
        new = copy.copy(out)  # keeps a ModelOutput's class and other fields
        new[element] = value
        return new
    items = list(out)
    items[element] = value
    if isinstance(out, list):
        return items
    return type(out)._make(items) if hasattr(type(out), "_make") else type(out)(items)
