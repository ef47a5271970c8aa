"""Re-initialising a model's layers: the steps of Adebayo et al.'s (2018) parameter randomisation test.

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
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from ..core.forward_args import ForwardArgs

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
MODES = ("cascading", "independent")

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


def parameter_owners(module: nn.Module, prefix: str) -> list[str]:
    """Full names of ``module`` (named ``prefix``) and its descendants that own parameters directly."""
    return [
        f"{prefix}.{n}" if prefix and n else prefix or n
        for n, m in module.named_modules()
        if next(iter(m.parameters(recurse=False)), None) is not None
    ]


def reinitialise_owners(model: nn.Module, owners: Sequence[str], seed: int, init: Init | None) -> None:
    """Re-initialise the parameters each named module owns, each module from its own seeded stream."""
    for name in owners:
        (init or reinitialise)(name, model.get_submodule(name), layer_generator(seed, name))


# -- layers ----------------------------------------------------------------------------------------------------
def _forward_order(model: nn.Module, inputs, forward_args=None, forward_kwargs=None) -> list[str]:
    """Parameter-owning modules of ``model`` in the order their forward finishes on the first sample of
    ``inputs`` (a tensor or a tuple of tensors, with the first sample's forward arguments), in eval mode.

    Registers hooks on ``model`` and switches it to eval mode for the pass: call it on a copy only.
    """
    xs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    args, kwargs = ForwardArgs(forward_args, forward_kwargs, xs[0].shape[0]).take(torch.zeros(1, dtype=torch.long), 1)
    finished: list[str] = []
    handles = []

    def hook_for(n: str):
        def hook(_module, _args, _output):
            if n not in finished:
                finished.append(n)
        return hook

    modes = [(m, m.training) for m in model.modules()]
    try:
        for n in parameter_owners(model, ""):
            handles.append(model.get_submodule(n).register_forward_hook(hook_for(n)))
        model.eval()
        with torch.no_grad():
            model(*(t[:1] for t in xs), *args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return finished


def parameter_layers(model: nn.Module, inputs, *, forward_args=None, forward_kwargs=None) -> list[str]:
    """Names of the modules that own parameters and run in ``model``'s forward pass, from input to output.

    Ordered by when each module's forward finishes on the first sample of ``inputs`` (a tensor or a tuple of
    tensors; ``forward_args`` / ``forward_kwargs`` as for the attribution methods) (its first call, if called
    several times), in eval mode.  The pass runs on a deep copy: ``model`` is not touched.  The root model's
    own parameters, if any, are named ``""``.
    """
    check_batch(inputs)
    return _forward_order(copy.deepcopy(model), inputs, forward_args, forward_kwargs)


def _plan(model: nn.Module, inputs, layers: Sequence[str] | None, forward: tuple = (None, None)
          ) -> list[tuple[str, list[str]]]:
    """The steps, top (output side) first: (step name, the parameter-owning modules it re-initialises).

    Default: one step per parameter-owning module of the forward pass (its own parameters only).  User names
    are validated and kept in their order; a name re-initialises every parameter-owning module inside it.
    """
    if layers is None:
        found = _forward_order(model, inputs, *forward)
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
                             f"(modules with parameters: {', '.join(n for n in parameter_owners(model, '') if n)})")
        if any(name == step for step, _ in plan):
            raise ValueError(f"layers: {name!r} is named twice")
        owners = parameter_owners(modules[name], name)
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
    seed = check_seed(seed)
    if layers is None:
        raise TypeError("layers must be given: the module names to re-initialise ([''] for the whole model)")
    plan = _plan(model, None, layers)
    out = copy.deepcopy(model)
    for _, owners in plan:
        reinitialise_owners(out, owners, seed, init)
    return out


def randomisation_steps(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    mode: str = "cascading",
    layers: Sequence[str] | None = None,
    seed: int = 0,
    init: Init | None = None,
    forward_args=None,
    forward_kwargs=None,
) -> Iterator[tuple[str, nn.Module]]:
    """The steps of the parameter randomisation test, as an iterator of ``(layer name, randomised model)``.

    ``mode="cascading"``: step k has layers[0], …, layers[k] re-initialised (top layer first); ``"independent"``:
    step k has only layers[k] re-initialised.  ``layers=None`` takes every parameter-owning module of the
    forward pass (:func:`parameter_layers`), top first, each step re-initialising that module's own
    parameters; ``inputs`` (one sample suffices; a tensor or a tuple of tensors, with ``forward_args`` /
    ``forward_kwargs`` as for the attribution methods) find that order.

    The yielded model is one deep copy of ``model``, changed in place from step to step (a model of any size
    costs one copy): use it before asking for the next step, or deep-copy it to keep it.  ``model`` itself is
    never modified.  The arguments are checked when this is called, before any step.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    seed = check_seed(seed)
    if init is not None and not callable(init):
        raise TypeError(f"init must be a callable (name, module, generator) or None, got {type(init).__name__}")
    if layers is None:
        check_batch(inputs)
    work = copy.deepcopy(model)
    plan = _plan(work, inputs, layers, (forward_args, forward_kwargs))  # checked now, not at the first step
    return _steps(work, plan, mode, seed, init)


def _steps(work: nn.Module, plan, mode: str, seed: int, init: Init | None) -> Iterator[tuple[str, nn.Module]]:
    for name, owners in plan:
        if mode == "independent":  # the owners' own tensors, to put back after the step
            saved = [(t, t.detach().clone()) for o in owners for t in _own_tensors(work.get_submodule(o))]
        reinitialise_owners(work, owners, seed, init)
        yield name, work
        if mode == "independent":
            with torch.no_grad():
                for t, value in saved:
                    t.copy_(value)


def _own_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]



# -- checks shared with the sanity checks ---------------------------------------------------------------------
def check_batch(inputs) -> None:
    """A non-empty batch of samples (the sanity checks explain at least one): a tensor or a tuple of tensors."""
    xs = inputs if isinstance(inputs, (tuple, list)) and len(inputs) > 0 else (inputs,)
    for t in xs:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"inputs must be a tensor or a tuple of tensors (batch first), got {type(t).__name__}")
        if t.dim() == 0 or t.shape[0] == 0:
            raise ValueError(f"inputs is empty (shape {tuple(t.shape)}): a sanity check needs at least one sample")


def check_seed(seed) -> int:
    """A seed of the re-initialisation: an int >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return seed



__all__ = ["parameter_layers", "randomisation_steps", "randomised_copy"]
