"""The figures as PNG: Fig 4 (ROAR curves) and Fig 5 (the sanity check's Spearman per method)."""

from __future__ import annotations

import pathlib

from ...atomic_files import atomic_writer
from .scales import FRACTIONS
from .tables import mean_sd


def _save(fig, path: pathlib.Path) -> None:
    with atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def roar_figure(per_seed: list[dict], curves: dict[str, str], path: pathlib.Path, title: str) -> None:
    """ROAR accuracy against the fraction removed (0: the unmodified reference), mean ± sd over the seeds."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    reference = mean_sd([s["reference"] for s in per_seed])[0]
    for label, method in curves.items():
        stats = [mean_sd([s["accuracy"][method][i] for s in per_seed]) for i in range(len(FRACTIONS))]
        ax.errorbar([0.0, *FRACTIONS], [reference, *(m for m, _ in stats)], yerr=[0.0, *(s for _, s in stats)],
                    marker="o", capsize=3, label=label)
    ax.set_xlabel("fraction of pixels removed")
    ax.set_ylabel("test accuracy after retraining")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def sanity_figure(scores: dict[str, dict], path: pathlib.Path) -> None:
    """A bar per method: the mean Spearman of its maps before and after the last block's re-initialisation."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(scores)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(names)), [scores[n]["mean"] for n in names], yerr=[scores[n]["sd"] for n in names], capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("Spearman, before vs after")
    ax.set_title("last residual block re-initialised")
    _save(fig, path)
    plt.close(fig)
