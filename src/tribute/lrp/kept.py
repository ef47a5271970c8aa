"""Tensors LRP's rules read in the backward pass, kept by reference and copied only before a write (copy-on-write)."""

from __future__ import annotations

from collections.abc import Callable

import torch


class Kept:
    """A tensor a rule reads in the backward pass, kept by reference rather than copied.

    The forward pass of a model may overwrite it afterwards (an in-place ReLU on a layer's output, an in-place
    residual ``out += identity``).  Every in-place op on the input's path goes through the interception,
    which calls :meth:`Propagation.before_write` first: only then is the tensor copied (copy-on-write).  A
    write the interception could not see is caught by the version counter and reported, never used; a write
    through ``.data`` moves no version counter and stays invisible, here as to autograd (so do the marks that
    say a ReLU's output is still ≥ 0).
    """

    __slots__ = ("tensor", "version", "unneeded", "rectify", "rectified")

    def __init__(self, tensor: torch.Tensor, unneeded: Callable[[], bool] | None = None, rectify: bool = False):
        self.tensor = tensor.detach()
        self.version = tensor._version
        #: asked when the tensor is about to be overwritten: True drops it instead of copying (it has a
        #: cheaper source, and the write shows it will not be wanted)
        self.unneeded = unneeded
        #: if unneeded and the write is a ReLU's, keep what it writes instead of dropping it (``rectified``)
        self.rectify = rectify
        self.rectified = False

    def geometry(self) -> tuple:
        t = self.tensor
        return t.shape, t.stride(), t.storage_offset(), t.dtype

    def copy(self, clone: torch.Tensor | None = None) -> None:
        """Hold a copy from now on (``clone``: one already made of the same view)."""
        self.tensor = self.tensor.clone() if clone is None else clone
        self.version = self.tensor._version

    def drop(self) -> None:
        self.tensor = None

    def get_or_none(self) -> torch.Tensor | None:
        """The tensor, or None if it was dropped or written where the interception could not see."""
        t = self.tensor
        return t if t is not None and t._version == self.version else None

    def get(self) -> torch.Tensor:
        if self.tensor._version != self.version:
            raise RuntimeError(
                "LRP: a tensor its rules read in the backward pass was overwritten in place by an op the engine "
                "did not see (e.g. through .data); write the model without that in-place op"
            )
        return self.tensor

