"""Steps 1–2 of the aligned explainer's pipeline in one resumable call: the robust twin and its SmoothGrad store.

:func:`robust_twin_targets` runs :func:`tribute.explainers.twin.train_robust_twin` with its checkpoint in
``<out_dir>/twin.pt``, then :func:`tribute.explainers.twin_store.twin_attributions` into the store
``<out_dir>/twin_smoothgrad``.  Killed at any moment and run again with the same arguments, it continues where it
stopped: the training from its last finished epoch (a finished training is loaded, not repeated), the store from
its last finished shard; the results equal those of an uninterrupted run.  Each step is usable alone.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, NamedTuple

from torch import nn

from ..store import Store
from ..training import History
from .twin import TwinPreset, train_robust_twin
from .twin_store import TWIN_SMOOTHGRAD, twin_attributions

TWIN_CHECKPOINT = "twin.pt"
TWIN_STORE = "twin_smoothgrad"


class TwinTargets(NamedTuple):
    """The outcome of steps 1–2: the trained twin, its training history and the store of its SmoothGrad maps."""

    twin: nn.Module
    history: History
    store: Store


def robust_twin_targets(model: nn.Module, train_data, out_dir: str | os.PathLike, *, epochs: int,
                        preset: str | TwinPreset = "gray28", seed: int = 0,
                        samples: int = TWIN_SMOOTHGRAD["samples"], noise_level: float = TWIN_SMOOTHGRAD["noise_level"],
                        chunk_size: int = 256, batch_size: int | None = None, progress: bool = False,
                        **overrides: Any) -> TwinTargets:
    """Train ``model`` into the robust twin on ``train_data`` and store its SmoothGrad maps of the labels.

    Parameters
    ----------
    model : nn.Module
        A freshly initialised model of the classifier's architecture (trained in place into the twin; on a rerun
        its weights are replaced by the checkpoint's).
    train_data : (images, labels)
        The classifier's training set, images in [0, 1].
    out_dir : path
        Holds ``twin.pt`` (the training checkpoint) and ``twin_smoothgrad/`` (the store).
    epochs, preset, seed, **overrides
        Of the twin's training (:func:`~tribute.explainers.twin.train_robust_twin`); ``seed`` seeds the
        SmoothGrad noise too.
    samples, noise_level, chunk_size, batch_size
        Of the store (:func:`~tribute.explainers.twin_store.twin_attributions`).
    progress : bool
        Progress bars of both steps.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = train_robust_twin(model, train_data, epochs=epochs, preset=preset, seed=seed,
                                checkpoint=out / TWIN_CHECKPOINT, progress=progress, **overrides)
    store = twin_attributions(model, train_data, out / TWIN_STORE, samples=samples, noise_level=noise_level,
                              seed=seed, chunk_size=chunk_size, batch_size=batch_size,
                              progress="twin SmoothGrad" if progress else False)
    return TwinTargets(model, history, store)
