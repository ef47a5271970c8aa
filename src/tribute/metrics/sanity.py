"""Sanity checks for saliency maps (Adebayo et al. 2018): does the explanation depend on the model at all?

An explanation that stays the same when the model's learned parameters are destroyed, or when the model
learned nothing but noise, cannot explain what the model learned.  Adebayo, Gilmer, Muelly, Goodfellow,
Hardt and Kim, *Sanity Checks for Saliency Maps* (NeurIPS 2018), propose two randomisation tests; seed 000
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

What counts as a *layer*: every module that owns parameters directly (``Conv*d``, ``Linear``, batch/layer/
group norm, embeddings, …), ordered by when its forward pass finishes on one input (so a head registered
before the body is still "top").  Modules never called in the forward pass are left out (re-initialising
them cannot change an explanation).  A name given in ``layers=`` may also be a block (any submodule, e.g.
``"layer4"``, as Adebayo et al. randomise Inception's blocks): every parameter-owning module inside it is
re-initialised in that step.

How a layer is re-initialised (:func:`reinitialise`; no global random state is touched, every layer draws
from its own ``torch.Generator`` seeded from ``seed`` and the layer's name, so a layer gets the same new
values in the cascading and the independent test and whatever the other layers are):

- a module that owns a weight of two or more dimensions (``Linear``, ``Conv*d``, ``ConvTranspose*d``,
  ``Bilinear``, attention projections, ...): every parameter it owns drawn from U(−1/√fan_in, 1/√fan_in),
  fan_in = weight.shape[1] · ∏ kernel sizes — PyTorch's default initialisation of ``Linear`` and ``Conv``
  layers (Kaiming-uniform with a = √5 for the weight, and the same bound for the bias), i.e. the
  distribution the untrained layer came from;
- normalisation layers (batch, instance, layer, group norm): their affine parameters reset to their
  initial values γ = 1, β = 0, as Adebayo et al. reset every trainable variable to its initialiser; their
  running statistics are buffers, not parameters, and are kept (the normalisation by the trained
  statistics remains, the learned affine map goes);
- ``Embedding``: N(0, 1), PyTorch's default; ``PReLU``: its initial slope 0.25;
- any other module with parameters but no weight matrix: an error naming it — pass ``init=`` (a callable
  ``init(name, module, generator)`` that re-initialises the parameters ``module`` owns, in place) or leave it
  out of ``layers=``.

The user's model is never modified: the checks work on one deep copy (:func:`randomisation_steps`).
Targets are fixed once, on the trained model (``target=None``: its predicted class), and the same class is
explained in every randomised model.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.reduce import check_reduce
from .common import as_explainer, as_map, check_attributions, resolve_target

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
MODES = ("cascading", "independent")
MAP_SIMILARITIES = ("spearman", "spearman_abs", "ssim", "hog")
FLAT_SIMILARITIES = ("spearman", "spearman_abs")

Init = Callable[[str, nn.Module, torch.Generator], None]


# -- re-initialisation -----------------------------------------------------------------------------------------
def layer_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and a layer's name (the same layer draws the same values anywhere)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, key=str(seed).encode()[:64]).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def reinitialise(name: str, module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise in place the parameters ``module`` owns directly (not its children's); see the module doc.

    Values are drawn in float64 on the CPU with ``generator`` and copied to each parameter's dtype and device,
    so they do not depend on the model's device or precision.
    """
    own = dict(module.named_parameters(recurse=False))
    if not own:
        return

    def put(p: torch.Tensor, values: torch.Tensor) -> None:
        with torch.no_grad():
            p.copy_(values.to(dtype=p.dtype, device=p.device))

    def uniform(shape, bound: float) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)

    if isinstance(module, NORM_LAYERS):
        for pname, p in own.items():
            put(p, torch.full(p.shape, 1.0 if pname == "weight" else 0.0, dtype=torch.float64))
        return
    if isinstance(module, nn.PReLU):
        put(own["weight"], torch.full(own["weight"].shape, 0.25, dtype=torch.float64))
        return
    if isinstance(module, nn.Embedding):
        put(own["weight"], torch.randn(own["weight"].shape, dtype=torch.float64, generator=generator))
        return
    matrices = [p for pname, p in sorted(own.items(), key=lambda kv: kv[0] != "weight") if p.dim() >= 2]
    if not matrices:
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) owns parameters {sorted(own)} but no weight matrix, so it "
            "has no default initialisation scale; pass init=callable(name, module, generator) or leave it out "
            "of layers="
        )
    w = matrices[0]
    fan_in = w.shape[1] * math.prod(w.shape[2:])
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    for p in own.values():
        put(p, uniform(p.shape, bound))


