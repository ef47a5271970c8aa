"""Example figures of tribute.viz.curves, from real metric runs on scikit-learn's 8 × 8 digits (offline, seeded,
a few seconds on a CPU).

``EXAMPLES`` lists (file name, zero-argument function returning a matplotlib Figure); docs/figures/make_figures.py
writes them with the other figures.  Run this file alone to write them to docs/figures/:
``python docs/figures/curve_examples.py [OUT_DIR]``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
from torch import nn

import tribute
from tribute.data import load_digits
from tribute.metrics import deletion, insertion, parameter_randomisation, pixel_perturbation, roar, sensitivity_n
from tribute.training import fit
from tribute.viz.curves import (
    perturbation_figure,
    roar_figure,
    sanity_figure,
    sensitivity_n_figure,
    table_curves_figure,
)

METHODS = ("gradient", "integrated_gradients", "guided_backprop")
SAMPLES = 32
SEED = 0


def small_cnn() -> nn.Module:
    """A two-convolution network for 1 × 8 × 8 digits (seeded initialisation)."""
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))


@functools.cache
def trained():
    """The CNN trained for a few epochs, the held-out images and labels, and each method's attributions."""
    split = load_digits(seed=SEED)
    model = small_cnn()
    fit(model, split.train, epochs=5, lr=0.01, optimizer="adam", seed=SEED, progress=False)
    x, y = split.test[0][:SAMPLES], split.test[1][:SAMPLES]
    maps = {m: tribute.explain(model, x, m, target=y) for m in METHODS}
    return model, split, x, y, maps


def morf_figure():
    model, _, x, y, maps = trained()
    return perturbation_figure({m: pixel_perturbation(model, x, a, y, order="morf", steps=16, seed=SEED)
                                for m, a in maps.items()})


def deletion_figure():
    model, _, x, y, maps = trained()
    return perturbation_figure({m: deletion(model, x, a, y, steps=16) for m, a in maps.items()}, kind="deletion")


def insertion_figure():
    model, _, x, y, maps = trained()
    return perturbation_figure({m: insertion(model, x, a, y, steps=16) for m, a in maps.items()}, kind="insertion")


def evaluation_figure():
    model, _, x, y, _ = trained()
    table = tribute.evaluate(model, (x, y), METHODS, ["aopc_morf", "aopc_lerf", "deletion", "insertion"],
                             target="label", seed=SEED, progress=False)
    return table_curves_figure(table)


def small_mlp() -> nn.Module:
    """The model ROAR retrains: an MLP, quick to train to a fair accuracy on the 8 × 8 digits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def roar_example():
    model, split, *_ = trained()
    train = (split.train[0][:600], split.train[1][:600])
    result = roar(model, train, split.test, ("gradient", "integrated_gradients"), fractions=(0.2, 0.5, 0.8),
                  mode="both", repeats=2, seed=SEED, progress=False,
                  model_factory=small_mlp, train_options={"epochs": 15, "lr": 0.01, "optimizer": "adam"})
    return roar_figure(result)


def sanity_example():
    model, _, x, y, _ = trained()
    results = [parameter_randomisation(model, x, m, y, similarities=("spearman", "pearson"), seed=SEED)
               for m in ("gradient", "guided_backprop")]
    return sanity_figure(results)


def sensitivity_example():
    model, _, x, y, maps = trained()
    return sensitivity_n_figure({m: sensitivity_n(model, x[:16], a[:16], y[:16], samples=24, seed=SEED)
                                 for m, a in maps.items()})


EXAMPLES = [
    ("curves_morf.png", morf_figure),
    ("curves_deletion.png", deletion_figure),
    ("curves_insertion.png", insertion_figure),
    ("curves_evaluate.png", evaluation_figure),
    ("curves_roar.png", roar_example),
    ("curves_sanity.png", sanity_example),
    ("curves_sensitivity_n.png", sensitivity_example),
]


def main(out: str | None = None) -> None:
    folder = Path(out) if out else Path(__file__).parent
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in EXAMPLES:
        fig = make()
        fig.savefig(folder / name, dpi=100, facecolor="white")
        print(folder / name)


if __name__ == "__main__":
    main(*sys.argv[1:2])
