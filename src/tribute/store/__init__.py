"""Attribution stores: a method's attributions for a whole data set, on disk, in resumable shards.

>>> store = tribute.store.compute_store("runs/sg", model, (images, labels), "smoothgrad",
...                                     samples=50, seed=0, chunk_size=256)          # doctest: +SKIP
>>> store = tribute.store.open_store("runs/sg"); store[0], store.attributions(0, 100)  # doctest: +SKIP

The run directory (the format ``tribute explain``, ``evaluate`` and the report share)::

    <run>/
      manifest.json                  what was computed and every shard's SHA-256 (written last)
      run.json                       the run log: one record per run (settings, seeds, versions, times)
      shards/shard-00000.safetensors samples 0 .. chunk_size - 1
      shards/shard-00001.safetensors the next chunk_size samples, ...

- ``manifest.json`` (:mod:`tribute.store.manifest`): the format and its version, the versions of tribute and
  torch, the method's name and options (tensors and modules as digests: :mod:`tribute.store.identity`), the model
  (its class and the SHA-256 of its state dict), the data set (count, sample shape, dtype, labels or not, the
  SHA-256 of all its samples: :mod:`tribute.store.data`), the settings (chunk size, batch size, stored dtype,
  target), the attributions' per-sample shape and dtype, and per shard its file, sample range and SHA-256.
- each shard (:mod:`tribute.store.shards`) is a safetensors file with ``attributions``, ``targets`` (the class
  each sample explains; with ``target=None`` the predicted class) and ``indices`` (the samples' positions), and
  its run's identity, range and content digest in its header, so it checks itself before the manifest lists it.
- ``run.json`` (:mod:`tribute.store.runlog`): per run, when and how long, the processes and threads, method,
  options and seeds, versions and platform, and per shard whether it was computed, kept or recomputed, and how
  long it took.

Every file is written to a temporary file in its folder and moved into place with ``os.replace``
(:mod:`tribute.atomic_files`), so a run killed at any moment leaves no partial file.  Running the same
:func:`compute_store` again resumes: finished shards that check are kept, missing or damaged ones are computed;
a directory written for another method, options, model, data, settings, format or version is refused, naming the
differences.  A directory belongs to one run at a time (two runs started on it together are not detected).
Under ``torch.distributed`` (``torchrun``) the processes share the shards and write the same store
as one process (:mod:`tribute.store.distributed`).
"""

from .distributed import RankError
from .identity import UnrecordableOptionError
from .manifest import FORMAT_VERSION, StoreError, StoreMismatchError
from .reader import Store, open_store
from .run import compute_store
from .shards import CorruptShardError, Shard

__all__ = ["FORMAT_VERSION", "CorruptShardError", "RankError", "Shard", "Store", "StoreError", "StoreMismatchError",
           "UnrecordableOptionError", "compute_store", "open_store"]
