"""Benchmark tribute's LRP composites and CAM methods against Captum on a CIFAR ResNet-18 (CPU).

For batch sizes 1 and 32 it times, in one process on one machine:

(a) the physical units: one forward + backward pass of the model (the input gradient of the target scores)
    at the batch size, and one forward-only pass per row at the chunk size Score-CAM runs;
(b) tribute LRP with the composites "epsilon", "epsilon_plus" (z+ on convolutions, epsilon on dense),
    "gamma" and "alpha_beta" (one explainer per composite, called repeatedly as over a dataset: it keeps the
    weights its rules derive, W+, W + gamma W+, batch norm merged, and from its second call runs the layers batch
    norm merges into with the merged weights, skipping the batch-norm ops; the "cold" rows time a new explainer
    per call, which derives them every time and runs batch norm), against Captum's LRP with the corresponding
    rules (``CAPTUM_RULES``: EpsilonRule,
    Alpha1_Beta0_Rule, GammaRule, IdentityRule, with tribute's epsilon, gamma and stabiliser) set as
    ``module.rule`` on a copy of the model with one non-in-place ReLU per call (``separate_relus``, same
    weights).  Captum has no alpha-beta(2,1) rule: that row times Captum's epsilon rules, and says so.
    The agreement column compares with Captum on a second copy whose residual additions are Captum's
    ``Addition_Module`` (untimed): Captum's rules act on modules only, so a functional ``out + identity``
    hands the whole relevance to both summands instead of splitting it (tests/test_lrp_captum.py); with the
    addition as a module Captum's epsilon is tribute's up to where the stabilisers sit;
(c) tribute Grad-CAM at layer4 (upsampled to the input) against Captum's LayerGradCam at layer4 followed by
    LayerAttribution.interpolate to 32x32 (bilinear, ReLU applied as tribute's default does);
(d) tribute Score-CAM at layer4 with max_channels=64 (no Captum equivalent): the rows it sent forward and
    its time per row against a forward-only pass per row at the same chunk size ("full batch throughput").

and prints seconds (medians of interleaved repeats), speedup = Captum / tribute, and the ratio of tribute's
time to its physical unit, then the targets met / not met.  The forward+backward unit of (b) and (c) is timed in
the same interleaved rounds as tribute and Captum: measured alone, back to back, it runs about 10% faster (the
allocator's and caches' state; tribute and Captum speed up alike when run alone), which would judge every row
against a unit no interleaved call gets.  With ``--gradcam-env PYTHON`` it also runs
pytorch-grad-cam's GradCAM on the same model (plain torch, from benchmarks/models.py) in that interpreter
(a venv with torchvision + grad-cam) in a subprocess, and prints its time beside, with that process's own
forward+backward unit.

On a machine shared with other work timings mean little: the script reads /proc/stat and reports the CPU
that other processes used during every measurement (column bg).

Run from the repository root::

    python benchmarks/bench_propagation_cam.py                 # full, ~3-5 minutes on 2 idle cores
    python benchmarks/bench_propagation_cam.py --quick         # ~1 minute
    python benchmarks/bench_propagation_cam.py --gradcam-env /work/zenv/bin/python
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
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
from models import _SeparateReluBlock, random_inputs, resnet18_cifar, separate_relus  # noqa: E402

try:
    import captum
    import captum.attr as ca
    from captum.attr._utils.custom_modules import Addition_Module
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule

    import tribute
except ImportError:  # the --gradcam-probe child runs in a venv that has neither
    captum = ca = tribute = None

NUM_CLASSES = 10
SCORECAM_CHANNELS = 64
# CPU cores used by other processes above which a measurement counts as disturbed


# --------------------------------------------------------------------------------------------------
# measurement helpers (same conventions as bench_gradient_family.py)


def forward_only(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


class Units:
    """Seconds per row of a forward+backward pass ("fb") and of a forward-only pass ("f") at given rows per
    pass, measured at the start and at the end of the run; the smaller is used (load only slows down)."""

    def __init__(self, model: torch.nn.Module, repeats: int, monitor: CpuMonitor):
        self.model, self.repeats, self.monitor = model, repeats, monitor
        self.runs: list[dict[tuple[str, int], float]] = []
        self.background: list[float] = []

    def measure(self, keys) -> None:
        state, got = self.monitor.start(), {}
        for kind, rows in sorted(set(keys)):
            x = random_inputs(rows, seed=7)
            t = torch.arange(rows) % NUM_CLASSES
            if kind == "fb":
                fn = lambda x=x, t=t: forward_backward(self.model, x, t)  # noqa: E731
            else:
                fn = lambda x=x: forward_only(self.model, x)  # noqa: E731
            got[(kind, rows)] = timed(fn, self.repeats, warmup=2) / rows
        self.runs.append(got)
        self.background.append(self.monitor.stop(state))

    def per_row(self, kind: str, rows: int) -> float:
        return min(run[(kind, rows)] for run in self.runs)


# --------------------------------------------------------------------------------------------------
# Captum's LRP rules matched to tribute's composites

# tribute.LRP's defaults: epsilon 1e-6, gamma 0.25; its z+/gamma/alpha-beta denominators and its Norm rule
# (average pooling, residual additions) are stabilised with 1e-6
LRP_EPSILON, LRP_GAMMA, LRP_STABILISER = 1e-6, 0.25, 1e-6


@dataclass(frozen=True)
class CaptumRules:
    """Rule factories by module kind (Captum deletes ``module.rule`` after every call: re-attach each time)."""

    conv: Callable[[], object]
    dense: Callable[[], object]
    bn: Callable[[], object]
    note: str
    same_definition: bool  # whether agreement with tribute is expected (on the Addition_Module copy)


def _stabilised(rule):
    rule.STABILITY_FACTOR = LRP_STABILISER  # Captum reads it from the instance (default 1e-9)
    return rule


def captum_rules(composite: str, merged_bn: bool = False) -> CaptumRules:
    """Captum's counterpart of a tribute composite.

    Batch norm: tribute merges it into the convolution before it.  Under epsilon, Captum's epsilon rule on
    the BN then on the convolution is the merged rule up to where epsilon sits: exactly the merged rule when
    the convolution's epsilon -> 0 (``merged_bn``: 1e-30, still a normal float32; every convolution of this
    ResNet feeds a BN).  Under z+ / gamma there is no exact counterpart: IdentityRule passes the relevance
    through the BN so that the convolution's rule sees it (tribute's merged z+ equals that for inputs >= 0 where
    the BN's scale > 0 and shift <= 0); Captum's default, epsilon on the BN, would rescale it by z * scale / y.
    Nor do Captum's rules treat signed inputs (the first layer here) or negative outputs (the residual
    branches, which reach no ReLU before the addition) as tribute's do: see tests/test_lrp_captum.py.
    """
    eps = lambda: EpsilonRule(LRP_EPSILON)  # noqa: E731
    if composite == "epsilon":
        conv = (lambda: EpsilonRule(1e-30)) if merged_bn else eps
        return CaptumRules(conv, eps, eps, "Epsilon(1e-6) on conv, BN, linear", True)
    if composite == "epsilon_plus":
        return CaptumRules(lambda: _stabilised(Alpha1_Beta0_Rule()), eps, IdentityRule,
                           "Alpha1_Beta0 conv, Identity BN, Epsilon(1e-6) linear", False)
    if composite == "gamma":
        gamma = lambda: _stabilised(GammaRule(LRP_GAMMA))  # noqa: E731
        return CaptumRules(gamma, gamma, IdentityRule, "Gamma(0.25) conv+linear, Identity BN", False)
    if composite == "alpha_beta":
        return CaptumRules(eps, eps, eps, "NO alpha2-beta1 rule in Captum: Epsilon(1e-6) as for epsilon", False)
    raise ValueError(f"no Captum counterpart for composite {composite!r}")


def attach_rules(model: torch.nn.Module, rules: CaptumRules) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.rule = rules.conv()
        elif isinstance(m, torch.nn.Linear):
            m.rule = rules.dense()
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.rule = rules.bn()
        elif isinstance(m, (torch.nn.AdaptiveAvgPool2d, Addition_Module)):
            m.rule = EpsilonRule(LRP_STABILISER)  # tribute's Norm rule there
    return model


class _AdditionBlock(_SeparateReluBlock):
    """A separate-ReLU BasicBlock whose residual addition is Captum's Addition_Module (a module it can hook)."""

    def __init__(self, block):
        super().__init__(block)
        self.add = Addition_Module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(out, identity))


