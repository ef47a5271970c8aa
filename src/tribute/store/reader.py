"""Reading a store: its samples' attributions by index or range, shard by shard, every file checked on read."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import Any

import torch

from ..atomic_files import read_json, sha256
from . import manifest as mf
from .runlog import RUN_LOG
from .shards import CorruptShardError, Shard, decode


class Store:
    """A finished attribution store (see :mod:`tribute.store`), read lazily.

    ``len(store)`` is the number of samples; ``store[i]`` is sample i's attribution, ``store[a:b]`` those of a
    range; :meth:`attributions` and :meth:`targets` give all or a range; :meth:`shards` iterates over the shards.
    Every shard read is checked against the SHA-256 the manifest records for its file: a damaged shard is a
    :class:`CorruptShardError` naming its file.  The attributions keep the dtype they were stored in.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.manifest = mf.load(self.path)
        shards = self.manifest["shards"]
        if not self.manifest.get("complete"):
            missing = sum(e["sha256"] is None for e in shards)
            raise mf.StoreError(f"the store at {self.path} is not finished ({missing} of {len(shards)} shards "
                                "missing: its run was interrupted); run compute_store again with the same arguments "
                                "to finish it")
        self._starts = [e["start"] for e in shards]
        self._cached: Shard | None = None

    def __len__(self) -> int:
        return self.manifest["data"]["count"]

    def __repr__(self) -> str:
        return (f"Store({self.path!r}: {self.method} on {len(self)} samples, {self.dtype} {tuple(self.shape)}, "
                f"{self.shard_count} shards)")

    @property
    def method(self) -> str:
        return self.manifest["method"]["name"]

    @property
    def shape(self) -> torch.Size:
        """One sample's attribution shape."""
        return torch.Size(self.manifest["attributions"]["shape"])

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["attributions"]["dtype"].removeprefix("torch."))

    @property
    def shard_count(self) -> int:
        return len(self._starts)

    @property
    def run_log(self) -> dict[str, Any] | None:
        """The run log (``run.json``), or None if it is absent."""
        try:
            return read_json(os.path.join(self.path, RUN_LOG))
        except FileNotFoundError:
            return None

    def shard(self, index: int) -> Shard:
        """Shard ``index``, after checking its file against the manifest."""
        if not 0 <= index < self.shard_count:
            raise IndexError(f"shard {index} out of range: the store has {self.shard_count} shards")
        if self._cached is not None and self._cached.index == index:
            return self._cached
        entry = self.manifest["shards"][index]
        file = os.path.join(self.path, entry["file"])
        try:
            with open(file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CorruptShardError(f"the shard {file} is missing; run compute_store again with the same arguments "
                                    "to compute it") from None
        if sha256(data) != entry["sha256"]:
            raise CorruptShardError(f"the shard {file} is damaged: its SHA-256 does not match the manifest's; run "
                                    "compute_store again with the same arguments to compute it again")
        self._cached = decode(data, file, run=self.manifest["identity_sha256"], index=index,
                              span=(entry["start"], entry["stop"]))
        return self._cached

    def shards(self) -> Iterator[Shard]:
        """Every shard, in order."""
        for i in range(self.shard_count):
            yield self.shard(i)

    def verify(self) -> None:
        """Read and check every shard (a :class:`CorruptShardError` names the first damaged one)."""
        for _ in self.shards():
            pass

    def attributions(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The attributions of samples ``start``..``stop - 1`` (default: all)."""
        return self._gather("attributions", start, stop)

    def targets(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The classes explained for samples ``start``..``stop - 1`` (default: all), int64."""
        return self._gather("targets", start, stop)

    def __getitem__(self, key: int | slice) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self.attributions(start, max(start, stop))[::step] if step > 0 else self.attributions()[key]
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(f"a store is indexed by an int or a slice, got {type(key).__name__}")
        i = key + len(self) if key < 0 else key
        if not 0 <= i < len(self):
            raise IndexError(f"sample {key} out of range for a store of {len(self)} samples")
        shard = self.shard(bisect.bisect_right(self._starts, i) - 1)
        return shard.attributions[i - shard.start]

    def _gather(self, name: str, start: int, stop: int | None) -> torch.Tensor:
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"range {start}..{stop} out of bounds for a store of {len(self)} samples")
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        parts = []
        for i in range(first, self.shard_count):
            if self._starts[i] >= stop and parts:
                break
            s = self.shard(i)
            parts.append(getattr(s, name)[max(start, s.start) - s.start:max(0, min(stop, s.stop) - s.start)])
        return torch.cat(parts)


def open_store(path: str | os.PathLike) -> Store:
    """The finished store at ``path`` (see :class:`Store`)."""
    return Store(path)
