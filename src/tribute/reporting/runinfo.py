"""The settings section of the report: what each store computed (method, options and seeds, model, data, target),
the run log's records (settings, seeds, versions, time spent) and the versions seen, read from the files the run
wrote (``run.json``, each store's ``manifest.json`` and ``run.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StoreInfo:
    """One attribution store as the report lists it."""

    method: str
    options: str
    samples: int
    shape: str
    dtype: str
    target: str
    model: str
    seconds: float | None
    runs: int
    started: str


@dataclass
class RunInfo:
    stores: list[StoreInfo]
    records: list[list[tuple[str, str]]]
    versions: list[tuple[str, str]]
    seconds: float | None
    seconds_source: str
    notes: list[str] = field(default_factory=list)


def readable(value: Any) -> Any:
    """A manifest's record of an option made readable: a tensor's digest record as "tensor (3,) float64", an
    object's as its class name (the digests stay in manifest.json, which identifies the computation)."""
    if isinstance(value, dict):
        if "tensor_sha256" in value:
            shape = tuple(value.get("shape", ()))
            return f"tensor {shape} {str(value.get('dtype', '')).removeprefix('torch.')}".rstrip()
        if "object" in value and set(value) <= {"object", "state"}:
            return str(value["object"]).rsplit(".", 1)[-1]
        return {k: readable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [readable(v) for v in value]
    return value


def compact(value: Any, limit: int = 400) -> str:
    """A value as short text: strings as they are, everything else as compact JSON (cut at ``limit``), tensors and
    objects by :func:`readable`."""
    text = value if isinstance(value, str) else json.dumps(readable(value), sort_keys=True, default=str,
                                                           ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def target_text(settings: dict) -> str:
    target = settings.get("target") or {}
    kind = target.get("kind", "?")
    rest = {k: v for k, v in target.items() if k != "kind"}
    return kind + (f" {compact(rest, 80)}" if rest else "")


def store_info(store) -> StoreInfo:
    """What a store's manifest and run log say about its computation."""
    m = store.manifest
    runs = (store.run_log or {}).get("runs", [])
    seconds = [r.get("seconds") for r in runs if isinstance(r.get("seconds"), (int, float))]
    return StoreInfo(
        method=store.method, options=compact(m["method"].get("options", {})), samples=len(store),
        shape=" × ".join(map(str, store.shape)) or "scalar", dtype=str(store.dtype).removeprefix("torch."),
        target=target_text(m.get("settings", {})), model=m.get("model", {}).get("class", "?"),
        seconds=sum(seconds) if seconds else None, runs=len(runs),
        started=runs[0].get("started", "") if runs else "")


def record_rows(record: dict) -> list[tuple[str, str]]:
    """A run-log record as (key, text) pairs, nested dicts one level flattened (``settings.seed``)."""
    rows = []
    for key, value in record.items():
        if isinstance(value, dict) and value and len(value) <= 12:
            rows += [(f"{key}.{k}", compact(v)) for k, v in value.items()]
        else:
            rows.append((key, compact(value)))
    return rows


def gather_versions(records: list[dict], stores: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """Every version the records and stores name; a note when two of them disagree (a mixed run)."""
    seen: dict[str, set[str]] = {}
    sources = [r.get("versions") for r in records]
    sources += [r.get("versions") for s in stores.values() for r in (s.run_log or {}).get("runs", [])]
    sources += [s.manifest.get("versions") for s in stores.values()]
    for versions in sources:
        if isinstance(versions, dict):
            for k, v in versions.items():
                seen.setdefault(k, set()).add(str(v))
    notes = [f"{k} differs between the pieces of this run: {', '.join(sorted(v))}" for k, v in seen.items()
             if len(v) > 1]
    return [(k, ", ".join(sorted(v))) for k, v in sorted(seen.items())], notes


def run_info(run, stores: dict) -> RunInfo:
    """The settings, seeds, versions and time spent of a run directory and its stores."""
    records = run.records() if not run.is_store() else []
    versions, notes = gather_versions(records, stores)
    infos = [store_info(s) for s in stores.values()]
    # the run log's commands include the stores they wrote: their sum, else (no log) the stores' own times
    spent = [r["seconds"] for r in records if isinstance(r.get("seconds"), (int, float))]
    source = "the run log's records"
    if not spent:
        spent, source = [i.seconds for i in infos if i.seconds is not None], "the stores' run logs"
    if not records and not run.is_store():
        notes.append("no run.json: the commands that wrote this run left no log (settings and seeds of the stores "
                     "are shown from their manifests)")
    return RunInfo(infos, [record_rows(r) for r in records], versions, sum(spent) if spent else None, source, notes)