def addition_module_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``separate_relus(model)`` with every residual addition written as Captum's Addition_Module."""
    m = separate_relus(model)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        setattr(m, name, torch.nn.Sequential(*[_AdditionBlock(b) for b in getattr(m, name)]))
    return m.eval()


# --------------------------------------------------------------------------------------------------
# the methods


@dataclass
class Case:
    name: str
    tribute: Callable[[], torch.Tensor]
    captum: Callable[[], torch.Tensor] | None
    captum_note: str
    unit: str  # "fb": judged against one forward+backward at batch B; "f": rows x forward per row at the chunk
    limit: float  # target ratio to the unit
    group: str  # "lrp" / "cam": which Captum class the speed target is about
    reference: Callable[[], torch.Tensor] | None = None  # untimed: what the agreement column compares with
    same_definition: bool = False  # the agreement is expected to be at rounding/stabiliser level


def cases(model, captum_model, addition_model, x, target) -> list[Case]:
    def lrp(composite):
        explainer = tribute.LRP(model, composite=composite)  # one explainer, called again and again (a dataset)
        return lambda: explainer.attribute(x, target)

    def lrp_cold(composite):  # a new explainer per call: the weights its rules derive are derived every time
        return lambda: tribute.LRP(model, composite=composite).attribute(x, target)

    def captum_lrp(on, rules):
        return lambda: ca.LRP(attach_rules(on, rules)).attribute(x, target=target)

    def captum_gradcam():
        a = ca.LayerGradCam(model, model.layer4).attribute(x, target=target, relu_attributions=True)
        return ca.LayerAttribution.interpolate(a, tuple(x.shape[-2:]), interpolate_mode="bilinear")

    lrp_cases = []
    for composite, limit in (("epsilon", 1.1), ("epsilon_plus", 2.0), ("gamma", 2.0), ("alpha_beta", 2.0)):
        rules = captum_rules(composite)
        reference = None if composite == "alpha_beta" else captum_lrp(addition_model,
                                                                       captum_rules(composite, merged_bn=True))
        lrp_cases.append(Case(f"lrp {composite}", lrp(composite), captum_lrp(captum_model, rules),
                              f"LRP(separate-ReLU copy): {rules.note}", "fb", limit, "lrp", reference,
                              rules.same_definition))
        lrp_cases.append(Case(f"lrp {composite} cold", lrp_cold(composite), None,
                              "— (first call of a new explainer: no derived weights kept yet)", "fb", limit,
                              "lrp-cold"))
    return lrp_cases + [
        Case("gradcam layer4", lambda: tribute.explain(model, x, "gradcam", target=target, layer="layer4"),
             captum_gradcam, "LayerGradCam(layer4, relu) + interpolate bilinear", "fb", 1.1, "cam",
             captum_gradcam, True),
        Case("scorecam layer4 K=64",
             lambda: tribute.explain(model, x, "scorecam", target=target, layer="layer4", batch_size=CHUNK_ROWS,
                                     max_channels=SCORECAM_CHANNELS),
             None, "— (Captum has no Score-CAM)", "f", 1.1, "cam"),
    ]


