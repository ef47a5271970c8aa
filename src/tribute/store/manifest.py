"""The manifest (``manifest.json``): what a run computes, and its shards with their digests.

It holds the store's format and format version, the versions of tribute and torch that wrote it, the run's
identity (the method's name and options, the model, the data set, the settings: chunk size, batch size, stored
dtype, target), the attributions' per-sample shape and dtype, and one entry per shard: file name, sample range
and the SHA-256 of the file (``null`` until the shard is finished).  ``complete`` turns true when every shard
is written; the manifest is then the last file written.  A resumed run must have the same identity and
versions; a reader refuses a format version it does not know.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..atomic_files import read_json
from .identity import json_sha256
from .shards import FORMAT

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
_WAY_OUT = "write to a new directory, or pass overwrite=True to replace this store"


class StoreError(ValueError):
    """A store directory that cannot be read or resumed as asked."""


class StoreMismatchError(StoreError):
    """A store directory written for another computation than the one asked for."""


def shard_file(index: int) -> str:
    """The file of shard ``index``, relative to the store directory."""
    return f"{SHARDS}/shard-{index:05d}.safetensors"


def new_manifest(identity: dict[str, Any], versions: dict[str, str], count: int, chunk_size: int) -> dict[str, Any]:
    """The manifest of a run that has not finished a shard yet."""
    shards = [{"file": shard_file(i), "start": start, "stop": min(start + chunk_size, count), "sha256": None}
              for i, start in enumerate(range(0, count, chunk_size))]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False, "versions": versions,
            **identity, "identity_sha256": json_sha256(identity), "attributions": None, "shards": shards}


def load(path: str) -> dict[str, Any]:
    """The manifest of the store at ``path`` (a directory), checked to be one this tribute can read."""
    file = os.path.join(path, MANIFEST)
    try:
        manifest = read_json(file)
    except FileNotFoundError:
        raise StoreError(f"{path} is not an attribution store: it has no {MANIFEST}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"the manifest {file} cannot be read ({e}); {_WAY_OUT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{file} is not the manifest of a tribute attribution store; {_WAY_OUT}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreMismatchError(
            f"the store at {path} has format version {version!r}, and this tribute reads and writes version "
            f"{FORMAT_VERSION}: read it with the tribute that wrote it ({manifest.get('versions', {}).get('tribute')}),"
            f" or recompute it: {_WAY_OUT}")
    return manifest


def check_same_run(old: dict[str, Any], identity: dict[str, Any], versions: dict[str, str], path: str) -> None:
    """Refuse to resume the store ``old`` (at ``path``) for another ``identity`` or other versions, naming what
    differs."""
    diffs = []
    for field in sorted(set(identity) | {"versions"}):
        want = versions if field == "versions" else identity[field]
        diffs += _differences(field, old.get(field), want)
    if diffs:
        raise StoreMismatchError(f"the store at {path} was written for another computation: "
                                 + "; ".join(diffs[:12]) + f". Nothing was changed: {_WAY_OUT}")


def _differences(field: str, stored: Any, asked: Any) -> list[str]:
    if stored == asked:
        return []
    if isinstance(stored, dict) and isinstance(asked, dict):
        return [d for k in sorted(set(stored) | set(asked), key=str)
                for d in _differences(f"{field}.{k}", stored.get(k, "(absent)"), asked.get(k, "(absent)"))]
    return [f"{field} is {_short(stored)} in the store but {_short(asked)} here"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
