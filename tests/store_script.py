"""A store run in its own process, for tests/test_store.py: killed with SIGKILL mid-way, or run under torchrun.

``python tests/store_script.py DIR [--slow] [--distributed] [--method NAME]`` writes the store of
:func:`build`'s model and data to DIR (``--slow``: every forward pass sleeps, so that a kill lands mid-run).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import tribute.store as ts

SAMPLES, CHUNK = 30, 3
#: the options of each method the scripts run (seeded methods draw from per-sample streams)
OPTIONS = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3, "noise_level": 0.2, "seed": 5}}


class SmallCNN(nn.Module):
    """conv-ReLU-pool-linear on 3×8×8 images, 3 classes; ``delay`` seconds of sleep per forward pass."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.delay = delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def build(delay: float = 0.0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model (fixed seed, eval mode), SAMPLES images and their labels."""
    g = torch.Generator().manual_seed(0)
    model = SmallCNN(delay)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.rand(SAMPLES, 3, 8, 8, generator=g)
    labels = torch.randint(0, 3, (SAMPLES,), generator=g)
    return model.eval(), x, labels


def run(path: str, method: str = "integrated_gradients", delay: float = 0.0, **store_options) -> ts.Store:
    model, x, labels = build(delay)
    return ts.compute_store(path, model, (x, labels), method, chunk_size=CHUNK, batch_size=8,
                            **OPTIONS[method], **store_options)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--method", default="integrated_gradients")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        try:
            run(args.path, args.method)
        finally:
            dist.destroy_process_group()
    else:
        run(args.path, args.method, delay=0.05 if args.slow else 0.0)
