"""Methods that explain an image (the CAM family, FullGrad): which of a model's inputs the image is.

A class activation map lives on the image's grid, so a model with several inputs (an image and a table)
says which input is the image with ``input_index=``; the other inputs run through the model unchanged, and
Score-CAM masks only the image.  The rows a method sees hold every input (:mod:`tribute.core.inputs`);
:func:`image_of` and :func:`with_image` take the image out of them and put a changed one back.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import torch

from ..core import options as opt
from ..core.inputs import Layout

INPUT_INDEX_OPTION = {
    "input_index": opt.Option(None, opt.optional(opt.integer(0)),
                              "which input is the image, for a model taking several (a position in the tuple)"),
}


class ImageMethod:
    """Mixin of the methods that explain one image input: no token ids, and ``input_index=`` for several inputs."""

    accepts_integer_inputs: ClassVar[bool] = False

    def _check_layout(self, layout: Layout, o: SimpleNamespace) -> None:
        if layout.single:
            if o.input_index not in (None, 0):
                raise ValueError(f"input_index={o.input_index}: the inputs are one tensor (input_index 0)")
            return
        if o.input_index is None and layout.count == 1:
            o.input_index = 0  # a 1-tuple: its only input is the image
        if o.input_index is None:
            raise ValueError(f"{self.name} explains one image: for a model taking {layout.count} inputs, say which "
                             "one with input_index=")
        layout.check_index(o.input_index)
        if "layer" in self.schema() and o.layer is None and layout.count > 1:
            # the default (the last spatial feature map on the way to the output) may lie on another input's branch
            raise ValueError(f"{self.name} on a model taking {layout.count} inputs needs layer=, a layer on the "
                             f"branch of the image (input {o.input_index}): the default layer, the last spatial "
                             "feature map before the output, may belong to another input")


def image_of(x: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
    """The image in the rows ``x`` (the rows themselves when the model takes one input)."""
    layout = o.call.layout
    return x if layout is None or layout.single else layout.unpack(x)[o.input_index]


def with_image(x: torch.Tensor, image: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
    """The rows ``x`` with their image replaced by ``image`` (the other inputs as they are)."""
    layout = o.call.layout
    if layout is None or layout.single:
        return image
    parts = list(layout.unpack(x))
    parts[o.input_index] = image
    return layout.pack(parts)
