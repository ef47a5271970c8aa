"""The record a command adds to its run directory's log (``run.json``, :meth:`tribute.run_directory.RunDirectory.log`):
the command and its arguments, the settings, the seeds, the versions and the time spent, in total and per method."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from ..store.runlog import environment, process, versions


def command_record(command: str, argv: list[str] | None, started: datetime, seconds: float, *,
                   settings: dict[str, Any], seeds: dict[str, Any], methods: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """One ``run.json`` record of ``tribute <command>``: ``argv`` (default: this process's arguments), when it
    started, ``seconds`` in total, ``settings``, ``seeds``, per method what it took (``methods``), the process and
    the versions."""
    return {
        "command": command,
        "argv": ["tribute", *(sys.argv[1:] if argv is None else argv)],
        "started": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "settings": settings,
        "seeds": seeds,
        "methods": methods or {},
        "process": process(),
        "versions": {**versions(), **environment()},
    }


def now() -> datetime:
    return datetime.now(timezone.utc)