def run_case(case: Case, repeats: int, monitor: CpuMonitor, unit: Callable[[], object] | None = None) -> dict:
    """Warm-up round (tribute's passes counted), then ``repeats`` rounds alternating the order of the sides;
    ``unit`` (one forward+backward at the batch size) is timed in the same rounds, so that it meets the same
    state of the machine (caches, the allocator's free lists) as the sides it is the unit of."""
    state = monitor.start()
    with tribute.count_passes() as count:
        a_trib = case.tribute()
    # a reused explainer's first call records where batch norm merges, its second derives the weights it keeps
    # (the "cold" rows time the first call alone): one more untimed call reaches the state of a dataset run
    case.tribute()
    sides = [case.tribute] + ([case.captum] if case.captum else []) + ([unit] if unit else [])
    a_cap = case.captum() if case.captum else None  # Captum's warm-up
    a_ref = case.reference() if case.reference else None
    if unit:
        unit()
    medians = interleaved_medians(sides, repeats)
    return {
        "tribute": medians[0],
        "captum": medians[1] if case.captum else None,
        "unit_inline": medians[-1] if unit else None,
        "fwd": count.forward_rows, "bwd": count.backward_rows, "background": monitor.stop(state),
        "agree": agreement(a_trib, a_ref) if a_ref is not None else None,
        "agree_timed": agreement(a_trib, a_cap) if a_cap is not None and a_ref is not None and case.group == "lrp"
        else None,
    }


