"""Benchmark LRP's composites against one forward+backward pass on ResNet-18, VGG-11 and ConvNeXt-Tiny (CPU).

Issue 13's speed targets: ε-LRP (composite ``"epsilon"`` and method ``lrp_epsilon``) within 1.5× of one
forward+backward pass (the input gradient of the target scores, :func:`common.forward_backward`); the z⁺, γ and
αβ composites (``"epsilon_plus"``: z⁺ on convolutions and ε on dense layers, ``"gamma"``, ``"alpha_beta"``) within
2× where the layers' inputs are non-negative and within 3× where they have both signs (x⁺W⁺ + x⁻W⁻ forward and
back needs at least 5 convolution-equivalents against 2).  The models:

- the CIFAR ResNet-18 of benchmarks/models.py (3×32×32) and VGG-11 (benchmarks/vgg.py, 64×64): every layer but
  the first reads a ReLU's output, target 2×;
- Hugging Face ConvNeXt-Tiny (benchmarks/vgg.py, 64×64): every layer reads an input of both signs (LayerNorm's,
  GELU's, the residual stream), target 3×.  Its LayerNorm has no LRP rule yet: the explainers run with
  ``strict=False`` (LayerNorm passes its plain gradient, with a warning), on every model alike.

Each composite runs on one explainer called again and again, as over a dataset (it keeps the weights its rules
derive and merges batch norm from its second call; ``--cold`` adds rows with a new explainer per call, as
``tribute.explain`` does).  Every round times the forward+backward unit and each method once, in an order that
alternates between rounds, and reports medians; the ratios use the unit measured in the same rounds.  Besides
wall time the script reports the calling thread's CPU time (``time.thread_time``, with one torch thread the
work runs there): on a machine shared with other work it is the steadier of the two; column ``bg`` is the CPU
other processes used meanwhile (:class:`common.CpuMonitor`), in cores.

Run from the repository root::

    python benchmarks/bench_lrp_zoo.py              # batch 8 at 64×64 (ResNet at 32×32), ~5 minutes on 2 idle cores
    python benchmarks/bench_lrp_zoo.py --quick      # 3 rounds
    python benchmarks/bench_lrp_zoo.py --large      # also VGG-11 and ConvNeXt at 224×224, batch 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import CpuMonitor, forward_backward, tribute_source  # noqa: E402
from models import resnet18_cifar  # noqa: E402
from vgg import Logits, convnext_tiny, vgg11  # noqa: E402

import tribute  # noqa: E402

COMPOSITES = ("epsilon", "epsilon_plus", "gamma", "alpha_beta")
#: method → (target for non-negative layer inputs, target for inputs of both signs)
TARGETS = {"epsilon": (1.5, 1.5), "lrp_epsilon": (1.5, 1.5), "epsilon_plus": (2.0, 3.0), "gamma": (2.0, 3.0),
           "alpha_beta": (2.0, 3.0)}


def models(large: bool, only: set[str] | None) -> list[tuple[str, Callable, tuple, bool]]:
    """(label, make model, input shape with batch, whether its layers' inputs have both signs)."""
    table = [("resnet18-cifar", resnet18_cifar, (8, 3, 32, 32), False),
             ("vgg11", lambda: vgg11(64), (8, 3, 64, 64), False),
             ("convnext-tiny", lambda: Logits(convnext_tiny(64)), (8, 3, 64, 64), True)]
    if large:
        table += [("vgg11@224", lambda: vgg11(224), (1, 3, 224, 224), False),
                  ("convnext-tiny@224", lambda: Logits(convnext_tiny(224)), (1, 3, 224, 224), True)]
    return [m for m in table if only is None or m[0].split("@")[0] in only or m[0] in only]


def methods(model, x, target, composites, cold: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """The timed callables: the unit first, then each method on an explainer reused across calls."""
    out = {"forward+backward": lambda: forward_backward(model, x, target)}
    for c in composites:
        explainer = tribute.LRP(model, composite=c, strict=False)
        out[c] = lambda e=explainer: e.attribute(x, target)
        if cold:
            out[f"{c} cold"] = lambda c=c: tribute.explain(model, x, "lrp", target=target, composite=c, strict=False)
    explainer = tribute.LRPEpsilon(model, strict=False)
    out["lrp_epsilon"] = lambda: explainer.attribute(x, target)
    return out


def interleaved(sides: dict[str, Callable], rounds: int, warmup: int, monitor: CpuMonitor) -> dict[str, dict]:
    """Median wall and thread-CPU seconds of each callable over ``rounds`` rounds, the order reversed every other
    round, after ``warmup`` untimed calls of each (an explainer's first calls plan merges and derive weights)."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    background: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            state = monitor.start()
            c0, t0 = time.thread_time(), time.perf_counter()
            sides[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
            background[name].append(monitor.stop(state))
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k]),
                "bg": statistics.median(background[k])} for k in sides}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 timed rounds (default 7)")
    ap.add_argument("--repeats", type=int, help="timed rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--models", help="comma-separated subset of resnet18-cifar, vgg11, convnext-tiny")
    ap.add_argument("--composites", help=f"comma-separated subset of {', '.join(COMPOSITES)}")
    ap.add_argument("--large", action="store_true", help="also VGG-11 and ConvNeXt at 224×224, batch 1")
    ap.add_argument("--cold", action="store_true", help="also a new explainer per call (tribute.explain)")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # strict=False warns once per explainer about LayerNorm
    rounds = args.repeats or (3 if args.quick else 7)
    composites = tuple(args.composites.split(",")) if args.composites else COMPOSITES
    only = set(args.models.split(",")) if args.models else None
    print(f"python {platform.python_version()}, torch {torch.__version__}, tribute {tribute.__version__} at commit "
          f"{tribute_source().removeprefix('at commit ')}; {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; {rounds} timed rounds, sides interleaved, medians; float32, eval mode")
    monitor, results, t_start = CpuMonitor(), [], time.perf_counter()
    for label, make, shape, signed in models(args.large, only):
        torch.manual_seed(0)
        model = make()
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        target = torch.arange(shape[0]) % 10
        times = interleaved(methods(model, x, target, composites, args.cold), rounds, 2, monitor)
        unit = times["forward+backward"]
        print(f"\n{label}, input {tuple(shape)}; layer inputs {'of both signs' if signed else 'non-negative'} "
              f"past the first; forward+backward {unit['wall'] * 1e3:.1f} ms wall, {unit['cpu'] * 1e3:.1f} ms CPU")
        print(f"  {'method':22s} {'wall ms':>9s} {'ratio':>6s} {'CPU ms':>9s} {'ratio':>6s} {'target':>6s} "
              f"{'met':>4s} {'bg':>5s}")
        for name, t in times.items():
            if name == "forward+backward":
                continue
            base = name.removesuffix(" cold")
            limit = TARGETS[base][signed]
            wall, cpu = t["wall"] / unit["wall"], t["cpu"] / unit["cpu"]
            met = "yes" if cpu <= limit else "no"
            print(f"  {name:22s} {t['wall'] * 1e3:9.1f} {wall:6.2f} {t['cpu'] * 1e3:9.1f} {cpu:6.2f} {limit:6.1f} "
                  f"{met:>4s} {t['bg']:5.2f}")
            results.append({"model": label, "method": name, "wall_ms": t["wall"] * 1e3, "cpu_ms": t["cpu"] * 1e3,
                            "unit_wall_ms": unit["wall"] * 1e3, "unit_cpu_ms": unit["cpu"] * 1e3,
                            "ratio_wall": wall, "ratio_cpu": cpu, "target": limit, "background": t["bg"]})
        del model
    print(f"\n'met' judges the CPU-time ratio; bg > 0.2 cores means other work ran meanwhile. "
          f"total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": tribute_source(),
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
