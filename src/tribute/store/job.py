"""The computation a store holds, resolved once: the explainer, the data, the targets and the run's identity."""

from __future__ import annotations

from typing import Any

import torch

from ..core import Method, get_method
from ..core.engine import Forward, default_batch_size
from ..core.forward_args import ForwardArgs
from ..core.targets import Target, check_target
from .data import Samples
from .identity import model_identity, summarise

#: options that change how a call reports, never what it computes: left out of the run's identity
_NOT_IDENTITY = ("progress",)
STORED_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


class Job:
    """``explainer`` applied to the samples of ``data`` for the resolved targets, as one recorded computation."""

    def __init__(self, model, data, method, target, *, chunk_size: int, batch_size: int | None,
                 dtype: torch.dtype | None, seed: int | None, options: dict[str, Any]):
        self.explainer = _explainer(model, method, options)
        self.call_options = self._seed(seed)
        self.samples = Samples(data)
        self.chunk_size = _positive("chunk_size", chunk_size)
        self.batch_size = None if batch_size is None else _positive("batch_size", batch_size)
        if dtype is not None and dtype not in STORED_DTYPES:
            raise ValueError(f"dtype must be None (as computed) or one of {', '.join(map(str, STORED_DTYPES))}; "
                             f"got {dtype!r}")
        self.dtype = dtype
        self.kind = check_target(target, samples=self.samples.count, label=True, refuse={
            "callable": "a store records the class each sample explains; compute the classes and pass them as a "
                        "1-D tensor"})
        if self.kind == "label" and not self.samples.has_labels:
            raise ValueError("target='label' needs a data set with labels: (inputs, labels) or (sample, label) items")
        self.target = target
        self._check_options()
        self.options = self._resolved()

    def identity(self) -> dict[str, Any]:
        """The run's identity for the manifest (what a resumed run must match)."""
        cls = type(self.explainer)
        given = {k: v for k, v in {**self.explainer.defaults, **self.call_options}.items() if k not in _NOT_IDENTITY}
        target = {"kind": {"none": "predicted"}.get(self.kind, self.kind)}
        if self.kind in ("int", "tensor"):
            target["value"] = summarise(self.target, "target")
        name = cls.name or f"{cls.__module__}.{cls.__qualname__}"
        return {
            "method": {"name": name, "options": summarise(given, "options")},
            "model": model_identity(self.explainer.model),
            "data": self.samples.identity(),
            "settings": {"chunk_size": self.chunk_size, "batch_size": self.batch_size, "target": target,
                         "dtype": None if self.dtype is None else str(self.dtype)},
        }

    def compute(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The attributions of samples ``start``..``stop - 1`` and the classes they explain."""
        x, labels = self.samples.rows(start, stop)
        targets = self._targets(x, labels, start, stop)
        extra = {} if self.batch_size is None else {"batch_size": self.batch_size}
        a = self.explainer.attribute(x, target=targets, **self.call_options, **extra)
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{type(self.explainer).__name__} returned {type(a).__name__}; a store holds one tensor")
        return (a if self.dtype is None else a.to(self.dtype)), targets

    def _targets(self, x: torch.Tensor, labels: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
        n = stop - start
        if self.kind == "int":
            return torch.full((n,), self.target, dtype=torch.long)
        if self.kind == "tensor":
            return self.target.detach().to("cpu", torch.long).expand(self.samples.count)[start:stop].clone()
        if self.kind == "label":
            return labels.clone()
        # the prediction on the clean inputs, as Method.attribute resolves target=None, kept to be stored
        o = self.options
        args = ForwardArgs(o["forward_args"], o["forward_kwargs"], n)
        forward = Forward(self.explainer.model, o["input_transform"], args=None if args.empty else args,
                          output=o["output"])
        prediction = Target(None, n)
        prediction.set_argmax(forward.outputs(x.detach(), self.batch_size or o["batch_size"] or default_batch_size(x)))
        return prediction.index.clone()

    def _resolved(self) -> dict[str, Any]:
        schema = self.explainer.schema()
        return {**{k: v.default for k, v in schema.items()}, **self.explainer.defaults}

    def _seed(self, seed: int | None) -> dict[str, Any]:
        """The seed given to each call: a store is reproducible, so a method that takes a seed gets one (the
        store's ``seed``, default 0) unless its options fix it; a seed for a method that takes none is refused."""
        o = self._resolved()
        name = type(self.explainer).__name__
        if "seed" not in o:
            if seed is not None:
                raise TypeError(f"seed={seed!r} given, but {name} draws no random numbers (it has no seed option)")
            return {}
        if o["seed"] is not None:
            if seed is not None and seed != o["seed"]:
                raise ValueError(f"seed={seed!r} given, but the {name} instance has seed={o['seed']!r}")
            return {}
        if isinstance(seed, bool) or not isinstance(seed, (int, type(None))) or (seed or 0) < 0:
            raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
        return {"seed": 0 if seed is None else seed}

    def _check_options(self) -> None:
        o = self._resolved()
        args = ForwardArgs(o["forward_args"], o["forward_kwargs"], self.samples.count)
        if args.per_sample:
            raise ValueError("per-sample forward arguments are not supported by the store (it cuts the data into "
                             "shards); wrap arguments that are the same for every sample in tribute.constant(...)")
        if "noise_key" in o and o["noise_key"] is not None:
            raise ValueError("noise_key is per sample and not supported by the store (it cuts the data into shards)")


def _explainer(model, method, options: dict[str, Any]) -> Method:
    if isinstance(method, Method):
        if options:
            raise TypeError(f"options {sorted(options)} given with a {type(method).__name__} instance: give them to "
                            "its constructor, or pass the method's name")
        if model is not None and model is not method.model:
            raise ValueError("model is not the model of the given method instance: pass model=None or the same model")
        return method
    if model is None:
        raise TypeError("model is required when the method is given by name or class")
    if isinstance(method, str):
        return get_method(method)(model, **options)
    if isinstance(method, type) and issubclass(method, Method):
        return method(model, **options)
    raise TypeError(f"method must be a registered name, a Method class or instance; got {type(method).__name__}")


def _positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return v
