"""``tribute evaluate``: :func:`tribute.evaluate` from the command line, with the model and data loading that
``tribute explain`` uses (:mod:`.models`, :mod:`.inputs`); ``--out`` writes a run directory (the inputs, the
evaluation table as ``metrics.json``, a ``run.json`` record) that ``tribute report`` reads."""

from __future__ import annotations

import argparse
import time

from . import CommandError
from .inputs import Samples, read_samples
from .models import LoadedModel, load_model, whole_model
from .record import command_record, now

DIGITS = "digits"


def digits_model_and_data(seed: int, quiet: bool) -> tuple[LoadedModel, Samples]:
    """A small MLP trained on scikit-learn's 8×8 digits (seconds), and the held-out test digits."""
    import torch
    from torch import nn

    from ..data.digits import load_digits
    from ..training import fit

    split = load_digits(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(model, split.train, epochs=15, lr=3e-3, optimizer="adam", seed=seed, progress=not quiet)
    x, y = split.test
    loaded = LoadedModel(model.eval(), DIGITS, [str(i) for i in range(10)], None, None, None, 1)
    return loaded, Samples(x, [str(i) for i in range(x.shape[0])], y, "image")


def load(args: argparse.Namespace) -> tuple[LoadedModel, Samples]:
    """The model and the samples ``evaluate`` scores."""
    if args.model == DIGITS:
        if args.weights is not None:
            raise CommandError("--weights does not apply to --model digits, which is trained on the spot")
        loaded, samples = digits_model_and_data(args.seed, args.quiet)
    else:
        if args.data is None:
            raise CommandError(f"--data is needed with a --model other than '{DIGITS}'")
        loaded, samples = load_model(args.model, args.weights, size=args.size), None
    if args.data is not None:
        samples = read_samples([args.data], loaded)
    if args.samples is not None:
        if args.samples < 1:
            raise CommandError(f"--samples must be at least 1, got {args.samples}")
        samples = Samples(samples.inputs[: args.samples], samples.names[: args.samples],
                          None if samples.labels is None else samples.labels[: args.samples], samples.kind)
    if args.target == "label" and samples.labels is None:
        raise CommandError("--target label needs data with labels ((inputs, labels) or {'inputs', 'labels'})")
    return loaded, samples


def run_evaluate(args: argparse.Namespace) -> int:
    """The ``evaluate`` command (its options: :func:`tribute.cli.build_parser`)."""
    from ..metrics.evaluate import evaluate

    started, clock = now(), time.perf_counter()
    loaded, samples = load(args)
    data = samples.inputs if samples.labels is None else (samples.inputs, samples.labels)
    try:
        table = evaluate(whole_model(loaded), data, args.methods, args.metrics,
                         target=None if args.target == "predicted" else "label", batch_size=args.batch_size,
                         seed=args.seed, progress=not args.quiet)
    except (ValueError, TypeError) as e:  # a method or metric refuses this model or data: its own words
        raise CommandError(str(e)) from None
    print(table)
    if args.csv:
        table.to_csv(args.csv)
    if args.json:
        table.to_json(args.json)
    if args.out:
        write_run(args, loaded, samples, table, started, time.perf_counter() - clock)
    return 0


def write_run(args: argparse.Namespace, loaded: LoadedModel, samples: Samples, table, started, seconds: float):
    """The run directory ``args.out``: the samples, ``metrics.json`` and a ``run.json`` record."""
    from ..run_directory import RunDirectory

    run = RunDirectory(args.out, create=True)
    run.write_inputs(samples.inputs, names=samples.names, labels=samples.labels, classes=loaded.classes,
                     kind=samples.kind)
    run.write_metrics(table)
    settings = {"model": loaded.spec, "weights": args.weights, "data": args.data, "samples": len(samples.names),
                "methods": list(args.methods), "metrics": list(args.metrics), "target": args.target,
                "batch_size": args.batch_size}
    run.log(command_record("evaluate", getattr(args, "argv", None), started, seconds, settings=settings,
                           seeds={"seed": args.seed}))
