"""The floor of any method that intercepts calls with a TorchFunctionMode (as tribute's rules do): one
forward+backward pass under a mode that only forwards every call, against the plain pass, on the tests' tiny
Hugging Face configs (one thread, CPU time, batch 8).  On models whose whole pass takes a few milliseconds the
interception alone costs a visible fraction, before any rule runs: the ratio targets of bench_zoo.py are met at the
sizes people use (``--hf-size base``), not on these.  Run from the repository root::

    python benchmarks/interception_floor.py
"""

import os
import statistics
import sys
import time
import warnings

import torch
from torch.overrides import TorchFunctionMode

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_zoo import hf_zoo  # noqa: E402
from zoo_torchvision import realistic  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

class Forward(TorchFunctionMode):
    """A mode that counts and forwards every call."""

    calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        Forward.calls += 1
        return func(*args, **(kwargs or {}))

def fb(model, x, t):
    xx = x.clone().requires_grad_()
    model(xx).gather(1, t[:, None]).sum().backward()


def measure(name: str) -> None:
    build, side = hf_zoo()[name]
    torch.manual_seed(0)
    model = realistic(build(), side, dtype=torch.float32)
    shape = tuple(side) if isinstance(side, tuple) else (3, side, side)
    x, t = torch.randn(8, *shape), torch.zeros(8, dtype=torch.long)

    def plain():
        fb(model, x, t)

    def moded():
        with Forward():
            fb(model, x, t)

    for f in (plain, moded):
        f()
    Forward.calls = 0
    moded()
    calls = Forward.calls
    ts = {f.__name__: [] for f in (plain, moded)}
    for _ in range(20):
        for f in (plain, moded):
            c = time.thread_time()
            f()
            ts[f.__name__].append(time.thread_time() - c)
    p, m = statistics.median(ts["plain"]), statistics.median(ts["moded"])
    print(f"{name}: forward+backward {p*1e3:.2f} ms CPU; under a mode that only forwards {m*1e3:.2f} ms "
          f"({m/p:.2f}x); {calls} intercepted calls, {(m-p)/calls*1e6:.1f} us each")


if __name__ == "__main__":
    for model_name in ("hf gpt2", "hf vit", "hf bert"):
        measure(model_name)
