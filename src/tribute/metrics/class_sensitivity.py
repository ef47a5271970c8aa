"""Class sensitivity (Nielsen et al. 2022, §4.1 "Class-Invariant Behaviour", Fig 3): does the map change with the class?

For a sample x, its explained class t and another class c, the similarity (by default Spearman's rank
correlation) between the map for t and the map for c:

    ρ_c(x) = spearman(E(x; t), E(x; c)).

An explanation of *why class t* should differ from the explanation of *why class c*: a ρ near 1 means the
method shows the same thing whatever the class (Nielsen et al. 2022 finds this for most methods except Grad-CAM; guided
backpropagation's rectified backward pass reconstructs the image, Nie et al. 2018), a ρ near 0 a
class-sensitive map.  On the committed Fashion-MNIST CNN (tests/fixtures/fashion, 64 images × 9 other
classes) guided backpropagation gives a mean ρ of 0.84 and the plain gradient −0.10.

``others`` chooses the classes c compared with t, per sample:

- ``"all"``: every other class, in the order (t + 1) mod C, (t + 2) mod C, …, (t + C − 1) mod C (column k − 1
  holds class (t + k) mod C, C the number of outputs);
- ``"random"``: one other class drawn uniformly from the C − 1 others, from the sample's own seeded stream
  (:class:`tribute.core.randomness.SampleStreams`: the same class alone or in any batch);
- an int, a sequence of ints or a 1-D tensor: the same classes for every sample;
- a 2-D integer tensor (N, K): K classes for each sample.

Any input a model takes: ``inputs`` may be a tuple of tensors (a sample's maps of all its inputs are compared as
one vector, or one input's with ``input_index=``), with ``forward_args=`` / ``forward_kwargs=`` and ``output=`` as
for the attribution methods.

A pair whose other class equals the sample's own t is not a comparison: its entry is NaN and it is left out
of the mean.  A seeded stochastic method (SmoothGrad with ``seed=``) draws the same noise for a sample under
every class, since its streams are seeded from the sample's bytes: the maps differ by the class only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..core.engine import check_model
from ..core.randomness import SampleStreams
from ..core.reduce import check_reduce
from .common import model_inputs, resolve_target_in
from .methods import resolve_method
from .registry import METHOD, register_metric
from .sanity import compare_maps, similarity_functions
from .view_methods import attribution_maps, explain_rows, refuse_options_for_callable

#: attribution elements per call of the method; more classes than fit are explained in several calls
_ELEMENTS_PER_CALL = 2**24


def other_classes(targets: torch.Tensor, classes: int, others="all", *, inputs: torch.Tensor | None = None,
                  seed: int = 0) -> torch.Tensor:
    """(N, K) classes compared with each sample's ``targets`` (N,) for a model with ``classes`` outputs.

    See the module doc for ``others``; ``"random"`` needs ``inputs`` (each sample's stream is seeded from its
    bytes and ``seed``).
    """
    n = targets.shape[0]
    if isinstance(others, str):
        if others == "all":
            if classes < 2:
                raise ValueError("others='all' needs a model with at least 2 outputs")
            k = torch.arange(1, classes)
            return (targets[:, None] + k[None, :]) % classes
        if others == "random":
            if classes < 2:
                raise ValueError("others='random' needs a model with at least 2 outputs")
            if inputs is None:
                raise ValueError("others='random' needs the inputs (each sample's draw is seeded from its bytes)")
            u = SampleStreams(inputs, seed).draw("uniform", torch.arange(n), (1,), dtype=torch.float64,
                                                 device="cpu")[:, 0]
            shift = 1 + (u * (classes - 1)).long().clamp(max=classes - 2)
            return ((targets + shift) % classes)[:, None]
        raise ValueError(f"others must be 'all', 'random', an int, a sequence of ints or a tensor; got {others!r}")
    if isinstance(others, bool):
        raise TypeError("others must be 'all', 'random', an int, a sequence of ints or a tensor; got a bool")
    if isinstance(others, int):
        others = [others]
    if isinstance(others, Sequence):
        if not others or not all(isinstance(c, int) and not isinstance(c, bool) for c in others):
            raise ValueError(f"others must be a non-empty sequence of class indices (ints), got {others!r}")
        others = torch.tensor(list(others))
    if not isinstance(others, torch.Tensor):
        raise TypeError(f"others must be 'all', 'random', an int, a sequence of ints or a tensor; "
                        f"got {type(others).__name__}")
    if others.is_floating_point() or others.is_complex() or others.dtype == torch.bool:
        raise TypeError(f"others must hold integer class indices, got dtype {others.dtype}")
    others = others.detach().to("cpu", torch.long)
    if others.dim() == 1:
        others = others[None, :].expand(n, -1)
    if others.dim() != 2 or others.shape[0] != n or others.shape[1] == 0:
        raise ValueError(f"others as a tensor must be (K,) or (N, K) = ({n}, K) with K >= 1; "
                         f"got {tuple(others.shape)}")
    if bool((others < 0).any()) or bool((others >= classes).any()):
        raise ValueError(f"others: class indices must lie in [0, {classes - 1}] for a model with {classes} outputs; "
                         f"got {others.min().item()} … {others.max().item()}")
    return others


@register_metric("class_sensitivity", takes=METHOD, better="lower")
def class_sensitivity(
    model: nn.Module,
    inputs: torch.Tensor,
    method,
    target=None,
    *,
    others="all",
    similarity: str | Callable = "spearman",
    reduce: str | None = "sum",
    aggregate: str | None = "mean",
    seed: int = 0,
    batch_size: int | None = None,
    method_options: dict[str, Any] | None = None,
    input_index: int | None = None,
    forward_args: tuple | None = None,
    forward_kwargs: dict | None = None,
    output=None,
) -> torch.Tensor:
    """Similarity between each sample's map for its class and its maps for other classes (Nielsen et al. 2022, Fig 3).

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor or tuple of Tensors
        (N, ...) batch first; one tensor per input for a model taking several.
    method : str, Method or callable
        The explanation method (:func:`tribute.metrics.methods.resolve_method`); ``method_options`` go to a
        method name or class.
    target : None, int or 1-D tensor
        The class t of each sample (the true labels, say); ``None``: the model's prediction.
    others : "all", "random", int, sequence or tensor
        The classes compared with t (module doc).
    similarity : str or callable
        A name of :mod:`tribute.metrics.similarity` (``"spearman"``, ``"spearman_abs"``, ``"pearson"``,
        ``"ssim"``, ``"hog"``) or a callable ``(maps_a, maps_b) -> (N,)``.
    reduce : str or None
        How channels become a map (:data:`tribute.core.reduce.REDUCTIONS`); ``None``: the attributions as
        they are, every channel a feature.
    aggregate : "mean" or None
        ``"mean"``: (N,), the mean over the other classes (NaN pairs left out); ``None``: (N, K), one column
        per other class, in the order of :func:`other_classes`.
    seed : int
        Seeds ``others="random"``.
    batch_size : int, optional
        Rows per forward pass when fixing ``target=None``.
    input_index : int, optional
        With several inputs, compare the maps of this input only; default: each sample's maps of all its inputs
        as one vector (each input's map by ``reduce``, flattened, end to end).
    forward_args, forward_kwargs, output
        As for the attribution methods: extra arguments of every forward pass (tensors per sample, following
        their sample through the repeated batch; ``tribute.constant`` for one shared by all), and which part of
        a structured output holds the scores.

    Returns
    -------
    Tensor
        (N,) or (N, K), in the inputs' floating dtype (float32 for integer inputs), on their device; computed
        in float64.
    """
    check_model(model)  # before any forward pass: a refused model is left as it was
    for t in inputs if isinstance(inputs, (tuple, list)) and inputs else (inputs,):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"inputs must be a tensor or a tuple of tensors (batch first), got {type(t).__name__}")
        if t.dim() == 0 or t.shape[0] == 0:
            raise ValueError(f"inputs is empty (shape {tuple(t.shape)}): class sensitivity needs at least one sample")
    check_reduce("reduce", reduce)
    if aggregate not in ("mean", None):
        raise ValueError(f"aggregate must be 'mean' or None, got {aggregate!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    ((_, compare),) = similarity_functions({"similarity": similarity}).items()
    view = model_inputs(model, inputs, forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                        integers=True)
    resolved = resolve_method(method, method_options)
    refuse_options_for_callable(resolved, view.method_options, "class_sensitivity")
    explain = resolved.bind(model)
    targets = resolve_target_in(view, target, batch_size=batch_size).cpu()
    with torch.no_grad():
        classes = view.forward(view.x[:1], torch.zeros(1, dtype=torch.long)).shape[1]
    versus = other_classes(targets, classes, others, inputs=view.x, seed=seed)
    maps = _maps(view, explain, torch.cat([targets[None, :], versus.T]), reduce, input_index)  # (1 + K, N, *map)
    n, k = versus.shape
    # all K comparisons in one call of the (per-row) similarity: row j·N + i compares sample i with class j
    own = maps[0].expand(k, *maps.shape[1:]).flatten(0, 1)
    scores = compare_maps({"similarity": compare}, own, maps[1:].flatten(0, 1))[0].view(k, n).T.clone()
    scores[versus == targets[:, None]] = float("nan")
    out = scores.nanmean(dim=1) if aggregate == "mean" else scores
    x = view.x
    return out.to(x.device, x.dtype if x.is_floating_point() else torch.get_default_dtype())


def _maps(view, explain, all_targets: torch.Tensor, reduce, input_index) -> torch.Tensor:
    """(1 + K, N, *map): each sample's map for each row of ``all_targets`` (1 + K, N).

    The method explains the batch repeated once per class, class-major: one call for as many classes as fit in
    _ELEMENTS_PER_CALL, so small batches still fill the engine's chunks; each repeated row meets its own
    sample's forward arguments.
    """
    x = view.x
    n = x.shape[0]
    per_call = max(1, _ELEMENTS_PER_CALL // max(1, x[:1].numel() * n))
    maps = []
    for first in range(0, all_targets.shape[0], per_call):
        block = all_targets[first:first + per_call]
        rows = x.repeat(len(block), *([1] * (x.dim() - 1)))
        sample = torch.arange(n).repeat(len(block))
        a = explain_rows(explain, view, rows, block.reshape(-1).to(x.device), sample, owner="class_sensitivity")
        m = attribution_maps(view.user_rows(rows), a, reduce, input_index)
        maps.append(m.reshape(len(block), n, *m.shape[1:]))
    return torch.cat(maps)


__all__ = ["class_sensitivity", "other_classes"]
