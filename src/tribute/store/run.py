"""The run loop: compute a store shard by shard, keep what an earlier run finished, write the manifest last."""

from __future__ import annotations

import os
import time
import warnings
from datetime import datetime, timezone
from typing import Any

import torch

from ..atomic_files import remove_temporaries, sha256, write_bytes, write_json
from . import manifest as mf
from . import runlog
from .distributed import Group
from .identity import json_sha256
from .job import Job
from .reader import Store
from .shards import CorruptShardError, Shard, decode, encode


def compute_store(path: str | os.PathLike, model, data, method, target=None, *, chunk_size: int = 256,
                  batch_size: int | None = None, dtype: torch.dtype | None = None, overwrite: bool = False,
                  progress: bool | str = False, distributed: bool | None = None, seed: int | None = None,
                  **options: Any) -> Store:
    """Compute ``method``'s attributions of every sample of ``data`` into the store directory ``path``; the store.

    The samples are cut into shards of ``chunk_size``; each shard is one safetensors file with the attributions,
    the classes they explain and the samples' indices, and ``manifest.json`` records the computation and every
    shard's SHA-256 (layout: :mod:`tribute.store`).  Rerunning the same call on the same directory resumes it:
    finished shards whose digests check are kept, missing or damaged ones are computed.  Under
    ``torch.distributed`` each process computes the shards i with i mod world size = its rank, and the store is the
    one a single process writes.

    Parameters
    ----------
    path : str or PathLike
        The store directory: new, empty, or a store of the same computation (to resume it).
    model : nn.Module or None
        The model (None when ``method`` is a :class:`tribute.Method` instance: its model).
    data : Tensor, (Tensor, Tensor) or a data set
        The samples (see :mod:`tribute.store.data`): a tensor, ``(inputs, labels)``, or a Dataset / list whose
        items are a sample or a ``(sample, label)`` pair.
    method : str, Method class or Method instance
        The attribution method: a registered name or class with ``**options``, or an instance (its options).
    target : None, int, 1-D tensor or "label"
        The class explained: None is the predicted class (one extra forward pass per shard, then stored), an int
        the same class for all, a tensor one class per sample, "label" the data set's labels.
    chunk_size : int
        Samples per shard.
    batch_size : int, optional
        Passed to the method: the most rows it sends through the model at once.
    dtype : torch.dtype, optional
        The dtype the attributions are stored in (bfloat16, float16, float32, float64); default as computed.
    overwrite : bool
        Replace a store of another computation at ``path`` instead of refusing it.
    progress : bool or str
        A progress bar over this process's shards (a string labels it).
    distributed : bool, optional
        Spread the shards over the torch.distributed process group; default: when one is initialised with more
        than one process.
    seed : int, optional
        The seed of a method that takes one (per-sample streams: a sample's draws do not depend on its shard or
        process).  A store is reproducible, so such a method always gets one: its own option, else this, else 0;
        recorded in the manifest.  Refused for a method that draws no random numbers.
    **options
        The method's options (with a method name or class).

    Raises
    ------
    StoreMismatchError
        ``path`` holds a store of another method, options, model, data, settings or version (the error names
        every difference): write to a new directory or pass ``overwrite=True``.
    """
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    group = Group(distributed)
    made: dict[str, Any] = {}

    def make() -> str:  # on every rank, so that bad arguments on one rank stop all of them
        made["job"] = Job(model, data, method, target, chunk_size=chunk_size, batch_size=batch_size, dtype=dtype,
                          seed=seed, options=options)
        made["identity"] = made["job"].identity()
        return json_sha256(made["identity"])

    if len(set(group.on_each(make))) > 1:
        raise mf.StoreError("the processes of the run disagree on the computation (their models, data or options "
                            "differ): every rank must pass the same arguments")
    job, identity, path = made["job"], made["identity"], os.fspath(path)
    manifest = group.on_rank0(lambda: _prepare(path, identity, overwrite, job))
    results = group.on_each(lambda: _work(path, job, manifest, group, progress))
    group.on_rank0(lambda: _finish(path, manifest, results, started, time.perf_counter() - clock, group.world))
    return Store(path)


def _prepare(path: str, identity: dict[str, Any], overwrite: bool, job: Job) -> dict[str, Any]:
    """The manifest to work to: the stored one when it is the same computation, else a new one written now."""
    os.makedirs(path, exist_ok=True)
    shards = os.path.join(path, mf.SHARDS)
    remove_temporaries(path)
    remove_temporaries(shards)
    if os.path.exists(os.path.join(path, mf.MANIFEST)) and not overwrite:
        old = mf.load(path)
        mf.check_same_run(old, identity, runlog.versions(), path)
        os.makedirs(shards, exist_ok=True)
        return old
    entries = set(os.listdir(path)) - ({mf.SHARDS} if _empty(shards) else set())
    foreign = entries - {mf.MANIFEST, mf.SHARDS, runlog.RUN_LOG}
    if foreign:
        raise mf.StoreError(f"{path} holds files that are not a store's ({', '.join(sorted(foreign)[:5])}): give a "
                            "new or empty directory")
    if entries and not overwrite:
        raise mf.StoreError(f"{path} holds the remains of a store without its manifest: pass overwrite=True to "
                            "replace them, or give a new directory")
    _clear(path)
    manifest = mf.new_manifest(identity, runlog.versions(), job.samples.count, job.chunk_size)
    write_json(os.path.join(path, mf.MANIFEST), manifest)
    os.makedirs(shards, exist_ok=True)
    return manifest


