"""The run log (``run.json``): what each run of :func:`tribute.store.compute_store` on a directory did.

One record per run, appended (the HTML report reads it): when it started, how long it took, the processes (rank,
threads, host), the method with its options (seeds included) and the settings, the versions of Python, torch,
tribute, safetensors and numpy and the platform, and per shard whether it was computed, kept from an earlier run,
or recomputed because its file was damaged (with the reason), with its seconds and its rank.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import numpy
import torch

from ..atomic_files import read_json, write_json

RUN_LOG = "run.json"


def versions() -> dict[str, str]:
    """The versions a store records in its manifest and compares when a run resumes."""
    import tribute

    return {"tribute": tribute.__version__, "torch": torch.__version__}


def environment() -> dict[str, str]:
    """Versions that do not decide the values (only recorded): Python, safetensors, numpy, the platform."""
    try:
        import safetensors
        st = safetensors.__version__
    except ImportError:
        st = "absent"
    return {"python": sys.version.split()[0], "safetensors": st, "numpy": numpy.__version__,
            "platform": platform.platform()}


def process() -> dict[str, Any]:
    """This process as the run log records it."""
    return {"host": platform.node(), "pid": os.getpid(), "threads": torch.get_num_threads()}


def append(path: str, record: dict[str, Any]) -> None:
    """Add ``record`` to the run log of the store at ``path`` (created if absent; an unreadable log is replaced,
    keeping nothing, since it records history and decides nothing)."""
    file = os.path.join(path, RUN_LOG)
    try:
        log = read_json(file)
        runs = log["runs"] if isinstance(log, dict) and isinstance(log.get("runs"), list) else []
    except (OSError, ValueError):
        runs = []
    write_json(file, {"runs": [*runs, record]})
