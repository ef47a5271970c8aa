"""``tribute explain`` against the Python API: 100 CIFAR-size images, integrated gradients, the same model and batch.

Target (issue 16): the command runs at the library's own speed, the time inside the command (from the start of the
command's work to its end: reading the model and the images, the attribution store, the heat maps, the report; not
the interpreter's start or the imports) at most 1.1× the time of ``tribute.explain`` on the same images with the
same batch size.  The model is a CIFAR ResNet-18 of width 16 (``tribute.explainers.resnet18_cifar``), big enough
that integrated gradients dominates.

Run pinned to one core, as the command's subprocess is too::

    taskset -c 0 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_cli.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import CpuMonitor, verdict

import tribute
from tribute.run_directory import RunDirectory

MODULE = '''from tribute.explainers import resnet18_cifar

CLASSES = [f"class {i}" for i in range(10)]
INPUT_SIZE = 32


def make():
    return resnet18_cifar(width=16, seed=0)
'''
TARGET = 1.1
SRC = Path(__file__).resolve().parents[1] / "src"


def prepare(folder: Path, n: int) -> None:
    """benchmodel.py and ``n`` 32×32 PNG images (smooth random colours) in ``folder``."""
    from PIL import Image

    (folder / "benchmodel.py").write_text(MODULE)
    (folder / "images").mkdir()
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    for i, im in enumerate(images):
        pixels = (im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"img{i:03d}.png")


def run_command(folder: Path, out: str, batch_size: int | None) -> tuple[float, float, float]:
    """End-to-end seconds of ``tribute explain``, the seconds inside it (its run.json record), and the CPU other
    processes used meanwhile (cores)."""
    argv = [sys.executable, "-m", "tribute", "explain", "images", "--model", "benchmodel:make", "--methods",
            "integrated_gradients", "--out", out, "--quiet"]
    if batch_size is not None:
        argv += ["--batch-size", str(batch_size)]
    # this checkout's tribute in the subprocess too (it runs in another folder, where a relative PYTHONPATH misses)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(SRC), *[str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])}
    monitor = CpuMonitor()
    state = monitor.start()
    start = time.perf_counter()
    subprocess.run(["taskset", "-c", "0", *argv], cwd=folder, env=env, check=True)
    total = time.perf_counter() - start
    background = monitor.stop(state)
    inside = RunDirectory(folder / out).records()[-1]["seconds"]
    return total, inside, background


def run_api(folder: Path, out: str, batch_size: int | None) -> tuple[float, float]:
    """Seconds of ``tribute.explain`` on the images the command read (its run directory's inputs), and the CPU other
    processes used meanwhile; the attributions must equal the command's."""
    sys.path.insert(0, str(folder))
    import benchmodel

    model = benchmodel.make()
    run = RunDirectory(folder / out)
    x = run.inputs().inputs
    monitor = CpuMonitor()
    state = monitor.start()
    start = time.perf_counter()
    a = tribute.explain(model, x, "integrated_gradients", batch_size=batch_size)
    seconds = time.perf_counter() - start
    background = monitor.stop(state)
    torch.testing.assert_close(a, run.stores()["integrated_gradients"].attributions(), rtol=1e-5, atol=1e-7)
    return seconds, background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="(default: the library's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench_cli_"))
    try:
        prepare(folder, args.images)
        command, api = [], []
        for r in range(args.repeats):
            command.append(run_command(folder, f"run{r}", args.batch_size))
            api.append(run_api(folder, f"run{r}", args.batch_size))
        report(args, command, api)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(args, command: list[tuple], api: list[tuple]) -> None:
    total = statistics.median(c[0] for c in command)
    inside = statistics.median(c[1] for c in command)
    direct = statistics.median(a[0] for a in api)
    ratio = inside / direct
    print(f"tribute explain, {args.images} CIFAR-size images, integrated_gradients (64 steps), ResNet-18 width 16, "
          f"batch size {args.batch_size or 'default'}, 1 thread, median of {args.repeats}")
    print(f"  subprocess end to end      {total:8.2f} s   (runs: {', '.join(f'{c[0]:.2f}' for c in command)})")
    print(f"  inside the command         {inside:8.2f} s   (runs: {', '.join(f'{c[1]:.2f}' for c in command)})")
    print(f"  tribute.explain (API)      {direct:8.2f} s   (runs: {', '.join(f'{a[0]:.2f}' for a in api)})")
    print(f"  start-up and imports       {total - inside:8.2f} s")
    print(f"  ratio inside / API         {ratio:8.3f}   target <= {TARGET}: "
          f"{verdict([] if ratio <= TARGET else [f'{ratio:.3f}'])}")
    busy = max([c[2] for c in command] + [a[1] for a in api])
    print(f"  other processes' CPU       {busy:8.2f} cores (max over the runs)")
    print(json.dumps({"end_to_end": total, "inside": inside, "api": direct, "ratio": ratio, "background": busy}))


if __name__ == "__main__":
    main()