def _empty(folder: str) -> bool:
    return not os.path.isdir(folder) or not os.listdir(folder)


def _clear(path: str) -> None:
    """Remove a store's own files from ``path`` (its manifest, run log and shards), nothing else."""
    for name in (mf.MANIFEST, runlog.RUN_LOG):
        if os.path.exists(os.path.join(path, name)):
            os.unlink(os.path.join(path, name))
    shards = os.path.join(path, mf.SHARDS)
    if os.path.isdir(shards):
        for name in os.listdir(shards):
            if name.endswith(".safetensors"):
                os.unlink(os.path.join(shards, name))


def _work(path: str, job: Job, manifest: dict[str, Any], group: Group, progress) -> dict[str, Any]:
    """This rank's shards: kept when finished and intact, computed otherwise; one record per shard."""
    mine = [(i, e) for i, e in enumerate(manifest["shards"]) if group.owns(i)]
    if progress and mine:
        from tqdm.auto import tqdm

        label = progress if isinstance(progress, str) else "shards"
        mine = tqdm(mine, desc=label if group.world == 1 else f"{label} (rank {group.rank})", unit="shard")
    records = [_shard(path, job, manifest, i, entry) for i, entry in mine]
    return {"rank": group.rank, **runlog.process(), "shards": records}


def _shard(path: str, job: Job, manifest: dict[str, Any], i: int, entry: dict[str, Any]) -> dict[str, Any]:
    clock = time.perf_counter()
    run, span = manifest["identity_sha256"], (entry["start"], entry["stop"])
    status, reason, shard = "kept", None, None
    file = os.path.join(path, entry["file"])
    try:
        with open(file, "rb") as f:
            data = f.read()
        if entry["sha256"] is None or sha256(data) != entry["sha256"]:
            shard = decode(data, entry["file"], run=run, index=i, span=span)
    except FileNotFoundError:
        status = "computed"
    except CorruptShardError as e:
        status, reason = "recomputed", str(e)
        warnings.warn(f"{e}; computing it again", stacklevel=4)
    if status != "kept":
        a, targets = job.compute(*span)
        shard = Shard(i, *span, a, targets, torch.arange(*span, dtype=torch.long))
        data = encode(shard, run)
        write_bytes(file, data)
    about = ({"shape": list(shard.attributions.shape[1:]), "dtype": str(shard.attributions.dtype)}
             if shard is not None else manifest["attributions"])
    return {"shard": i, "status": status, "reason": reason, "seconds": round(time.perf_counter() - clock, 4),
            "sha256": sha256(data), "attributions": about}


def _finish(path: str, manifest: dict[str, Any], results: list[dict[str, Any]], started: datetime,
            seconds: float, world: int) -> None:
    """Record every shard's digest, write the run log, then the manifest (last), marked complete."""
    records = sorted((dict(r, rank=res["rank"]) for res in results for r in res["shards"]), key=lambda r: r["shard"])
    unseen = [(r["rank"], e["file"]) for e, r in zip(manifest["shards"], records, strict=True)
              if not os.path.exists(os.path.join(path, e["file"]))]
    if unseen:
        raise mf.StoreError(f"rank 0 does not see the shards other ranks wrote (rank {unseen[0][0]}: "
                            f"{unseen[0][1]}): the store directory must be one directory shared by every process")
    kinds = {json_sha256(r["attributions"]) for r in records}
    if len(kinds) != 1:
        raise mf.StoreError(f"the shards of {path} disagree on the attributions' shape or dtype: "
                            f"{sorted({str(r['attributions']) for r in records})}")
    manifest = {**manifest, "complete": True, "attributions": records[0]["attributions"]}
    manifest["shards"] = [dict(e, sha256=r["sha256"]) for e, r in zip(manifest["shards"], records, strict=True)]
    runlog.append(path, {
        "started": started.isoformat(timespec="seconds"), "seconds": round(seconds, 3), "world_size": world,
        "processes": [{k: v for k, v in res.items() if k != "shards"} for res in results],
        "method": manifest["method"], "settings": manifest["settings"],
        "versions": {**manifest["versions"], **runlog.environment()},
        "shards": [{k: r[k] for k in ("shard", "status", "reason", "seconds", "rank")} for r in records],
    })
    write_json(os.path.join(path, mf.MANIFEST), manifest)
