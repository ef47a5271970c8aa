"""Benchmark the aligned explainer's inference: the head's cost beside one forward pass of the classifier.

On the CIFAR ResNet-18 of benchmarks/models.py (random init, seed 0; its default CAM layer, ``layer4``, gives
512×4×4 maps) and a batch of 32 random 3×32×32 images, one intra-op thread (``--threads``), sides interleaved:

1. ``classifier``: ``resnet(x)`` under ``torch.no_grad()``;
2. ``aligned, default head``: ``tribute.explain(wrapper, x, "aligned")`` (logits and map from one pass; the head
   narrows 512 → 256 → 128 → 64 → 32 → 1).  Target (issue 15): ≤ 1.2× the classifier;
3. ``aligned, paper widths``: the same with the paper's 64, 128, 256, 512 (Zeng et al. 2021, §4.1);
4. for scale, post-hoc methods on the same model and batch: ``gradient`` (one forward and backward) and, unless
   ``--quick``, SmoothGrad with 50 samples (one round).

Wall and CPU seconds (of this process: one thread, so CPU seconds leave out waits for a core on a shared machine)
are the medians over the rounds.  Run from the repository root::

    python benchmarks/bench_aligned.py            # 9 rounds, SmoothGrad-50 included
    python benchmarks/bench_aligned.py --quick    # 3 rounds, no SmoothGrad

Measured on 2 cores shared with other work (wall times 2-4× the CPU times, so the CPU seconds are the numbers to
read), one thread, 9 rounds, CPU ms per image: classifier 10.7; aligned with the default head 11.9 (1.12×, the
target ≤ 1.2× met); with the paper's widths 31.4 (2.94×: its 256- and 512-channel layers run at 16×16 and 32×32);
gradient 24.8 (2.32×); SmoothGrad-50 1268 (119×, one round).  The issue's 0.9× and 4× were for the heads alone
with another layout; here the heads alone cost 0.12× and 1.94× of the classifier.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import random_inputs, resnet18_cifar  # noqa: E402

import tribute  # noqa: E402
from tribute.explainers import PAPER_WIDTHS, AlignedExplainer  # noqa: E402


def rounds(sides: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each side, the order reversed every other round."""
    wall: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            sides[name]()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in sides}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds, no SmoothGrad")
    ap.add_argument("--repeats", type=int, help="timed rounds (default 9, quick 3)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 9)
    model, x = resnet18_cifar(), random_inputs(args.batch)
    torch.manual_seed(0)
    default = AlignedExplainer(model, (3, 32, 32)).eval()
    paper = AlignedExplainer(model, (3, 32, 32), widths=PAPER_WIDTHS).eval()
    print(f"ResNet-18 (CIFAR), batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{repeats} rounds; layer {default.layer!r}, features {default.feature_shape}")
    print(f"default head widths {default.head.widths}, paper {paper.head.widths}")
    head_params = {k: sum(p.numel() for p in w.head.parameters()) for k, w in (("default", default), ("paper", paper))}
    print(f"head parameters: default {head_params['default']:,}, paper {head_params['paper']:,}; classifier "
          f"{sum(p.numel() for p in model.parameters()):,}")

    def classifier():
        with torch.no_grad():
            model(x)

    sides = {"classifier": classifier,
             "aligned, default head": lambda: tribute.explain(default, x, "aligned"),
             "aligned, paper widths": lambda: tribute.explain(paper, x, "aligned"),
             "gradient": lambda: tribute.explain(model, x, "gradient")}
    for side in sides.values():  # warm-up
        side()
    times = rounds(sides, repeats)
    if not args.quick:
        times.update(rounds({"smoothgrad (50 samples)": lambda: tribute.explain(model, x, "smoothgrad", samples=50,
                                                                               seed=0)}, 1))
    base_wall, base_cpu = times["classifier"]
    print(f"\n{'side':26s} {'wall s':>8s} {'cpu s':>8s} {'wall ×':>7s} {'cpu ×':>7s} {'ms/image (cpu)':>15s}")
    for name, (wall, cpu) in times.items():
        print(f"{name:26s} {wall:8.3f} {cpu:8.3f} {wall / base_wall:7.2f} {cpu / base_cpu:7.2f} "
              f"{1000 * cpu / args.batch:15.2f}")


if __name__ == "__main__":
    main()
