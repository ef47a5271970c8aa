"""Benchmark infidelity and max-sensitivity against Captum (and Quantus's MaxSensitivity) on the CPU.

Models and inputs:

(a) the committed Fashion-MNIST CNN (tests/fixtures/fashion), its 64 stored test images (``--quick``: 16),
    targets their labels;
(b) unless ``--quick``: a CIFAR ResNet-18 (benchmarks/models.py, random init seed 0), 8 random images, target
    class i % 10.

Cases, each timed in one process (medians of interleaved repeats after a warm-up round), per image:

- ``infidelity``: the plain gradient's infidelity under Gaussian perturbations I ∼ N(0, 0.1²), ``samples``
  draws per image (100), normalised (β*).  tribute: ``tribute.metrics.infidelity(perturbation="gaussian")``
  (per-sample seeded draws, chunks of its default batch size).  Captum: ``captum.metrics.infidelity`` with a
  perturb_func drawing the same distribution from torch's global generator, ``normalize=True``, all rows in one
  pass (its default) and chunked to tribute's rows per pass.
- ``max-sensitivity``: the plain gradient's relative max-sensitivity, 10 draws uniform in the L∞ ball of
  radius 0.02.  tribute: ``max_sensitivity(..., "gradient", relative=True)``.  Captum: ``sensitivity_max``
  with ``Saliency(abs=False).attribute`` (its default perturbation is this ball).  Quantus 0.6.0:
  ``MaxSensitivity(nr_samples=10, lower_bound=0.02, normalise=False, abs=False)`` with its own
  ``quantus.explain(method="Gradient")`` (Captum's Saliency(abs=False)), ``batch_size`` = all images.

Speedup = other / tribute.  The sides draw different random perturbations, so their values agree only in
distribution; to check that they compute the same quantity, each tribute metric is also fed to Captum with
tribute's own draws once (untimed) and the largest relative difference is printed.

On a machine shared with other work timings mean little: the column ``bg`` is the CPU (in cores) other
processes used while a case was measured (/proc/stat).

Run from the repository root::

    python benchmarks/bench_metrics_robustness.py            # ~9 minutes on a loaded 2-core machine
    python benchmarks/bench_metrics_robustness.py --quick    # Fashion-MNIST, 16 images, fewer repeats (~25 s)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import captum  # noqa: E402
import captum.attr as ca  # noqa: E402
import captum.metrics as cm  # noqa: E402
import quantus  # noqa: E402
from common import CpuMonitor, agreement, interleaved_medians, source_version  # noqa: E402
from models import fashion_fixture, random_inputs, resnet18_cifar  # noqa: E402

import tribute  # noqa: E402
from tribute.core.engine import default_batch_size  # noqa: E402
from tribute.metrics import draw_ball, draw_perturbations, infidelity, max_sensitivity  # noqa: E402

SIGMA, INFD_SAMPLES = 0.1, 100
RADIUS, SENS_SAMPLES = 0.02, 10



def gaussian_perturb(inputs):
    noise = SIGMA * torch.randn_like(inputs)
    return noise, inputs - noise


def sides(model, x, target, phi):
    """(case, [(side, callable)]) with tribute first."""
    chunk = default_batch_size(x)
    saliency = ca.Saliency(model)
    explain = lambda inputs, target: saliency.attribute(inputs, target=target, abs=False)  # noqa: E731
    quantus_metric = quantus.MaxSensitivity(nr_samples=SENS_SAMPLES, lower_bound=RADIUS, normalise=False, abs=False,
                                            disable_warnings=True, display_progressbar=False)
    x_np, y_np = x.numpy(), target.numpy()
    a_np = phi.numpy()

    def quantus_run():
        return quantus_metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, explain_func=quantus.explain,
                              explain_func_kwargs={"method": "Gradient", "reduce_axes": ()}, batch_size=len(x_np),
                              device="cpu")

    return [
        ("infidelity", [
            ("tribute", lambda: infidelity(model, x, phi, target, perturbation="gaussian",
                                           perturbation_options={"sigma": SIGMA}, samples=INFD_SAMPLES)),
            ("Captum, one pass", lambda: cm.infidelity(model, gaussian_perturb, x, phi, target=target,
                                                       n_perturb_samples=INFD_SAMPLES, normalize=True)),
            (f"Captum, {chunk}-row chunks", lambda: cm.infidelity(
                model, gaussian_perturb, x, phi, target=target, n_perturb_samples=INFD_SAMPLES, normalize=True,
                max_examples_per_batch=max(chunk, len(x)))),
        ]),
        ("max-sensitivity", [
            ("tribute", lambda: max_sensitivity(model, x, "gradient", target, radius=RADIUS, samples=SENS_SAMPLES,
                                                relative=True)),
            ("Captum", lambda: cm.sensitivity_max(explain, x, perturb_radius=RADIUS, n_perturb_samples=SENS_SAMPLES,
                                                  target=target)),
            ("Quantus MaxSensitivity", quantus_run),
        ]),
    ]


def same_draws_agreement(model, x, target, phi) -> dict[str, float]:
    """Both metrics fed to Captum with tribute's own draws: max relative difference of the per-image values."""
    pert = draw_perturbations(x, "gaussian", INFD_SAMPLES, perturbation_options={"sigma": SIGMA})
    flat = pert.reshape(-1, *x.shape[1:])
    ours = infidelity(model, x, phi, target, perturbation=pert)
    theirs = cm.infidelity(model, lambda inputs: (flat, inputs - flat), x, phi, target=target,
                           n_perturb_samples=INFD_SAMPLES, normalize=True)
    delta = draw_ball(x, SENS_SAMPLES, RADIUS).reshape(-1, *x.shape[1:])
    saliency = ca.Saliency(model)

    def explain(inputs, target):
        return saliency.attribute(inputs, target=target, abs=False)

    ours_s = max_sensitivity(model, x, "gradient", target, radius=RADIUS, samples=SENS_SAMPLES, relative=True)
    theirs_s = cm.sensitivity_max(explain, x, perturb_func=lambda inputs, r: inputs + delta, perturb_radius=RADIUS,
                                  n_perturb_samples=SENS_SAMPLES, target=target)
    return {"infidelity": agreement(ours, theirs), "max-sensitivity": agreement(ours_s, theirs_s)}


