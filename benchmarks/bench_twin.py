"""Budget of the robust twin pipeline (issue 15, steps 1–2) on this machine, extrapolated from a few hundred batches.

On a width-8 CIFAR-style ResNet-18 (tribute.explainers.resnet18_cifar, 1 input channel, 10 classes) and the
Fashion-MNIST training set (Debian ``dataset-fashion-mnist``):
- a clean training epoch (tribute.training.fit, batch 256), timed on ``--clean-batches`` batches;
- a PGD-L2 adversarial epoch with the ``gray28`` preset (7 steps) and with the paper's 20 steps
  (tribute.explainers.train_robust_twin), each timed on its ``--pgd-batches``;
- SmoothGrad-50 per image into a store (tribute.explainers.twin_attributions), on ``--sg-images`` images;
each extrapolated linearly to the 60,000 images, in wall and CPU seconds.  A first small run warms up the
kernels.  The load average is printed: other processes on the machine slow every wall-clock number.

    PYTHONPATH=src python benchmarks/bench_twin.py [--clean-batches 120] [--pgd-batches 30] [--sg-images 256]
                                                   [--threads 1]

On a machine loaded by other processes, two threads oversubscribe the cores and their spinning inflates even the
CPU seconds (seen here: 6–15×); one thread (``--threads 1``) measures the work itself.

Measured (2026-12-07, torch 2.13.0+cpu, 2 cores shared with other processes, load average 6.4–10), with
``--clean-batches 30 --pgd-batches 6 --sg-images 64 --threads 1``, per 60k images (CPU min / wall min):
clean epoch 1.3 / 2.5; PGD-L2 7 steps 8.3 / 14.6; PGD-L2 20 steps 20.4 / 31.9; SmoothGrad-50 store 53.8 / 109
(54 ms CPU per image).  With torch's 2 threads at load 7.6–10 the same runs took 15.4, 71.9, 212.5 and 2235 min
of wall time: oversubscribed threads, not the work.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from tribute.data import load_fashion_mnist
from tribute.explainers import resnet18_cifar, train_robust_twin, twin_attributions
from tribute.training import fit

FULL = 60_000
BATCH = 256


def timed(label: str, images: int, run) -> float:
    """Wall seconds per 60k images, extrapolated from ``images``; CPU seconds (all threads) printed beside them:
    on a loaded machine the wall time grows with the load, the CPU time much less."""
    clock, cpu = time.perf_counter(), time.process_time()
    run()
    seconds, cpu = time.perf_counter() - clock, time.process_time() - cpu
    per_epoch, cpu_epoch = seconds / images * FULL, cpu / images * FULL
    print(f"{label}: {seconds:.1f} s wall, {cpu:.1f} s CPU for {images} images -> per 60k {per_epoch:.0f} s = "
          f"{per_epoch / 60:.1f} min wall, {cpu_epoch / 60:.1f} min CPU; load {os.getloadavg()[0]:.2f}", flush=True)
    return per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean-batches", type=int, default=120)
    parser.add_argument("--pgd-batches", type=int, default=30)
    parser.add_argument("--sg-images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()}",
          flush=True)
    x, y = load_fashion_mnist("train")

    def model():
        return resnet18_cifar(10, in_channels=1, width=8, seed=0)

    fit(model(), (x[:BATCH], y[:BATCH]), epochs=1, lr=0.1, batch_size=BATCH, progress=False)  # warm-up
    n = args.clean_batches * BATCH
    timed("clean epoch (fit, batch 256)", n, lambda: fit(model(), (x[:n], y[:n]), epochs=1, lr=0.1,
                                                          batch_size=BATCH, progress=False))
    n = args.pgd_batches * BATCH
    for steps in (7, 20):
        timed(f"PGD-L2 epoch, {steps} steps (train_robust_twin gray28)", n,
              lambda steps=steps: train_robust_twin(model(), (x[:n], y[:n]), epochs=1, steps=steps))
    n = args.sg_images
    twin = model()
    with tempfile.TemporaryDirectory() as out:
        seconds = timed("SmoothGrad-50 store (twin_attributions)", n,
                        lambda: twin_attributions(twin, (x[:n], y[:n]), os.path.join(out, "sg"), chunk_size=128))
    print(f"SmoothGrad-50: {seconds / FULL * 1000:.1f} ms per image", flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
