"""Checkpoint files that can be trusted: written atomically, verified when read, named in every error.

The one checkpoint format of the library (:func:`tribute.training.fit` writes it, and so every trainer built
on it: adversarial training, ROAR's retraining, the label-randomisation check).  A checkpoint is a dict saved
by ``torch.save`` and read back with ``weights_only=True`` (tensors and plain data only, never arbitrary
objects) that carries a ``"digest"``: the SHA-256 of the rest of its content, every tensor's dtype, shape and
bytes and every other value, in order.  A file that is empty, truncated, not a checkpoint at all, or has one
byte changed (a flipped bit in a stored weight would otherwise resume silently) is refused with an error that
names it and says what to do.

Writing goes to a temporary file in the same folder (``.<name>.<8 hex digits>.tmp``), which is flushed to disk
and then renamed over the checkpoint, so the checkpoint is at any moment either the old one or the new one.
A temporary left behind by a writer that was killed is removed at the next save or load of that checkpoint.
One checkpoint path belongs to one run at a time.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import torch

from .atomic_files import atomic_writer

DIGEST_KEY = "digest"
_ADVICE = ("delete it (or pass resume=False) to start over, or pass the path of an earlier checkpoint to "
           "resume from there")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: unreadable, damaged, or not a checkpoint of this library."""


def save(path: str | os.PathLike, content: dict[str, Any]) -> None:
    """Write ``content`` and its digest to ``path`` atomically (temporary file, fsync, rename)."""
    if DIGEST_KEY in content:
        raise ValueError(f"the key {DIGEST_KEY!r} is the checkpoint's own")
    state = {**content, DIGEST_KEY: digest(content)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    with atomic_writer(path) as f:
        torch.save(state, f)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The content :func:`save` wrote to ``path``, after checking its digest; :class:`CheckpointError` if not."""
    remove_stale_temporaries(path)
    try:
        empty = os.path.getsize(path) == 0
        state = None if empty else torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint {os.fspath(path)}: {e.strerror or e}") from None
    except Exception as e:  # torch.load's errors vary with the damage; its advice (weights_only=False) is unsafe
        raise CheckpointError(f"the checkpoint {os.fspath(path)} cannot be read ({_reason(e)}): it is damaged or "
                              f"not a tribute checkpoint; {_ADVICE}") from None
    if empty:
        raise CheckpointError(f"the checkpoint {os.fspath(path)} is empty (0 bytes); {_ADVICE}")
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        raise CheckpointError(f"{os.fspath(path)} is not a tribute checkpoint (it has no digest: written by "
                              f"another program or an older tribute); {_ADVICE}")
    content = {k: v for k, v in state.items() if k != DIGEST_KEY}
    if digest(content) != state[DIGEST_KEY]:
        raise CheckpointError(f"the checkpoint {os.fspath(path)} is damaged: its content does not match the "
                              f"digest written with it (a byte changed on disk or in transfer); {_ADVICE}")
    return content


def digest(content: Any) -> str:
    """SHA-256 (hex) of a nest of dicts, lists and tuples of tensors and plain values, in their order."""
    h = hashlib.sha256()
    _feed(h, content)
    return h.hexdigest()


def temporaries(path: str | os.PathLike) -> list[str]:
    """The temporary files :func:`save` may have left beside ``path`` (full paths)."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\.tmp")
    try:
        return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if pattern.fullmatch(f)]
    except FileNotFoundError:
        return []


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove what a killed writer of this checkpoint left behind."""
    for tmp in temporaries(path):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _feed(h, value: Any) -> None:
    # every item is tagged and every length given, so that no two different nests feed the same bytes
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode())
        for v in value:
            _feed(h, v)
    else:  # str, int, float (repr round-trips exactly), bool, None, torch.dtype, ...
        text = repr(value)
        h.update(f"{type(value).__name__}{len(text)}:{text}".encode())


def _reason(error: Exception) -> str:
    """torch.load's error in a few words, without its advice to load unsafely."""
    if isinstance(error, EOFError):
        return "it ends too early"
    first = (str(error).splitlines() or [""])[0].split(". ")[0].strip()
    if not first or "weights_only" in first or "Weights only" in first:
        return f"{type(error).__name__}: it holds data a safe load refuses"
    return f"{type(error).__name__}: {first[:200]}"