def _owners(module: nn.Module, prefix: str) -> list[str]:
    """Full names of ``module`` (named ``prefix``) and its descendants that own parameters directly."""
    return [
        f"{prefix}.{n}" if prefix and n else prefix or n
        for n, m in module.named_modules()
        if next(iter(m.parameters(recurse=False)), None) is not None
    ]


def _reinitialise_owners(model: nn.Module, owners: Sequence[str], seed: int, init: Init | None) -> None:
    """Re-initialise the parameters each named module owns, each module from its own seeded stream."""
    for name in owners:
        (init or reinitialise)(name, model.get_submodule(name), layer_generator(seed, name))


# -- layers ----------------------------------------------------------------------------------------------------
def _forward_order(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Parameter-owning modules of ``model`` in the order their forward finishes on ``inputs[:1]`` (eval mode).

    Registers hooks on ``model`` and switches it to eval mode for the pass: call it on a copy only.
    """
    finished: list[str] = []
    handles = []

    def hook_for(n: str):
        def hook(_module, _args, _output):
            if n not in finished:
                finished.append(n)
        return hook

    modes = [(m, m.training) for m in model.modules()]
    try:
        for n in _owners(model, ""):
            handles.append(model.get_submodule(n).register_forward_hook(hook_for(n)))
        model.eval()
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return finished


def parameter_layers(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Names of the modules that own parameters and run in ``model``'s forward pass, from input to output.

    Ordered by when each module's forward finishes on ``inputs[:1]`` (its first call, if called several
    times), in eval mode.  The pass runs on a deep copy: ``model`` is not touched.  The root model's own
    parameters, if any, are named ``""``.
    """
    _check_inputs(inputs)
    return _forward_order(copy.deepcopy(model), inputs)


def _plan(model: nn.Module, inputs: torch.Tensor | None, layers: Sequence[str] | None) -> list[tuple[str, list[str]]]:
    """The steps, top (output side) first: (step name, the parameter-owning modules it re-initialises).

    Default: one step per parameter-owning module of the forward pass (its own parameters only).  User names
    are validated and kept in their order; a name re-initialises every parameter-owning module inside it.
    """
    if layers is None:
        found = _forward_order(model, inputs)
        if not found:
            raise ValueError("the model has no parameters that its forward pass uses: nothing to randomise")
        return [(name, [name]) for name in reversed(found)]
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of module names (top layer first), got {type(layers).__name__}")
    if not layers:
        raise ValueError("layers is empty: name at least one module to randomise")
    modules = dict(model.named_modules())
    plan: list[tuple[str, list[str]]] = []
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"layers must hold module names (str), got {type(name).__name__}")
        if name not in modules:
            near = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
            raise ValueError(f"layers: the model has no module named {name!r}{hint} "
                             f"(modules with parameters: {', '.join(n for n in _owners(model, '') if n)})")
        if any(name == step for step, _ in plan):
            raise ValueError(f"layers: {name!r} is named twice")
        owners = _owners(modules[name], name)
        if not owners:
            raise ValueError(f"layers: module {name!r} ({type(modules[name]).__name__}) has no parameters to "
                             "randomise")
        plan.append((name, owners))
    return plan


