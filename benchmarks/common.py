"""Timing helpers shared by the benchmark scripts: CPU-load monitor, timed repeats, the physical unit."""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

# tests/zoo_support.py (the realistic state, the Hugging Face wrappers, Grad-CAM by hand) is shared with the tests
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from tribute.core.engine import default_batch_size

#: rows per pass tribute uses by default for a CIFAR-size input (3×32×32)
CHUNK_ROWS = default_batch_size(torch.zeros(1, 3, 32, 32))
#: cores used by other processes above which a measurement counts as disturbed
BACKGROUND_LIMIT = 0.2


def verdict(failures: list[str]) -> str:
    """A target's line: MET when nothing fails it, else NOT MET with the failing cells."""
    return "MET" if not failures else "NOT MET: " + ", ".join(failures)


def warn_disturbed(results: list[dict], label: Callable[[dict], str]) -> None:
    """Say which results were measured while other processes used more than BACKGROUND_LIMIT cores."""
    disturbed = [label(r) for r in results if r["background"] > BACKGROUND_LIMIT]
    if disturbed:
        print(f"  WARNING: other processes used CPU during {', '.join(disturbed)}: those timings are unreliable")


class CpuMonitor:
    """CPU used by *other* processes on the machine while a measurement ran, in cores.

    Busy jiffies from /proc/stat minus this process's own CPU time, over the wall time.  On a machine
    shared with other work the timings are not trustworthy; this column says when that happened.
    """

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = os.path.exists("/proc/stat")

    def _busy(self) -> float:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / self.tick  # user nice system irq softirq steal

    def start(self) -> tuple[float, float, float]:
        t = os.times()  # children: the memory probes, reaped by the time stop() runs
        return time.perf_counter(), self._busy() if self.available else 0.0, sum(t[:4])

    def stop(self, state: tuple[float, float, float]) -> float:
        if not self.available:
            return float("nan")
        t = os.times()
        wall = time.perf_counter() - state[0]
        other = (self._busy() - state[1]) - (sum(t[:4]) - state[2])
        return max(0.0, other / wall)

    def wait_for_quiet(self, limit: float, max_wait: float = 60.0, window: float = 2.0) -> float:
        """Sleep until a ``window`` of seconds passes with under ``limit`` cores used, at most ``max_wait``."""
        t0 = time.perf_counter()
        while self.available and time.perf_counter() - t0 < max_wait:
            state = self.start()
            time.sleep(window)
            if self.stop(state) < limit:
                break
        return time.perf_counter() - t0


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_backward(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The physical unit: input gradient of the target scores, one forward and one backward pass."""
    leaf = x.detach().requires_grad_()
    out = model(leaf)
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), leaf)
    return g


def chunk_size(total_rows: int, batch_size: int = CHUNK_ROWS) -> int:
    """Rows per pass when ``total_rows`` are split into the fewest near-equal chunks of at most ``batch_size``
    (what tribute's engine does)."""
    n_chunks = max(1, math.ceil(total_rows / batch_size))
    return math.ceil(total_rows / n_chunks)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    a, b = a.detach().reshape(b.shape).double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def source_version() -> str:
    """The repository's commit, and whether src/ differs from it (the engine measured)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + (" + uncommitted changes in src/" if dirty else "")


def interleaved_medians(sides: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each callable over ``repeats`` rounds, alternating their order every round so that
    drifts of the machine (frequency, cache, other load) fall on all sides alike."""
    times: list[list[float]] = [[] for _ in sides]
    for r in range(repeats):
        order = list(range(len(sides)))
        if r % 2:
            order.reverse()
        for i in order:
            gc.collect()
            t0 = time.perf_counter()
            sides[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def fixture_then_resnet(description: str, title: str, measure: Callable, *, rounds_note: str = "") -> list:
    """The driver of the benchmarks that time tribute against Quantus: their options (``--quick``,
    ``--resnet``/``--no-resnet``, ``--repeats``, ``--threads``), a header with the versions, then
    ``measure(label, model, inputs, labels, repeats, monitor)`` on the Fashion-MNIST fixture and, unless
    ``--quick``, on the CIFAR ResNet-18 (16 random images, half the repeats).  Returns the measures' results."""
    import platform
    import warnings

    import numpy as np
    import quantus
    from models import fashion_fixture, random_inputs, resnet18_cifar

    import tribute

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Fashion-MNIST only, 3 repeats")
    ap.add_argument("--resnet", dest="resnet", action="store_true", default=None, help="also the CIFAR ResNet-18")
    ap.add_argument("--no-resnet", dest="resnet", action="store_false")
    ap.add_argument("--repeats", type=int, help="timed rounds (default 7, quick 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    resnet = (not args.quick) if args.resnet is None else args.resnet
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    print(title)
    print(f"python {platform.python_version()}, torch {torch.__version__}, quantus {quantus.__version__}, "
          f"numpy {np.__version__}, tribute {tribute.__version__} at commit {source_version()}; {os.cpu_count()} "
          f"CPUs, torch threads {torch.get_num_threads()}; {repeats} timed rounds{rounds_note}, sides interleaved, "
          "median reported")
    print()
    monitor = CpuMonitor()
    model, images, labels = fashion_fixture()
    results = [measure("Fashion-MNIST CNN (trained fixture)", model, images, labels, repeats, monitor)]
    if resnet:
        x = random_inputs(16)
        results.append(measure("CIFAR ResNet-18 (random init)", resnet18_cifar(), x, torch.arange(16) % 10,
                               max(3, repeats // 2), monitor))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return results


def tribute_source() -> str:
    """Where the tribute measured comes from: this repository's commit (see :func:`source_version`), or the path it
    was imported from when PYTHONPATH points elsewhere (another worktree's src/)."""
    import tribute

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.dirname(os.path.abspath(tribute.__file__))
    if os.path.realpath(path) == os.path.realpath(os.path.join(root, "src", "tribute")):
        return f"at commit {source_version()}"
    return f"from {path}"
