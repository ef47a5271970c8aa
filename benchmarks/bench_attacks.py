"""Benchmark tribute's attacks and adversarial training against the forward+backward unit (CPU).

(1) PGD cost per step.  On a CIFAR ResNet-18 (eval, float32) at a batch of 32 rows (tribute's default chunk for
    3×32×32), it times one forward+backward pass (the input gradient of the target scores: the physical unit of
    ``common.forward_backward``), and ``tribute.robust.pgd`` with 1 and with K steps, L∞ and L2, random start on.
    Printed: per-step ratio T(pgd, K) / (K · T(fb)) and the marginal ratio (T(K) − T(1)) / ((K − 1) · T(fb)),
    which leaves out the once-per-attack cost (random start, checks).  Target: within 1.1.  Captum's PGD
    (L∞, cross-entropy loss, same steps) is timed beside it for reference.
(2) Adversarial-training epoch beside a standard epoch, both through ``tribute.training.fit`` on the same data:
    the 8×8 digits CNN of tests/test_adversarial_training.py (1347 images, batch 64, PGD-5) and the CIFAR
    ResNet-18 in train mode on 64 random images (batch 32, PGD-3).  Printed: the ratio of the epoch times beside
    steps + 1 (each PGD step is one forward+backward to the input only; the training step's backward also
    computes the weight gradients, so the ratio tends to fall a little below steps + 1).

All times are medians of interleaved repeats (``common.interleaved_medians``); the column bg is the CPU that other
processes used meanwhile (cores).  On a shared machine the timings are noisy: rerun on an idle one to quote them.

Run from the repository root::

    python benchmarks/bench_attacks.py            # ~4 minutes on 2 idle cores
    python benchmarks/bench_attacks.py --quick    # ~2 minutes
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import CHUNK_ROWS, CpuMonitor, forward_backward, interleaved_medians, source_version  # noqa: E402
from models import NUM_CLASSES, random_inputs, resnet18_cifar  # noqa: E402

from tribute.robust import adversarial_train, pgd  # noqa: E402
from tribute.training import fit  # noqa: E402


def digits_cnn() -> nn.Module:
    """The model of tests/test_adversarial_training.py (seeded without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
        )


def measure(monitor: CpuMonitor, sides, repeats: int) -> tuple[list[float], float]:
    for side in sides:  # warm-up
        side()
    state = monitor.start()
    times = interleaved_medians(sides, repeats)
    return times, monitor.stop(state)


def pgd_per_step(monitor: CpuMonitor, steps: int, repeats: int) -> None:
    model = resnet18_cifar()
    x = random_inputs(CHUNK_ROWS).clamp(-3, 3)
    y = torch.arange(CHUNK_ROWS) % NUM_CLASSES
    bounds = (-3.0, 3.0)
    print(f"(1) PGD per step, CIFAR ResNet-18, batch {CHUNK_ROWS}, K = {steps} steps, random start, medians of "
          f"{repeats} interleaved repeats")
    print(f"    {'attack':22s} {'fb s':>8s} {'pgd(1) s':>9s} {'pgd(K) s':>9s} {'per step':>9s} {'marginal':>9s} "
          f"{'bg':>5s}")
    for norm, eps in (("linf", 8 / 255 * 6), ("l2", 0.5 * 6)):  # the budgets of CIFAR in a range of width 6
        def attack(k, norm=norm, eps=eps):
            return pgd(model, x, y, norm=norm, eps=eps, step_size=2.5 * eps / k, steps=k, bounds=bounds, seed=0)
        (fb, one, many), bg = measure(monitor, [lambda: forward_backward(model, x, y), lambda: attack(1),
                                                lambda: attack(steps)], repeats)
        print(f"    tribute pgd {norm:10s} {fb:8.3f} {one:9.3f} {many:9.3f} {many / (steps * fb):9.3f} "
              f"{(many - one) / ((steps - 1) * fb):9.3f} {bg:5.2f}")
    try:
        import captum.robust as cr
    except ImportError:
        print("    (Captum not installed: no reference timing)")
        return

    def ce(out, t):
        return F.cross_entropy(out, t, reduction="none")

    captum_pgd = cr.PGD(model, loss_func=ce, lower_bound=bounds[0], upper_bound=bounds[1])
    eps = 8 / 255 * 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (fb, one, many), bg = measure(monitor, [
            lambda: forward_backward(model, x, y),
            lambda: captum_pgd.perturb(x, eps, 2.5 * eps, 1, y, random_start=True),
            lambda: captum_pgd.perturb(x, eps, 2.5 * eps / steps, steps, y, random_start=True)], repeats)
    print(f"    {'captum pgd linf':22s} {fb:8.3f} {one:9.3f} {many:9.3f} {many / (steps * fb):9.3f} "
          f"{(many - one) / ((steps - 1) * fb):9.3f} {bg:5.2f}")


def epoch_ratio(monitor: CpuMonitor, name: str, model: nn.Module, data, *, batch_size: int, steps: int, eps: float,
                bounds, repeats: int) -> None:
    common = {"epochs": 1, "lr": 1e-3, "optimizer": "adam", "batch_size": batch_size, "seed": 0, "progress": False}

    def standard():
        fit(model, data, **common)

    def adversarial():
        adversarial_train(model, data, norm="l2", eps=eps, steps=steps, bounds=bounds, **common)

    (t_std, t_adv), bg = measure(monitor, [standard, adversarial], repeats)
    print(f"    {name:34s} {t_std:9.3f} {t_adv:9.3f} {t_adv / t_std:7.2f} {steps + 1:7d} {bg:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output goes to a file
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 5
    print("tribute attacks and adversarial training vs forward+backward (CPU)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, tribute at {source_version()}")
    print()
    monitor = CpuMonitor()
    monitor.wait_for_quiet(0.1, max_wait=30)
    pgd_per_step(monitor, steps=5, repeats=repeats)
    print()
    print(f"(2) one training epoch, standard vs adversarial (PGD-L2), medians of {max(3, repeats // 2)} interleaved "
          "repeats")
    print(f"    {'setting':34s} {'std s':>9s} {'adv s':>9s} {'ratio':>7s} {'steps+1':>7s} {'bg':>5s}")
    from tribute.data import load_digits

    train = load_digits(seed=0).train
    epoch_ratio(monitor, "digits CNN, 1347 images, batch 64", digits_cnn(), train, batch_size=64, steps=5, eps=0.5,
                bounds=(0, 1), repeats=max(3, repeats // 2))
    x = random_inputs(64, seed=2).clamp(-3, 3)
    y = torch.arange(64) % NUM_CLASSES
    epoch_ratio(monitor, "ResNet-18 CIFAR, 64 images, batch 32", resnet18_cifar(), (x, y), batch_size=32, steps=3,
                eps=3.0, bounds=(-3.0, 3.0), repeats=max(3, repeats // 2))


if __name__ == "__main__":
    main()
