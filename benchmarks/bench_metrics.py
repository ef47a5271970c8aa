"""Benchmark tribute's perturbation metrics against Quantus (CPU): pixel flipping, region perturbation,
deletion, insertion and ROAD.

On
(a) the committed Fashion-MNIST CNN (tests/fixtures/fashion), its 64 stored test images, targets their labels;
(b) with ``--resnet`` (default in full mode): a CIFAR ResNet-18 (benchmarks/models.py, random init), 16 random
    images, target class i % 10;

and the plain gradient's channel-summed map as the attribution, it times, in one process (medians of
interleaved repeats after a warm-up round):

- ``pixel flipping``: MoRF curve, pixels removed to 0 in 16 equal steps.  tribute:
  ``pixel_perturbation(replacement="zero", steps=16)``; Quantus 0.6.0: ``PixelFlipping(features_in_step=H·W/16,
  perturb_baseline=0.0)``.  On one-channel images the two curves are the same numbers (checked: max |Δ| is
  printed).  On RGB inputs Quantus ranks the map broadcast to every channel element by element while its step
  must divide H·W, so its 16·3 steps of H·W/16 elements do the same forward work as our 48 steps and the
  time is compared at equal rows;
- ``regions``: the same with 4×4 patches ranked by summed attribution, 16 regions (Quantus ``RegionPerturbation``);
- ``deletion``: tribute ``deletion`` (the pixel-flipping curve plus its AUC); on the Quantus side the
  PixelFlipping curve and ``numpy.trapezoid`` (Quantus's own AUC calls ``numpy.trapz``, gone in NumPy 2.4);
- ``insertion``: tribute ``insertion`` (blurred start), no Quantus equivalent: timed against the floor only;
- ``ROAD``: tribute ``road`` (fractions 0.1 … 0.9, noisy linear imputation by conjugate gradients, batched)
  against Quantus ``ROAD`` (same percentages, one direct sparse solve per image and percentage); Quantus 0.6's
  ROAD fails on RGB images (it indexes an H·W mask with indices into C·H·W), so there only tribute is timed;

and, for each, the *forward floor*: the model's forward pass alone over the same number of rows at tribute's
chunk size, which every implementation of the metric must pay.  Speedup = Quantus / tribute.

On a machine shared with other work timings mean little: ``bg`` is the CPU (cores) other processes used
during the measurement (/proc/stat).

Run from the repository root::

    python benchmarks/bench_metrics.py            # ~5 minutes on 2 idle cores (the ResNet's forward passes)
    python benchmarks/bench_metrics.py --quick    # Fashion-MNIST only, 3 repeats (~40 s)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import quantus  # noqa: E402
from common import BACKGROUND_LIMIT, CpuMonitor, fixture_then_resnet, interleaved_medians  # noqa: E402

import tribute  # noqa: E402
from tribute.core.engine import default_batch_size  # noqa: E402
from tribute.metrics import deletion, insertion, pixel_perturbation, road  # noqa: E402

STEPS = 16
PATCH = 4
ROAD_PERCENT = list(range(10, 100, 10))



def forward_floor(model, x: torch.Tensor, rows_per_image: int) -> Callable[[], object]:
    """The model's forward pass over ``rows_per_image`` copies of every image, in tribute's chunk size."""
    rows = x.repeat_interleave(rows_per_image, 0)
    chunk = default_batch_size(x)

    def run():
        with torch.no_grad():
            for c in rows.split(chunk):
                model(c)
    return run


def quantus_call(metric, model, x, y, a):
    return metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu",
                  softmax=True, batch_size=len(x))


def cases(model, x, y, amap):
    """name → (tribute side, Quantus side or None, forward rows per image, agreement check or None)."""
    h, w = x.shape[-2:]
    channels = x.shape[1]
    q_steps = STEPS * channels  # Quantus steps through channel elements of the broadcast map
    pf = quantus.PixelFlipping(features_in_step=h * w // STEPS, perturb_baseline=0.0, normalise=False,
                               disable_warnings=True)
    regions = (h // PATCH) * (w // PATCH)
    rp = quantus.RegionPerturbation(patch_size=PATCH, regions_evaluation=STEPS, perturb_baseline=0.0,
                                    normalise=False, disable_warnings=True)
    qroad = quantus.ROAD(percentages=ROAD_PERCENT, noise=0.01, normalise=False, disable_warnings=True)
    ours_steps = dict(steps=q_steps) if channels > 1 else dict(steps=STEPS)
    reduce = None if channels > 1 else "sum"
    a_full = amap.expand_as(x).contiguous() if channels > 1 else amap

    def pf_check():
        if channels > 1:
            return None
        ours = pixel_perturbation(model, x, amap, y, replacement="zero", steps=STEPS).curve[:, 1:]
        return float(np.abs(ours.numpy() - np.asarray(quantus_call(pf, model, x, y, amap))).max())

    def rp_check():
        ours = pixel_perturbation(model, x, amap, y, replacement="zero", patch_size=PATCH,
                                  fractions=[k / regions for k in range(1, STEPS + 1)]).curve
        theirs = np.asarray(quantus_call(rp, model, x, y, amap))
        return float(np.abs((ours[:, :1] - ours[:, 1:]).numpy() - theirs).max())

    def quantus_deletion():
        curve = np.asarray(quantus_call(pf, model, x, y, amap))
        return np.trapezoid(curve, dx=1 / curve.shape[1], axis=1)

    fractions = [p / 100 for p in ROAD_PERCENT]
    return {
        "pixel flipping": (lambda: pixel_perturbation(model, x, a_full, y, replacement="zero", reduce=reduce,
                                                      **ours_steps),
                           lambda: quantus_call(pf, model, x, y, amap), q_steps + 1, pf_check),
        "regions 4x4": (lambda: pixel_perturbation(model, x, amap, y, replacement="zero", patch_size=PATCH,
                                                   fractions=[k / regions for k in range(1, STEPS + 1)]),
                        lambda: quantus_call(rp, model, x, y, amap), STEPS + 1, rp_check),
        "deletion": (lambda: deletion(model, x, a_full, y, reduce=reduce, **ours_steps), quantus_deletion,
                     q_steps + 1, None),
        "insertion": (lambda: insertion(model, x, amap, y, steps=STEPS), None, STEPS + 1, None),
        "ROAD": (lambda: road(model, x, amap, y, fractions=fractions, seed=0),
                 None if channels > 1 else  # Quantus's ROAD indexes an H·W mask with C·H·W indices on RGB
                 lambda: qroad(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=amap.numpy(),
                               device="cpu", batch_size=len(x)),
                 len(fractions) + 1, None),
    }


def measure(label: str, model, x, y, repeats: int, monitor: CpuMonitor) -> list[float]:
    n = len(x)
    amap = tribute.explain(model, x, "gradient", target=y).sum(1, keepdim=True)
    print(f"== {label}: {n} images {tuple(x.shape[1:])}, gradient map, chunk {default_batch_size(x)} rows ==")
    print(f"{'metric':16s} {'rows/img':>8s} {'tribute ms/img':>15s} {'Quantus ms/img':>15s} {'speedup':>8s} "
          f"{'floor ms/img':>13s} {'tribute/floor':>14s} {'bg':>5s}  agreement")
    speedups = []
    for name, (ours, theirs, rows, check) in cases(model, x, y, amap).items():
        sides = [ours, forward_floor(model, x, rows)] + ([theirs] if theirs is not None else [])
        for fn in sides:  # warm-up
            fn()
        reps = max(2, repeats // 3) if name == "ROAD" else repeats
        state = monitor.start()
        secs = interleaved_medians(sides, reps)
        bg = monitor.stop(state)
        t_ours, t_floor = secs[0], secs[1]
        t_q = secs[2] if theirs is not None else float("nan")
        speed = t_q / t_ours
        if theirs is not None:
            speedups.append(speed)
        agree = check() if check is not None else None
        agree_s = "—" if agree is None else f"max |Δ| {agree:.1e}"
        q_s = f"{1000 * t_q / n:15.2f}" if theirs is not None else f"{'—':>15s}"
        sp_s = f"{speed:7.1f}x" if theirs is not None else f"{'—':>8s}"
        print(f"{name:16s} {rows:8d} {1000 * t_ours / n:15.2f} {q_s} {sp_s} {1000 * t_floor / n:13.2f} "
              f"{t_ours / t_floor:13.2f}x {bg:5.2f}{' !' if bg > BACKGROUND_LIMIT else '  '} {agree_s}", flush=True)
    print()
    return speedups


def main() -> None:
    speedups = [s for part in fixture_then_resnet(__doc__, "tribute perturbation metrics vs Quantus", measure,
                                                  rounds_note=" (ROAD fewer)") for s in part]
    met = sum(s >= 10 for s in speedups)
    print(f"goal 10x faster than Quantus: met in {met} of {len(speedups)} comparisons.  The curves are bound by "
          "the forward passes both sides must make (tribute/floor column); only where Quantus does extra work "
          "per image (ROAD's sparse solves) can the gap be large.")


if __name__ == "__main__":
    main()
