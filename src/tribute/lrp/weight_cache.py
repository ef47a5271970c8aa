"""Weights that LRP rules derive from a layer's parameters, kept between calls of one explainer.

The z⁺, αβ and γ rules work with W⁺, W + γW⁺ and batch norm merged into the layer before them: one full
pass over the model's parameters per call, which on a batch-1 ResNet-18 costs more than a forward and a
backward pass together.  An explainer keeps them in a :class:`WeightCache` and reuses them while the
parameters they came from are unchanged.

"Unchanged" is checked on every use, never assumed: the parameter tensor is the same object (a weak
reference, so the cache never keeps a model alive), its version counter has not moved (every in-place
write through autograd's view of the tensor moves it: optimiser steps, ``load_state_dict``,
``torch.nn.init``, ``p.copy_`` under ``no_grad``), its storage is the same (``p.data = …``), and, for
writes through ``p.data`` that bypass the version counter, a sample of its entries still equals the
sample taken when the weights were derived.  Small tensors (batch norm statistics) are compared whole.
A write through ``.data`` that changes none of the sampled entries is the one case this cannot see;
``WeightCache.clear()`` (or ``cache_weights=False``) covers it.

The samples are compared for all layers at once when a forward pass begins (:meth:`WeightCache.for_pass`):
one concatenation of views into the parameters per dtype and one comparison, where comparing them layer by
layer as they are used costs a few small ops per tensor (1.6 ms of a 22 ms batch-1 ResNet-18 pass).  Each
use still checks the identity, version and storage of its tensors.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch

# Entries of a large tensor compared on every use (spread evenly over it); tensors up to SMALL entries
# are compared whole.
_PROBES = 64
_SMALL = 4096
# Derived tensors kept per layer: a caller that keeps changing a rule's parameter (γ) cannot grow the
# cache without bound.
_PER_LAYER = 8


def sampled_positions(n: int) -> range:
    """The positions compared in a tensor of ``n`` entries: all of a small one, else every k-th."""
    return range(n) if n <= _SMALL else range(0, n, n // _PROBES)


def sampled(t: torch.Tensor) -> torch.Tensor:
    """The entries of ``t`` at :func:`sampled_positions`, as a view into its storage (no copy)."""
    flat = t.detach().view(-1)
    r = sampled_positions(flat.numel())
    return flat[r.start:r.stop:r.step]


class _Source:
    """What a derived tensor was computed from: one tensor's identity, version, storage and contents."""

    __slots__ = ("version", "pointer", "probe", "sample", "group")

    def __init__(self, t: torch.Tensor):
        self.version = t._version
        self.pointer = t.data_ptr()
        self.group = (t.dtype, t.device)  # samples are compared together by dtype and device
        self.probe = sampled(t)  # a view into t's storage: it shows t's entries as they are now
        self.sample = self.probe.clone()

    def current(self, t: torch.Tensor) -> bool:
        """Same version and storage as when sampled."""
        return t._version == self.version and t.data_ptr() == self.pointer

    def matches(self, t: torch.Tensor) -> bool:
        return self.current(t) and torch.equal(self.probe, self.sample)


class _Entry:
    __slots__ = ("refs", "sources", "values", "derived", "nbytes")

    def __init__(self, sources: Sequence[torch.Tensor | None], values: Sequence[torch.Tensor | None]):
        self.refs = tuple(None if s is None else weakref.ref(s) for s in sources)
        self.sources = tuple(None if s is None else _Source(s) for s in sources)
        self.values = tuple(None if v is None else v.detach().clone() for v in values)
        self.derived: OrderedDict[Hashable, tuple] = OrderedDict()
        self.nbytes = 0

    def valid(self, sources, values, sampled_now: bool = False) -> bool:
        """Whether ``sources`` and ``values`` are what this entry was derived from (``sampled_now``: the
        samples were compared since the tensors' versions and storage were last seen, see
        :meth:`WeightCache.for_pass`)."""
        for ref, src, s in zip(self.refs, self.sources, sources, strict=True):
            if (ref is None) != (s is None):
                return False
            if s is not None and (ref() is not s or not (src.current(s) if sampled_now else src.matches(s))):
                return False
        for kept, v in zip(self.values, values, strict=True):
            if (kept is None) != (v is None):
                return False
            if v is not None and not (kept.shape == v.shape and torch.equal(kept, v.detach())):
                return False
        return True


