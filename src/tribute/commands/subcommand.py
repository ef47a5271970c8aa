"""A command of the ``tribute`` command line as data: its name, what it runs, its help texts and its options.

:func:`tribute.cli.build_parser` makes one sub-parser per :class:`Command` in one loop, so every command is
registered the same way; a command's module only declares its options.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One sub-command: ``tribute <name> [options]``.

    Attributes
    ----------
    name : str
    run : callable
        ``run(args) -> int``, the exit status.
    help : str
        One line for ``tribute --help``.
    description : str
        The paragraph of ``tribute <name> --help``.
    options : callable
        ``options(parser)`` adds the command's arguments.
    epilog : str, optional
        Text after the options (examples), printed as written.

    Every command also takes ``--quiet`` (no printing, no progress bars), added here.
    """

    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str
    options: Callable[[argparse.ArgumentParser], None]
    epilog: str | None = None

    def add_to(self, commands) -> argparse.ArgumentParser:
        """Add this command's sub-parser to ``commands`` (an ``add_subparsers`` action); the sub-parser."""
        extra = {} if self.epilog is None else {"epilog": self.epilog,
                                                 "formatter_class": argparse.RawDescriptionHelpFormatter}
        parser = commands.add_parser(self.name, help=self.help, description=self.description, **extra)
        self.options(parser)
        parser.add_argument("--quiet", action="store_true", help="print nothing and show no progress bars")
        parser.set_defaults(run=self.run)
        return parser
