"""One shard: the attributions of a range of samples, as a safetensors file.

A shard holds three tensors, ``attributions`` (one row per sample, in the dtype the run stores: bfloat16,
float16, float32 or float64 are kept as written), ``targets`` (int64, the class each row explains) and
``indices`` (int64, the samples' positions in the data set), and in the safetensors header's metadata:
the store format, the run's identity digest (so a shard of another run is never taken for this run's), its
sample range, and ``content_sha256``, the digest of its three tensors (:func:`tribute.checkpoint.digest`).
A shard therefore checks itself before the manifest lists it; the manifest adds the SHA-256 of the whole file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import torch

from .._optional import require
from ..checkpoint import digest

FORMAT = "tribute-attribution-store"
TENSORS = ("attributions", "targets", "indices")


class CorruptShardError(ValueError):
    """A shard file that cannot be read or whose content does not match its digest."""


@dataclass(frozen=True)
class Shard:
    """The content of one shard: samples ``start``..``stop - 1`` of the data set."""

    index: int
    start: int
    stop: int
    attributions: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor


def encode(shard: Shard, run: str) -> bytes:
    """The safetensors bytes of ``shard`` for the run whose identity digest is ``run``."""
    st = require("safetensors.torch", "store", "attribution stores")
    tensors = {name: getattr(shard, name).detach().to("cpu").contiguous() for name in TENSORS}
    meta = {"format": FORMAT, "run": run, "shard": str(shard.index), "start": str(shard.start),
            "stop": str(shard.stop), "content_sha256": digest(tensors)}
    return st.save(tensors, metadata=meta)


def decode(data: bytes, name: str, *, run: str | None = None, index: int | None = None,
           span: tuple[int, int] | None = None) -> Shard:
    """The shard in ``data`` (the bytes of the file ``name``), after checking its content digest and, when given,
    that it belongs to ``run``, is shard ``index`` and covers ``span``; :class:`CorruptShardError` if not."""
    st = require("safetensors.torch", "store", "attribution stores")
    meta = _metadata(data, name)
    try:
        tensors = st.load(data)
    except Exception as e:  # safetensors' errors vary with the damage
        raise CorruptShardError(f"the shard {name} cannot be read ({type(e).__name__}: {e})") from None
    if sorted(tensors) != sorted(TENSORS) or meta.get("format") != FORMAT:
        raise CorruptShardError(f"{name} is not a shard of a tribute attribution store")
    tensors = {k: tensors[k] for k in TENSORS}
    if digest(tensors) != meta.get("content_sha256"):
        raise CorruptShardError(f"the shard {name} is damaged: its tensors do not match the digest written with them")
    try:
        found = (meta.get("run"), int(meta["shard"]), (int(meta["start"]), int(meta["stop"])))
    except (KeyError, ValueError):
        raise CorruptShardError(f"the shard {name} has an incomplete header") from None
    for want, got, what in zip((run, index, span), found, ("run", "shard number", "sample range"), strict=True):
        if want is not None and want != got:
            raise CorruptShardError(f"the shard {name} belongs to another {what} ({got}, expected {want})")
    return Shard(found[1], *found[2], **tensors)


def _metadata(data: bytes, name: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8 bytes of little-endian length, then JSON)."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        meta = header["__metadata__"]
        if not isinstance(meta, dict):
            raise TypeError("metadata is not a dict")
        return meta
    except Exception as e:
        raise CorruptShardError(f"the shard {name} has no readable header ({type(e).__name__}: {e})") from None
