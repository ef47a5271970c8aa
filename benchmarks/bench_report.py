"""Benchmark the HTML report (tribute.report) and the direct PNG encoding of maps (tribute.viz.encode).

1. ``encode``: :func:`tribute.viz.encode.encode_map` of one 224 × 224 map from a (3, 224, 224) attribution (the
   channels summed, the 99.5th-percentile scale, the palette PNG), on Gaussian noise (the worst case for the
   compression) and on a smooth map; with an overlay on an image; and a 32 × 32 map.  Against a matplotlib
   figure per map (imshow, saved as PNG), what the report would cost without the direct encoding.
   Target: under 1 ms per 224 × 224 map.
2. ``report``: a run directory of 10 methods × 100 CIFAR-size images (3 × 32 × 32; a small CNN, random weights,
   seed 0), one attribution store per method written once (kept in ``--run-dir`` for later rounds), inputs and a
   metrics.json from ``tribute.evaluate`` (three metrics with curves); then ``tribute.report`` of it, with the
   default 12 samples shown and with all 100 (1,000 maps).  Target: under 10 s.

Timings are medians; ``bg`` is the CPU (in cores) other processes used meanwhile (/proc/stat): on a shared
machine the wall times mean little when it is high.  Run from the repository root, pinned to one core::

    taskset -c 0 python benchmarks/bench_report.py            # 200 encodes per case, 3 report rounds
    taskset -c 0 python benchmarks/bench_report.py --quick    # 50 encodes, 1 round

Measured pinned to one core of 2 shared with other work (1.3–1.7 cores busy elsewhere, so wall times are
inflated): encode_map of a 224 × 224 map 0.6–0.9 ms CPU (1.0–1.1 ms wall), with an overlay 2.8 ms CPU (an RGB
PNG), 32 × 32 0.06 ms CPU; a matplotlib figure per map 34–116 ms.  The report of 10 methods × 100 images (two
runs of this script, medians of 3): 0.7 and 3.3 s with 12 samples shown, 2.2 and 4.2 s with all 100 (1,000 maps,
a 3.5 MB page).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import CpuMonitor, source_version, timed, verdict  # noqa: E402

import tribute  # noqa: E402
from tribute.run_directory import RunDirectory  # noqa: E402
from tribute.store import compute_store  # noqa: E402
from tribute.viz.encode import encode_map  # noqa: E402

METHODS = {"gradient": {}, "saliency": {}, "input_x_gradient": {}, "integrated_gradients": {"steps": 16},
           "smoothgrad": {"samples": 8}, "smoothgrad_squared": {"samples": 8}, "vargrad": {"samples": 8},
           "guided_backprop": {}, "deconvnet": {}, "deeplift": {}}
METRICS = ["aopc_morf", "deletion", "insertion"]
IMAGES = 100


def cifar_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 10)).eval()


def make_run(path: Path) -> RunDirectory:
    """The run directory, written once: inputs, 10 stores, metrics.json, a log record."""
    run = RunDirectory(path, create=True)
    if (path / "metrics.json").exists():
        return run
    model = cifar_cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(IMAGES, 3, 32, 32, generator=g)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    run.write_inputs(x, names=[f"image-{i:03d}" for i in range(IMAGES)], classes=classes)
    t0 = time.perf_counter()
    for name, options in METHODS.items():
        compute_store(run.store_path(name), model, x, name, chunk_size=50, **options)
    table = tribute.evaluate(model, x, [(m, m, o) for m, o in METHODS.items()], METRICS, progress=False)
    run.write_metrics(table)
    run.log({"command": "bench_report", "seconds": time.perf_counter() - t0, "seed": 0,
             "versions": {"tribute": tribute.__version__, "torch": torch.__version__}})
    return run


def cpu_ms(fn, repeats: int) -> float:
    """Median process CPU time of ``fn`` in ms (what it costs with the core to itself)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e3 * statistics.median(times)


def bench_encode(repeats: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 224, 224, generator=g)
    smooth = torch.nn.functional.avg_pool2d(noise[None], 15, stride=1, padding=7)[0]
    image = torch.rand(3, 224, 224, generator=g)
    small = torch.randn(3, 32, 32, generator=g)
    monitor = CpuMonitor()
    cases = [("224×224, noise", lambda: encode_map(noise)), ("224×224, smooth", lambda: encode_map(smooth)),
             ("224×224, overlay", lambda: encode_map(smooth, image=image)), ("32×32", lambda: encode_map(small))]
    print(f"encode_map, median of {repeats} (ms): wall, CPU, PNG bytes, bg")
    failures = []
    for label, fn in cases:
        state = monitor.start()
        wall = 1e3 * timed(fn, repeats)
        bg = monitor.stop(state)
        cpu = cpu_ms(fn, repeats)
        print(f"  {label:18s} {wall:7.3f} {cpu:7.3f} {len(fn().png):8d}   bg {bg:.2f}")
        if label.startswith("224×224, n") or label.startswith("224×224, s"):
            if cpu >= 1.0:
                failures.append(f"{label} {cpu:.2f} ms CPU")
    figure_ms = 1e3 * timed(lambda: matplotlib_map(smooth), max(3, repeats // 20))
    print(f"  a matplotlib figure per 224×224 map instead: {figure_ms:.1f} ms")
    return failures


def matplotlib_map(a: torch.Tensor) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tribute.viz import heatmap

    fig = Figure(figsize=(2.24, 2.24), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(heatmap(a), interpolation="nearest")
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def bench_report(run: RunDirectory, rounds: int, out: Path) -> list[str]:
    monitor = CpuMonitor()
    failures = []
    print(f"tribute.report of {len(METHODS)} methods × {IMAGES} images (s): median of {rounds}, page size, bg")
    for shown in (12, IMAGES):
        times, bgs = [], []
        for _ in range(rounds):
            state = monitor.start()
            t0 = time.perf_counter()
            page = tribute.report(run.path, out / f"report-{shown}.html", max_samples=shown)
            times.append(time.perf_counter() - t0)
            bgs.append(monitor.stop(state))
        wall = statistics.median(times)
        print(f"  {shown:3d} samples shown ({shown * len(METHODS):4d} maps): {wall:6.2f} s, "
              f"{page.stat().st_size / 1e6:5.1f} MB   bg {max(bgs):.2f}")
        if wall >= 10.0:
            failures.append(f"{shown} samples {wall:.1f} s")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 encodes per case, one report round")
    parser.add_argument("--run-dir", default=os.path.join(tempfile.gettempdir(), "tribute-bench-report-run"),
                        help="where the run directory is written once and reused (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"tribute {source_version()}, torch {torch.__version__}, numpy {np.__version__}, 1 thread")
    encode_failures = bench_encode(50 if args.quick else 200)
    t0 = time.perf_counter()
    run = make_run(Path(args.run_dir))
    print(f"run directory {run.path} ready in {time.perf_counter() - t0:.1f} s (written once, then reused)")
    with tempfile.TemporaryDirectory() as out:
        report_failures = bench_report(run, 1 if args.quick else 3, Path(out))
    print(f"target encode < 1 ms CPU per 224×224 map: {verdict(encode_failures)}")
    print(f"target report < 10 s: {verdict(report_failures)}")


if __name__ == "__main__":
    main()
