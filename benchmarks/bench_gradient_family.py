"""Benchmark tribute's gradient-family methods against Captum on a CIFAR ResNet-18 (CPU).

For batch sizes 1 and 32 it times, in one process on one machine:

(a) the physical unit: one forward + backward pass of the model over a batch (the input gradient of the
    target scores), per row, at the batch size and at every chunk size tribute uses;
(b) each tribute method;
(c) its Captum equivalent doing the same work (same rows, same steps / samples, same baseline), and
    where Captum can chunk, also chunked to tribute's rows per pass.

and prints, per method: tribute and Captum seconds (medians of interleaved repeats), speedup = Captum /
tribute, the rows tribute sent forward / backward (``tribute.count_passes``), and the ratio of
tribute's time to rows × (forward+backward per row), once with the per-row cost at the batch size and
once at the chunk size tribute actually ran.  Then a fresh subprocess per measurement reports the peak
resident memory (VmHWM) of integrated gradients at batch 32 × 50 steps: tribute's default against
Captum's default and Captum chunked.

On a machine shared with other work timings mean little: the script reads /proc/stat, reports the CPU
that other processes used during every measurement (column bg), and measures a disturbed case again
after waiting (up to ``--max-wait`` seconds) for the machine to go quiet.

Run from the repository root::

    python benchmarks/bench_gradient_family.py            # full, ~6-8 minutes on 2 idle cores
    python benchmarks/bench_gradient_family.py --quick    # ~2 minutes, no memory probes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import captum  # noqa: E402
import captum.attr as ca  # noqa: E402
from common import (  # noqa: E402
    BACKGROUND_LIMIT,
    CHUNK_ROWS,
    CpuMonitor,
    agreement,
    chunk_size,
    forward_backward,
    interleaved_medians,
    source_version,
    timed,
    verdict,
    warn_disturbed,
)
from models import random_inputs, resnet18_cifar, separate_relus  # noqa: E402

import tribute  # noqa: E402

NUM_CLASSES = 10
# CPU cores used by other processes above which a measurement counts as disturbed
# speedups within 1 ± TIE count as ties: repeated runs of the same call differ by about that much
TIE = 0.03


@dataclass
class Settings:
    quick: bool
    batches: tuple[int, ...] = (1, 32)
    # integration steps / noise samples / reference draws, per batch size
    steps: dict[int, int] = field(default_factory=dict)
    # timed repeats after the warm-up round: cheap calls get repeats_single, calls over 1 s repeats_multi
    repeats_single: int = 7
    repeats_multi: int = 3
    unit_repeats: int = 9
    memory: bool = True
    memory_batch: int = 32
    memory_steps: int = 50
    # a case measured while other processes used more than BACKGROUND_LIMIT cores is measured again
    retries: int = 2
    # seconds to wait for a quiet machine before measuring a disturbed case again
    max_wait: float = 120.0


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        s = Settings(quick=True, steps={1: 16, 32: 4}, repeats_single=3, repeats_multi=3, unit_repeats=5,
                     memory=False, retries=1)
    else:
        s = Settings(quick=False, steps={1: 50, 32: 16})
    if args.steps_b1 is not None:
        s.steps[1] = args.steps_b1
    if args.steps_b32 is not None:
        s.steps[32] = args.steps_b32
    if args.memory is not None:
        s.memory = args.memory
    if args.max_wait is not None:
        s.max_wait = args.max_wait
    return s


# --------------------------------------------------------------------------------------------------
# measurement helpers


class Units:
    """Forward+backward seconds per row for a given number of rows per pass, measured at the start and again
    at the end of the run.  The smaller of the two is used (other load on the machine only slows things
    down); both are printed."""

    def __init__(self, model: torch.nn.Module, repeats: int, monitor: CpuMonitor):
        self.model, self.repeats, self.monitor = model, repeats, monitor
        self.start: dict[int, float] = {}
        self.end: dict[int, float] = {}
        self.background: list[float] = []

    def measure(self, sizes, into: dict[int, float], retries: int = 0, max_wait: float = 0.0) -> None:
        for attempt in range(retries + 1):
            if attempt:
                self.monitor.wait_for_quiet(BACKGROUND_LIMIT / 2, max_wait)
            state = self.monitor.start()
            for rows in sorted(set(sizes)):
                x = random_inputs(rows, seed=7)
                t = torch.arange(rows) % NUM_CLASSES
                per_row = timed(lambda x=x, t=t: forward_backward(self.model, x, t), self.repeats, warmup=2) / rows
                into[rows] = min(per_row, into.get(rows, math.inf))
            bg = self.monitor.stop(state)
            if bg <= BACKGROUND_LIMIT:
                break
        self.background.append(bg)

    def per_row(self, rows: int) -> float:
        return min(self.start[rows], self.end.get(rows, math.inf))


# --------------------------------------------------------------------------------------------------
# the methods: one tribute call and the Captum call(s) doing the same work


@dataclass
class Case:
    name: str
    tribute: Callable[[], torch.Tensor]
    captum: list[tuple[str, Callable[[], torch.Tensor]]]
    multi: bool = False  # multi-pass (steps / samples): judged against the 1.15x passes target
    comparable: bool = True  # deterministic and the same quantity on both sides: check agreement


def cases(model, captum_model, x, target, k: int, sigma: float, refs: torch.Tensor) -> list[Case]:
    """Every comparison at one batch size; ``k`` steps / samples for the multi-pass methods."""
    n = x.shape[0]
    nt_chunk = max(1, CHUNK_ROWS // n)  # Captum's nt_samples_batch_size (samples per pass) for 64-row passes
    ig_opts = {"steps": k, "quadrature": "riemann_middle"}
    sg_opts = {"samples": k, "sigma": sigma, "seed": 0}

    def trib(cls, **o):
        return lambda: cls(model, **o).attribute(x, target)

    def ig(internal):
        return lambda: ca.IntegratedGradients(model).attribute(
            x, target=target, n_steps=k, method="riemann_middle", internal_batch_size=internal)

    def nt(kind: str, chunk):
        def run():
            torch.manual_seed(0)
            return ca.NoiseTunnel(ca.Saliency(model)).attribute(
                x, nt_type=kind, nt_samples=k, stdevs=sigma, target=target, abs=False, nt_samples_batch_size=chunk)
        return run

    def gshap():
        torch.manual_seed(0)
        return ca.GradientShap(model).attribute(x, baselines=refs, n_samples=k, stdevs=0.0, target=target)

    ig_variants = [("IntegratedGradients riemann_middle, internal_batch_size=None", ig(None))]
    if n * k > CHUNK_ROWS:  # otherwise identical to the default
        ig_variants.append((f"IntegratedGradients riemann_middle, internal_batch_size={CHUNK_ROWS}", ig(CHUNK_ROWS)))
    out = [
        Case("gradient", trib(tribute.Gradient),
             [("Saliency(abs=False)", lambda: ca.Saliency(model).attribute(x, target=target, abs=False))]),
        Case("saliency", trib(tribute.Saliency),
             [("Saliency", lambda: ca.Saliency(model).attribute(x, target=target))]),
        Case("input_x_gradient", trib(tribute.InputXGradient),
             [("InputXGradient", lambda: ca.InputXGradient(model).attribute(x, target=target))]),
        Case("guided_backprop", trib(tribute.GuidedBackprop),
             [("GuidedBackprop", lambda: ca.GuidedBackprop(model).attribute(x, target=target))]),
        Case("deconvnet", trib(tribute.DeconvNet),
             [("Deconvolution", lambda: ca.Deconvolution(model).attribute(x, target=target))]),
        Case("deeplift", trib(tribute.DeepLift),
             [("DeepLift (separate-ReLU copy), zero baseline",
               lambda: ca.DeepLift(captum_model).attribute(x, baselines=torch.zeros_like(x), target=target))]),
        Case("lrp_epsilon", trib(tribute.LRPEpsilon),
             [("LRP, epsilon rules (Eq 15 form: another quantity)", lambda: ca.LRP(model).attribute(x, target=target))],
             comparable=False),
        Case("integrated_gradients", trib(tribute.IntegratedGradients, **ig_opts), ig_variants, multi=True),
    ]
    for kind, cls in (("smoothgrad", tribute.SmoothGrad), ("smoothgrad_sq", tribute.SmoothGradSquared),
                      ("vargrad", tribute.VarGrad)):
        variants = [(f"NoiseTunnel(Saliency abs=False, {kind}), nt_samples_batch_size=None", nt(kind, None))]
        if nt_chunk < k:
            variants.append((f"NoiseTunnel(Saliency abs=False, {kind}), nt_samples_batch_size={nt_chunk}",
                             nt(kind, nt_chunk)))
        name = {"smoothgrad_sq": "smoothgrad_squared"}.get(kind, kind)
        out.append(Case(name, trib(cls, **sg_opts), variants, multi=True, comparable=False))
    out.append(Case("expected_gradients", trib(tribute.ExpectedGradients, references=refs, samples=k, seed=0),
                    [("GradientShap(stdevs=0), same references", gshap)], multi=True, comparable=False))
    return out


def run_case(case: Case, s: Settings, monitor: CpuMonitor) -> dict:
    """Warm-up round (tribute's counted), then repeats rounds alternating the order of the sides."""
    state = monitor.start()
    with tribute.count_passes() as count:
        t0 = time.perf_counter()
        a_trib = case.tribute()
        first = time.perf_counter() - t0
    a_cap = [fn() for _, fn in case.captum]
    reps = s.repeats_multi if first > 1.0 else s.repeats_single
    sides = [case.tribute] + [fn for _, fn in case.captum]
    medians = interleaved_medians(sides, reps)
    return {
        "tribute": medians[0],
        "captum": medians[1:],
        "fwd": count.forward_rows, "bwd": count.backward_rows, "reps": reps, "background": monitor.stop(state),
        "agree": [agreement(a_trib, a) for a in a_cap] if case.comparable else [None] * len(a_cap),
    }


# --------------------------------------------------------------------------------------------------
# peak memory of integrated gradients, one subprocess per measurement


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB.

    VmHWM from /proc/self/status where there is one: it belongs to the process's own address space,
    which exec starts afresh.  getrusage's ru_maxrss is no good in a child of a big process: Linux carries
    the parent's peak at fork over exec into the child's ru_maxrss.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_probe(which: str, batch: int, steps: int) -> None:
    """Run one IG attribution and print JSON with the peak RSS (this process only) and the wall time."""
    warnings.filterwarnings("ignore")
    model = resnet18_cifar()
    x = random_inputs(batch)
    target = torch.arange(batch) % NUM_CLASSES
    with torch.no_grad():  # touch the kernels once so the baseline RSS includes the runtime's own state
        model(x[:1])
    before = peak_rss_kb()
    t0 = time.perf_counter()
    rows = None
    if which == "tribute":
        with tribute.count_passes() as c:
            tribute.IntegratedGradients(model, steps=steps).attribute(x, target)
        rows = c.backward_rows
    elif which == "captum":
        ca.IntegratedGradients(model).attribute(x, target=target, n_steps=steps)
    elif which == "captum_chunked":
        ca.IntegratedGradients(model).attribute(x, target=target, n_steps=steps, internal_batch_size=CHUNK_ROWS)
    else:
        raise ValueError(which)
    seconds = time.perf_counter() - t0
    print(json.dumps({"which": which, "before_kb": before, "peak_kb": peak_rss_kb(), "seconds": seconds,
                      "rows": rows}))


def run_probe(which: str, batch: int, steps: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", which, "--probe-batch", str(batch),
           "--probe-steps", str(steps)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"which": which, "error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small steps / samples and repeats, no memory probes")
    ap.add_argument("--steps-b1", type=int, help="steps / samples at batch 1 (default 50, quick 16)")
    ap.add_argument("--steps-b32", type=int, help="steps / samples at batch 32 (default 16, quick 4)")
    ap.add_argument("--memory", dest="memory", action="store_true", default=None, help="run the memory probes")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory probes")
    ap.add_argument("--max-wait", type=float,
                    help="seconds to wait for other processes to go quiet before measuring a disturbed case "
                         "again (default 120)")
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    ap.add_argument("--probe-batch", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--probe-steps", type=int, default=50, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.probe_batch, args.probe_steps)
        return

    s = settings_from(args)
    warnings.filterwarnings("ignore")  # Captum's "setting hooks" / "requires_grad set" notices
    t_start = time.perf_counter()
    monitor = CpuMonitor()
    run_state = monitor.start()
    model = resnet18_cifar()
    captum_model = separate_relus(model)

    print("tribute gradient family vs Captum — CIFAR ResNet-18 (3x32x32, 10 classes, random init seed 0, eval)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, captum {captum.__version__}, "
          f"tribute {tribute.__version__} at commit {source_version()}; {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()} (default)")
    print(f"mode: {'quick' if s.quick else 'full'}; batches {s.batches}; steps / samples / draws per batch "
          f"{s.steps}; timed repeats after one warm-up round: {s.repeats_single} (calls under 1 s) or "
          f"{s.repeats_multi}, sides interleaved, median reported")
    print(f"targets: class i % 10 for sample i on both sides; tribute default chunk {CHUNK_ROWS} rows; IG: "
          "riemann_middle on both sides; SmoothGrad family: base = plain gradient, sigma = 0.15 x mean input "
          "range (absolute, both sides); expected_gradients vs GradientShap: 16 references, stdevs=0")
    x0 = random_inputs(2)
    try:
        ca.DeepLift(resnet18_cifar()).attribute(x0, baselines=torch.zeros_like(x0), target=0)
        print("Captum DeepLift accepts the model's reused in-place ReLUs")
    except Exception as e:  # report whatever Captum raises
        print(f"Captum DeepLift refuses the model: {type(e).__name__}: {str(e).split('.')[0]}.")
        print("  -> Captum's DeepLift runs on a copy with one non-in-place nn.ReLU per call and the same weights; "
              "every other Captum method and every tribute method run on the original model")
    with torch.no_grad():
        same = torch.equal(model(x0), captum_model(x0))
    print(f"separate-ReLU copy gives identical logits: {same}")
    print()

    sizes = []
    for n in s.batches:
        k = s.steps[n]
        sizes += [n, chunk_size(n), chunk_size(2 * n), chunk_size(n * k)]
    units = Units(model, s.unit_repeats, monitor)
    monitor.wait_for_quiet(BACKGROUND_LIMIT / 2, s.max_wait)
    units.measure(sizes, units.start, s.retries, s.max_wait)

    results = []
    for n in s.batches:
        k = s.steps[n]
        x = random_inputs(n)
        target = torch.arange(n) % NUM_CLASSES
        flat = x.flatten(1)
        sigma = float(0.15 * (flat.amax(1) - flat.amin(1)).mean())
        refs = random_inputs(16, seed=3)
        for case in cases(model, captum_model, x, target, k, sigma, refs):
            r = None
            for attempt in range(s.retries + 1):
                if attempt:
                    waited = monitor.wait_for_quiet(BACKGROUND_LIMIT / 2, s.max_wait)
                    print(f"  ({case.name} at batch {n} saw {r['background']:.2f} cores of background load: "
                          f"waited {waited:.0f} s for a quiet machine, measuring it again)", flush=True)
                trial = run_case(case, s, monitor)
                if r is None or trial["background"] < r["background"]:
                    r = trial
                if trial["background"] <= BACKGROUND_LIMIT:
                    break
            r.update(case=case, batch=n, k=k if case.multi else 1, chunk=chunk_size(r["bwd"]))
            results.append(r)
            caps = ", ".join(f"{t:.3f}s" for t in r["captum"])
            print(f"  measured {case.name:22s} batch {n:2d}: tribute {r['tribute']:.3f}s, captum {caps} "
                  f"(background load {r['background']:.2f} cores)", flush=True)
    units.measure(sizes, units.end, s.retries, s.max_wait)
    print()

    print(f"Physical unit, one forward+backward pass, seconds per row (median of {s.unit_repeats}; at the start / "
          f"at the end of the run, background load {units.background[0]:.2f} / {units.background[1]:.2f} cores; "
          "the smaller is used):")
    print("  " + "; ".join(f"{r} rows/pass {1e3 * units.start[r]:.2f} / {1e3 * units.end[r]:.2f} ms"
                           for r in sorted(units.start)))
    print()
    hdr = (f"{'method':20s} {'B':>2s} {'k':>3s} {'tribute s':>9s} {'captum s':>9s} {'speedup':>7s} "
           f"{'rows f/b':>9s} {'t/unit@B':>8s} {'t/unit@chunk':>12s} {'agree':>7s} {'bg':>4s}  captum call")
    print(hdr)
    print("-" * (len(hdr) + 52))
    for r in results:
        rb = r["tribute"] / (r["bwd"] * units.per_row(r["batch"]))
        rc = r["tribute"] / (r["bwd"] * units.per_row(r["chunk"]))
        r["ratio_b"], r["ratio_c"] = rb, rc
        for i, (note, _) in enumerate(r["case"].captum):
            agree = "—" if r["agree"][i] is None else f"{r['agree'][i]:.0e}"
            first = i == 0
            trib = f"{r['tribute']:9.4f}" if first else f"{'〃':>9s}"
            ratios = f"{rb:8.2f} {rc:6.2f} @{r['chunk']:<4d}" if first else " " * 21
            print(f"{r['case'].name:20s} {r['batch']:2d} {r['k']:3d} {trib} {r['captum'][i]:9.4f} "
                  f"{r['captum'][i] / r['tribute']:6.2f}x {r['fwd']:>4d}/{r['bwd']:<4d} {ratios} "
                  f"{agree:>7s} {r['background']:4.1f}  {note}")
    print()
    print("B = batch; k = steps / samples; speedup = captum s / tribute s (> 1: tribute faster); rows f/b = rows "
          "tribute sent forward / backward (tribute.count_passes);")
    print("t/unit@B = tribute s / (backward rows x fwd+bwd s per row at batch B); t/unit@chunk = the same with the "
          "per-row cost at the rows per pass tribute ran (after @);")
    print("agree = max|tribute - captum| / max|captum| (— : different noise draws or a different quantity); "
          f"bg = CPU cores used by other processes during the measurement (> {BACKGROUND_LIMIT}: disturbed; such "
          f"a case is measured up to {s.retries} more times and the least disturbed kept).")
    print()

    print("Targets")
    slower, tie, faster, goal = [], [], [], []
    for r in results:
        sp = min(r["captum"]) / r["tribute"]  # against Captum's fastest configuration
        label = f"{r['case'].name}@B{r['batch']} {sp:.2f}x"
        if sp >= 1.5:
            goal.append(label)
        elif sp > 1 + TIE:
            faster.append(label)
        elif sp >= 1 - TIE:
            tie.append(label)
        else:
            slower.append(label)
    strict = all(min(r["captum"]) >= r["tribute"] for r in results)
    print(f"  speedup against Captum's fastest configuration, {len(results)} method x batch cells:")
    print(f"    >= 1.5x             ({len(goal):2d}): {', '.join(goal) or '—'}")
    print(f"    1.5x > s > {1 + TIE:.2f}x  ({len(faster):2d}): {', '.join(faster) or '—'}")
    print(f"    tie, within ±{TIE:.0%}   ({len(tie):2d}): {', '.join(tie) or '—'}")
    print(f"    slower, < {1 - TIE:.2f}x    ({len(slower):2d}): {', '.join(slower) or '—'}")
    print("  1. every method at least as fast as Captum: "
          + ("MET" if strict else "NOT MET" + (" (only ties within noise fall short)" if not slower else "")))
    print("     goal 1.5x: " + ("MET" if len(goal) == len(results) else f"NOT MET ({len(goal)} of {len(results)})"))
    multi = [r for r in results if r["case"].multi]
    over_b = [f"{r['case'].name}@B{r['batch']} ({r['ratio_b']:.2f})" for r in multi if r["ratio_b"] > 1.15]
    over_c = [f"{r['case'].name}@B{r['batch']} ({r['ratio_c']:.2f})" for r in multi if r["ratio_c"] > 1.15]
    print("  2. multi-pass methods within 1.15x of rows x (fwd+bwd per row at batch B): "
          + verdict(over_b))
    print("     the same at the rows per pass tribute ran: "
          + verdict(over_c))
    warn_disturbed(results, lambda r: f"{r['case'].name}@B{r['batch']}")
    print()

    if s.memory:
        print(f"Peak memory, integrated gradients at batch {s.memory_batch} x {s.memory_steps} steps "
              "(Gauss-Legendre both sides; each in a fresh subprocess; peak RSS = VmHWM)")
        for which, label in (("tribute", f"tribute default ({CHUNK_ROWS} rows per pass)"),
                             ("captum", "Captum default (internal_batch_size=None)"),
                             ("captum_chunked", f"Captum internal_batch_size={CHUNK_ROWS}")):
            state = monitor.start()
            p = run_probe(which, s.memory_batch, s.memory_steps)
            bg = monitor.stop(state)
            if "error" in p:
                print(f"  {label:42s} FAILED {p['error']}")
                continue
            print(f"  {label:42s} peak {p['peak_kb'] / 2**20:5.2f} GiB = {p['peak_kb'] * 1024 / 1e9:5.2f} GB "
                  "(process before the call "
                  f"{p['before_kb'] / 2**20:.2f} GiB, added {(p['peak_kb'] - p['before_kb']) / 2**20:.2f} GiB), "
                  f"{p['seconds']:.1f} s (bg {bg:.1f})", flush=True)
        print()
    else:
        print("Peak memory probes skipped (--quick or --no-memory)")
        print()
    print(f"total wall time {time.perf_counter() - t_start:.0f} s; background load over the whole run "
          f"{monitor.stop(run_state):.2f} cores")


if __name__ == "__main__":
    main()
