"""Which features a perturbation metric moves when the model takes several inputs (issue 12).

A perturbation metric changes features of the inputs and scores the model on the result.  With several
inputs (an image and a table, two images) it works in one of two ways, chosen by ``input_index=``:

- **all inputs jointly** (``input_index=None``, the default): every input's features may move.  The metric
  works on the packed rows of :mod:`tribute.core.inputs` (each sample's inputs flattened and laid end to
  end), the attributions are a tuple with one tensor per input, each of its input's shape, packed the same
  way, and options that say what a removed feature becomes take one entry per input (a tuple) or one value
  for all, each entry resolved against its own input (a ``"blur"`` blurs the image, never the table).
- **one named input** (``input_index=k``): only input k moves, exactly as a single input would (its own
  map, ``reduce=``, patches, replacement); the other inputs keep their values, as if they were forward
  arguments.  The attributions are input k's (a tensor of its shape, or a map (N, 1, H, W)) or the tuple
  of all the inputs' (then entry k is used); an option given as a tuple contributes its entry k.

One input is its own packing: ``input_index`` is then None or 0 and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .common import ModelInputs, check_attributions


@dataclass(frozen=True)
class Part:
    """The features a metric perturbs: ``x`` (N, …) is the packed batch (``index`` None) or input ``index``."""

    view: ModelInputs
    index: int | None
    x: torch.Tensor

    @property
    def joint(self) -> bool:
        """Several inputs perturbed together (in packed rows)."""
        return self.index is None and not self.view.layout.single

    @property
    def name(self) -> str:
        return "inputs" if self.index is None else f"inputs[{self.index}]"

    def rows(self, part_rows: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model's packed rows for perturbed ``part_rows`` of samples ``sample``: input ``index`` replaced
        in a copy of each row's sample, the other inputs as they are."""
        if self.index is None:
            return part_rows
        full = self.view.x.index_select(0, sample.to(self.view.x.device))
        full[:, self.view.layout.input_slice(self.index)] = part_rows.reshape(part_rows.shape[0], -1)
        return full

    def attributions(self, attributions) -> torch.Tensor:
        """The attributions of the perturbed features, checked: packed for the inputs jointly, input
        ``index``'s (a tensor, or entry ``index`` of a tuple with one per input) for one named input."""
        if self.index is None:
            return self.view.pack_attributions(attributions)
        count = self.view.layout.count
        if isinstance(attributions, (tuple, list)):
            if len(attributions) != count:
                raise ValueError(f"attributions has {len(attributions)} entries but the model takes {count} inputs "
                                 f"(give input {self.index}'s attributions, or one tensor per input)")
            attributions = attributions[self.index]
        try:
            return check_attributions(self.x, attributions)
        except (TypeError, ValueError) as e:
            raise type(e)(f"attributions of inputs[{self.index}]: {e}") from None

    def option(self, name: str, value: Any, resolve: Callable[[Any, torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        """An option that describes the inputs (what a removed feature becomes), resolved per input by
        ``resolve(entry, input, k)`` and packed like the perturbed features (module doc)."""
        layout = self.view.layout
        entries = layout.entries(name, value)
        if self.index is not None:
            return resolve(entries[self.index], self.x, self.index)
        if layout.single:
            return resolve(entries[0], self.x, 0)
        return layout.pack([_named(resolve, name, e, t, k)
                            for k, (e, t) in enumerate(zip(entries, self.view.inputs, strict=True))])

    def entry(self, name: str, value: Any, k: int) -> Any:
        """Input k's entry of an option given per input (a tuple) or once for all."""
        return self.view.layout.entries(name, value)[k]


def _named(resolve: Callable, name: str, entry: Any, t: torch.Tensor, k: int) -> torch.Tensor:
    """``resolve`` for input k of several, its errors naming the input and how to give it its own entry."""
    try:
        return resolve(entry, t, k)
    except (TypeError, ValueError) as e:
        raise type(e)(f"inputs[{k}]: {e} (with several inputs, {name}= takes a tuple with one entry per "
                      "input)") from None


def select_part(view: ModelInputs, input_index: int | None) -> Part:
    """The features perturbed: all inputs (``input_index=None``) or input ``input_index`` alone (module doc)."""
    if input_index is None:
        return Part(view, None, view.x)
    k = view.layout.check_index(input_index)
    if view.layout.single:
        return Part(view, None, view.x)
    return Part(view, k, view.inputs[k].detach())


def refuse_token_ids(part: Part, metric: str) -> None:
    """Metrics that move features by real amounts cannot take token ids: say which metrics can."""
    if not part.x.is_floating_point():
        raise TypeError(
            f"{metric} moves {part.name} by real amounts, but they are {part.x.dtype} (token ids?); token sequences "
            "are evaluated by deletion, insertion and pixel_perturbation, which replace tokens by a baseline token "
            "(replacement_token=)"
        )


__all__: list[str] = []
