"""Benchmark the cascading parameter-randomisation sanity check against Quantus's MPRT (CPU).

Adebayo et al.'s model parameter randomisation test, cascading from the top layer down, explained by the plain
gradient, on

(a) the committed Fashion-MNIST CNN (tests/fixtures/fashion: 7 parameter-owning layers, 1×28×28 inputs),
    its 64 stored test images, targets their labels;
(b) with ``--resnet`` (default in full mode): a CIFAR ResNet-18 (benchmarks/models.py, random init seed 0,
    62 parameter-owning layers), 16 random images, target class i % 10.

Sides, timed in one process (medians of interleaved repeats, after one warm-up round):

- ``tribute spearman_abs``: ``tribute.metrics.parameter_randomisation(..., similarities=("spearman_abs",),
  reduce=None)``, the measure Quantus computes by default (it takes |attribution| and normalises by the
  maximum before its Spearman correlation over every channel's values; the maximum does not change ranks);
- ``tribute 4 measures``: the default, the attribution summed over its channels into a map, then Spearman
  with and without absolute values, SSIM and HOG of the maps;
- ``Quantus MPRT``: ``quantus.MPRT(layer_order="top_down")`` (Quantus 0.6.0; ``ModelParameterRandomisation``
  is the same class) with its default Spearman similarity, ``batch_size`` = all images, its explain_func a
  wrapper around tribute's gradient (numpy in, numpy out), so both sides spend the same on attributions and
  the difference is the metric's own work;
- ``attributions only``: the floor both pay, the trained model's gradient plus one per layer, each over the
  whole batch (tribute, no similarity).

Speedup = Quantus / tribute.  The two re-initialise layers differently (Quantus: each module's
``reset_parameters`` after ``torch.manual_seed(seed + 1)``, which also resets batch-norm running statistics;
tribute: its own seeded generator per layer, running statistics kept) and order them differently (Quantus by
registration, tribute by the forward pass: a ResNet's shortcut convolution runs before the block's convolutions
but is registered after them), so their numbers differ; to check that both compute the same thing, tribute is
also run once with an ``init=`` that does what Quantus does and Quantus's layer order, and the largest
difference of the per-layer, per-image Spearman ρ is printed.

On a machine shared with other work timings mean little: the column ``bg`` is the CPU (in cores) other
processes used while a side was measured (/proc/stat).

Run from the repository root::

    python benchmarks/bench_sanity.py            # 507 s measured on 2 cores shared with other work
    python benchmarks/bench_sanity.py --quick    # Fashion-MNIST only, 3 rounds (15 s)
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import quantus  # noqa: E402
from common import BACKGROUND_LIMIT, CpuMonitor, fixture_then_resnet, interleaved_medians  # noqa: E402

import tribute  # noqa: E402
from tribute.metrics import parameter_randomisation  # noqa: E402

QUANTUS_SEED = 42



def gradient_np(model, inputs, targets, **_):
    """Quantus's explain_func: tribute's plain gradient, numpy in and out."""
    x = torch.as_tensor(inputs, dtype=torch.float32)
    t = torch.as_tensor(targets, dtype=torch.int64)
    return tribute.explain(model, x, "gradient", target=t).numpy()


def quantus_like_init(name, module, generator):
    """What Quantus does to a layer: the global RNG seeded with seed + 1, then the module's reset_parameters."""
    torch.manual_seed(QUANTUS_SEED + 1)
    module.reset_parameters()


def run_quantus(model, x, y):
    metric = quantus.MPRT(layer_order="top_down", seed=QUANTUS_SEED, disable_warnings=True,
                          display_progressbar=False)
    return metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), explain_func=gradient_np,
                  batch_size=len(x), device="cpu")


def attributions_only(model, x, y):
    """The trained model's gradient and one per randomised layer, no similarity: both sides' floor."""
    original = tribute.explain(model, x, "gradient", target=y)
    for _, randomised in tribute.metrics.randomisation_steps(model, x):
        tribute.explain(randomised, x, "gradient", target=y)
    return original


def quantus_order(model) -> list[str]:
    """Quantus's layers, top first: modules with ``reset_parameters`` in reverse registration order."""
    return [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]


def check_agreement(model, x, y) -> tuple[float, int]:
    """Largest |ρ_tribute − ρ_Quantus| over layers and images when tribute re-initialises as Quantus does, in
    Quantus's layer order."""
    ours = parameter_randomisation(model, x, "gradient", y, similarities=("spearman_abs",), reduce=None,
                                   init=quantus_like_init, layers=quantus_order(model))
    theirs = run_quantus(model, x, y)
    worst = 0.0
    for k, step in enumerate(ours.steps):
        q = np.asarray(theirs[step], dtype=np.float64)
        worst = max(worst, float(np.nanmax(np.abs(ours["spearman_abs"][k].numpy() - q))))
    return worst, len(ours.steps)


def measure(label: str, model, x, y, repeats: int, monitor: CpuMonitor) -> None:
    n = len(x)
    layers = len(tribute.metrics.parameter_layers(model, x))
    print(f"== {label}: {n} images, {layers} layers (cascading, top first), gradient ==")
    ours = tribute.metrics.parameter_layers(model, x)[::-1]
    theirs = quantus_order(model)
    moved = sum(a != b for a, b in zip(ours, theirs, strict=False)) + abs(len(ours) - len(theirs))
    print(f"layer order: tribute follows the forward pass ({len(ours)} layers), Quantus the registration "
          f"({len(theirs)}); {moved} places differ on this model")
    worst, steps = check_agreement(model, x, y)
    print(f"agreement with Quantus (tribute given Quantus's reset_parameters as init= and its layer order): "
          f"max |Δρ| = {worst:.2e} over {steps} layers x {n} images")
    sides = {
        "tribute spearman_abs": lambda: parameter_randomisation(model, x, "gradient", y, reduce=None,
                                                                similarities=("spearman_abs",)),
        "tribute 4 measures": lambda: parameter_randomisation(model, x, "gradient", y),
        "Quantus MPRT": lambda: run_quantus(model, x, y),
        "attributions only": lambda: attributions_only(model, x, y),
    }
    for fn in sides.values():  # warm-up round
        fn()
    state = monitor.start()
    seconds = interleaved_medians(list(sides.values()), repeats)
    background = monitor.stop(state)
    times = dict(zip(sides, seconds, strict=True))
    print(f"{'side':22s} {'s / run':>9s} {'ms / image':>11s} {'Quantus / side':>15s}")
    for name, t in times.items():
        ratio = times["Quantus MPRT"] / t
        print(f"{name:22s} {t:9.3f} {1000 * t / n:11.2f} {ratio:14.1f}x")
    print(f"bg (other processes, cores, whole measurement): {background:.2f}"
          + ("  <- disturbed" if background > BACKGROUND_LIMIT else ""))
    overhead_t = times["tribute spearman_abs"] - times["attributions only"]
    overhead_q = times["Quantus MPRT"] - times["attributions only"]
    print(f"metric's own work beyond the attributions: tribute {1000 * overhead_t / n:.2f} ms / image, "
          f"Quantus {1000 * overhead_q / n:.2f} ms / image")
    goal = times["Quantus MPRT"] / times["tribute spearman_abs"] >= 10
    print(f"goal 10x faster than Quantus (like for like, spearman_abs): {'met' if goal else 'not met'}")
    print()


def main() -> None:
    fixture_then_resnet(__doc__, "tribute sanity check (cascading parameter randomisation) vs Quantus MPRT", measure)


if __name__ == "__main__":
    main()
