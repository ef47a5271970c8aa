"""Attribution methods, one file per family.

Importing this package imports every module in it, so a method is added by adding its file: a
:class:`tribute.Method` subclass registered with ``@register("name")`` is then listed by :func:`tribute.methods`,
exported here and from ``tribute`` under its class name (with whatever a module lists in its ``__all__``), and
checked by the contract tests that run every registered method (shapes, dtypes, targets, options, threads).  No
list to update elsewhere.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from ..core.method import Method
from ..core.registry import get_method, methods


def _public_names() -> dict[str, object]:
    """Every registered method class defined in a module of this package, and what a module lists in its own
    ``__all__`` (helpers such as :func:`LayerAttribution`), by name."""
    found: dict[str, object] = {}
    # walk_packages imports each subpackage before listing it, so its modules (perturbation/...) are found too
    for info in sorted(pkgutil.walk_packages(__path__, prefix=f"{__name__}."), key=lambda i: i.name):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Method) and obj.__module__ == module.__name__
                    and obj.name and obj.name in methods() and get_method(obj.name) is obj):
                found[name] = obj
        found.update({name: getattr(module, name) for name in getattr(module, "__all__", ())})
    return found


_PUBLIC = _public_names()
globals().update(_PUBLIC)
__all__ = sorted(_PUBLIC)
