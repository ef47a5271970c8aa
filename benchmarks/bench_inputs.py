"""Integrated gradients on a model with two inputs: tribute against Captum and the physical limit (CPU).

The model is the CIFAR ResNet-18 of the other benchmarks with a second input, a table of 16 features
through a small dense branch, the two merged by a linear head.  For batch sizes 1 and 32 it times, in one
process, with the same steps on every side (riemann_middle nodes):

(a) the physical unit: one forward + backward pass of the two-input model, the gradient taken at both
    inputs, per row, at tribute's chunk size;
(b) tribute's IG on the tuple (image, table), attributing both;
(c) tribute's IG on the image with the table as a per-sample forward argument (the same passes, one input
    attributed);
(d) Captum's IntegratedGradients on the tuple, with its default and with internal_batch_size = tribute's chunk;
(e) Captum's IntegratedGradients on the image with the table in ``additional_forward_args``.

and prints seconds, Captum / tribute, and tribute's time over rows × (forward + backward per row): the
issue's speed criterion is that multi-input IG runs at the same passes × (forward + backward) limit as
single-input IG.  On a machine shared with other work timings mean little: the background CPU used by other
processes during each measurement is printed (column bg).

Run from the repository root::

    python benchmarks/bench_inputs.py            # ~2 minutes on 2 idle cores
    python benchmarks/bench_inputs.py --quick    # ~1 minute
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import captum  # noqa: E402
import captum.attr as ca  # noqa: E402
from common import CHUNK_ROWS, CpuMonitor, agreement, interleaved_medians, source_version, timed  # noqa: E402
from models import random_inputs, resnet18_cifar  # noqa: E402

import tribute  # noqa: E402

TABLE = 16


class ImageAndTable(nn.Module):
    """ResNet-18 features of the image (its 10 logits as features) and a dense branch on the table."""

    def __init__(self):
        super().__init__()
        self.image = resnet18_cifar()
        torch.manual_seed(0)
        self.table = nn.Sequential(nn.Linear(TABLE, 32), nn.ReLU(), nn.Linear(32, 10))
        self.head = nn.Linear(20, 10)

    def forward(self, image, table):
        return self.head(torch.cat([self.image(image), self.table(table)], 1))


def unit_per_row(model, rows: int, repeats: int) -> float:
    """Forward + backward seconds per row, gradient at both inputs, ``rows`` rows per pass."""
    x = random_inputs(rows, seed=7)
    t = torch.randn(rows, TABLE, generator=torch.Generator().manual_seed(3))
    target = torch.arange(rows) % 10

    def fb():
        a, b = x.detach().requires_grad_(), t.detach().requires_grad_()
        out = model(a, b)
        return torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), [a, b])

    return timed(fb, repeats, warmup=2) / rows


def measure(model, n: int, steps: int, repeats: int, monitor: CpuMonitor) -> None:
    x = random_inputs(n)
    t = torch.randn(n, TABLE, generator=torch.Generator().manual_seed(5))
    target = torch.arange(n) % 10
    ig = tribute.IntegratedGradients(model, steps=steps, quadrature="riemann_middle")
    sides = {
        "tribute (image, table)": lambda: ig.attribute((x, t), target),
        "tribute image, table as forward_args": lambda: ig.attribute(x, target, forward_args=(t,)),
        "captum tuple": lambda: ca.IntegratedGradients(model).attribute(
            (x, t), target=target, n_steps=steps, method="riemann_middle"),
        f"captum tuple, internal_batch_size={CHUNK_ROWS}": lambda: ca.IntegratedGradients(model).attribute(
            (x, t), target=target, n_steps=steps, method="riemann_middle", internal_batch_size=CHUNK_ROWS),
        "captum image, additional_forward_args": lambda: ca.IntegratedGradients(model).attribute(
            x, target=target, n_steps=steps, method="riemann_middle", additional_forward_args=(t,)),
    }
    ours, theirs = sides["tribute (image, table)"](), sides["captum tuple"]()
    agree = max(agreement(a, b) for a, b in zip(ours, theirs, strict=True))
    with tribute.count_passes() as count:
        sides["tribute (image, table)"]()
    rows = count.backward_rows
    unit = unit_per_row(model, min(CHUNK_ROWS, rows), repeats)
    state = monitor.start()
    medians = interleaved_medians(list(sides.values()), repeats)
    bg = monitor.stop(state)
    print(f"\nbatch {n}, {steps} steps: {rows} rows forward and backward; forward+backward {unit * 1e3:.2f} ms per row "
          f"at {min(CHUNK_ROWS, rows)} rows per pass; max relative difference tribute vs Captum {agree:.1e}; "
          f"bg {bg:.2f} cores")
    base = medians[0]
    for (name, _), sec in zip(sides.items(), medians, strict=True):
        limit = sec / (rows * unit)
        print(f"  {name:44s} {sec:8.3f} s   {sec / base:5.2f} x tribute (image, table)   "
              f"time / (rows x fwd+bwd) {limit:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    model = ImageAndTable().eval()
    print("integrated gradients on a two-input model (CIFAR ResNet-18 image branch + 16-feature table branch)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, captum {captum.__version__}, "
          f"tribute {tribute.__version__} at commit {source_version()}; {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    monitor = CpuMonitor()
    repeats = 3 if args.quick else 5
    for n, steps in ((1, 16 if args.quick else 50), (32, 4 if args.quick else 16)):
        measure(model, n, steps, repeats, monitor)


if __name__ == "__main__":
    main()
