"""Benchmark the aligned explainer's inference: the head's cost beside one forward pass of the classifier.

On several CNNs, each with its default CAM layer as the feature layer, one intra-op thread (``--threads``), sides
interleaved, per model:

1. ``classifier``: ``model(x)`` under ``torch.no_grad()``;
2. ``aligned, default head``: ``tribute.explain(wrapper, x, "aligned")`` (logits and map from one pass; the default
   head narrows C/2, C/4, ... capped at 128, 64, 32, 16).  Target (issue 15): ≤ 1.2× the classifier;
3. ``aligned, paper widths``: the same with the paper's 64, 128, 256, 512 (Zeng et al. 2021, §4.1);
4. for scale, ``gradient`` (one forward and backward) and, unless ``--quick``, SmoothGrad with 50 samples (one
   round, the CIFAR ResNet-18 only).

The models: the CIFAR ResNet-18 of benchmarks/models.py (random init, 3×32×32, batch 32); where installed, the
pretrained EfficientNet-Lite0 (3×224×224, batch 8); where torchvision imports (the torch 2.14.1 venv), torchvision's
ResNet-50, ConvNeXt-T, EfficientNet-B0, VGG-11, DenseNet-121 and MobileNetV3-S in the realistic state of
zoo_torchvision.py, float32, 3×224×224, batch 8.  Wall and CPU seconds (of this process: one thread, so CPU seconds
leave out waits for a core on a shared machine) are the medians over the rounds.  Run from the repository root::

    python benchmarks/bench_aligned.py            # 9 rounds (3 at 224×224), SmoothGrad-50 included
    python benchmarks/bench_aligned.py --quick    # 3 rounds, no SmoothGrad
    PYTHONPATH=src /work/venvs/tv/bin/python benchmarks/bench_aligned.py --quick    # the torchvision CNNs

Measured 2026-12-07 (one thread, ``--quick``, the other core busy with other work; CPU time of the default head's
explainer / the classifier's forward pass): CIFAR ResNet-18 1.04× (paper widths 2.94×), EfficientNet-Lite0 1.11×
(29.6×), ResNet-50 1.13× (10.2×), ConvNeXt-T 1.07× (7.1×), VGG-11 1.04× (5.7×), DenseNet-121 1.16× (12.2×),
EfficientNet-B0 1.33× and 1.48× in two runs (40×), MobileNetV3-Small 3.47× and 4.20× (265×).  At 224×224 the default
head adds 3.5–13 ms per image on every model, more than a fifth of the two smallest classifiers' passes (23 and
3.5 ms); ``--widths 32 16 8 4`` measured 1.13× on EfficientNet-B0 and 1.76× on MobileNetV3-Small.  Before
the cap, the default head (C/2, C/4, ...) on EfficientNet-Lite0 (640, 320, 160, 80) cost 4.2×.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import resnet18_cifar  # noqa: E402

import tribute  # noqa: E402
from tribute.explainers import PAPER_WIDTHS, AlignedExplainer  # noqa: E402

TORCHVISION = ("resnet50", "convnext_tiny", "efficientnet_b0", "vgg11", "densenet121", "mobilenet_v3_small")


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


def zoo(side: int) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int], int]]:
    """name → (builder, input shape, batch) of every model this environment can build."""
    out: dict = {"resnet18_cifar": (resnet18_cifar, (3, 32, 32), 32)}
    try:
        from tribute.data.models import efficientnet_lite0

        efficientnet_lite0()  # the weights are a separate package: check that they load
        out["efficientnet_lite0"] = (lambda: efficientnet_lite0()[0], (3, 224, 224), 8)
    except Exception:  # noqa: BLE001 (the demo's extra not installed, or broken by torchvision)
        pass
    try:
        from zoo_torchvision import realistic, torchvision_models

        builders = torchvision_models()
        for name in TORCHVISION:
            out[name] = (lambda b=builders[name][0]: realistic(b(), side, dtype=torch.float32), (3, side, side), 8)
    except ImportError:
        pass
    return out


def measure(name: str, model: nn.Module, shape: tuple[int, int, int], batch: int, repeats: int,
            smoothgrad: bool, widths: tuple[int, ...] | None = None) -> None:
    model.eval()
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(1))  # normalised-image statistics
    torch.manual_seed(0)
    default = AlignedExplainer(model, shape).eval()
    paper = AlignedExplainer(model, shape, widths=PAPER_WIDTHS).eval()
    print(f"\n{name}: {shape}, batch {batch}; layer {default.layer!r}, features {default.feature_shape}; head "
          f"widths default {default.head.widths}, paper {paper.head.widths}; parameters: classifier "
          f"{sum(p.numel() for p in model.parameters()):,}, default head "
          f"{sum(p.numel() for p in default.head.parameters()):,}, paper head "
          f"{sum(p.numel() for p in paper.head.parameters()):,}")

    def classifier():
        with torch.no_grad():
            model(x)

    sides = {"classifier": classifier,
             "aligned, default head": lambda: tribute.explain(default, x, "aligned"),
             "aligned, paper widths": lambda: tribute.explain(paper, x, "aligned"),
             "gradient": lambda: tribute.explain(model, x, "gradient")}
    if widths:
        chosen = AlignedExplainer(model, shape, widths=widths).eval()
        sides[f"aligned, widths {','.join(map(str, widths))}"] = lambda: tribute.explain(chosen, x, "aligned")
    for side in sides.values():  # warm-up
        side()
    times = rounds(sides, repeats)
    if smoothgrad:
        times.update(rounds({"smoothgrad (50 samples)": lambda: tribute.explain(model, x, "smoothgrad", samples=50,
                                                                               seed=0)}, 1))
    base_wall, base_cpu = times["classifier"]
    print(f"{'side':30s} {'wall s':>8s} {'cpu s':>8s} {'wall ×':>7s} {'cpu ×':>7s} {'ms/image (cpu)':>15s}")
    for side, (wall, cpu) in times.items():
        print(f"{side:30s} {wall:8.3f} {cpu:8.3f} {wall / base_wall:7.2f} {cpu / base_cpu:7.2f} "
              f"{1000 * cpu / batch:15.2f}")
    ratio = times["aligned, default head"][1] / base_cpu
    print(f"target ≤ 1.2× (default head, CPU): {'MET' if ratio <= 1.2 else 'NOT MET'} ({ratio:.2f}×)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds, no SmoothGrad")
    ap.add_argument("--repeats", type=int, help="timed rounds (default 9 at 32×32 and 3 at 224×224; quick 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--side", type=int, default=224, help="image side of the torchvision models")
    ap.add_argument("--models", nargs="*", help="a subset of the models this environment can build")
    ap.add_argument("--widths", type=int, nargs="+", help="also time a head of these widths")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = zoo(args.side)
    unknown = sorted(set(args.models or ()) - set(models))
    if unknown:
        raise SystemExit(f"unknown or unavailable models {unknown}; here: {sorted(models)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {tribute.__file__}")
    for name in args.models or models:
        build, shape, batch = models[name]
        repeats = args.repeats or (3 if args.quick or shape[1] > 64 else 9)
        measure(name, build(), shape, batch, repeats, smoothgrad=not args.quick and name == "resnet18_cifar",
                widths=tuple(args.widths) if args.widths else None)


if __name__ == "__main__":
    main()
