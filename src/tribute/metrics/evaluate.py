"""One call that compares explanation methods on a data set: ``tribute.evaluate(model, data, methods, metrics)``.

For each batch of the data, each method's attributions are computed once (timed, and their forward and
backward rows counted by :func:`tribute.count_passes`) and fed to every metric of given attributions; metrics
of a method (robustness, class sensitivity) get the method itself and call it as they need.  Per-sample scores
are kept (:attr:`EvaluationTable.scores`), with the curves of the perturbation metrics, and summarised as
mean ± sample standard deviation over the samples per method × metric, next to the efficiency columns:
wall time and rows through the model per sample for the attribution alone.

Metrics by name (:func:`tribute.metrics.metric_specs` lists them with what each declares next to its code), and
which direction is better:

- ``aopc_morf`` (higher), ``aopc_lerf`` (lower): AOPC of the MoRF / LeRF pixel-perturbation curve (Samek et al.
  2017, Eq 12; :func:`tribute.metrics.pixel_perturbation`);
- ``deletion`` (lower), ``insertion`` (higher): AUC of Petsiuk et al. (2018);
- ``road_morf`` (higher), ``road_lerf`` (lower): ROAD's AOPC with noisy linear imputation (Rong et al. 2022);
- ``infidelity`` (lower): Yeh et al. (2019);
- ``completeness_gap`` (lower): the *absolute* gap |Σ R − (S(x) − S(x̄))| (Ancona et al. 2019, Eq 8 at n = N; a mean of
  signed gaps would let errors cancel);
- ``sensitivity_n`` (higher): the mean over n of sensitivity-n's Pearson correlation (Ancona et al.);
- metrics of the method: ``max_sensitivity``, ``avg_sensitivity`` (lower; Yeh et al., Bhatt et al.),
  ``local_lipschitz`` (lower; Alvarez-Melis & Jaakkola 2018), ``class_sensitivity`` (lower: the mean rank
  correlation with the maps of the other classes, Nielsen et al. 2022, Fig 3).

Each takes the defaults of its function in :mod:`tribute.metrics`; ``(label, name, options)`` sets options,
e.g. ``("aopc_morf@10", "aopc_morf", {"steps": 10})``.  A callable metric ``fn(model, inputs, x, target,
**options)`` gets the attributions as ``x``, or the method when its third parameter is named ``method``; it
returns (N,) scores or an object whose ``score`` is (N,).

Any input a model takes.  ``data`` may hold several inputs per sample: tensor data ``((img, tab), labels)`` or
``((img, tab), None)``, and batches ``((img, tab), labels)`` from an iterable (a batch's first element is its
inputs, a tensor or a tuple of tensors).  Attributions are then tuples, one tensor per input, and the metrics
take them as such (perturbation metrics rank all inputs jointly, element by element; pass metric options such
as ``{"input_index": 0}`` for one input).  Token ids (N, T) go to layer methods and to the token forms of
deletion and insertion (``replacement_token=`` among the metric's options).  ``forward_args=`` and
``forward_kwargs=`` (an attention mask) hold tensors with one row per sample of the *whole* data, in order
(as a target tensor), cut per batch (``tribute.constant(t)`` is passed whole), and go with ``output=`` to every
method and metric: a plain callable method or metric that does not take them is then an error.

Seeding and determinism.  ``seed`` is passed, each under its own derived seed, to every method and metric
that takes one (a method's own ``seed`` option, when set, wins).  tribute seeds every sample's random stream
from the seed and the sample's bytes, so a sample's scores do not depend on its batch-mates or on
``batch_size``, and the same call gives the same scores twice.  Timings vary from run to run.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core import options as opt
from ..core.engine import PassCount, check_model, count_passes
from ..core.targets import check_target
from .common import ModelInputs, call_method, derived_seed, model_inputs, resolve_target_in
from .data import DEFAULT_BATCH as DEFAULT_BATCH  # the default batch size, published here first
from .data import DataArguments, batches_of, count_samples
from .methods import ResolvedMethod, named_methods
from .registry import ATTRIBUTIONS, METHOD, MetricSpec, get_metric
from .registry import metric_names as metric_names  # where it was first published

FORMAT = "tribute.evaluate/1"


# -- the table ---------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class EvaluationTable:
    """Per-sample scores of every method under every metric, their summary and the methods' cost.

    Attributes
    ----------
    methods, metrics : tuple of str
        Row and column labels, in the order given.
    better : dict
        metric → ``"higher"``, ``"lower"`` or ``""`` (unknown, for a callable).
    scores : dict
        ``(method, metric) -> (N,)`` float64 tensor, samples in data order (NaN where a metric is undefined).
    curves : dict
        ``(method, metric) -> (N, K+1)`` perturbation curves, for the metrics that have one.
    seconds : dict
        method → wall time of its attributions, in total (timings vary between runs).
    forward_rows, backward_rows : dict
        method → rows sent through the model forward / backward by its attributions, as counted by the
        engine (:func:`tribute.count_passes`; a callable that runs the model itself is not counted).
    samples : int
    seed : int
    """

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    better: dict[str, str]
    scores: dict[tuple[str, str], torch.Tensor]
    curves: dict[tuple[str, str], torch.Tensor]
    seconds: dict[str, float]
    forward_rows: dict[str, int]
    backward_rows: dict[str, int]
    samples: int
    seed: int

    def __getitem__(self, key: tuple[str, str]) -> torch.Tensor:
        """``table["gradient", "aopc_morf"]``: the (N,) per-sample scores."""
        if key not in self.scores:
            raise KeyError(f"no scores for {key!r}; methods: {', '.join(self.methods)}; metrics: "
                           f"{', '.join(self.metrics)}")
        return self.scores[key]

    def mean(self, method: str, metric: str) -> float:
        """Mean over the samples where the score is defined (NaN if none)."""
        s = self[method, metric]
        s = s[~s.isnan()]
        return float(s.mean()) if s.numel() else math.nan

    def std(self, method: str, metric: str) -> float:
        """Sample standard deviation (n − 1) over the samples where the score is defined (NaN below two)."""
        s = self[method, metric]
        s = s[~s.isnan()]
        return float(s.std()) if s.numel() > 1 else math.nan

    def efficiency(self, method: str) -> dict[str, float | None]:
        """Seconds, forward rows and backward rows per sample of ``method``'s attributions (rows: None when
        the engine counted nothing, i.e. a callable that runs the model itself)."""
        counted = self.forward_rows[method] + self.backward_rows[method] > 0
        return {"seconds_per_sample": self.seconds[method] / self.samples,
                "forward_per_sample": self.forward_rows[method] / self.samples if counted else None,
                "backward_per_sample": self.backward_rows[method] / self.samples if counted else None}

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One dict per method: ``method``, ``samples``, ``<metric>_mean`` and ``<metric>_std`` for each metric,
        then ``seconds_per_sample``, ``forward_per_sample``, ``backward_per_sample``."""
        out = []
        for m in self.methods:
            row: dict[str, Any] = {"method": m, "samples": self.samples}
            for k in self.metrics:
                row[f"{k}_mean"] = self.mean(m, k)
                row[f"{k}_std"] = self.std(m, k)
            row.update(self.efficiency(m))
            out.append(row)
        return out

    def __str__(self) -> str:
        arrows = {"higher": " ↑", "lower": " ↓", "": ""}
        head = ["method", *(k + arrows[self.better[k]] for k in self.metrics), "s/sample", "fwd/sample",
                "bwd/sample"]
        body = []
        for row in self.rows:
            cells = [row["method"]]
            for k in self.metrics:
                mean, sd = row[f"{k}_mean"], row[f"{k}_std"]
                cells.append("n/a" if math.isnan(mean) else f"{mean:.4g}" + ("" if math.isnan(sd) else f" ± {sd:.3g}"))
            cells.append(f"{row['seconds_per_sample']:.3g}")
            cells += ["n/a" if row[c] is None else f"{row[c]:g}" for c in ("forward_per_sample", "backward_per_sample")]
            body.append(cells)
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
        lines = [f"evaluation of {len(self.methods)} method(s) on {self.samples} samples (seed {self.seed}): "
                 "mean ± sd over the samples; ↑ higher is better, ↓ lower; cost of the attributions per sample"]
        lines += [fmt.format(*head), *(fmt.format(*r) for r in body)]
        return "\n".join(lines)

    # -- files ---------------------------------------------------------------------------------------------------
    def to_csv(self, path) -> None:
        """Write :attr:`rows` as CSV (floats written exactly, ``repr``; missing values empty)."""
        rows = self.rows
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else repr(v) if isinstance(v, float) else v
                                 for k, v in row.items()})

    @staticmethod
    def read_csv(path) -> list[dict[str, Any]]:
        """The rows of a file written by :meth:`to_csv`, numbers parsed (empty cells as None)."""
        with open(path, newline="") as f:
            return [{k: _parse(k, v) for k, v in row.items()} for row in csv.DictReader(f)]

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain Python (JSON-ready; NaN as None): rows, per-sample scores, curves, counts."""
        def plain(t: torch.Tensor):
            return [None if isinstance(v, float) and math.isnan(v) else v for v in t.tolist()] if t.dim() == 1 \
                else [plain(r) for r in t]
        return {
            "format": FORMAT, "samples": self.samples, "seed": self.seed, "methods": list(self.methods),
            "metrics": list(self.metrics), "better": dict(self.better),
            "rows": [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                     for r in self.rows],
            "scores": {m: {k: plain(self.scores[m, k]) for k in self.metrics} for m in self.methods},
            "curves": {m: {k: plain(c) for (mm, k), c in self.curves.items() if mm == m} for m in self.methods},
            "seconds": dict(self.seconds), "forward_rows": dict(self.forward_rows),
            "backward_rows": dict(self.backward_rows),
        }

    def to_json(self, path) -> None:
        """Write :meth:`to_dict` as JSON; :meth:`from_json` reads it back into an equal table."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def from_json(cls, path) -> EvaluationTable:
        """The table written by :meth:`to_json`."""
        with open(path) as f:
            d = json.load(f)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tribute evaluation table ({FORMAT})")

        def tensor(v):
            return torch.tensor([[math.nan if x is None else x for x in r] for r in v] if v and isinstance(v[0], list)
                                else [math.nan if x is None else x for x in v], dtype=torch.float64)
        return cls(
            methods=tuple(d["methods"]), metrics=tuple(d["metrics"]), better=dict(d["better"]),
            scores={(m, k): tensor(v) for m, per in d["scores"].items() for k, v in per.items()},
            curves={(m, k): tensor(v) for m, per in d["curves"].items() for k, v in per.items()},
            seconds={k: float(v) for k, v in d["seconds"].items()},
            forward_rows={k: int(v) for k, v in d["forward_rows"].items()},
            backward_rows={k: int(v) for k, v in d["backward_rows"].items()},
            samples=int(d["samples"]), seed=int(d["seed"]))

    def equals(self, other: EvaluationTable, *, timings: bool = False) -> bool:
        """Same labels, per-sample scores (NaN equal to NaN), curves and pass counts; timings only if asked."""
        def same(a: dict, b: dict) -> bool:
            return a.keys() == b.keys() and all(torch.equal(a[k].nan_to_num(nan=math.inf),
                                                            b[k].nan_to_num(nan=math.inf)) for k in a)
        return (self.methods == other.methods and self.metrics == other.metrics and self.better == other.better
                and self.samples == other.samples and same(self.scores, other.scores)
                and same(self.curves, other.curves) and self.forward_rows == other.forward_rows
                and self.backward_rows == other.backward_rows and (not timings or self.seconds == other.seconds))


