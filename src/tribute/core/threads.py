"""Hooks in a process shared by threads: a module hook sees every thread's calls of its module."""

from __future__ import annotations

import threading
from collections.abc import Callable


def this_thread(hook: Callable) -> Callable:
    """``hook`` acting only on the calls of the thread that made it (returning None for the others).

    Module hooks are process-wide: while one thread captures a layer, another thread may run the same model
    (the same explainer used from two threads), and its calls of the module are not this pass's."""
    owner = threading.get_ident()
    return lambda *args: hook(*args) if threading.get_ident() == owner else None
