"""``tribute report RUN_DIR [--out FILE]``: the command-line form of :func:`tribute.reporting.build.report`."""

from __future__ import annotations

import argparse
import sys

from ..commands.subcommand import Command
from ..viz.encode import DEFAULT_PERCENTILE
from .build import DEFAULT_MAX_SAMPLES
from .samples import SCALES


def report_options(parser: argparse.ArgumentParser) -> None:
    """The ``report`` command's arguments."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (or attribution store) to report on")
    parser.add_argument("--out", default=None, help="the HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES,
                        help="show at most this many samples, the first ones (default: %(default)s)")
    parser.add_argument("--scale", choices=SCALES, default="map",
                        help="'map': each map at its own scale; 'method': one scale per method, to compare samples "
                             "(default: %(default)s)")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                        help="a map's scale is this percentile of |attribution| (default: %(default)s)")
    parser.add_argument("--title", default=None, help="the page's title (default: the folder's name)")


def run_report(args: argparse.Namespace) -> int:
    """Write the report; a path that is not a run directory, or a bad option, is a one-line error (status 2)."""
    from ..store import StoreError
    from . import build

    try:
        path = build.report(args.run_dir, args.out, max_samples=args.max_samples, scale=args.scale,
                            percentile=args.percentile, title=args.title)
    except (StoreError, ValueError, OSError) as e:  # RunDirectoryError is a ValueError
        print(f"tribute report: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"tribute report: wrote {path}")
    return 0


REPORT = Command(
    "report", run_report, help="write the HTML report of a run directory (maps, metrics, curves, settings)",
    description="Write one self-contained HTML page (images embedded; opens offline in any browser) about "
                "RUN_DIR: each sample's image and every method's heat map with its scale, the metric table with "
                "the direction that is better, the metric curves, what each method computed (options, seeds, "
                "target, model), the run log (settings, versions, time spent), and a note for anything "
                "missing. RUN_DIR is a folder written by 'tribute explain' or 'tribute evaluate --out', or a "
                "single attribution store (tribute.store.compute_store). Needs: pip install 'tribute[report]'.",
    options=report_options)