def randomised_copy(model: nn.Module, layers: Sequence[str], *, seed: int = 0, init: Init | None = None) -> nn.Module:
    """A deep copy of ``model`` with every parameter inside the named ``layers`` re-initialised (module doc).

    ``layers=[""]`` re-initialises the whole model.  Each module draws the same values as in
    :func:`randomisation_steps` with the same ``seed``.
    """
    seed = _check_seed(seed)
    if layers is None:
        raise TypeError("layers must be given: the module names to re-initialise ([''] for the whole model)")
    plan = _plan(model, None, layers)
    out = copy.deepcopy(model)
    for _, owners in plan:
        _reinitialise_owners(out, owners, seed, init)
    return out


def randomisation_steps(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    mode: str = "cascading",
    layers: Sequence[str] | None = None,
    seed: int = 0,
    init: Init | None = None,
) -> Iterator[tuple[str, nn.Module]]:
    """The steps of the parameter randomisation test, as an iterator of ``(layer name, randomised model)``.

    ``mode="cascading"``: step k has layers[0], …, layers[k] re-initialised (top layer first); ``"independent"``:
    step k has only layers[k] re-initialised.  ``layers=None`` takes every parameter-owning module of the
    forward pass (:func:`parameter_layers`), top first, each step re-initialising that module's own
    parameters; ``inputs`` (one sample suffices) find that order.

    The yielded model is one deep copy of ``model``, changed in place from step to step (a model of any size
    costs one copy): use it before asking for the next step, or deep-copy it to keep it.  ``model`` itself is
    never modified.  The arguments are checked when this is called, before any step.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    seed = _check_seed(seed)
    if init is not None and not callable(init):
        raise TypeError(f"init must be a callable (name, module, generator) or None, got {type(init).__name__}")
    if layers is None:
        _check_inputs(inputs)
    work = copy.deepcopy(model)
    plan = _plan(work, inputs, layers)  # checked now, not when the first step is asked for
    return _steps(work, plan, mode, seed, init)


def _steps(work: nn.Module, plan, mode: str, seed: int, init: Init | None) -> Iterator[tuple[str, nn.Module]]:
    for name, owners in plan:
        if mode == "independent":  # the owners' own tensors, to put back after the step
            saved = [(t, t.detach().clone()) for o in owners for t in _own_tensors(work.get_submodule(o))]
        _reinitialise_owners(work, owners, seed, init)
        yield name, work
        if mode == "independent":
            with torch.no_grad():
                for t, value in saved:
                    t.copy_(value)


def _own_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


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
        The explanation method (see :func:`tribute.metrics.common.as_explainer`); ``method_options`` are
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

    Returns
    -------
    SanityResult
        ``scores[s, k, i]``: similarity s between the trained and step-k maps of sample i.
    """
    _check_inputs(inputs)
    check_reduce("reduce", reduce)
    explainer = as_explainer(method, **(method_options or {}))
    steps = randomisation_steps(model, inputs, mode=mode, layers=layers, seed=seed, init=init)
    target = _fixed_target(model, inputs, target, batch_size)
    original = as_maps(inputs, explainer(model, inputs, target), reduce)
    measures = similarity_functions(similarities, original)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"{mode} randomisation", unit="layer")
    names, rows = [], []
    for name, randomised in steps:
        maps = as_maps(inputs, explainer(randomised, inputs, target), reduce)
        names.append(name)
        rows.append(compare_maps(measures, original, maps))
    return SanityResult(mode, _method_name(method), tuple(names), tuple(measures), torch.stack(rows, dim=1))


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
    method, target, similarities, reduce, seed, init, batch_size, method_options
        As in :func:`parameter_randomisation`.
    train_data : (Tensor, Tensor)
        The training inputs (M, ...) and their integer labels (M,).
    train_fn : callable, optional
        ``train_fn(model_copy, train_inputs, train_labels)`` trains the copy and returns it (or None when it
        trained ``model_copy`` in place); the result is put in eval mode.  Default: :func:`tribute.training.fit`
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
    _check_inputs(inputs)
    check_reduce("reduce", reduce)
    seed = _check_seed(seed)
    train_x, train_y = _check_train_data(train_data)
    train = _trainer(train_fn, seed, train_options)
    explainer = as_explainer(method, **(method_options or {}))
    target = _fixed_target(model, inputs, target, batch_size)
    original = as_maps(inputs, explainer(model, inputs, target), reduce)
    measures = similarity_functions(similarities, original)
    permutation = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    runs = [("true labels (retrained)", train_y)] if control else []
    runs.append(("permuted labels", train_y[permutation.to(train_y.device)]))
    names, rows, info = [], [], {}
    for name, labels in runs:
        start = copy.deepcopy(model)
        _reinitialise_owners(start, _owners(start, ""), seed, init)
        trained = train(start, train_x, labels)
        trained = (start if trained is None else trained).eval()
        info[f"training accuracy, {name}"] = round(_accuracy(trained, train_x, labels, batch_size), 4)
        maps = as_maps(inputs, explainer(trained, inputs, target), reduce)
        names.append(name)
        rows.append(compare_maps(measures, original, maps))
    return SanityResult("labels", _method_name(method), tuple(names), tuple(measures), torch.stack(rows, dim=1),
                        info)


