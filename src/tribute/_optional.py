"""Imports of optional dependencies that say which extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency of tribute is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the pip extra that provides it.

    Parameters
    ----------
    module : str
        The module to import, e.g. ``"skimage.data"``.
    extra : str
        The extra of tribute that installs it (``"demo"``, ``"viz"``).
    purpose : str
        What needs it, as the plural subject of the message (e.g. ``"the demo photos"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{purpose} need the optional module {module!r}, which is not installed "
            f"({e}); install it with: pip install 'tribute[{extra}]'"
        ) from e
