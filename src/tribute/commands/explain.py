"""``tribute explain``: attributions of a model's class scores for images or a saved tensor, written to a run
directory (:mod:`tribute.run_directory`): the inputs with their names, one attribution store per method
(:func:`tribute.store.compute_store`; rerunning the same command resumes it), PNG heat maps, optionally the
attributions as one ``.pt``/``.npy`` file per method, a ``run.json`` record, and the HTML report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import CommandError
from .heatmaps import write_heatmaps
from .inputs import Samples, read_samples
from .method_settings import method_settings
from .models import LoadedModel, load_model
from .record import command_record, now
from .targets import output_classes, resolve_target

#: samples per shard of a store: a rerun of an interrupted command redoes at most this many
CHUNK_SIZE = 256


def run_explain(args: argparse.Namespace) -> int:
    """The ``explain`` command (its options: :func:`tribute.cli.build_parser`)."""
    from ..run_directory import RunDirectory

    started, clock = now(), time.perf_counter()
    loaded = load_model(args.model, args.weights, size=args.size, mean=args.mean, std=args.std,
                        classes_file=args.classes)
    samples = read_samples(args.inputs, loaded, args.channels)
    target = _target(args.target, loaded, samples)
    settings = method_settings(getattr(args, "set", None), args.methods)
    run = RunDirectory(args.out, create=True)
    run.write_inputs(samples.inputs, names=samples.names, labels=samples.labels, classes=loaded.classes,
                     kind=samples.kind)
    say = _printer(args.quiet)
    say(f"explaining {len(samples.names)} sample(s) of shape {tuple(samples.inputs.shape[1:])} with "
        f"{', '.join(args.methods)}; target: {args.target}")
    stores, seconds = {}, {}
    for method in args.methods:
        t0 = time.perf_counter()
        stores[method] = compute(run, loaded, samples, method, target, args, settings[method])
        seconds[method] = round(time.perf_counter() - t0, 3)
        say(f"  {method:<26s}{seconds[method]:8.2f} s")
    maps = write_heatmaps(run, stores, samples, progress=not args.quiet)
    saved = save_attributions(run.path, stores, args.save)
    run.log(command_record("explain", getattr(args, "argv", None), started, time.perf_counter() - clock,
                           settings=_settings(args, loaded, samples), seeds={"seed": args.seed},
                           methods={m: {"seconds": s, "options": settings[m], **maps.get(m, {})}
                                    for m, s in seconds.items()}))
    report = write_report(run.path)
    say(f"wrote {run.path}: {len(stores)} attribution store(s), {len(maps) * len(samples.names)} heat map(s)"
        f"{f', {len(saved)} file(s) of attributions' if saved else ''}{f', {report}' if report else ''} "
        f"in {time.perf_counter() - clock:.1f} s")
    return 0


def _printer(quiet: bool):
    return (lambda _msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _target(text: str, loaded: LoadedModel, samples: Samples) -> Any:
    """The target given to the stores: None (predicted), ``"label"`` (the file's labels) or a class index."""
    count = output_classes(loaded.model, samples.inputs, loaded.transform)
    if loaded.classes is not None and len(loaded.classes) != count:
        raise CommandError(f"the model gives {count} scores but {len(loaded.classes)} class names are known; give "
                           "--classes FILE with one name per class")
    if text.strip().lower() == "label":
        if samples.labels is None:
            raise CommandError("--target label needs inputs with labels (a .pt file with (inputs, labels) or "
                               "{'inputs', 'labels'})")
        return "label"
    return resolve_target(text, loaded.classes, count)


def compute(run, loaded: LoadedModel, samples: Samples, method: str, target, args: argparse.Namespace,
            settings: dict[str, Any] | None = None):
    """``method``'s store in the run directory (computed, or resumed when an earlier run left it unfinished), with the
    options ``settings`` (from ``--set``)."""
    from ..core import get_method
    from ..store import StoreError, compute_store

    takes_seed = "seed" in get_method(method).schema()
    options = dict(settings or {})
    if loaded.transform is not None:
        options["input_transform"] = loaded.transform
    one_shard = samples.inputs.shape[0] <= CHUNK_SIZE
    if not args.quiet and one_shard:  # a bar over the method's batches (a bar over one shard would not move)
        options["progress"] = method
    data = samples.inputs if samples.labels is None else (samples.inputs, samples.labels)
    try:
        explainer = get_method(method)(loaded.model, **options)  # progress is not part of the store's identity
        return compute_store(run.store_path(method), loaded.model, data, explainer, target, chunk_size=CHUNK_SIZE,
                             batch_size=args.batch_size, progress=False if args.quiet or one_shard else method,
                             seed=args.seed if takes_seed else None, overwrite=args.overwrite)
    except StoreError as e:
        raise CommandError(f"{e} (give another --out, or --overwrite to replace it)") from None
    except (ValueError, TypeError) as e:  # the method refuses this model or these inputs: its own words
        raise CommandError(f"{method}: {e}") from None


def save_attributions(folder: Path, stores: dict, kind: str) -> list[Path]:
    """Each method's attributions as ``attributions/<method>.pt`` (a dict: ``attributions``, ``targets``) or
    ``.npy`` (the attributions' array), next to its store; nothing for ``none``."""
    import numpy as np

    from ..atomic_files import atomic_writer

    if kind == "none":
        return []
    written = []
    for method, store in stores.items():
        path = folder / "attributions" / f"{method}.{kind}"
        a = store.attributions()
        with atomic_writer(str(path)) as f:
            if kind == "pt":
                torch.save({"attributions": a, "targets": store.targets()}, f)
            else:
                np.save(f, a.float().numpy() if a.dtype == torch.bfloat16 else a.numpy())
        written.append(path)
    return written


def write_report(folder: Path) -> Path:
    """``report.html`` of the run directory (:func:`tribute.report`)."""
    from ..reporting import report

    return Path(report(folder))


def _settings(args: argparse.Namespace, loaded: LoadedModel, samples: Samples) -> dict[str, Any]:
    return {"inputs": list(args.inputs), "samples": len(samples.names), "shape": list(samples.inputs.shape[1:]),
            "model": loaded.spec, "weights": args.weights, "methods": list(args.methods), "target": args.target,
            "size": list(loaded.size) if loaded.size else None, "channels": args.channels,
            "mean": args.mean, "std": args.std, "batch_size": args.batch_size, "save": args.save}
