"""The ``tribute`` command line: ``tribute <command> [options]``.

Each command is a :class:`~tribute.commands.subcommand.Command`: a function ``_<name>(args) -> int``, its help
texts and a function adding its options; :func:`build_parser` makes their sub-parsers in one loop.  Add new
commands the same way.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import textwrap
from collections.abc import Sequence

from . import __version__
from .commands.subcommand import Command


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``tribute <command>: error: ...``, pointing at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _names(known: Sequence[str], what: str):
    """An argparse type: ``"a,b c"`` → ``["a", "b", "c"]``, each checked against ``known``."""

    def parse(text: str) -> list[str]:
        names = [n for n in text.replace(",", " ").split() if n]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            near = difflib.get_close_matches(unknown[0], known, n=3, cutoff=0.6) if unknown else []
            hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}{hint}; choose from "
                f"{', '.join(known)}"
            )
        return names

    return parse


def _floats(text: str) -> list[float]:
    """An argparse type: ``"0.5,0.5,0.5"`` → ``[0.5, 0.5, 0.5]``."""
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, methods=args.methods, photos=args.photos, progress=not args.quiet, verbose=not args.quiet)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .commands.evaluate import run_evaluate

    return run_evaluate(args)


def _explain(args: argparse.Namespace) -> int:
    from .commands.explain import run_explain

    return run_explain(args)


def _experiment(args: argparse.Namespace) -> int:
    from .experiments.alignment import run_alignment

    try:
        record = run_alignment(args.out, scale=args.scale, data=args.data, seeds=args.seeds, ties=args.ties)
    except (ValueError, FileNotFoundError) as e:  # bad settings or a missing data set: the reason, no traceback
        print(f"tribute experiment {args.name}: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        done = sum(s["status"] == "reused" for s in record["steps"].values())
        print(f"tribute experiment {args.name}: {args.scale} scale on {record['data_used']}, "
              f"{record['seconds']:.1f} s ({done} of {len(record['steps'])} steps reused); tables and figures in "
              f"{args.out}")
    return 0


def _experiment_options(parser: argparse.ArgumentParser) -> None:
    from .experiments.alignment.scales import DATA_SETS, SCALES

    parser.add_argument("name", choices=("alignment",), help="the experiment")
    parser.add_argument("--scale", choices=tuple(SCALES), default="smoke", help="(default: %(default)s)")
    parser.add_argument("--data", choices=DATA_SETS, default="fashion-mnist", help="(default: %(default)s)")
    parser.add_argument("--out", required=True, help="output directory (a rerun in it resumes)")
    parser.add_argument("--seeds", type=int, default=None, help="ROAR seeds (default: the scale's)")
    parser.add_argument("--ties", choices=("index", "random"), default="index",
                        help="ROAR's order of pixels with equal attributions: index (raster order) or a seeded random "
                             "order per image (default: %(default)s)")


EXPERIMENT = Command(
    "experiment", _experiment, help="reproduce a paper's evidence: 'alignment' (Zeng et al. 2021's aligned explainer)",
    description="alignment: Zeng et al. 2021's Table 1 (ROAR), Fig 4 (the robust twin's saliency), Fig 5 (the "
                "sanity check), Table 2 (robust vs standard alignment) and Table 3 (latency), each table as CSV "
                "and Markdown and each figure as PNG, plus run.json; rerunning skips finished steps. The smoke "
                "scale runs in seconds (scikit-learn's digits when the Debian data set is missing); the full "
                "scale takes a few hours on 2 cores.",
    options=_experiment_options)


def _demo_options(parser: argparse.ArgumentParser) -> None:
    from .core import methods
    from .data import DEFAULT_PHOTOS, PHOTOS
    from .demo import DEMO_METHODS

    parser.add_argument("--out", default="tribute-demo", help="output directory (default: %(default)s)")
    parser.add_argument("--methods", type=_names(methods(), "method"), default=None,
                        help=f"comma-separated methods (default: {','.join(DEMO_METHODS)})")
    parser.add_argument("--photos", type=_names(list(PHOTOS), "photo"), default=None,
                        help=f"comma-separated photos from {','.join(PHOTOS)} (default: {','.join(DEFAULT_PHOTOS)})")


DEMO = Command(
    "demo", _demo, help="explain a pretrained ImageNet model on real photos (offline)",
    description="Explain EfficientNet-Lite0's top-1 class on scikit-image's photos with gradient, propagation (LRP, "
                "DeepLIFT) and CAM methods; print each method's time and completeness gap, write a figure of heat "
                "maps, the run directory and its HTML report. Needs: pip install 'tribute[demo]'.",
    options=_demo_options)


EXPLAIN_EXAMPLES = """examples:
  tribute explain photos/ --model mymodels:make --weights mymodel.pt --methods integrated_gradients,gradcam \\
      --out explain-run
  tribute explain cat.png --model demo --methods gradcam,integrated_gradients --target "tabby cat" --out cat-run
  tribute explain digits.pt --model mymodels:make --weights mymodel.pt --methods saliency --target 3 \\
      --save npy --out digits-run
