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
#: the safetensors names of the dtypes a shard holds
_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64"}


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
    """The safetensors bytes of ``shard`` for the run whose identity digest is ``run``.

    The file is laid out here rather than by ``safetensors.torch.save``, whose header lists the metadata in an
    order that changes from call to call: the same shard must be the same bytes (its SHA-256 is in the manifest,
    and two processes must write the store one process writes).  The layout is the safetensors format (an 8-byte
    little-endian header length, the JSON header padded with spaces to a multiple of 8, the tensors' bytes), here
    with sorted keys and the tensors in a fixed order, and the library reads it back."""
    tensors = {name: getattr(shard, name).detach().to("cpu").contiguous() for name in TENSORS}
    meta = {"format": FORMAT, "run": run, "shard": str(shard.index), "start": str(shard.start),
            "stop": str(shard.stop), "content_sha256": digest(tensors)}
    header: dict = {"__metadata__": meta}
    offset, blobs = 0, []
    for name in ("indices", "targets", "attributions"):  # the 8-byte integers first: every offset stays aligned
        t = tensors[name]
        if t.dtype not in _CODES:
            raise TypeError(f"a store holds {', '.join(map(str, _CODES))}; the {name} are {t.dtype}")
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *blobs])


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