def run(label: str, model, x, target, repeats: int, monitor: CpuMonitor) -> None:
    n = x.shape[0]
    phi = tribute.explain(model, x, "gradient", target=target)
    print(f"\n## {label}: {n} images of shape {tuple(x.shape[1:])}, tribute chunk {default_batch_size(x)} rows")
    for case, runs in sides(model, x, target, phi):
        for _, fn in runs:  # warm-up
            fn()
        state = monitor.start()
        times = interleaved_medians([fn for _, fn in runs], repeats)
        bg = monitor.stop(state)
        base = times[0]
        print(f"{case:16s} {'side':34s} {'ms/image':>9s} {'speedup':>8s}  bg={bg:.2f}")
        for (side, _), t in zip(runs, times, strict=True):
            speed = "" if side == "tribute" else f"{t / base:7.1f}x"
            print(f"{'':16s} {side:34s} {1e3 * t / n:9.2f} {speed:>8s}")
    for case, err in same_draws_agreement(model, x, target, phi).items():
        print(f"same draws, tribute vs Captum, {case}: max relative difference {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fashion-MNIST only, 16 images, 3 repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a loaded machine more threads spin and wait)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"tribute {source_version()}, torch {torch.__version__}, captum {captum.__version__}, "
          f"quantus {quantus.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    monitor = CpuMonitor()
    repeats = 3 if args.quick else 5
    model, x, labels = fashion_fixture(16 if args.quick else 64)
    run("Fashion-MNIST CNN", model, x, labels, repeats, monitor)
    if not args.quick:
        resnet = resnet18_cifar(0).eval()
        xr = random_inputs(8, seed=3)
        run("CIFAR ResNet-18", resnet, xr, torch.arange(8) % 10, 3, monitor)


if __name__ == "__main__":
    main()