def _parse(key: str, value: str):
    if key == "method":
        return value
    if value == "":
        return None
    return int(value) if key == "samples" else float(value)


# -- evaluate ----------------------------------------------------------------------------------------------------
def evaluate(
    model: nn.Module,
    data,
    methods: Sequence = ("gradient",),
    metrics: Sequence = ("aopc_morf",),
    *,
    target=None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    forward_args=None,
    forward_kwargs=None,
    output=None,
) -> EvaluationTable:
    """Score every method by every metric on every sample of ``data``; see the module doc.

    Parameters
    ----------
    model : nn.Module or callable
        In eval mode; never modified.  A plain function is run under the train-mode guard (an op that would
        run in train mode inside it is refused before it changes anything).
    data : Tensor, (inputs, labels) or iterable of batches
        Inputs (N, ...) alone, an (inputs, labels) pair, or a re-iterable of batches (each inputs or an
        (inputs, labels, ...) tuple, e.g. a ``DataLoader``).  Inputs are a tensor or, for a model taking
        several, a tuple of tensors (then labels may be None: ``((img, tab), None)``).
    methods : list
        Registry names (``"random"``: :func:`tribute.metrics.methods.random_attribution`), Method classes or
        instances, callables ``(model, inputs, target) -> attributions``, ``(label, method)`` pairs or
        ``(label, method, options)`` triples.
    metrics : list
        Names (:func:`metric_names`), callables, ``(label, metric)`` pairs or ``(label, metric, options)``
        triples.  An empty list measures the efficiency alone.
    target : None, "label", int, 1-D tensor or callable
        The class explained and scored: ``None`` (default) the model's prediction on each sample (fixed
        once, so methods and metrics share it), ``"label"`` the data's labels, an int, a tensor with one
        class per sample of the whole data (in order), or a callable score (metrics that need classes refuse it).
    batch_size : int, optional
        Samples per batch for tensor data (default 64); per-sample scores do not depend on it.  Iterable data
        give their own batches.
    seed : int
        Seeds the methods and metrics (module doc).
    progress : bool
        A tqdm progress bar over the batches.
    forward_args, forward_kwargs, output
        Extra arguments of the model's forward (per-sample tensors cover the whole data, cut per batch) and
        which part of a structured output holds the scores; given to every method and metric (module doc).

    Returns
    -------
    EvaluationTable
    """
    check_model(model)  # before any forward pass: a refused model is left as it was
    seed = opt.integer(0)("seed", seed)
    opt.boolean("progress", progress)
    items = named_methods(methods)
    specs = named_metrics(metrics)
    batches, count = batches_of(data, batch_size)
    if check_target(target, label=True) == "tensor" and target.dim() != 1:
        raise ValueError(f"a target tensor needs one class per sample of the data, shape (N,); got "
                         f"{tuple(target.shape)}")
    extra = DataArguments(forward_args, forward_kwargs, output)
    run = _Run(model, items, specs, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(batches, total=count, desc="evaluate", unit="batch")
        batches = bar
    try:
        for x, y in batches:
            n = count_samples(x)
            if n == 0:
                continue
            view = model_inputs(model, x, **extra.batch(run.samples, n), integers=True)
            run.batch(view, _batch_target(view, y, target, run.samples))
    finally:
        if bar is not None:
            bar.close()
    if run.samples == 0:
        raise ValueError("data hold no samples: nothing to evaluate")
    if isinstance(target, torch.Tensor) and target.shape[0] != run.samples:
        raise ValueError(f"target has {target.shape[0]} entries but the data hold {run.samples} samples")
    extra.check_total(run.samples)
    return run.table()


class _Run:
    """What :func:`evaluate` gathers batch by batch: per-sample scores, curves, time and pass counts per method."""

    def __init__(self, model: nn.Module, items: list[ResolvedMethod], specs: dict[str, MetricSpec], seed: int):
        self.model, self.items, self.specs, self.seed = model, items, specs, seed
        self.explainers = {m.label: m.bind(model, seed=derived_seed(seed, "method")) for m in items}
        self.scores: dict[tuple[str, str], list[torch.Tensor]] = {(m.label, k): [] for m in items for k in specs}
        self.curves: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.seconds = {m.label: 0.0 for m in items}
        self.passes = {m.label: PassCount() for m in items}
        self.samples = 0

    def batch(self, view: ModelInputs, t) -> None:
        """Every method's attributions of one batch (timed, counted) and every metric of them."""
        x, options = view.user_inputs, view.method_options
        if self.samples == 0:  # one untimed, uncounted call first: lazy set-up costs are not the method's
            first = torch.zeros(1, dtype=torch.long)
            for m in self.items:
                call_method(self.explainers[m.label], view.user_rows(view.x[:1]), t[:1] if isinstance(
                    t, torch.Tensor) else t, view.method_options_for(first))
        self.samples += view.x.shape[0]
        for m in self.items:
            start = time.perf_counter()
            with count_passes() as counted:
                a = call_method(self.explainers[m.label], x, t, options)
            self.seconds[m.label] += time.perf_counter() - start
            self.passes[m.label].add(counted.forward_rows, counted.backward_rows)
            try:  # one tensor for several inputs explains one of them (a CAM): the metrics take it with input_index
                if view.layout.single or isinstance(a, (tuple, list)):
                    view.pack_attributions(a)
            except (TypeError, ValueError) as e:
                raise type(e)(f"method {m.label!r}: {e}") from None
            for label, spec in self.specs.items():
                value, curve = _run_metric(label, spec, self.model, view, a, m, t, self.seed)
                self.scores[m.label, label].append(value)
                if curve is not None:
                    self.curves.setdefault((m.label, label), []).append(curve)

    def table(self) -> EvaluationTable:
        return EvaluationTable(
            methods=tuple(m.label for m in self.items), metrics=tuple(self.specs),
            better={k: s.better for k, s in self.specs.items()},
            scores={key: torch.cat(v) if v else torch.empty(0, dtype=torch.float64) for key, v in self.scores.items()},
            curves={key: torch.cat(v) for key, v in self.curves.items()}, seconds=self.seconds,
            forward_rows={k: p.forward_rows for k, p in self.passes.items()},
            backward_rows={k: p.backward_rows for k, p in self.passes.items()}, samples=self.samples, seed=self.seed)


def efficiency(model: nn.Module, data, methods: Sequence = ("gradient",), **options) -> EvaluationTable:
    """Wall time and rows through the model per sample of each method's attributions: :func:`evaluate` with no
    metric (the same options)."""
    if "metrics" in options:
        raise TypeError("efficiency() measures no metric; call evaluate(..., metrics=...) for scores")
    return evaluate(model, data, methods, metrics=(), **options)


# -- metrics -----------------------------------------------------------------------------------------------------
def named_metrics(metrics) -> dict[str, MetricSpec]:
    """``metrics`` as label → :class:`MetricSpec`; unknown names raise a ValueError naming the nearest ones."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    if not isinstance(metrics, Sequence):
        raise TypeError(f"metrics must be a list of metric names, callables or (label, metric) pairs; got "
                        f"{type(metrics).__name__}")
    out: dict[str, MetricSpec] = {}
    for item in metrics:
        label, options = None, {}
        if isinstance(item, tuple):
            if len(item) not in (2, 3) or not isinstance(item[0], str) or (len(item) == 3 and not isinstance(
                    item[2], dict)):
                raise TypeError(f"metrics: a tuple must be (label, metric) or (label, metric, options dict); got "
                                f"{item!r}")
            label, item, options = item[0], item[1], (item[2] if len(item) == 3 else {})
        if isinstance(item, str):
            base = get_metric(item)
            spec = MetricSpec(base.fn, base.kind, base.better, {**base.options, **options}, base.absolute)
            label = item if label is None else label
        elif callable(item):
            spec = MetricSpec(item, _callable_kind(item), "", dict(options))
            label = getattr(item, "__name__", None) or type(item).__name__ if label is None else label
        else:
            raise TypeError(f"metrics: a metric must be a name or a callable, got {type(item).__name__}")
        if label in out:
            raise ValueError(f"metrics: two metrics are labelled {label!r}; pass (label, metric) pairs")
        out[label] = spec
    return out


def _callable_kind(fn) -> str:
    """A callable metric takes the method if its third parameter is named ``method``, else the attributions."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return ATTRIBUTIONS
    return METHOD if len(params) >= 3 and params[2].name == "method" else ATTRIBUTIONS


def _run_metric(label: str, spec: MetricSpec, model, view: ModelInputs, a, method: ResolvedMethod, target,
                seed: int):
    """(N,) float64 scores on the CPU and the (N, K+1) curve if the metric has one."""
    options = dict(spec.options)
    if "seed" not in options and spec.takes("seed"):
        options["seed"] = derived_seed(seed, f"metric/{label}")
    for key, value in view.method_options.items():
        if key in options:
            raise ValueError(f"metric {label!r}: {key}= is given both to evaluate() and in the metric's options")
        if not spec.takes(key):
            raise TypeError(f"metric {label!r} does not take {key}=, which this evaluation gives every metric; "
                            "give the metric a way to take it or leave it out")
        options[key] = value
    x, n = view.user_inputs, view.x.shape[0]
    if spec.kind == METHOD:
        if method.options:
            if not spec.takes("method_options"):
                raise TypeError(f"metric {label!r} cannot pass the options of method {method.label!r} on")
            options["method_options"] = {**method.options, **options.get("method_options", {})}
        out = spec.fn(model, x, method.method, target, **options)
    else:
        out = spec.fn(model, x, a, target, **options)
    value = getattr(out, "score", out)
    if not isinstance(value, torch.Tensor) or value.shape != (n,):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"metric {label!r} must give one score per sample, shape ({n},); got {got}")
    value = value.detach().to("cpu", torch.float64)
    curve = getattr(out, "curve", None)
    if isinstance(curve, torch.Tensor) and curve.dim() == 2 and curve.shape[0] == n:
        curve = curve.detach().to("cpu", torch.float64)
    else:
        curve = None
    return (value.abs() if spec.absolute else value), curve


# -- data and targets --------------------------------------------------------------------------------------------
def _batch_target(view: ModelInputs, y, target, offset: int):
    """The batch's target, fixed once: class indices (or the user's callable)."""
    n = view.x.shape[0]
    if target == "label":
        if y is None:
            raise ValueError("target='label' needs labels: pass data as (inputs, labels)")
        return y.to(view.x.device)
    if isinstance(target, torch.Tensor):
        part = target[offset:offset + n]
        if part.shape[0] != n:
            raise ValueError(f"target has {target.shape[0]} entries, fewer than the samples of the data")
        return resolve_target_in(view, part.to(view.x.device))
    return resolve_target_in(view, target, keep_callable=True)


__all__ = ["EvaluationTable", "efficiency", "evaluate"]
