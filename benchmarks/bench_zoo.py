"""Speed on the zoo (issue 13): tribute's propagation methods against one forward+backward pass, model by model.

On every zoo model (grouped and depthwise convolutions, VGG's wide layers, ConvNeXt, attention), it times, in one
process, in the same interleaved rounds (``interleaved_medians_with_cpu``, after benchmarks/common.py):

- the physical unit: one forward + backward pass, the input gradient of the target scores, same batch;
- ε-LRP in Ancona's form (``tribute.explain(..., "lrp_epsilon")``) and LRP with the "epsilon" composite;
- DeepLIFT (Rescale);
- LRP with the z⁺, γ and αβ composites ("zplus", "gamma", "alpha_beta");

each with one explainer called repeatedly, as over a data set (LRP keeps the weights its rules derive from the
first call on; the first call is the warm-up), and prints seconds and the ratio to the unit with the issue's
targets: ε-LRP ≤ 1.5×, DeepLIFT ≤ 2.5×, the z⁺/γ/αβ composites ≤ 2× where a layer's input is non-negative and ≤ 3×
where it has both signs (W⁺x⁺ + W⁻x⁻ forward and back takes at least 5 convolution-equivalents against 2); a
composite's cell is marked ``ok`` at ≤ 2×, ``≤3×`` between, ``over`` beyond.  A method that refuses the model
(:class:`UncoveredModelError`: no rule yet for LayerNorm, attention, gates) shows ``refused``.

The models: Hugging Face's from tests/test_zoo.py (tiny random configs) where ``transformers`` imports, and
torchvision's of benchmarks/zoo_torchvision.py (full widths; ViT and Swin smaller) where ``torchvision`` imports.
The two never import in one environment (torchvision breaks ``transformers`` beside the test environment's torch),
so run the script in both::

    python benchmarks/bench_zoo.py --quick                                         # HF models, main env
    PYTHONPATH=src /work/venvs/tv/bin/python benchmarks/bench_zoo.py --quick       # torchvision models
    python benchmarks/bench_zoo.py --quick --hf-size base --batch 2               # HF models at full size
    PYTHONPATH=src /work/venvs/tv/bin/python benchmarks/bench_zoo.py --side 224 --models resnet50 vgg11

Batch 8, 64×64 (32×32 for the HF ViT and Swin, whose configs fix it), float32, the realistic state of
zoo_torchvision.py (random biases and affines, measured batch-norm statistics), warm-up first, median of interleaved
repeats.  The bg column is the CPU other processes used during the model's measurement, in cores: on a machine
shared with other work the wall-time ratios mean little; the CPU column gives the ratio of the calling thread's CPU
times (``time.thread_time``), which waiting for a core does not inflate.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import CpuMonitor, forward_backward, tribute_source  # noqa: E402
from zoo_support import Logits, OnEmbeddings  # noqa: E402
from zoo_torchvision import realistic  # noqa: E402

import tribute  # noqa: E402
from tribute.core import UncoveredModelError  # noqa: E402

BATCH, SIDE = 8, 64
# label → (method, options, target ratio, kind): kind "composite" is judged 2× / 3× (see the module doc)
METHODS = {
    "lrp_epsilon": ("lrp_epsilon", {}, 1.5, "plain"),
    "lrp[epsilon]": ("lrp", {"composite": "epsilon"}, 1.5, "plain"),
    "deeplift": ("deeplift", {}, 2.5, "plain"),
    "lrp[zplus]": ("lrp", {"composite": "zplus"}, 3.0, "composite"),
    "lrp[gamma]": ("lrp", {"composite": "gamma"}, 3.0, "composite"),
    "lrp[alpha_beta]": ("lrp", {"composite": "alpha_beta"}, 3.0, "composite"),
}


def hf_zoo() -> dict[str, tuple[Callable[[], nn.Module], int | tuple[int, int]]]:
    """The models of tests/test_zoo.py, or none where ``transformers`` does not import."""
    try:
        import transformers  # noqa: F401
    except Exception:  # noqa: BLE001 (absent, or broken by torchvision)
        return {}
    import test_zoo
    from conftest import text_model

    sides = {"vit": 32, "swin": 32}
    zoo = {f"hf {name}": (lambda b=entry[0]: Logits(b()), sides.get(name, SIDE))
           for name, entry in test_zoo.ZOO.items()}
    # BERT and GPT-2 on their input embeddings (12 tokens of width 16, every token attended to)
    zoo.update({f"hf {arch}": (lambda a=arch: OnEmbeddings(text_model(a)), (12, 16)) for arch in ("bert", "gpt2")})
    return zoo


def hf_base_zoo() -> dict[str, tuple[Callable[[], nn.Module], int | tuple[int, int]]]:
    """Hugging Face models at the sizes people use (random weights in the realistic state, nothing downloaded):
    ViT-S/16 and Swin-T at 224×224, BERT-base and GPT-2 small on 128 tokens of width 768.  On the tiny configs of
    the tests a forward+backward pass takes a few milliseconds and tribute's fixed cost per intercepted op (a few
    microseconds of Python per op) dominates; at these sizes the arithmetic does, as on a user's model."""
    try:
        import transformers as tf
    except Exception:  # noqa: BLE001 (absent, or broken by torchvision)
        return {}

    def text(arch: str) -> nn.Module:
        if arch == "bert":
            model = tf.BertForSequenceClassification(tf.BertConfig(num_labels=3))
        else:
            model = tf.GPT2ForSequenceClassification(tf.GPT2Config(num_labels=3, pad_token_id=0))
        return OnEmbeddings(model)

    return {
        "hf vit-s/16": (lambda: Logits(tf.ViTForImageClassification(tf.ViTConfig(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=224,
            patch_size=16, num_labels=1000))), 224),
        "hf swin-t": (lambda: Logits(tf.SwinForImageClassification(tf.SwinConfig(
            image_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
            num_labels=1000))), 224),
        "hf bert-base": (lambda: text("bert"), (128, 768)),
        "hf gpt2-small": (lambda: text("gpt2"), (128, 768)),
    }