def _cacheable(t: torch.Tensor | None) -> bool:
    return t is None or (t.is_contiguous() and not t.is_sparse and t.layout == torch.strided)


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class WeightCache:
    """Derived weights by layer, valid while their sources are unchanged (see the module doc).

    ``max_bytes`` bounds what is kept (least recently used first out); ``None`` keeps everything the
    layers of one model derive (a few copies of its parameters at most, :data:`_PER_LAYER` per layer).
    """

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        # the entries last sampled together, and per dtype and device their probes and samples side by side
        self._stacked: tuple[list, list[tuple[list[torch.Tensor], torch.Tensor]]] = ([], [])

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._stacked = ([], [])

    def for_pass(self) -> PassCache:
        """This cache for one forward pass: the samples of every entry are compared now, all at once."""
        return PassCache(self, self._sample_all())

    def _sample_all(self) -> frozenset:
        """The entries whose samples all equal their tensors' entries now (all, or none if any differs)."""
        with self._lock:
            self._prune_dead()
            entries = list(self._entries.values())
            kept, stacked = self._stacked
        # a pass starts inside the engine's torch-function mode: these tensors are not the model's business
        with torch._C.DisableTorchFunction():
            if len(kept) != len(entries) or any(a is not b for a, b in zip(kept, entries, strict=True)):
                groups: dict[tuple, list[_Source]] = {}
                for e in entries:
                    for src in e.sources:
                        if src is not None:
                            groups.setdefault(src.group, []).append(src)
                # the samples side by side once, while the entries stay the same (they hold the kept ones alive)
                stacked = [([s.probe for s in srcs], torch.cat([s.sample for s in srcs])) for srcs in groups.values()]
                with self._lock:
                    self._stacked = (entries, stacked)
            for probes, samples in stacked:
                if not torch.equal(torch.cat(probes), samples):
                    return frozenset()  # something changed: each entry compares its own samples when used
        return frozenset(entries)

    def entry(self, sources: Sequence[torch.Tensor | None], values: Sequence[torch.Tensor | None] = (),
              tag: Hashable = (), sampled_now: frozenset = frozenset()) -> _Entry | None:
        """The entry of the layer whose parameters are ``sources`` (and whose batch norm gives ``values``; ``tag``
        tells apart uses of the same parameters that derive different tensors), emptied if anything it was
        derived from changed; None if these tensors cannot be cached.  ``sampled_now``: entries whose samples
        were just compared."""
        key = (*(None if s is None else id(s) for s in sources), tag)
        with self._lock:
            e = self._entries.get(key)
            if e is None or not e.valid(sources, values, e in sampled_now):
                if not all(_cacheable(s) for s in sources):  # (an entry is only made of cacheable tensors)
                    self._entries.pop(key, None)
                    return None
                e = _Entry(sources, values)
                self._entries[key] = e
                self._prune_dead()
            self._entries.move_to_end(key)
            return e

    def discard(self, sources: Sequence[torch.Tensor | None], tag: Hashable = ()) -> None:
        """Forget the entry of these tensors (a layer now used in another form, batch norm merged into it)."""
        key = (*(None if s is None else id(s) for s in sources), tag)
        with self._lock:
            self._entries.pop(key, None)

    def forget(self, entry: _Entry | None, name: Hashable) -> None:
        """Drop what ``entry`` keeps as ``name`` (superseded by another form of it)."""
        if entry is not None:
            with self._lock:
                value = entry.derived.pop(name, None)
                entry.nbytes -= _nbytes(value)

    def get(self, entry: _Entry | None, name: Hashable, make: Callable[[], tuple]) -> tuple:
        """``make()`` for this layer, computed once while the entry stays valid."""
        if entry is None:
            return make()
        with self._lock:
            value = entry.derived.get(name)
            if value is not None:
                entry.derived.move_to_end(name)
                self.hits += 1
                return value
        value = make()
        with self._lock:
            self.misses += 1
            entry.derived[name] = value
            entry.nbytes += _nbytes(value)
            while len(entry.derived) > _PER_LAYER:
                _, old = entry.derived.popitem(last=False)
                entry.nbytes -= _nbytes(old)
            self._evict()
        return value

    def _prune_dead(self) -> None:
        dead = [k for k, e in self._entries.items() if any(r is not None and r() is None for r in e.refs)]
        for k in dead:
            del self._entries[k]

    def _evict(self) -> None:
        if self.max_bytes is None:
            return
        total = self.nbytes
        while total > self.max_bytes and self._entries:
            _, e = self._entries.popitem(last=False)
            total -= e.nbytes


class PassCache:
    """A :class:`WeightCache` as one forward pass uses it (:meth:`WeightCache.for_pass`)."""

    __slots__ = ("cache", "sampled_now")

    def __init__(self, cache: WeightCache, sampled_now: frozenset):
        self.cache, self.sampled_now = cache, sampled_now

    def entry(self, sources: Sequence[torch.Tensor | None], values: Sequence[torch.Tensor | None] = (),
              tag: Hashable = ()) -> _Entry | None:
        return self.cache.entry(sources, values, tag, self.sampled_now)

    def get(self, entry: _Entry | None, name: Hashable, make: Callable[[], tuple]) -> tuple:
        return self.cache.get(entry, name, make)

    def discard(self, sources: Sequence[torch.Tensor | None], tag: Hashable = ()) -> None:
        self.cache.discard(sources, tag)

    def forget(self, entry: _Entry | None, name: Hashable) -> None:
        self.cache.forget(entry, name)

    def warm(self, entry: _Entry | None) -> bool:
        """Whether ``entry`` was kept from an earlier pass (and found unchanged): worth deriving more for, where a
        one-off call would pay for a copy it uses once."""
        return entry is not None and entry in self.sampled_now