(more in docs/cli.md)
"""


def _explain_options(parser: argparse.ArgumentParser) -> None:
    from .core import methods

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files (PNG, JPEG, ...), folders of images, or one .pt file (a tensor, (inputs, "
                             "labels) or {'inputs', 'labels'}) or .npy file of inputs")
    parser.add_argument("--model", default="demo",
                        help="'module:factory': a function in a module (the working directory is on the import path) "
                             "that returns the nn.Module; or 'demo': the demo's pretrained EfficientNet-Lite0 with "
                             "ImageNet class names and its own preprocessing (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="a state dict saved with torch.save to load into the model")
    parser.add_argument("--methods", type=_names(methods(), "method"), default=["integrated_gradients"],
                        help="comma-separated registered methods (tribute.methods()) (default: integrated_gradients)")
    parser.add_argument("--target", default="predicted",
                        help="the class explained: 'predicted' (each sample's top class), a class index, a class name "
                             "(e.g. \"tabby cat\"), or 'label' (the labels of a .pt file) (default: %(default)s)")
    parser.add_argument("--classes", default=None, metavar="FILE",
                        help="class names, one per line (default: the module's CLASSES; ImageNet for the demo)")
    parser.add_argument("--size", default=None,
                        help="image size the model takes: 32 or 224x224 (default: the module's INPUT_SIZE, else the "
                             "images' own)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="3: RGB, 1: grey (default: 3)")
    parser.add_argument("--mean", type=_floats, default=None,
                        help="per-channel mean of the model's normalisation, e.g. 0.485,0.456,0.406 (with --std; given "
                             "to the methods as input_transform, so attributions stay in pixel space)")
    parser.add_argument("--std", type=_floats, default=None, help="per-channel standard deviation (with --mean)")
    parser.add_argument("--set", action="append", default=None, metavar="[METHOD.]OPTION=VALUE",
                        help="a method option, for every chosen method that takes it (steps=128) or for one "
                             "(integrated_gradients.tolerance=0.01, gradcam.layer=features.7); values are JSON where "
                             "they parse, else text; repeat for several")
    parser.add_argument("--batch-size", type=int, default=None, help="most rows sent through the model at once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the methods that draw random numbers "
                                                              "(default: %(default)s)")
    parser.add_argument("--save", choices=("pt", "npy", "none"), default="none",
                        help="also write each method's attributions as attributions/<method>.pt (attributions and "
                             "targets) or .npy (default: %(default)s)")
    parser.add_argument("--out", default="tribute-explain", help="the run directory (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace stores in --out that hold another computation (default: refuse)")


EXPLAIN = Command(
    "explain", _explain,
    help="attributions of a model's classes for images or a saved tensor, as heat maps and a report",
    description=textwrap.fill(
                    "Explain a model's class scores for INPUT (image files, folders of images, or one .pt/.npy file "
                    "of inputs) with each method, and write a run directory: the inputs, one attribution store per "
                    "method (attributions/<method>/; rerunning the command resumes it), heat maps "
                    "(heatmaps/<method>/<name>.png), run.json (arguments, settings, seeds, versions, seconds) and "
                    "report.html. Images are read as pixels in [0, 1] and brought to the model's input size (scaled "
                    "to cover it, centre-cropped). A model's module may declare CLASSES (class names), INPUT_SIZE "
                    "(32 or (224, 224)) and MEAN/STD (its normalisation); options given here win.", 100),
    options=_explain_options, epilog=EXPLAIN_EXAMPLES)


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    from .core import methods
    from .metrics.evaluate import metric_names

    parser.add_argument("--model", default="digits", help="'module:factory' returning the nn.Module (the working "
                        "directory is on the import path), 'demo', or 'digits' (default)")
    parser.add_argument("--weights", default=None, help="a state dict (torch.save) to load into the model")
    parser.add_argument("--data", default=None, help="a .pt file (inputs, (inputs, labels) or {'inputs', 'labels'}), "
                        "a .npy file of inputs, or a folder of images (default with --model digits: its test digits)")
    parser.add_argument("--size", default=None, help="images from --data brought to this size: 32 or 224x224")
    parser.add_argument("--methods", type=_names(methods(), "method"), default=["gradient", "integrated_gradients"],
                        help="comma-separated methods (default: gradient,integrated_gradients)")
    parser.add_argument("--metrics", type=_names(metric_names(), "metric"), default=["aopc_morf", "aopc_lerf"],
                        help=f"comma-separated metrics from {','.join(metric_names())} (default: aopc_morf,aopc_lerf)")
    parser.add_argument("--target", choices=("predicted", "label"), default="predicted",
                        help="the class explained (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=None, help="evaluate the first N samples only")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per batch (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument("--csv", default=None, help="write the table as CSV")
    parser.add_argument("--json", default=None, help="write the table with per-sample scores as JSON")
    parser.add_argument("--out", default=None,
                        help="write a run directory for tribute report: the inputs, metrics.json and run.json")


EVALUATE = Command(
    "evaluate", _evaluate, help="score attribution methods by faithfulness metrics on a data set",
    description="Run tribute.evaluate: each method's attributions on every sample, every metric per sample, "
                "mean ± sd per method and metric, and the time and passes per sample. --model digits (the "
                "default) trains a small MLP on scikit-learn's 8x8 digits and evaluates it on the held-out digits.",
    options=_evaluate_options)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per :class:`~tribute.commands.subcommand.Command`."""
    from .reporting.command import REPORT

    parser = _Parser(prog="tribute", description="Attribution methods for PyTorch.")
    parser.add_argument("--version", action="version", version=f"tribute {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    for command in (DEMO, EXPLAIN, EVALUATE, EXPERIMENT, REPORT):
        command.add_to(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    from ._optional import MissingExtraError
    from .commands import CommandError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in a run directory's run.json
    try:
        return args.run(args)
    except (MissingExtraError, CommandError) as e:
        # a missing extra, or a mistake in the arguments or files: one line that says what to do, no traceback
        print(f"tribute {args.command}: error: {e}", file=sys.stderr)
        return 2
