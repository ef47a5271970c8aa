"""The data set of a store: its samples read in ranges, and its identity.

A data set is one of
- a tensor of samples (dim 0 the samples);
- a tuple ``(inputs, labels)`` of a tensor of samples and a 1-D integer tensor with one label per sample;
- anything with ``len`` and integer indexing (a ``torch.utils.data.Dataset``, a list) whose items are a tensor
  or a tuple/list whose first entry is the sample's tensor and whose second, if any, is its label (an integer,
  as torchvision's data sets give).  A list is always a list of samples, never an (inputs, labels) pair.

Its identity, recorded in the manifest and checked when a run resumes: the number of samples, one sample's
shape and dtype, whether it has labels, and the SHA-256 of all its samples' bytes in order (each sample
contiguous in memory order, then the labels as int64), so the same data given as a tensor or as a Dataset has
the same identity.  Computing it reads the whole data set once (cheap beside any attribution method).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

#: samples read at once when digesting the data
_DIGEST_ROWS = 1024


class Samples:
    """Indexed access to a data set's samples (and labels, when it has them), in ranges."""

    def __init__(self, data: Any):
        self._tensor: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._items = None
        if isinstance(data, torch.Tensor):
            self._tensor = data
        elif isinstance(data, tuple):
            self._tensor, self._labels = _pair(data)
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (str, bytes, dict)):
            self._items = data
        else:
            raise TypeError(f"data must be a tensor of samples, an (inputs, labels) tuple of tensors, or a data set "
                            f"with len() and indexing (e.g. a torch Dataset); got {type(data).__name__} (a "
                            "DataLoader or a generator cannot be read by range: pass its data set)")
        self.count = len(self._tensor) if self._tensor is not None else len(self._items)
        if self.count == 0:
            raise ValueError("the data set holds no samples: nothing to store")
        first, label = self.rows(0, 1)
        self.sample_shape = tuple(first.shape[1:])
        self.dtype = first.dtype
        self.has_labels = label is not None

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples ``start``..``stop - 1`` as one tensor, and their labels (int64) or None."""
        if self._tensor is not None:
            labels = None if self._labels is None else self._labels[start:stop]
            return self._tensor[start:stop], labels
        items = [_item(self._items[i], i) for i in range(start, stop)]
        xs = [x for x, _ in items]
        for i, x in zip(range(start, stop), xs, strict=True):
            if x.shape != xs[0].shape or x.dtype != xs[0].dtype:
                raise ValueError(f"sample {i} of the data set has shape {tuple(x.shape)} and dtype {x.dtype}, "
                                 f"sample {start} {tuple(xs[0].shape)} and {xs[0].dtype}: all samples must agree")
        labels = [y for _, y in items]
        if any(y is None for y in labels) != all(y is None for y in labels):
            raise ValueError(f"samples {start}..{stop - 1} of the data set: some have a label and some do not")
        y = None if labels[0] is None else torch.stack(labels)
        return torch.stack(xs), y

    def identity(self) -> dict[str, Any]:
        """The data set's identity for the manifest (see the module docstring)."""
        h = hashlib.sha256()
        labels = hashlib.sha256()
        for start in range(0, self.count, _DIGEST_ROWS):
            x, y = self.rows(start, min(start + _DIGEST_ROWS, self.count))
            self._check(x, y, start)
            h.update(x.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
            if y is not None:
                labels.update(y.contiguous().numpy())
        if self.has_labels:
            h.update(labels.digest())
        return {"count": self.count, "sample_shape": list(self.sample_shape), "dtype": str(self.dtype),
                "labels": self.has_labels, "sha256": h.hexdigest()}

    def _check(self, x: torch.Tensor, y: torch.Tensor | None, start: int) -> None:
        if tuple(x.shape[1:]) != self.sample_shape or x.dtype != self.dtype or (y is not None) != self.has_labels:
            raise ValueError(f"samples from {start} of the data set differ from sample 0 in shape, dtype or having "
                             f"a label ({tuple(x.shape[1:])}, {x.dtype} against {self.sample_shape}, {self.dtype})")


def _pair(data: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
        raise TypeError("a tuple data set must be (inputs, labels), two tensors; a model taking several inputs is "
                        "not supported by the store (one input tensor per sample)")
    x, y = data
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor with one entry per sample ({x.shape[0]}), got shape "
                         f"{tuple(y.shape)} and dtype {y.dtype}")
    return x, y.to(torch.long)


def _item(item: Any, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        if len(item) == 1:
            return item[0], None
        y = item[1]
        if isinstance(y, torch.Tensor) and y.dim() == 0 and not y.is_floating_point():
            return item[0], y.to(torch.long)
        if isinstance(y, int) and not isinstance(y, bool):
            return item[0], torch.tensor(y, dtype=torch.long)
        raise TypeError(f"item {i} of the data set: its second entry must be an integer label, got "
                        f"{type(y).__name__}")
    raise TypeError(f"item {i} of the data set must be a tensor or a (tensor, label) tuple, got {type(item).__name__}")
