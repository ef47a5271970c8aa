"""The run directory: what ``tribute explain``, ``tribute evaluate`` and the attribution store write, and what the
report (``tribute report RUN_DIR``) reads.

A run directory is either a single attribution store (:mod:`tribute.store`: ``manifest.json``, ``shards/``,
``run.json``) or a folder that gathers the pieces of one run::

    <run>/
      run.json                     the run log: one record per command run here (settings, seeds, versions, times)
      inputs.safetensors           the samples explained (``inputs``; ``labels`` when known)
      inputs.json                  their names, the class names, the kind of input (image, tokens, features)
      attributions/<method>/       one attribution store per method (the store's own layout)
      metrics.json                 an evaluation table (:meth:`tribute.metrics.evaluate.EvaluationTable.to_json`)
      heatmaps/<method>/<name>.png heat maps written by ``tribute explain``
      report.html                  the report

Every piece is optional: the report shows what it finds.  Files are written atomically (:mod:`tribute.atomic_files`)
so that a run killed at any moment leaves no half-written file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic_files import read_json, write_bytes, write_json

FORMAT = "tribute.run/1"
RUN_LOG = "run.json"  # the same name as a store's run log: both are {"runs": [record, ...]}
INPUTS, INPUTS_INFO, ATTRIBUTIONS, METRICS, HEATMAPS, REPORT = (
    "inputs.safetensors", "inputs.json", "attributions", "metrics.json", "heatmaps", "report.html")
KINDS = ("image", "tokens", "features")


class RunDirectoryError(ValueError):
    """A path that is not a run directory, or a run directory whose pieces do not fit together."""


@dataclass(frozen=True)
class RunInputs:
    """The samples a run explained.

    Attributes
    ----------
    inputs : Tensor
        (N, ...) as given to the methods (images as (N, C, H, W) in the model's input scale).
    names : list of str
        One name per sample (file names without extension for images read from files).
    labels : Tensor or None
        (N,) class indices, when known.
    classes : list of str or None
        The model's class names (index → name), when known.
    kind : str
        ``"image"``, ``"tokens"`` or ``"features"``: how the report shows a sample.
    display : Tensor or None
        (N, C, H, W) images in [0, 1] for display, when the model's inputs are normalised (else ``inputs`` is
        shown, rescaled per image).
    tokens : list of list of str, or None
        For token inputs, each sample's tokens as text (the report writes them coloured by their attribution).
    """

    inputs: torch.Tensor
    names: list[str]
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    kind: str = "image"
    display: torch.Tensor | None = None
    tokens: list[list[str]] | None = None


class RunDirectory:
    """A run directory at ``path`` (see the module's docstring); ``create=True`` makes the folder."""

    def __init__(self, path: str | os.PathLike, *, create: bool = False):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise RunDirectoryError(f"no run directory at {self.path}: the folder does not exist")

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- the samples ---------------------------------------------------------------------------------------------
    def write_inputs(self, inputs: torch.Tensor, *, names: list[str] | None = None,
                     labels: torch.Tensor | None = None, classes: list[str] | None = None, kind: str = "image",
                     display: torch.Tensor | None = None, tokens: list[list[str]] | None = None) -> None:
        """Record the samples explained (see :class:`RunInputs`); names default to ``"0"``, ``"1"``, …"""
        from safetensors.torch import save

        if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1:
            raise RunDirectoryError("inputs must be a tensor with a batch dimension")
        n = inputs.shape[0]
        names = [str(i) for i in range(n)] if names is None else [str(s) for s in names]
        if len(names) != n:
            raise RunDirectoryError(f"{len(names)} names for {n} samples")
        if kind not in KINDS:
            raise RunDirectoryError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if tokens is not None:
            tokens = [[str(t) for t in sample] for sample in tokens]
            if kind != "tokens" or len(tokens) != n or inputs.dim() < 2 or any(
                    len(t) != inputs.shape[1] for t in tokens):
                raise RunDirectoryError(f"tokens must give one text per token of each sample (kind='tokens', "
                                        f"{n} lists of {inputs.shape[1] if inputs.dim() > 1 else '?'} strings)")
        # clones: safetensors refuses tensors that share memory (display may be inputs itself)
        tensors = {"inputs": inputs.detach().cpu().clone().contiguous()}
        for key, t in (("labels", labels), ("display", display)):
            if t is not None:
                t = torch.as_tensor(t).detach().cpu().clone().contiguous()
                if t.shape[0] != n:
                    raise RunDirectoryError(f"{key} has {t.shape[0]} rows for {n} samples")
                tensors[key] = t
        write_bytes(str(self.path / INPUTS), save(tensors))
        write_json(str(self.path / INPUTS_INFO), {"format": FORMAT, "names": names, "classes": classes,
                                                   "kind": kind, "tokens": tokens})

    def inputs(self) -> RunInputs | None:
        """The samples recorded by :meth:`write_inputs`, or None when the run has none."""
        from safetensors.torch import load

        if not (self.path / INPUTS).exists():
            return None
        info = read_json(str(self.path / INPUTS_INFO))
        if info.get("format") != FORMAT:
            raise RunDirectoryError(f"{self.path / INPUTS_INFO} is not a {FORMAT} file")
        tensors = load((self.path / INPUTS).read_bytes())
        return RunInputs(tensors["inputs"], list(info["names"]), tensors.get("labels"), info.get("classes"),
                         info.get("kind", "image"), tensors.get("display"), info.get("tokens"))

    # -- attributions --------------------------------------------------------------------------------------------
    def store_path(self, method: str) -> Path:
        """Where the store of ``method``'s attributions goes (``attributions/<method>``)."""
        if not method or "/" in method or method.startswith("."):
            raise RunDirectoryError(f"not a usable method name for a folder: {method!r}")
        return self.path / ATTRIBUTIONS / method

    def is_store(self) -> bool:
        """Whether the run directory is itself a single attribution store."""
        return (self.path / "manifest.json").exists()

    def stores(self) -> dict[str, Any]:
        """Method name → finished :class:`tribute.store.Store` (this directory itself when it is a store, else every
        store under ``attributions/``, in name order)."""
        from .store import open_store

        if self.is_store():
            s = open_store(self.path)
            return {s.method: s}
        folder = self.path / ATTRIBUTIONS
        if not folder.is_dir():
            return {}
        return {d.name: open_store(d) for d in sorted(folder.iterdir()) if (d / "manifest.json").exists()}

    # -- metrics -------------------------------------------------------------------------------------------------
    def write_metrics(self, table) -> None:
        """Record an evaluation table (:class:`tribute.metrics.evaluate.EvaluationTable`)."""
        write_json(str(self.path / METRICS), table.to_dict())

    def metrics(self):
        """The evaluation table, or None when the run has none."""
        from .metrics.evaluate import EvaluationTable

        file = self.path / METRICS
        return EvaluationTable.from_json(file) if file.exists() else None

    # -- the log -------------------------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` (a command's settings, seeds, versions, seconds) to ``run.json``."""
        from .store import runlog

        runlog.append(str(self.path), record)

    def records(self) -> list[dict[str, Any]]:
        """The run log's records, oldest first (empty when there is none)."""
        try:
            log = read_json(str(self.path / RUN_LOG))
        except FileNotFoundError:
            return []
        return list(log.get("runs", [])) if isinstance(log, dict) else []

    def heatmap_path(self, method: str, name: str) -> Path:
        """Where ``tribute explain`` writes the heat map of sample ``name`` by ``method``."""
        return self.path / HEATMAPS / method / f"{name}.png"

    @property
    def report_path(self) -> Path:
        return self.path / REPORT


def open_run(path: str | os.PathLike) -> RunDirectory:
    """The run directory at ``path``; an error naming what is missing when it holds nothing a run writes."""
    run = RunDirectory(path)
    found = [p for p in (RUN_LOG, INPUTS, ATTRIBUTIONS, METRICS, "manifest.json") if (run.path / p).exists()]
    if not found:
        raise RunDirectoryError(f"{run.path} is not a run directory: it has none of {RUN_LOG}, {INPUTS}, "
                                f"{ATTRIBUTIONS}/, {METRICS} or an attribution store's manifest.json (write one "
                                "with tribute explain, tribute evaluate --out, or tribute.store.compute_store)")
    return run
