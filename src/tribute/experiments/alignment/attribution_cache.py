"""The attributions ROAR asks for, kept for every seed and on disk, so that a killed run resumes its rankings.

ROAR ranks the same images with the same attributions at every seed (:func:`.methods.roar_callable`), and at the
full scale the rankings cost about as much as one seed's retrainings; a seed's step is written only when all its
retrainings are done, so without a copy on disk a run killed in the first seed would compute every ranking again.
Each batch's attributions go to ``<folder>/<key digest>.pt``, written atomically (:mod:`tribute.atomic_files`); a
file that does not load is computed again.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib

import torch

from ...atomic_files import remove_temporaries, write_bytes


class AttributionCache(dict):
    """A dict of attributions by key (method label, digest of the images, digest of the targets), mirrored in
    ``folder`` when one is given."""

    def __init__(self, folder: str | os.PathLike | None = None):
        super().__init__()
        self.folder = None if folder is None else pathlib.Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_temporaries(str(self.folder))

    def _file(self, key) -> pathlib.Path:
        return self.folder / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:40]}.pt"

    def __contains__(self, key) -> bool:
        if super().__contains__(key):
            return True
        if self.folder is None or not self._file(key).exists():
            return False
        try:
            value = torch.load(self._file(key), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (a damaged file: computed again and rewritten)
            return False
        super().__setitem__(key, value)
        return True

    def __setitem__(self, key, value: torch.Tensor) -> None:
        super().__setitem__(key, value)
        if self.folder is not None:
            buffer = io.BytesIO()
            torch.save(value.detach().cpu(), buffer)
            write_bytes(str(self._file(key)), buffer.getvalue())
