"""The data sets of the aligned explainer's experiments, as (N, 1, 28, 28) images in [0, 1] with a train/test split.

CIFAR-10 and Tiny ImageNet, Zeng et al. 2021's data sets, cannot be downloaded here; the experiments use two
that Debian packages ship:

- ``"fashion-mnist"``: Zalando's Fashion-MNIST (Debian ``dataset-fashion-mnist``), its own split of 60,000
  training and 10,000 test images (:func:`tribute.data.load_fashion_mnist`);
- ``"opencv-digits"``: the 5,000 handwritten digits of OpenCV's samples (Debian ``opencv-doc``), each 20×20
  digit padded to 28×28, split 4,000 / 1,000 stratified by class and seeded
  (:func:`tribute.data.load_opencv_digits`).

``train_size`` and ``test_size`` take seeded random subsets (the smoke and reduced scales of the experiments).
"""

from __future__ import annotations

import torch

from ..data import Split, load_fashion_mnist, load_opencv_digits

EXPERIMENT_DATASETS = ("fashion-mnist", "opencv-digits")


def load_experiment_data(name: str, *, seed: int = 0, train_size: int | None = None,
                         test_size: int | None = None) -> Split:
    """The data set ``name`` (:data:`EXPERIMENT_DATASETS`) as ``Split(train=(x, y), test=(x, y))``.

    Images are float32 (N, 1, 28, 28) in [0, 1], labels int64 in 0..9.  ``seed`` seeds the OpenCV digits' split
    and the subsets; a subset of n keeps the samples at n positions drawn without replacement by a
    ``torch.Generator`` seeded with ``seed`` (the training set's draw first), in the data set's order.  A missing
    Debian package is a FileNotFoundError naming it.
    """
    if name not in EXPERIMENT_DATASETS:
        raise ValueError(f"unknown experiment data set {name!r}; the data sets are "
                         f"{', '.join(map(repr, EXPERIMENT_DATASETS))}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if name == "fashion-mnist":
        split = Split(train=load_fashion_mnist("train"), test=load_fashion_mnist("test"))
    else:
        split = load_opencv_digits(seed=seed)
    g = torch.Generator().manual_seed(seed)
    return Split(train=_subset(split.train, train_size, "train_size", g),
                 test=_subset(split.test, test_size, "test_size", g))


def _subset(pair: tuple[torch.Tensor, torch.Tensor], n: int | None, name: str,
            g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = pair
    if n is None:
        return x, y
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(y):
        raise ValueError(f"{name} must be an integer in [1, {len(y)}] (the set's size), got {n!r}")
    keep = torch.randperm(len(y), generator=g)[:n].sort().values
    return x[keep], y[keep]
