"""``--set``: method options on the command line, ``OPTION=VALUE`` for every chosen method that takes the option, or
``METHOD.OPTION=VALUE`` for one method.

Values are read as JSON where they parse (``128``, ``0.01``, ``true``, ``[4, 4]``, ``"text"``), as text otherwise
(``layer=features.7``).  Options that need a tensor (expected gradients' ``references``) cannot be given this way:
use the Python API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from . import CommandError

#: options the command sets itself, from its own flags
OWN_FLAGS = {"seed": "--seed", "batch_size": "--batch-size", "progress": "--quiet", "input_transform": "--mean/--std"}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def method_settings(items: Sequence[str] | None, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Method → options from ``--set`` items; an item naming an option no chosen method takes, a method not chosen,
    or an option the command sets from its own flags is refused, naming the way on."""
    from ..core import get_method

    chosen = {m: set(get_method(m).schema()) for m in methods}
    settings: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--set {item!r}: expected OPTION=VALUE or METHOD.OPTION=VALUE")
        method, dot, option = key.rpartition(".")
        if option in OWN_FLAGS:
            raise CommandError(f"--set {item!r}: give {option} with {OWN_FLAGS[option]}")
        if dot and method not in chosen:
            raise CommandError(f"--set {item!r}: {method!r} is not among --methods ({', '.join(methods)})")
        targets = [method] if dot else [m for m, names in chosen.items() if option in names]
        takes = [m for m in targets if option in chosen[m]]
        if not takes:
            options = "; ".join(f"{m}: {', '.join(sorted(n - set(OWN_FLAGS))) or 'none'}" for m, n in chosen.items()
                                if m in targets or not dot)
            raise CommandError(f"--set {item!r}: no chosen method takes {option!r} (their options: {options})")
        for m in takes:
            settings[m][option] = _value(text)
    return settings
