"""Small offline image data sets for training in tests and examples: scikit-learn's 8×8 digits, Fashion-MNIST.

- :func:`load_digits`: the 1797 handwritten digits of the UCI "optical recognition" set that ship inside
  scikit-learn (``sklearn.datasets.load_digits``; nothing is downloaded), as (N, 1, 8, 8) float images in
  [0, 1] (the 0-16 counts divided by 16) with a seeded, class-stratified train/test split.
- :func:`load_fashion_mnist`: Zalando's Fashion-MNIST from the idx files of the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), when it is installed, as (N, 1, 28, 28)
  floats in [0, 1].  :func:`read_idx` reads LeCun's idx format (gzipped or not).
"""

from __future__ import annotations

import gzip
import pathlib
import struct
import sys
from typing import NamedTuple

import torch

from .._optional import require

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IDX_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32, 0x0D: torch.float32,
              0x0E: torch.float64}


class Split(NamedTuple):
    """A train/test split: ``train`` and ``test`` are (inputs, labels) pairs."""

    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def load_digits(*, test_fraction: float = 0.25, seed: int = 0, dtype: torch.dtype = torch.float32) -> Split:
    """scikit-learn's 8×8 digits as ``Split(train=(x, y), test=(x, y))``, x of shape (N, 1, 8, 8) in [0, 1].

    The split is stratified: within each class a seeded random permutation (its own ``torch.Generator``) puts
    ``round(test_fraction · n_class)`` images in the test set; each part keeps the data set's order.

    Parameters
    ----------
    test_fraction : float
        In (0, 1).
    seed : int
        Seeds the split.
    dtype : torch.dtype
        Floating dtype of the images (labels are int64).
    """
    check_split_options(test_fraction, seed, dtype)
    datasets = require("sklearn.datasets", "test", "the digits")
    bunch = datasets.load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float64).div(16.0).unsqueeze(1).to(dtype)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    test = stratified_test_mask(y, test_fraction, seed)
    return Split(train=(x[~test], y[~test]), test=(x[test], y[test]))


def check_split_options(test_fraction: float, seed: int, dtype: torch.dtype) -> None:
    """The options every loader with a seeded train/test split takes, checked with errors that name them."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")


def stratified_test_mask(labels: torch.Tensor, test_fraction: float, seed: int) -> torch.Tensor:
    """A boolean mask of the test samples: ``round(test_fraction · n_c)`` of each class c, drawn by a seeded
    permutation of the class's members (one ``torch.Generator`` seeded with ``seed``, classes in order)."""
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(int(labels.max()) + 1):
        members = (labels == c).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=g)[: round(test_fraction * len(members))]]
        test[chosen] = True
    return test


def load_fashion_mnist(split: str = "train", *, data_dir: str | pathlib.Path = FASHION_MNIST_DIR,
                       dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's ``"train"`` (60000) or ``"test"`` (10000) images as (N, 1, 28, 28) in [0, 1] and labels.

    Reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` from ``data_dir`` (default: where the Debian
    package ``dataset-fashion-mnist`` puts them).  Raises FileNotFoundError naming the package when absent.
    """
    stems = {"train": "train", "test": "t10k"}
    if split not in stems:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = pathlib.Path(data_dir)
    images = read_idx(_find(data_dir, f"{stems[split]}-images-idx3-ubyte"))
    labels = read_idx(_find(data_dir, f"{stems[split]}-labels-idx1-ubyte"))
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{data_dir}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    return images.to(dtype).div(255.0).unsqueeze(1), labels.long()


def read_idx(path: str | pathlib.Path) -> torch.Tensor:
    """An idx file (LeCun's MNIST format, gzipped or not) as a tensor.

    Header: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions n, then n big-endian uint32 sizes; the data follow, big-endian.
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        raw = gzip.decompress(raw)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an idx file (only {len(raw)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (magic {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = IDX_DTYPES[code]
    itemsize = torch.empty((), dtype=dtype).element_size()
    count = 1
    for size in shape:
        count *= size
    body = raw[4 + 4 * ndim:]
    if len(body) != count * itemsize:
        raise ValueError(f"{path}: {len(body)} data bytes for shape {shape} of {dtype}")
    data = torch.frombuffer(bytearray(body), dtype=torch.uint8) if body else torch.empty(0, dtype=torch.uint8)
    if itemsize > 1 and sys.byteorder == "little":  # idx is big-endian; torch reads the machine's order
        data = data.view(-1, itemsize).flip(1).reshape(-1)
    return data.view(dtype).reshape(shape).clone()


def _find(data_dir: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(f"{stem}[.gz] is not in {data_dir}; install the Debian package with "
                            "`apt-get install dataset-fashion-mnist` or pass data_dir=")