def tv_zoo() -> dict[str, tuple[Callable[[], nn.Module], int]]:
    """torchvision's models of benchmarks/zoo_torchvision.py, or none where torchvision does not import."""
    try:
        from zoo_torchvision import torchvision_models

        zoo = torchvision_models()
    except Exception:  # noqa: BLE001
        return {}
    return {name: (build, side) for name, (build, side, _) in zoo.items()}


def _verdict(ratio: float, target: float, kind: str) -> str:
    if kind == "composite":
        return "ok" if ratio <= 2.0 else "≤3×" if ratio <= 3.0 else "over"
    return "ok" if ratio <= target else "over"


def interleaved_medians_with_cpu(sides: list[Callable[[], object]], repeats: int) -> tuple[list[float], list[float]]:
    """:func:`common.interleaved_medians` that also takes each side's median CPU time of the calling thread
    (``time.thread_time``: with one torch thread the work runs there), the steadier figure on a machine shared with
    other work (wall time there includes waiting for a core)."""
    wall: list[list[float]] = [[] for _ in sides]
    cpu: list[list[float]] = [[] for _ in sides]
    for r in range(repeats):
        for i in (reversed(range(len(sides))) if r % 2 else range(len(sides))):
            gc.collect()
            t0, c0 = time.perf_counter(), time.thread_time()
            sides[i]()
            cpu[i].append(time.thread_time() - c0)
            wall[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in wall], [statistics.median(t) for t in cpu]


def measure(name: str, model: nn.Module, side, repeats: int, monitor: CpuMonitor, methods: list[str],
            batch: int = BATCH) -> None:
    shape = tuple(side) if isinstance(side, tuple) else (3, side, side)  # a text model's (tokens, width)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        classes = model(x).shape[1]
    target = torch.arange(batch) % classes
    sides, labels, refused = [lambda: forward_backward(model, x, target)], ["forward+backward"], {}
    for label in methods:
        method, options, _, _ = METHODS[label]
        explainer = tribute.get_method(method)(model, **options)
        try:
            explainer.attribute(x, target)  # the warm-up: LRP derives and keeps its weights here
        except UncoveredModelError as e:
            text = str(e)
            refused[label] = text.split("plain gradient: ")[-1].split(". Register")[0][:100]
            continue
        except ValueError as e:  # lrp_epsilon's refusal of f(0) ≠ 0
            refused[label] = str(e).splitlines()[0][:100]
            continue
        sides.append(lambda e=explainer: e.attribute(x, target))
        labels.append(label)
    forward_backward(model, x, target)
    state = monitor.start()
    seconds, cpu = interleaved_medians_with_cpu(sides, repeats)
    bg = monitor.stop(state)
    unit = seconds[0]
    print(f"\n## {name}  ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, batch {batch} × "
          f"{' × '.join(map(str, shape))}; bg {bg:.2f} cores)")
    print(f"  {'forward+backward':<18} {unit * 1e3:9.1f} ms  {'':7}  {'':15} {'':4}  CPU {cpu[0] * 1e3:7.1f} ms")
    for label, s, c in zip(labels[1:], seconds[1:], cpu[1:], strict=True):
        _, _, goal, kind = METHODS[label]
        ratio = s / unit
        shown = "≤2×/≤3×" if kind == "composite" else f"≤{goal:g}×"
        print(f"  {label:<18} {s * 1e3:9.1f} ms  {ratio:6.2f}×  target {shown:<8} {_verdict(ratio, goal, kind):<4}  "
              f"CPU {c / cpu[0]:5.2f}×")
    for label, why in refused.items():
        print(f"  {label:<18} refused: {why}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 timed rounds (default 7)")
    ap.add_argument("--repeats", type=int, help="timed rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--models", nargs="*", help="a subset of the models, by name")
    ap.add_argument("--methods", nargs="*", choices=list(METHODS), help="a subset of the methods")
    ap.add_argument("--side", type=int, default=SIDE, help=f"image side of the models that take any (default {SIDE}; "
                    "ViT and Swin keep theirs)")
    ap.add_argument("--hf-size", choices=("tiny", "base"), default="tiny",
                    help="Hugging Face models: the tests' tiny configs (default) or the sizes people use (ViT-S/16, "
                         "Swin-T, BERT-base, GPT-2 small; use --batch 2)")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH})")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    warnings.filterwarnings("ignore")
    zoo = {**(hf_base_zoo() if args.hf_size == "base" else hf_zoo()), **tv_zoo()}
    if not zoo:
        raise SystemExit("neither transformers nor torchvision imports here: no zoo model to time")
    names = args.models or list(zoo)
    methods = args.methods or list(METHODS)
    print("tribute on the zoo: time against one forward+backward pass")
    print(f"python {platform.python_version()}, torch {torch.__version__}, tribute {tribute.__version__} "
          f"{tribute_source()}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; float32, "
          f"{repeats} timed rounds after a warm-up, sides interleaved, median reported")
    monitor, t0 = CpuMonitor(), time.perf_counter()
    for name in names:
        build, side = zoo[name]
        side = args.side if side == SIDE else side
        torch.manual_seed(0)
        model = realistic(build(), side, dtype=torch.float32)
        measure(name, model, side, repeats, monitor, methods, args.batch)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
