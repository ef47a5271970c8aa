"""Etmann et al.'s alignment between an input and its saliency map (Etmann et al. 2019; Nielsen et al. 2022, §5.2).

Etmann, Lunz, Maass & Schönlieb 2019, "On the Connection Between Adversarial Robustness and Saliency Map
Interpretability" (ICML), define the alignment of the input x with the saliency map ∇S(x) of the predicted
class's logit S as

    α(x) = |⟨x, ∇S(x)⟩| / ‖∇S(x)‖₂,

the length of x's projection on the saliency direction.  For a linear binary classifier S(x) = ⟨w, x⟩ this is
|⟨w, x⟩| / ‖w‖, the distance of x to the decision boundary: robustness and alignment coincide; for networks
the paper bounds one by the other, and adversarially trained networks show higher alignment (Nielsen et al. 2022,
Fig 4).
α has the units of x; the scale-free variant

    α(x) / ‖x‖₂ = |cos ∠(x, ∇S(x))| ∈ [0, 1]

compares inputs of different norms.  Both are computed with tribute's gradient, so ``input_transform`` (x in
pixel space; the gradient is with respect to the pixels) and ``target`` follow the library's conventions.  For a
model taking several inputs, x and ∇S(x) are the vectors of all of a sample's inputs end to end
(``input_index=`` takes one input's), and ``forward_args=`` / ``forward_kwargs=`` / ``output=`` are those of the
attribution methods.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.engine import check_model
from .common import check_attributions, model_inputs
from .methods import resolve_method
from .view_methods import check_input_index, explain_rows, refuse_options_for_callable


def alignment(model: nn.Module, inputs, target=None, *, method="gradient", input_transform: Callable | None = None,
              batch_size: int | None = None, input_index: int | None = None, forward_args=None, forward_kwargs=None,
              output=None) -> torch.Tensor:
    """Etmann et al.'s alignment α(x) = |⟨x, ∇S(x)⟩| / ‖∇S(x)‖₂, one value per sample, shape (N,).

    Parameters
    ----------
    model : nn.Module
        The classifier (in eval mode, as for any attribution).
    inputs : Tensor or tuple of Tensors
        (N, ...) in pixel space; one tensor per input for a model taking several: then x and ∇S(x) are the
        vectors of all of a sample's inputs, end to end (the gradient with respect to all of them), unless
        ``input_index`` names one input.
    target : None, int, tensor or callable
        The score S (library convention); None (default): the predicted class's logit, as in the paper.
    method : str, Method or callable
        The saliency map; default ``"gradient"`` (the paper's ∇S).  Any method returning the input's shape can
        be given (then α measures the alignment of x with that map).
    input_transform : callable, optional
        Applied before the model (e.g. :class:`tribute.Normalize`); x and the map stay in pixel space.
    batch_size : int, optional
        Rows through the model at once.
    input_index : int, optional
        With several inputs: α of this input and its part of the saliency map only.
    forward_args, forward_kwargs, output
        As for the attribution methods: extra arguments of every forward pass (tensors per sample,
        ``tribute.constant`` for one shared by all), and which part of a structured output holds the scores.

    Raises
    ------
    ValueError
        If a sample's saliency map is exactly zero (α is 0/0 there; a dead ReLU network, or a flat score).
    """
    x, s, dtype = _input_and_saliency("alignment", model, inputs, target, method, input_transform, batch_size,
                                      input_index, forward_args=forward_args, forward_kwargs=forward_kwargs,
                                      output=output)
    s_norm = s.norm(dim=1)
    _refuse_zero(s_norm, "saliency map", "alignment")
    return ((x * s).sum(dim=1).abs() / s_norm).to(dtype)


def cosine_alignment(model: nn.Module, inputs, target=None, *, method="gradient",
                     input_transform: Callable | None = None, batch_size: int | None = None,
                     input_index: int | None = None, forward_args=None, forward_kwargs=None,
                     output=None) -> torch.Tensor:
    """The scale-free alignment α(x) / ‖x‖₂ = |cos ∠(x, ∇S(x))| ∈ [0, 1], shape (N,).

    Options as :func:`alignment`.  Raises ValueError for an all-zero input (no direction) or saliency map.
    """
    x, s, dtype = _input_and_saliency("cosine_alignment", model, inputs, target, method, input_transform,
                                      batch_size, input_index, forward_args=forward_args,
                                      forward_kwargs=forward_kwargs, output=output)
    s_norm, x_norm = s.norm(dim=1), x.norm(dim=1)
    _refuse_zero(s_norm, "saliency map", "cosine_alignment")
    _refuse_zero(x_norm, "input", "cosine_alignment")
    return ((x * s).sum(dim=1).abs() / (s_norm * x_norm)).clamp(max=1.0).to(dtype)


def _input_and_saliency(owner, model, inputs, target, method, input_transform, batch_size, input_index, **call):
    """(x, ∇S(x), dtype): each sample's input and saliency map as rows (N, D) in float64 (all inputs end to
    end, or input ``input_index``), and the inputs' dtype."""
    check_model(model)  # before any forward pass: a refused model is left as it was
    view = model_inputs(model, inputs, **call)
    given = {"input_transform": input_transform, "batch_size": batch_size}
    resolved = resolve_method(method, {k: v for k, v in given.items() if v is not None})
    refuse_options_for_callable(resolved, view.method_options, owner)
    saliency = explain_rows(resolved.bind(model), view, view.x, target, owner=owner)
    parts = (saliency,) if view.layout.single else saliency
    if not view.layout.single and (not isinstance(saliency, (tuple, list)) or len(saliency) != view.layout.count):
        view.pack_attributions(saliency)  # raises: one attribution per input is needed
    for x, a in zip(view.inputs, parts, strict=True):
        a = check_attributions(x, a)
        if a.shape != x.shape:
            raise ValueError(f"the alignment needs a saliency map of the input's shape {tuple(x.shape)}; the "
                             f"method returned {tuple(a.shape)}")
    if input_index is not None:
        k = check_input_index(input_index, view.layout.count)
        x, s = view.inputs[k].detach(), parts[k].detach()
    else:
        x, s = view.x, view.pack_attributions(saliency)
    wide = torch.float64  # the inner product of two long vectors: accumulate in double precision
    return x.flatten(1).to(wide), s.flatten(1).to(wide), view.x.dtype


def _refuse_zero(norms: torch.Tensor, what: str, owner: str) -> None:
    zero = norms == 0
    if bool(zero.any()):
        rows = zero.nonzero().flatten().tolist()
        raise ValueError(f"{owner}: the {what} is zero for samples {rows[:10]}{'…' if len(rows) > 10 else ''}, "
                         "where the alignment is undefined")


__all__ = ["alignment", "cosine_alignment"]