# --------------------------------------------------------------------------------------------------
# pytorch-grad-cam in another interpreter (it needs torchvision; the model is plain torch)


def gradcam_probe(batch: int, repeats: int) -> None:
    """Runs in the other venv: time pytorch-grad-cam's GradCAM at layer4 and one forward+backward; print JSON."""
    warnings.filterwarnings("ignore")
    from importlib.metadata import version

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = resnet18_cifar()
    x = random_inputs(batch)
    target = torch.arange(batch) % NUM_CLASSES
    targets = [ClassifierOutputTarget(int(t)) for t in target]

    def run():
        with GradCAM(model=model, target_layers=[model.layer4]) as cam:
            return cam(input_tensor=x, targets=targets)

    unit = lambda: forward_backward(model, x, target)  # noqa: E731
    times: list[list[float]] = [[], []]
    run(), unit()
    for r in range(repeats):
        for i in ([0, 1] if r % 2 == 0 else [1, 0]):
            gc.collect()
            t0 = time.perf_counter()
            (run if i == 0 else unit)()
            times[i].append(time.perf_counter() - t0)
    print(json.dumps({"torch": torch.__version__, "grad_cam": version("grad-cam"),
                      "seconds": statistics.median(times[0]), "unit": statistics.median(times[1]),
                      "threads": torch.get_num_threads()}))


