"""A store run spread over the processes of ``torch.distributed`` (e.g. ``torchrun --nproc-per-node 2``).

Shard i is computed by rank i mod world size, so the ranks write disjoint files and need no lock; rank 0 alone
writes the manifest and the run log.  Each collective step runs on every rank and shares its outcome, an error
included: a rank that fails makes every rank raise (the same error), instead of leaving the others waiting at a
barrier forever.  Without an initialised process group (or with ``distributed=False``) the group is the one
process, and nothing is exchanged.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import torch.distributed as dist


class RankError(RuntimeError):
    """Another rank of the run failed; its error is the cause."""


class Group:
    """The processes of one store run: ``rank`` of ``world`` (0 of 1 without torch.distributed)."""

    def __init__(self, distributed: bool | None = None):
        initialised = dist.is_available() and dist.is_initialized()
        if distributed is None:
            distributed = initialised and dist.get_world_size() > 1
        elif distributed and not initialised:
            raise ValueError("distributed=True needs an initialised torch.distributed process group (run under "
                             "torchrun and call torch.distributed.init_process_group first), or distributed=None")
        self.distributed = bool(distributed)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1

    def owns(self, shard: int) -> bool:
        """Whether this rank computes shard ``shard``."""
        return shard % self.world == self.rank

    def on_rank0(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on rank 0; its result (or its error, raised on every rank) given to every rank."""
        outcome = _attempt(fn) if self.rank == 0 else None
        if self.distributed:
            box = [outcome]
            dist.broadcast_object_list(box, src=0)
            outcome = box[0]
        return _unwrap(outcome)

    def on_each(self, fn: Callable[[], Any]) -> list[Any]:
        """``fn()`` run on every rank; the list of every rank's result, or the first failing rank's error raised
        on every rank."""
        outcome = _attempt(fn)
        outcomes = [outcome]
        if self.distributed:
            outcomes = [None] * self.world
            dist.all_gather_object(outcomes, outcome)
        _unwrap(outcome)  # this rank's own error first, as it is
        return [_unwrap(o, rank) for rank, o in enumerate(outcomes)]


def _attempt(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except Exception as e:
        try:
            pickle.dumps(e)
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        return ("error", e)


def _unwrap(outcome: tuple[str, Any], rank: int | None = None) -> Any:
    """The result of an attempt, or its error raised: as it is, or (``rank``: another rank's) as the cause of a
    :class:`RankError` naming that rank."""
    kind, value = outcome
    if kind == "ok":
        return value
    if rank is None:
        raise value
    raise RankError(f"rank {rank} of the store run failed: {type(value).__name__}: {value}") from value
