"""Files written so that a kill at any moment leaves each of them either whole or absent.

Every file is written to a temporary file in its own folder (``.<name>.<8 hex digits>.tmp``), flushed to disk,
and moved into place with ``os.replace``, which is atomic on POSIX and Windows: a reader (or a resumed run) sees
the old file or the new one, never half of one.  A temporary left by a killed writer is removed by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from typing import Any, BinaryIO

_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; on leaving the block it is flushed to disk and moved
    into place (``os.replace``), on an error it is removed and ``path`` keeps its old content."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    sync_folder(folder)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    with atomic_writer(path) as f:
        f.write(data)


def write_json(path: str, content: Any) -> None:
    """Write ``content`` as indented JSON to ``path`` atomically."""
    write_bytes(path, (json.dumps(content, indent=1, allow_nan=False) + "\n").encode())


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remove_temporaries(folder: str) -> list[str]:
    """Remove the temporary files killed writers left in ``folder``; their names."""
    try:
        names = [n for n in os.listdir(folder) if _TEMPORARY.fullmatch(n)]
    except FileNotFoundError:
        return []
    for n in names:
        try:
            os.unlink(os.path.join(folder, n))
        except FileNotFoundError:
            pass
    return names


def sync_folder(folder: str) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