def run_gradcam_probe(python: str, batch: int, repeats: int) -> dict:
    cmd = [python, os.path.abspath(__file__), "--gradcam-probe", "--probe-batch", str(batch),
           "--probe-repeats", str(repeats)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--gradcam-env", metavar="PYTHON",
                    help="python of a venv with torchvision + grad-cam: also time pytorch-grad-cam's GradCAM there")
    ap.add_argument("--gradcam-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe-batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--probe-repeats", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.gradcam_probe:
        gradcam_probe(args.probe_batch, args.probe_repeats)
        return
    if tribute is None:
        raise SystemExit("this benchmark needs tribute and captum installed")

    repeats, unit_repeats = (3, 5) if args.quick else (7, 9)
    batches = (1, 32)
    warnings.filterwarnings("ignore")  # Captum's "setting hooks" / "requires_grad set" notices
    t_start = time.perf_counter()
    monitor = CpuMonitor()
    run_state = monitor.start()
    model = resnet18_cifar()
    captum_model = separate_relus(model)
    addition_model = addition_module_copy(model)

    print("tribute LRP composites and CAMs vs Captum — CIFAR ResNet-18 (3x32x32, 10 classes, random init seed 0, "
          "eval)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, captum {captum.__version__}, "
          f"tribute {tribute.__version__} at commit {source_version()}; {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()} (default)")
    print(f"mode: {'quick' if args.quick else 'full'}; batches {batches}; timed repeats after one warm-up round: "
          f"{repeats}, sides interleaved, median reported; targets: class i % 10 for sample i on both sides")
    x0 = random_inputs(2)
    with torch.no_grad():
        same = torch.equal(model(x0), captum_model(x0))
        same_add = torch.equal(model(x0), addition_model(x0))
    print(f"Captum LRP runs on the separate-ReLU copy (identical logits: {same}) with rules matched to each "
          f"composite; the agreement column on an Addition_Module copy (identical logits: {same_add}); every "
          "tribute call on the original")
    print()

    keys = []
    for n in batches:
        keys += [("fb", n), ("f", chunk_size(n * SCORECAM_CHANNELS)), ("f", n)]
    units = Units(model, unit_repeats, monitor)
    units.measure(keys)

    results = []
    for n in batches:
        x = random_inputs(n)
        target = torch.arange(n) % NUM_CLASSES
        unit = lambda x=x, target=target: forward_backward(model, x, target)  # noqa: E731
        for case in cases(model, captum_model, addition_model, x, target):
            r = run_case(case, repeats, monitor, unit if case.unit == "fb" else None)
            r.update(case=case, batch=n)
            results.append(r)
            cap = "—" if r["captum"] is None else f"{r['captum']:.4f}s"
            print(f"  measured {case.name:22s} batch {n:2d}: tribute {r['tribute']:.4f}s, captum {cap} "
                  f"(rows f/b {r['fwd']}/{r['bwd']}, background load {r['background']:.2f} cores)", flush=True)
    units.measure(keys)
    print()

    print(f"Physical units, seconds per row (median of {unit_repeats}; at the start / at the end of the run, "
          f"background load {units.background[0]:.2f} / {units.background[1]:.2f} cores; the smaller is used):")
    for kind, label in (("fb", "forward+backward"), ("f", "forward only")):
        print(f"  {label:17s}" + "; ".join(
            f"{r} rows/pass {1e3 * units.runs[0][(kind, r)]:.2f} / {1e3 * units.runs[1][(kind, r)]:.2f} ms"
            for k, r in sorted(set(keys)) if k == kind))
    print()

    hdr = (f"{'method':22s} {'B':>2s} {'tribute s':>9s} {'captum s':>9s} {'speedup':>7s} {'rows f/b':>10s} "
           f"{'unit s':>8s} {'ratio':>6s} {'limit':>5s} {'agree':>7s} {'vs fn+':>6s} {'bg':>4s}  captum call")
    print(hdr)
    print("-" * (len(hdr) + 40))
    for r in results:
        case, n = r["case"], r["batch"]
        if case.unit == "fb":
            unit = r["unit_inline"]
            unit_label = f"fb@{n} in the same rounds (alone: {n * units.per_row('fb', n):.4f}s)"
        else:
            rows = r["fwd"] - n  # the masked rows; the first n rows are the activation pass at batch n
            unit = rows * units.per_row("f", chunk_size(rows)) + n * units.per_row("f", n)
            unit_label = f"f@{chunk_size(rows)}"
        r["unit"], r["ratio"], r["unit_label"] = unit, r["tribute"] / unit, unit_label
        cap = f"{r['captum']:9.4f}" if r["captum"] is not None else f"{'—':>9s}"
        sp = f"{r['captum'] / r['tribute']:6.2f}x" if r["captum"] is not None else f"{'—':>7s}"
        agree = "—" if r["agree"] is None else f"{r['agree']:.0e}" + ("" if case.same_definition else "*")
        timed_agree = "—" if r["agree_timed"] is None else f"{r['agree_timed']:.0e}"
        print(f"{case.name:22s} {n:2d} {r['tribute']:9.4f} {cap} {sp} {r['fwd']:>5d}/{r['bwd']:<4d} "
              f"{unit:8.4f} {r['ratio']:6.2f} {case.limit:5.1f} {agree:>7s} {timed_agree:>6s} "
              f"{r['background']:4.1f}  {case.captum_note}  [unit {unit_label}]")
    print()
    print("speedup = captum s / tribute s (> 1: tribute faster); rows f/b = rows tribute sent forward / backward "
          "(tribute.count_passes);")
    print("unit s = one forward+backward pass at batch B (fb@B) timed in the same interleaved rounds as the row (the "
          "start/end measurement alone is shown beside: alone it runs ~10% faster, for tribute and Captum as well), "
          "or for Score-CAM rows x forward-only s per row at the chunk it ran (f@chunk) + the activation pass at B; "
          "ratio = tribute s / unit s;")
    print("agree = max|tribute - captum| / max|captum|; for LRP against Captum with the same rules on the copy whose "
          "residual additions are Addition_Module (untimed; epsilon: the conv's own epsilon -> 0, which makes")
    print("  Captum's epsilon on conv then BN the merged conv+BN rule; in float64 they agree to 9e-13 at B=1, 3e-11 at "
          "B=32; in float32 the map itself is good to ~1e-2 only: tribute float32 vs float64 8e-4 at B=1, 1e-2 at "
          "B=32);")
    print("  * = not the same definition: z+/gamma meet BN differently (tribute merges it, Captum's IdentityRule "
          "passes relevance through it; BN shifts > 0 enter tribute's z+ denominators), Captum's rules take x*w+ for")
    print("  signed inputs (tribute: (x*w)+), and Captum's gamma uses W + gamma*W+ also at negative outputs "
          "(tribute: W + gamma*W-), where its denominator can cross zero;")
    print("vs fn+ = the same against the timed Captum call, whose additions are functional: Captum's rules see "
          "modules only, so each summand receives the whole relevance (it doubles at every addition and blows up "
          "where a summand is ~0);")
    print("Captum has no alpha2-beta1 rule: the alpha_beta row times Captum's epsilon rules (not comparable, no "
          "agreement); bg = CPU cores used by other processes during the measurement.")
    print()

    if args.gradcam_env:
        print(f"pytorch-grad-cam GradCAM(layer4) in {args.gradcam_env} (subprocess, its own torch; bilinear "
              "cv2 resize and min-max normalisation included; unit = fwd+bwd at B in that process):")
        for n in batches:
            state = monitor.start()
            p = run_gradcam_probe(args.gradcam_env, n, repeats)
            bg = monitor.stop(state)
            ours = next(r for r in results if r["case"].name == "gradcam layer4" and r["batch"] == n)
            if "error" in p:
                print(f"  batch {n:2d}: FAILED {p['error']}")
                continue
            print(f"  batch {n:2d}: pytorch-grad-cam {p['seconds']:.4f}s (ratio {p['seconds'] / p['unit']:.2f} to its "
                  f"unit {p['unit']:.4f}s; torch {p['torch']}, grad-cam {p['grad_cam']}, {p['threads']} threads) vs "
                  f"tribute {ours['tribute']:.4f}s (ratio {ours['ratio']:.2f}): speedup "
                  f"{p['seconds'] / ours['tribute']:.2f}x (bg {bg:.1f})", flush=True)
        print()
    else:
        print("pytorch-grad-cam comparison skipped (pass --gradcam-env PYTHON)")
        print()

    print("Targets")
    cold = [r for r in results if r["case"].group == "lrp-cold"]
    print("  (informational) first call of a new explainer, weights derived during the call: "
          + ", ".join(f"{r['case'].name}@B{r['batch']} {r['ratio']:.2f}" for r in cold))
    for name, pick, limit in (("epsilon-LRP within 1.1x of one forward+backward", ("lrp epsilon",), 1.1),
                              ("z+/gamma/alpha-beta composites within 2x",
                               ("lrp epsilon_plus", "lrp gamma", "lrp alpha_beta"), 2.0),
                              ("Grad-CAM within 1.1x of one forward+backward", ("gradcam layer4",), 1.1),
                              ("Score-CAM at full batch throughput (within 1.1x of forward-only rows)",
                               ("scorecam layer4 K=64",), 1.1)):
        cells = [r for r in results if r["case"].name in pick]
        over = [f"{r['case'].name}@B{r['batch']} ({r['ratio']:.2f})" for r in cells if r["ratio"] > limit]
        print(f"  {name}: " + verdict(over)
              + "  [" + ", ".join(f"{r['case'].name}@B{r['batch']} {r['ratio']:.2f}" for r in cells)
              + "]")
    for group, label in (("lrp", "faster than Captum's LRP (alpha_beta not counted: Captum has no alpha2-beta1 "
                                  "rule, its row times Captum's epsilon rules)"),
                         ("cam", "faster than Captum's LayerGradCam")):
        cells = [r for r in results if r["case"].group == group and r["captum"] is not None
                 and r["case"].name != "lrp alpha_beta"]
        slow = [f"{r['case'].name}@B{r['batch']} ({r['captum'] / r['tribute']:.2f}x)" for r in cells
                if r["captum"] < r["tribute"]]
        print(f"  {label}: " + verdict(slow) + "  ["
              + ", ".join(f"{r['case'].name}@B{r['batch']} {r['captum'] / r['tribute']:.2f}x" for r in cells) + "]")
    warn_disturbed(results, lambda r: f"{r['case'].name}@B{r['batch']}")
    print()
    print(f"total wall time {time.perf_counter() - t_start:.0f} s; background load over the whole run "
          f"{monitor.stop(run_state):.2f} cores")


if __name__ == "__main__":
    main()