# -- helpers ---------------------------------------------------------------------------------------------------
def _check_inputs(inputs) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor (batch first), got {type(inputs).__name__}")
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"inputs is empty (shape {tuple(inputs.shape)}): a sanity check needs at least one sample")


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return seed


def _check_train_data(train_data) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(train_data, (tuple, list)) and len(train_data) == 2
            and all(isinstance(t, torch.Tensor) for t in train_data)):
        raise TypeError("train_data must be a pair of tensors (train_inputs, train_labels)")
    x, y = train_data
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError("train_data is empty: label randomisation needs training samples")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"train_data labels must be a 1-D integer tensor of length {x.shape[0]}, got "
                         f"{tuple(y.shape)} {y.dtype}")
    return x, y


def _trainer(train_fn, seed: int, train_options: dict | None) -> Callable:
    if train_fn is not None:
        if not callable(train_fn):
            raise TypeError(f"train_fn must be a callable (model, inputs, labels) -> model, got "
                            f"{type(train_fn).__name__}")
        if train_options:
            raise TypeError("train_options are options of the built-in trainer tribute.training.fit; a train_fn "
                            "takes its own")
        return train_fn
    options = dict(train_options or {})
    missing = [k for k in ("epochs", "lr") if k not in options]
    if missing:
        raise TypeError(f"label_randomisation trains with tribute.training.fit unless train_fn= is given: pass "
                        f"train_options with {' and '.join(missing)} (e.g. {{'epochs': 30, 'lr': 0.003, "
                        "'optimizer': 'adam'}), or a train_fn(model, inputs, labels) -> model")
    if "seed" in options:
        raise TypeError("train_options: the trainer's seed is label_randomisation's seed=")
    from ..training import fit

    options = {"progress": False, **options, "seed": seed}

    def train(model, x, y):
        fit(model, (x, y), **options)
        return model
    return train


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None) -> float:
    correct = sum(int((model(c).argmax(1) == t).sum()) for c, t in zip(x.split(batch_size or 256),
                                                                       y.split(batch_size or 256), strict=True))
    return correct / len(y)


def _fixed_target(model: nn.Module, inputs: torch.Tensor, target, batch_size: int | None):
    """Class indices fixed on the trained model; a callable target (a contrast) is passed on as it is."""
    if callable(target) and not isinstance(target, torch.Tensor):
        return target
    return resolve_target(model, inputs, target, batch_size=batch_size)


def _method_name(method) -> str:
    if isinstance(method, str):
        return method
    return getattr(method, "name", None) or getattr(method, "__name__", None) or type(method).__name__


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
    low = flat.amin(1).view(-1, *[1] * (maps.dim() - 1))
    span = (flat.amax(1) - flat.amin(1)).view(-1, *[1] * (maps.dim() - 1))
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


__all__ = ["SanityResult", "label_randomisation", "parameter_layers", "parameter_randomisation", "randomisation_steps",
           "randomised_copy"]
