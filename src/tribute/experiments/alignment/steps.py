"""Resumable steps: each step's result is a JSON file written atomically, reused on a rerun with the same settings.

A run directory holds ``settings.json`` (the settings the results depend on); rerunning in it with other settings
is refused, since its finished steps would answer another question.  A step's file (``steps/<name>.json``) holds
its value and the seconds it took; it is written with :func:`tribute.atomic_files.write_json`, so a kill leaves it
whole or absent, and a file that does not parse is computed again.  Steps whose work lives in a checkpoint or a
store of their own (training, the SmoothGrad stores) resume inside it and mark their end with such a file too.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

from ...atomic_files import read_json, remove_temporaries, write_json


class Steps:
    """The steps of one run directory: :meth:`run` computes or reuses, :attr:`log` says which and how long."""

    def __init__(self, out: str | os.PathLike, settings: dict[str, Any]):
        self.out = pathlib.Path(out)
        self.dir = self.out / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(str(self.dir))
        path = self.out / "settings.json"
        if path.exists():
            try:
                stored = read_json(path)
            except (OSError, ValueError):
                stored = None
            if stored is not None and stored != _plain(settings):
                raise ValueError(f"{self.out} holds a run with other settings ({stored}; now {_plain(settings)}): "
                                 "give another output directory, or remove this one to start afresh")
        write_json(path, _plain(settings))
        self.log: dict[str, dict[str, Any]] = {}

    def path(self, name: str) -> pathlib.Path:
        return self.dir / f"{name}.json"

    def run(self, name: str, compute: Callable[[], Any]) -> Any:
        """The value of step ``name``: read from its file when finished, else ``compute()`` and written."""
        path = self.path(name)
        if path.exists():
            try:
                record = read_json(path)
                self.log[name] = {"status": "reused", "seconds": record["seconds"]}
                return record["value"]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # not a finished step's file: compute it again
        t0 = time.perf_counter()
        value = compute()
        seconds = round(time.perf_counter() - t0, 3)
        write_json(path, {"value": value, "seconds": seconds})
        self.log[name] = {"status": "computed", "seconds": seconds}
        return value


    def resume(self, name: str, work: Callable[[], Any]) -> Any:
        """Run ``work()``, a step that resumes inside its own checkpoint or store (so it always runs, a finished one
        only loading its result), and mark its end: the log says ``reused`` when it had finished before, with the
        seconds of the run that computed it."""
        path = self.path(name)
        t0 = time.perf_counter()
        result = work()
        try:
            record = read_json(path)
            self.log[name] = {"status": "reused", "seconds": record["seconds"]}
        except (OSError, ValueError, KeyError, TypeError):
            seconds = round(time.perf_counter() - t0, 3)
            write_json(path, {"value": None, "seconds": seconds})
            self.log[name] = {"status": "computed", "seconds": seconds}
        return result


def _plain(value: Any) -> Any:
    """JSON's view of ``value`` (tuples as lists), so a stored and a new settings dict compare equal."""
    return json.loads(json.dumps(value))
