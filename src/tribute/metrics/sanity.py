"""Sanity checks for saliency maps (Adebayo et al. 2018): does the explanation depend on the model at all?

An explanation that stays the same when the model's learned parameters are destroyed, or when the model
learned nothing but noise, cannot explain what the model learned.  Adebayo, Gilmer, Muelly, Goodfellow,
Hardt and Kim, *Sanity Checks for Saliency Maps* (NeurIPS 2018), propose two randomisation tests; Nielsen et al. 2022
(§4.1, "Sanity Checks") summarises them:

**Model parameter randomisation.**  For a trained model f and its re-initialised versions f̃_k,
compare per sample the map E(x; f) with E(x; f̃_k):

- *cascading*: f̃_k has the top k layers re-initialised (from the logits down, cumulatively) and the others
  trained; the last step is a fully re-initialised model;
- *independent*: f̃_k has only layer k re-initialised, every other layer keeps its trained values.

**Label (data) randomisation**: train the same architecture on the training data with randomly
permuted labels (they train until it fits them, > 95 % training accuracy), and compare E(x; f) with
E(x; f_permuted).  A model trained on permuted labels can only memorise, so an explanation that still looks the
same does not reflect the relation between inputs and labels.

Similarity, per sample, between the two maps: Spearman rank correlation of the signed maps
(``"spearman"``) and of their absolute values (``"spearman_abs"``), the structural similarity index
(``"ssim"``) and the Pearson correlation of the histograms of oriented gradients (``"hog"``) — the functions of
:mod:`tribute.metrics.similarity`; any callable ``(maps_a, maps_b) -> (N,)`` may be added.  Attributions are
first made maps by the shared ``reduce=`` (default ``"sum"`` over the channels; see :func:`as_map`;
``reduce=None`` compares the attributions as they are).

Which layers are randomised, in which order, and how each is re-initialised: :mod:`tribute.metrics.reinitialise`.

Any input a model takes: ``inputs`` may be a tuple of tensors, with ``forward_args=`` / ``forward_kwargs=`` and
``output=`` as for the attribution methods.  The maps of a sample's several inputs are compared as one vector
(each input's map flattened, end to end), or one input's alone with ``input_index=``
(:func:`tribute.metrics.view_methods.attribution_maps`).

The user's model is never modified: the checks work on one deep copy (:func:`randomisation_steps`).
Targets are fixed once, on the trained model (``target=None``: its predicted class), and the same class is
explained in every randomised model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.engine import check_model
from ..core.reduce import check_reduce
from ..core.tensors import per_sample
from ..training import trainer
from .common import as_map, check_attributions, model_inputs, resolve_target_in
from .fixed_arguments import fixed_arguments, inner, trainable
from .methods import resolve_method
from .registry import METHOD, register_metric
from .reinitialise import (
    MODES as MODES,
)
from .reinitialise import (
    Init,
    check_batch,
    check_seed,
    parameter_owners,
    randomisation_steps,
    reinitialise_owners,
)
from .reinitialise import (
    layer_generator as layer_generator,
)
from .reinitialise import (
    parameter_layers as parameter_layers,
)
from .reinitialise import (
    randomised_copy as randomised_copy,
)
from .reinitialise import (
    reinitialise as reinitialise,
)
from .view_methods import attribution_maps, explain_rows, refuse_options_for_callable

MAP_SIMILARITIES = ("spearman", "spearman_abs", "ssim", "hog")
FLAT_SIMILARITIES = ("spearman", "spearman_abs")


# -- the result ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SanityResult:
    """Similarities between the trained model's maps and the randomised models' maps, per step and sample.

    Attributes
    ----------
    test : str
        ``"cascading"``, ``"independent"`` (parameter randomisation) or ``"labels"`` (label randomisation).
    method : str
        The explanation method's name.
    steps : tuple of str
        One name per row: the layer randomised at that step (cascading: down to and including it), or the
        label-randomisation rows (``"permuted labels"``, and ``"true labels (retrained)"`` as a control).
    similarities : tuple of str
        The similarity measures, in the order of ``scores``' first dimension.
    scores : Tensor
        (similarities, steps, samples), float64 on the CPU; NaN where a measure is undefined for a
        sample (a constant map has no ranking).
    info : dict
        Extra facts (label randomisation: training accuracies of the retrained models).
    """

    test: str
    method: str
    steps: tuple[str, ...]
    similarities: tuple[str, ...]
    scores: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, similarity: str) -> torch.Tensor:
        """(steps, samples) scores of one similarity measure."""
        if similarity not in self.similarities:
            raise KeyError(f"no similarity {similarity!r}; this result has {', '.join(self.similarities)}")
        return self.scores[self.similarities.index(similarity)]

    def curve(self, similarity: str) -> torch.Tensor:
        """(steps,) mean over the samples (NaNs left out): a curve of Adebayo et al.'s randomisation figures."""
        return self[similarity].nanmean(dim=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python (JSON-ready): per similarity and step, the per-sample scores (NaN as None)."""
        def clean(v: float):
            return None if math.isnan(v) else v
        return {
            "test": self.test, "method": self.method, "steps": list(self.steps),
            "scores": {s: {step: [clean(v) for v in row.tolist()] for step, row in zip(self.steps, self[s],
                                                                                       strict=True)}
                       for s in self.similarities},
            "info": dict(self.info),
        }

    def __str__(self) -> str:
        n = self.scores.shape[-1]
        head = {"cascading": "cascading parameter randomisation (top layer first, cumulative)",
                "independent": "independent parameter randomisation (one layer at a time)",
                "labels": "label randomisation"}.get(self.test, self.test)
        lines = [f"{head}: {self.method}, {n} samples; mean ± sd over samples of the similarity to the trained "
                 "model's maps"]
        labels = [step or "(the model's own)" for step in self.steps]  # "" names the root module
        width = max([len("step"), *map(len, labels)])
        lines.append(f"{'step':{width}s}  " + "  ".join(f"{s:>15s}" for s in self.similarities))
        for i, step in enumerate(labels):
            cells = []
            for s in range(len(self.similarities)):
                v = self.scores[s, i]
                v = v[~v.isnan()]
                cells.append(f"{'n/a':>15s}" if v.numel() == 0 else
                             f"{v.mean():>7.3f} ± {(v.std() if v.numel() > 1 else v.new_zeros(())):5.3f}")
            lines.append(f"{step:{width}s}  " + "  ".join(cells))
        for key, value in self.info.items():
            lines.append(f"{key}: {value}")
        return "\n".join(lines)


# -- the tests -------------------------------------------------------------------------------------------------
@register_metric("parameter_randomisation", takes=METHOD, better="lower", per_sample=False)
def parameter_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    method,
    target=None,
    *,
    mode: str = "cascading",
    layers: Sequence[str] | None = None,
    similarities: Sequence[str] | dict[str, Callable] | None = None,
    reduce: str | None = "sum",
    seed: int = 0,
    init: Init | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    method_options: dict[str, Any] | None = None,
    input_index: int | None = None,
    forward_args: tuple | None = None,
    forward_kwargs: dict | None = None,
    output=None,
) -> SanityResult:
    """Adebayo et al.'s model parameter randomisation test, per layer and sample.

    For each step k of :func:`randomisation_steps` and each sample x_i: sim(E(x_i; f), E(x_i; f̃_k)), f the
    trained model, f̃_k the randomised copy, E the explanation ``method`` for the same ``target`` class.

    Parameters
    ----------
    model : nn.Module
        The trained model (not modified; the steps run on a deep copy).
    inputs : Tensor
        (N, ...) the samples to explain, batch first.
    method : str, Method or callable
        The explanation method (see :func:`tribute.metrics.methods.resolve_method`); ``method_options`` are
        passed to a method name or class.
    target : None, int, 1-D tensor or callable
        The class explained; ``None``: the trained model's prediction, fixed for every randomised model.
    mode : {"cascading", "independent"}
    layers : sequence of str, optional
        Module names to randomise, top (output side) first, in that order; default every parameter-owning
        layer of the forward pass.  A block name randomises every layer inside it in one step.
    similarities : sequence of names or dict name -> callable, optional
        Default ``("spearman", "spearman_abs", "ssim", "hog")`` for image maps (N, 1, H, W), the two
        Spearman correlations for other shapes.  A callable takes two (N, ...) batches of maps and returns (N,).
    reduce : str or None
        How channels become a map (:data:`tribute.core.reduce.REDUCTIONS`); ``None`` compares the
        attributions as they are, every channel a feature (as Quantus does; SSIM and HOG then need
        single-channel attributions).
    seed : int
        Seeds every layer's re-initialisation (see :func:`layer_generator`).
    init : callable, optional
        ``init(name, module, generator)`` re-initialises the parameters ``module`` owns, in place; default
        :func:`reinitialise`.
    batch_size : int, optional
        Rows per forward pass when fixing ``target=None``.
    progress : bool
        A progress bar over the steps.
    input_index : int, optional
        With several inputs, compare the maps of this input only; default: each sample's maps of all its inputs
        as one vector (each input's map by ``reduce``, flattened, end to end; :mod:`tribute.metrics.view_methods`).
    forward_args, forward_kwargs, output
        As for the attribution methods: extra arguments of every forward pass (tensors per sample,
        ``tribute.constant`` for one shared by all), and which part of a structured output holds the scores.

    Returns
    -------
    SanityResult
        ``scores[s, k, i]``: similarity s between the trained and step-k maps of sample i.
    """
    view, resolved = _prepare(model, inputs, method, method_options, reduce, "parameter_randomisation",
                              forward_args=forward_args, forward_kwargs=forward_kwargs, output=output)
    steps = randomisation_steps(model, view.user_inputs, mode=mode, layers=layers, seed=seed, init=init,
                                forward_args=forward_args, forward_kwargs=forward_kwargs)
    target = resolve_target_in(view, target, batch_size=batch_size, keep_callable=True)

    def maps_of(m: nn.Module) -> torch.Tensor:
        a = explain_rows(resolved.bind(m), view, view.x, target, owner="parameter_randomisation")
        return attribution_maps(view.user_inputs, a, reduce, input_index)

    original = maps_of(model)
    measures = similarity_functions(similarities, original)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"{mode} randomisation", unit="layer")
    names, rows = [], []
    for name, randomised in steps:  # one copy changed in place from step to step: bound afresh each step
        maps = maps_of(randomised)
        names.append(name)
        rows.append(compare_maps(measures, original, maps))
    return SanityResult(mode, resolved.label, tuple(names), tuple(measures), torch.stack(rows, dim=1))


@register_metric("label_randomisation", takes=METHOD, better="lower", per_sample=False)
def label_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    method,
    target=None,
    *,
    train_data: tuple[torch.Tensor, torch.Tensor],
    train_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], nn.Module | None] | None = None,
    control: bool = False,
    similarities: Sequence[str] | dict[str, Callable] | None = None,
    reduce: str | None = "sum",
    seed: int = 0,
    init: Init | None = None,
    batch_size: int | None = None,
    method_options: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    input_index: int | None = None,
    forward_args: tuple | None = None,
    forward_kwargs: dict | None = None,
    output=None,
) -> SanityResult:
    """Adebayo et al.'s data randomisation test: the maps of a model trained on permuted labels.

    A deep copy of ``model`` is re-initialised (every parameter-owning layer, as in the parameter test) and
    trained by ``train_fn`` on ``train_data``'s inputs with their labels permuted (a seeded permutation, which
    keeps the class frequencies).  Per sample: sim(E(x_i; model), E(x_i; f_permuted)).

    Parameters
    ----------
    model : nn.Module
        The model trained on the true labels (not modified).
    inputs : Tensor
        (N, ...) the samples to explain (held-out data, as in the paper).
    method, target, similarities, reduce, seed, init, batch_size, method_options, input_index
        As in :func:`parameter_randomisation`.
    forward_args, forward_kwargs, output
        As in :func:`parameter_randomisation`, except that a per-sample tensor is refused: the copy is trained on
        ``train_data``, other samples than ``inputs``.  Arguments the same for every sample
        (``tribute.constant``) and ``output=`` reach the training too: the trainer gets the copy as
        :class:`tribute.metrics.fixed_arguments.FixedArguments`, whose ``forward(x)`` returns the scores.
    train_data : (Tensor or tuple of Tensors, Tensor)
        The training inputs (M, ...) (one tensor per input for a model taking several: then give a
        ``train_fn``) and their integer labels (M,).
    train_fn : callable, optional
        ``train_fn(model_copy, train_inputs, train_labels)`` trains the copy and returns it (or None when it
        trained ``model_copy`` in place); the result is put in eval mode.  If it takes a ``seed`` keyword it gets
        ``seed`` (:func:`tribute.training.trainer`, the hook ROAR uses too).  Default: :func:`tribute.training.fit`
        with ``seed`` and ``train_options``.
    train_options : dict, optional
        Options of :func:`tribute.training.fit` for the default trainer; at least ``epochs`` and ``lr``
        (e.g. ``{"epochs": 30, "lr": 3e-3, "optimizer": "adam"}``).
    control : bool
        Also train a second copy, from the same initialisation and by the same ``train_fn``, on the *true*
        labels: its row, ``"true labels (retrained)"``, shows how much maps move by retraining alone, the
        yardstick for the ``"permuted labels"`` row.

    Returns
    -------
    SanityResult
        ``test="labels"``; ``info`` holds each retrained model's accuracy on the labels it was trained on
        (Adebayo et al. train the permuted-label model past 95 %: if it is far lower, the model has not yet
        memorised its labels, and a longer training gives the test its intended form).
    """
    owner = "label_randomisation"
    view, resolved = _prepare(model, inputs, method, method_options, reduce, owner, forward_args=forward_args,
                              forward_kwargs=forward_kwargs, output=output)
    fixed = fixed_arguments(owner, forward_args, forward_kwargs, output)
    seed = check_seed(seed)
    train_x, train_y = _check_train_data(train_data, several=train_fn is not None)
    train = trainer(train_fn, train_options, owner=owner, required=("epochs", "lr"))
    target = resolve_target_in(view, target, batch_size=batch_size, keep_callable=True)

    def maps_of(m: nn.Module) -> torch.Tensor:
        a = explain_rows(resolved.bind(m), view, view.x, target, owner=owner)
        return attribution_maps(view.user_inputs, a, reduce, input_index)

    original = maps_of(model)
    measures = similarity_functions(similarities, original)
    permutation = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    runs = [("true labels (retrained)", train_y)] if control else []
    runs.append(("permuted labels", train_y[permutation.to(train_y.device)]))
    names, rows, info = [], [], {}
    for name, labels in runs:
        start = copy.deepcopy(model)
        reinitialise_owners(start, parameter_owners(start, ""), seed, init)
        trained = train(trainable(start, fixed), train_x, labels, seed).eval()
        info[f"training accuracy, {name}"] = round(_accuracy(trained, train_x, labels, batch_size), 4)
        maps = maps_of(inner(trained))
        names.append(name)
        rows.append(compare_maps(measures, original, maps))
    return SanityResult("labels", resolved.label, tuple(names), tuple(measures), torch.stack(rows, dim=1),
                        info)


# -- helpers ---------------------------------------------------------------------------------------------------
def _prepare(model, inputs, method, method_options, reduce, owner, **call):
    """The checks every sanity check starts with (the model first, before any forward pass), its view of the
    inputs and the resolved method."""
    check_model(model)  # before any forward pass: a refused model is left as it was
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner} re-initialises the model's parameters, so the model must be an nn.Module; a "
                        f"function ({type(model).__name__}) hides them")
    check_batch(inputs)
    check_reduce("reduce", reduce)
    view = model_inputs(model, inputs, integers=True, **call)
    resolved = resolve_method(method, method_options)
    refuse_options_for_callable(resolved, view.method_options, owner)
    return view, resolved


def _check_train_data(train_data, *, several: bool) -> tuple:
    """(inputs, labels); the inputs one tensor, or with ``several`` (a user's train_fn) a tuple of tensors."""
    pair = isinstance(train_data, (tuple, list)) and len(train_data) == 2
    x = train_data[0] if pair else None
    multi = isinstance(x, (tuple, list)) and len(x) > 0 and all(isinstance(t, torch.Tensor) for t in x)
    if multi and not several:
        raise TypeError("train_data holds several inputs; the default trainer (tribute.training.fit) trains on one "
                        "input tensor: pass train_fn= that trains the model on its inputs")
    if not (pair and (multi or isinstance(x, torch.Tensor)) and isinstance(train_data[1], torch.Tensor)):
        raise TypeError("train_data must be a pair of tensors (train_inputs, train_labels)")
    y = train_data[1]
    first = x[0] if multi else x
    if first.dim() == 0 or first.shape[0] == 0:
        raise ValueError("train_data is empty: label randomisation needs training samples")
    if multi and any(t.dim() == 0 or t.shape[0] != first.shape[0] for t in x):
        raise ValueError(f"train_data inputs disagree in their number of samples: {[tuple(t.shape) for t in x]}")
    if y.dim() != 1 or y.shape[0] != first.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"train_data labels must be a 1-D integer tensor of length {first.shape[0]}, got "
                         f"{tuple(y.shape)} {y.dtype}")
    return (tuple(x) if multi else x), y


@torch.no_grad()
def _accuracy(model: nn.Module, x, y: torch.Tensor, batch_size: int | None) -> float:
    """Accuracy of ``model`` (called on one tensor or one tensor per input) on ``(x, y)``."""
    xs = tuple(x) if isinstance(x, tuple) else (x,)
    size = batch_size or 256
    chunks = zip(*(t.split(size) for t in xs), strict=True)
    correct = sum(int((model(*c).argmax(1) == t).sum()) for c, t in zip(chunks, y.split(size), strict=True))
    return correct / len(y)


def similarity_functions(similarities, maps: torch.Tensor | None = None) -> dict[str, Callable]:
    """Per-sample similarity measures by name: a sequence of names, or a dict name -> name or callable.

    Names: ``"spearman"``, ``"spearman_abs"`` (Spearman's ρ of the absolute values), ``"ssim"``, ``"hog"``,
    ``"pearson"`` (:mod:`tribute.metrics.similarity`, with its defaults: an 11 × 11 Gaussian SSIM window, HOG
    cells of 8 × 8 pixels in blocks of 2 × 2 cells).

    SSIM compares the maps each scaled to [0, 1] by its own minimum and maximum (:func:`unit_range`; dynamic
    range L = 1): a randomised model's maps are often orders of magnitude larger or smaller than the trained
    model's, and SSIM of the raw maps, whose L spans both, would measure that scale instead of the structure
    (the other three measures do not depend on scale).  This is our choice; the paper does not say.

    ``None``: the four of Adebayo et al. for image maps (N, 1, H, W) of at least 16 × 16 pixels (one HOG
    block); the two Spearman correlations otherwise: other shapes, several channels (``reduce=None``), or
    small maps (a digit's 8 × 8 map has room for neither SSIM's window nor a HOG block; pass e.g.
    ``{"ssim": functools.partial(ssim, window=7, sigma=0.8)}`` to use them anyway).  A callable takes two
    (N, ...) batches of maps and returns (N,).
    """
    from . import similarity as sim

    known = {
        "spearman": sim.spearman,
        "spearman_abs": lambda a, b: sim.spearman(a, b, absolute=True),
        "ssim": lambda a, b: sim.ssim(unit_range(a), unit_range(b), data_range=1.0),
        "hog": sim.hog_similarity,
        "pearson": sim.pearson,
    }
    if similarities is None:
        images = maps is not None and maps.dim() == 4 and maps.shape[1] == 1 and min(maps.shape[-2:]) >= 16
        similarities = MAP_SIMILARITIES if images else FLAT_SIMILARITIES
    if isinstance(similarities, dict):
        items = list(similarities.items())
    elif isinstance(similarities, str) or not isinstance(similarities, Sequence):
        raise TypeError("similarities must be a sequence of names or a dict name -> callable")
    else:
        items = [(s, s) for s in similarities]
    if not items:
        raise ValueError("similarities is empty: name at least one similarity measure")
    out: dict[str, Callable] = {}
    for name, fn in items:
        if isinstance(fn, str):
            if fn not in known:
                raise ValueError(f"unknown similarity {fn!r}; known: {', '.join(map(repr, known))} "
                                 "(or a callable (maps_a, maps_b) -> (N,))")
            fn = known[fn]
        elif not callable(fn):
            raise TypeError(f"similarity {name!r} must be a name or a callable, got {type(fn).__name__}")
        out[str(name)] = fn
    return out


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] by its own minimum and maximum (a constant map becomes 0)."""
    flat = maps.flatten(1)
    low = per_sample(flat.amin(1), maps)
    span = per_sample(flat.amax(1) - flat.amin(1), maps)
    return (maps - low) / torch.where(span > 0, span, torch.ones_like(span))


def as_maps(inputs: torch.Tensor, attributions, reduce: str | None) -> torch.Tensor:
    """Checked attributions (:func:`check_attributions`) as maps by ``reduce``, or as they are for ``None``."""
    a = check_attributions(inputs, attributions)
    return a if reduce is None else as_map(a, reduce)


def compare_maps(measures: dict[str, Callable], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(S, N) float64 on the CPU: each measure between the maps a[i] and b[i], its output checked."""
    rows = []
    for name, fn in measures.items():
        s = fn(a, b)
        if not isinstance(s, torch.Tensor) or s.shape != (a.shape[0],):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"similarity {name!r} must return one value per sample, shape ({a.shape[0]},); got {got}")
        rows.append(s.detach().to("cpu", torch.float64))
    return torch.stack(rows)


__all__ = ["SanityResult", "label_randomisation", "parameter_randomisation"]
