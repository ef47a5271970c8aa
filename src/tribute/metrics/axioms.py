"""Axioms: completeness, sensitivity-n, input invariance and implementation invariance.

- **Completeness** (summation to delta, efficiency; Ancona et al. 2019, sensitivity-N): Σ_i R_i = S_c(x) − S_c(x̄).
  :func:`completeness_gap` returns Σ_i R_i − (S_c(x) − S_c(x̄)) per sample.
- **Sensitivity-n** (Ancona et al. 2019, Eq 8): for every subset x_S of n features,
  Σ_{i∈S} R_i = S_c(x) − S_c(x \\ x_S), where x \\ x_S sets the features of S to the baseline.  No method
  satisfies it for all n on a nonlinear model, so Ancona et al. measure, for each n, the Pearson correlation
  between the two sides over random subsets: :func:`sensitivity_n`.  At n = N (all features) there is one
  subset and Eq 8 is completeness (Eq 9).
- **Input invariance** (Kindermans et al. 2017, "The (un)reliability of saliency methods"): a constant shift
  of the input, x + m, absorbed by the first layer's bias (b' = b − W m) gives a model that computes the same
  function of the unshifted data; a method is input invariant when it attributes x on the model as it
  attributes x + m on the shifted model: :func:`input_invariance`.
- **Implementation invariance** (Sundararajan et al. 2017): functionally equal networks get equal
  attributions: :func:`implementation_invariance`.

The score S_c is the target's logit by default (``score="logit"``; the output the attribution explains, so
completeness can hold exactly) or its softmax probability.

Several inputs (``inputs`` a tuple): completeness and sensitivity-n take the features of all inputs together
(``input_index=None``: attributions a tuple, one tensor per input; Σ over all of them; ``baseline=`` one entry
per input or one for all) or of input k alone (``input_index=k``: the others keep their values, as forward
arguments would).  Input invariance shifts each input by its entry of ``shift`` (0: not shifted), and
implementation invariance compares the attributions of all inputs together.  ``forward_args=``,
``forward_kwargs=`` and ``output=`` mean what they mean for the methods, and the methods called here get them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import check_inputs, check_model, default_batch_size
from ..core.randomness import SampleStreams
from .common import ModelInputs, call_method, derived_seed, model_inputs, resolve_target_in
from .methods import resolve_method
from .perturbation import TargetScore, evaluate_rows, unit_ids
from .perturbed import Part, refuse_token_ids, select_part
from .registry import ATTRIBUTIONS, register_metric

DISTANCES = ("relative_l2", "l2", "max_abs")


def _setup(model: nn.Module, inputs, attributions, baseline, baseline_options, seed, batch_size, input_index,
           forward_args, forward_kwargs, output, metric: str) -> tuple[Part, torch.Tensor, torch.Tensor, int]:
    """The features moved (all inputs, or input ``input_index``), their attributions, their baseline (one entry
    per input or one for all, each resolved against its input) and the batch size."""
    view = model_inputs(model, inputs, forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                        integers=True)
    part = select_part(view, input_index)
    refuse_token_ids(part, metric)
    a = part.attributions(attributions)
    opt.optional(opt.integer(0))("seed", seed)
    opt.optional(opt.integer(1))("batch_size", batch_size)

    def resolve(v, t, k):
        return make_baseline(check_baseline("baseline", v), t, part.entry("baseline_options", baseline_options, k),
                             seed)
    base = part.option("baseline", baseline, resolve)
    return part, a, base.detach(), batch_size or default_batch_size(view.x)


@register_metric("completeness_gap", takes=ATTRIBUTIONS, better="lower", absolute=True)
def completeness_gap(model: nn.Module, inputs, attributions, target=None, *,
                     baseline=0, baseline_options: dict | None = None, score: str = "logit",
                     seed: int | None = None, batch_size: int | None = None, input_index: int | None = None,
                     forward_args=None, forward_kwargs=None, output=None) -> torch.Tensor:
    """Σ_i R_i − (S_c(x) − S_c(x̄)) per sample (Ancona et al. 2019, Eq 8 at n = N).

    Parameters
    ----------
    model, inputs, attributions, target
        Attributions of the input's shape or (N, 1, H, W) maps (their sum is the same); ``target`` as in
        :func:`tribute.metrics.resolve_target` or a callable (with ``score="logit"``).
    baseline : x̄ (default 0): a number, a tensor, a callable or a name of :mod:`tribute.core.baselines`
        (``baseline_options``, ``seed`` for the random ones).  Use the baseline the attribution was made with.
    score : ``"logit"`` (default: the raw output, what attribution methods explain) or ``"probability"``.
    input_index : for a model taking several inputs (a tuple), None (default): Σ over every input's
        attributions (a tuple, one per input) against all inputs at their baselines (``baseline`` one entry per
        input or one for all); k: input k's attributions against input k alone at its baseline, the others kept.
    forward_args, forward_kwargs, output : as for the methods (each row gets its sample's forward arguments).

    Returns
    -------
    (N,) tensor in the inputs' dtype: 0 for a complete attribution.
    """
    part, a, base, batch_size = _setup(model, inputs, attributions, baseline, baseline_options, seed, batch_size,
                                       input_index, forward_args, forward_kwargs, output, "completeness_gap")
    x = part.x
    scorer = TargetScore(part.view, target, score, batch_size)
    pair = torch.stack([x, base], 1)  # row (i, 0) is x_i, row (i, 1) its baseline

    def rows(i, k):
        return scorer(part.rows(pair[i.to(x.device), k.to(x.device)], i), i)[:1]

    (s,) = evaluate_rows(x.shape[0], 2, rows, batch_size=batch_size)
    return (a.flatten(1).sum(1) - (s[:, 0] - s[:, 1])).to(x.dtype)


@dataclass(eq=False)
class SensitivityN:
    """Sensitivity-n of each sample (Ancona et al. 2018).

    Attributes
    ----------
    correlation : (N, K) Pearson correlation over the subsets between Σ_{i∈S} R_i and the output drop, for each
        subset size; NaN where either side does not vary (n = number of features: a single subset).
    ns : (K,) the subset sizes n.
    attribution_sums : (N, K, samples) Σ_{i∈S} R_i for each drawn subset.
    output_drops : (N, K, samples) S_c(x) − S_c(x with S set to the baseline).
    """

    correlation: torch.Tensor
    ns: torch.Tensor
    attribution_sums: torch.Tensor
    output_drops: torch.Tensor

    @property
    def score(self) -> torch.Tensor:
        """(N,) the mean correlation over the subset sizes where it is defined."""
        return self.correlation.nanmean(1)


def _pearson(a: torch.Tensor, b: torch.Tensor, rtol: float = 0.0) -> torch.Tensor:
    """Pearson correlation along the last dim; NaN where a side is constant.

    A side counts as constant when its spread about the mean is at most ``rtol`` times its root mean square:
    rounding noise (a model's output varies in its last bits with the batch it is evaluated in) must not
    produce a correlation of ±1 between two constants.
    """
    ca = a - a.mean(-1, keepdim=True)
    cb = b - b.mean(-1, keepdim=True)
    na, nb = ca.norm(dim=-1), cb.norm(dim=-1)
    r = (ca * cb).sum(-1) / (na * nb).clamp_min(torch.finfo(na.dtype).tiny)
    varies = (na > rtol * a.norm(dim=-1)) & (nb > rtol * b.norm(dim=-1))
    return torch.where(varies, r, torch.full_like(r, math.nan))


def default_ns(features: int, count: int = 12) -> list[int]:
    """Up to ``count`` subset sizes spaced logarithmically from 1 to features − 1 (n = N is completeness)."""
    if features < 2:
        return [features]
    return sorted({max(1, min(features - 1, round(features ** (k / (count - 1)) if count > 1 else 1)))
                   for k in range(count)})


def _check_ns(ns, features: int) -> list[int]:
    if ns is None:
        return default_ns(features)
    if isinstance(ns, int) and not isinstance(ns, bool):
        ns = [ns]
    if isinstance(ns, torch.Tensor):
        ns = ns.tolist()
    if not isinstance(ns, Sequence) or not ns or not all(isinstance(n, int) and not isinstance(n, bool) for n in ns):
        raise TypeError(f"ns must be a sequence of subset sizes (ints), got {ns!r}")
    if any(n < 1 or n > features for n in ns):
        raise ValueError(f"ns must lie in [1, {features}] (the number of features); got {list(ns)}")
    if any(b <= a for a, b in zip(ns[:-1], ns[1:], strict=True)):
        raise ValueError(f"ns must be strictly increasing, got {list(ns)}")
    return list(ns)


@register_metric("sensitivity_n", takes=ATTRIBUTIONS, better="higher")
def sensitivity_n(model: nn.Module, inputs, attributions, target=None, *, ns=None,
                  samples: int = 100, baseline=0, baseline_options: dict | None = None, score: str = "logit",
                  seed: int | None = None, batch_size: int | None = None,
                  progress: bool | str = False, input_index: int | None = None, forward_args=None,
                  forward_kwargs=None, output=None) -> SensitivityN:
    """Sensitivity-n (Ancona et al. 2019, Eq 8): per sample and subset size n, the Pearson correlation
    between Σ_{i∈S} R_i and S_c(x) − S_c(x \\ x_S) over ``samples`` random subsets S of n features.

    A *feature* is an input element when the attributions have the input's shape, a pixel (all its channels
    set to the baseline together) when they are a (N, 1, H, W) map.  Subsets are drawn uniformly (the n
    smallest of uniform keys) from each sample's own random stream (``seed``), so a sample's subsets and
    result do not depend on its batch-mates; all the masked copies go through the model in chunks of
    ``batch_size``.

    Parameters
    ----------
    ns : subset sizes, strictly increasing in [1, number of features]; default up to 12 sizes spaced
        logarithmically from 1 to N − 1.  n = N gives a NaN correlation (one subset) and its
        ``attribution_sums − output_drops`` is the completeness gap.
    samples : subsets per size (default 100, as Ancona et al.); at least 2.
    baseline : the value removed features take (default 0; see :func:`completeness_gap`).
    score : ``"logit"`` (default) or ``"probability"``.
    input_index : for a model taking several inputs (a tuple), None (default): the features are the elements
        of all the inputs together (attributions: a tuple, each of its input's shape), subsets drawn among all of
        them; k: the features of input k alone (its attributions a tensor or a map, or the tuple with entry k
        used), the other inputs kept.
    forward_args, forward_kwargs, output : as for the methods (each row gets its sample's forward arguments).

    Returns
    -------
    SensitivityN
    """
    part, a, base, batch_size = _setup(model, inputs, attributions, baseline, baseline_options, seed, batch_size,
                                       input_index, forward_args, forward_kwargs, output, "sensitivity_n")
    opt.integer(2)("samples", samples)
    x = part.x
    ids, features = unit_ids(tuple(a.shape[1:]))
    sizes = _check_ns(ns, features)
    ns_t = torch.tensor(sizes)
    per_unit = torch.zeros(x.shape[0], features, dtype=torch.float64, device=x.device)
    per_unit.index_add_(1, ids.reshape(-1).to(x.device), a.reshape(x.shape[0], -1).to(torch.float64))
    scorer = TargetScore(part.view, target, score, batch_size)
    (clean,) = evaluate_rows(x.shape[0], 1, lambda i, k: scorer(part.view.x[i.to(x.device)], i)[:1],
                             batch_size=batch_size)
    streams = SampleStreams(x, derived_seed(seed, "sensitivity_n subsets"))  # not the random baseline's stream
    k_rows = len(sizes) * samples

    def rows(sample, draw):
        i = sample.to(x.device)
        n = ns_t[draw // samples].to(x.device)
        keys = streams.draw("uniform", sample, (features,), dtype=torch.float64, device=x.device)
        kth = keys.sort(dim=1).values.gather(1, (n - 1).view(-1, 1))
        chosen = keys <= kth  # the n smallest keys: a uniformly random n-subset
        mask = chosen[:, ids.reshape(-1).to(x.device)].view(-1, *ids.shape)
        s, _ = scorer(part.rows(torch.where(mask, base[i], x[i]), sample), sample)
        return (per_unit[i] * chosen).sum(1), clean[i, 0].to(torch.float64) - s.to(torch.float64)

    sums, drops = evaluate_rows(x.shape[0], k_rows, rows, batch_size=batch_size, progress=progress,
                                desc="sensitivity-n")
    sums = sums.view(x.shape[0], len(sizes), samples)
    drops = drops.view(x.shape[0], len(sizes), samples)
    rtol = 64 * torch.finfo(x.dtype).eps  # below this spread a side is rounding noise, i.e. constant
    return SensitivityN(correlation=_pearson(sums, drops, rtol), ns=ns_t, attribution_sums=sums, output_drops=drops)


# -- invariances ------------------------------------------------------------------------------------------------
def attribution_distance(a: torch.Tensor, b: torch.Tensor, how: str = "relative_l2") -> torch.Tensor:
    """Per-sample distance between two batches of attributions.

    ``"relative_l2"``: ‖a − b‖₂ / max(‖a‖₂, ‖b‖₂) in [0, 2] (0 when both are zero); ``"l2"``: ‖a − b‖₂;
    ``"max_abs"``: max |a − b|.
    """
    opt.choice(DISTANCES)("distance", how)
    if a.shape != b.shape:
        raise ValueError(f"the two attributions differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    d = (a - b).flatten(1).to(torch.float64)
    if how == "max_abs":
        return d.abs().amax(1)
    norm = d.norm(dim=1)
    if how == "l2":
        return norm
    scale = torch.maximum(a.flatten(1).to(torch.float64).norm(dim=1), b.flatten(1).to(torch.float64).norm(dim=1))
    return torch.where(scale > 0, norm / scale.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(norm))


def _check_equal_function(out_a: torch.Tensor, out_b: torch.Tensor, tolerance: float | None, what: str) -> None:
    """Refuse to compare attributions of models that do not compute the same outputs on the inputs."""
    if out_a.shape != out_b.shape:
        raise ValueError(f"{what}: the outputs differ in shape, {tuple(out_a.shape)} and {tuple(out_b.shape)}")
    scale = 1 + float(out_a.abs().max())
    tol = math.sqrt(torch.finfo(out_a.dtype).eps) if tolerance is None else tolerance
    gap = float((out_a - out_b).abs().max())
    if gap > tol * scale:
        raise ValueError(
            f"{what}: the models' outputs differ by up to {gap:.3g} on these inputs (allowed {tol * scale:.3g}); "
            "the axiom compares functionally equal models (tolerance= sets the allowance, relative to 1 + max|f|)"
        )


_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _first_layer(model: nn.Module, example: torch.Tensor, layer: str | None, run: Callable | None = None,
                 which: int | None = None) -> tuple[str, nn.Module, torch.Tensor]:
    """The linear layer that first receives the input (or the named one), and the tensor it received.

    ``run(model)`` runs the model on one sample (default ``model(example)``).  With ``which`` = k (a model
    taking several inputs) the layer is the first that receives input k, ``example``, as it is, and it must
    be called once (a layer shared with another input cannot absorb this input's shift alone).
    """
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, _LINEAR)}
    if layer is not None:
        if layer not in dict(model.named_modules()):
            raise ValueError(f"the model has no module named {layer!r}")
        if layer not in candidates:
            raise TypeError(f"layer {layer!r} must be nn.Linear or nn.Conv1d/2d/3d to absorb a shift in its bias")
        candidates = {layer: candidates[layer]}
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=n: seen.append((name, mod, args[0].detach())))
               for n, m in candidates.items()]
    try:
        with torch.no_grad():
            (run or (lambda m: m(example)))(model)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("no nn.Linear or nn.Conv layer was called on the input: there is no bias to absorb the shift")
    if which is not None:
        return _layer_receiving(seen, example, which)
    name, module, received = seen[0]
    if not _same_values(received, example):
        raise ValueError(
            f"the first linear layer ({name!r}) does not receive the raw input (something changes it before), "
            "so a shift of the input cannot be absorbed in its bias; pass layer= for the right one"
        )
    return name, module, received


def _same_values(received: torch.Tensor, example: torch.Tensor) -> bool:
    return received.numel() == example.numel() and torch.equal(received.reshape(-1), example.reshape(-1))


def _layer_receiving(seen: list, example: torch.Tensor, k: int) -> tuple[str, nn.Module, torch.Tensor]:
    """Of the linear layers called (in order), the first that receives input k as it is; called once."""
    found = next((entry for entry in seen if _same_values(entry[2], example)), None)
    if found is None:
        raise ValueError(f"no nn.Linear or nn.Conv layer receives inputs[{k}] as it is (something changes it "
                         "before), so its shift cannot be absorbed in a bias; pass layer= (one name per input)")
    calls = sum(1 for entry in seen if entry[1] is found[1])
    if calls > 1:
        raise ValueError(f"layer {found[0]!r}, which receives inputs[{k}], is called {calls} times per sample (shared "
                         f"with other inputs), so its bias cannot absorb the shift of inputs[{k}] alone")
    return found


def absorb_shift(model: nn.Module, shift, example: torch.Tensor, *, layer: str | None = None) -> nn.Module:
    """A copy of ``model`` that computes on x + shift what ``model`` computes on x (Kindermans et al. 2017).

    The first linear layer's bias becomes b' = b − W m (a bias is added if the layer had none).  A convolution
    absorbs only a shift that is constant over positions (per channel).  Where it pads with zeros, the copy
    pads the shifted input with the shift instead (a forward pre-hook on the copy), so that its padded
    border is the shifted image's too and the outputs agree exactly; other padding modes need nothing.
    ``model`` itself is not modified.

    Parameters
    ----------
    shift : a number or a tensor broadcastable to one input, ``example.shape[1:]``.
    example : a batch of inputs (one row is used to find the first layer and check what it receives).
    layer : the name of the layer to use (default: the first nn.Linear / nn.Conv called on the input).
    """
    _check_module(model)
    check_model(model)
    check_inputs(model, example)
    m_full = _check_shift(shift, example)
    shifted = copy.deepcopy(model)
    _absorb(shifted, m_full, example[:1], layer)
    return shifted


def _absorb(shifted: nn.Module, m_full: torch.Tensor, example: torch.Tensor, layer: str | None,
            run: Callable | None = None, which: int | None = None) -> None:
    """Absorb the shift ``m_full`` of one input (``example`` its first sample) in the bias of the first linear
    layer of ``shifted`` that receives it (see :func:`absorb_shift` and :func:`_first_layer`)."""
    name, layer_mod, received = _first_layer(shifted, example, layer, run, which)
    m_in = m_full.reshape(received.shape[1:]).to(layer_mod.weight.dtype)
    weight = layer_mod.weight.detach()
    if isinstance(layer_mod, nn.Linear):
        delta = F.linear(m_in, weight).reshape(-1, layer_mod.out_features)
        if not torch.allclose(delta, delta[:1].expand_as(delta)):
            raise ValueError(f"the shift is not constant over the rows that {name!r} maps; a bias cannot absorb it")
        delta = delta[0]
    else:
        per_channel = m_in.flatten(1)
        if not torch.equal(per_channel, per_channel[:, :1].expand_as(per_channel)):
            raise ValueError(
                f"the first layer ({name!r}) is a convolution: its bias absorbs only a shift that is constant over "
                "positions (one value per channel)"
            )
        delta = _conv_of_constant(layer_mod, per_channel[:, 0])
        _pad_with_shift(layer_mod, per_channel[:, 0])
    with torch.no_grad():
        if layer_mod.bias is None:
            layer_mod.bias = nn.Parameter(-delta.to(weight.dtype), requires_grad=weight.requires_grad)
        else:
            layer_mod.bias.sub_(delta.to(layer_mod.bias.dtype))


def _check_module(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"input invariance absorbs the shift in a layer's bias, so the model must be an nn.Module; "
                        f"got {type(model).__name__}")


def _check_shift(shift, example: torch.Tensor) -> torch.Tensor:
    if isinstance(shift, (int, float)) and not isinstance(shift, bool):
        shift = torch.tensor(float(shift), dtype=example.dtype)  # not float32 first: 0.7 must stay 0.7
    if not isinstance(shift, torch.Tensor):
        raise TypeError(f"shift must be a number or a tensor, got {type(shift).__name__}")
    return opt.broadcast_tensor("shift", shift, example, example.shape[1:], "one input's shape")


def _conv_of_constant(conv: nn.Module, per_channel: torch.Tensor) -> torch.Tensor:
    """W * m for an input equal to ``per_channel`` at every position: Σ over the kernel, one value per output."""
    dims = conv.weight.dim() - 2
    span = [(k - 1) * d + 1 for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
    block = per_channel.view(1, -1, *([1] * dims)).expand(1, -1, *span)
    fn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return fn(block, conv.weight.detach(), None, 1, 0, conv.dilation, conv.groups).reshape(-1)


def _pad_with_shift(conv: nn.Module, per_channel: torch.Tensor) -> None:
    """Make a zero-padding convolution of the copy pad with the shift instead (see :func:`absorb_shift`)."""
    if conv.padding_mode != "zeros":
        return  # reflect / replicate / circular padding of a constant-shifted image is the shifted padding
    pads = tuple(conv._reversed_padding_repeated_twice)
    if not any(pads):
        return
    conv.padding = (0,) * (conv.weight.dim() - 2)
    m = per_channel.view(1, -1, *([1] * (conv.weight.dim() - 2)))

    def pad_with_shift(module, args):
        return (F.pad(args[0] - m, pads) + m, *args[1:])

    conv.register_forward_pre_hook(pad_with_shift)


def _shifted(model: nn.Module, view: ModelInputs, shift, layer) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` that absorbs ``shift`` of the inputs of ``view`` (:func:`absorb_shift`), and the
    shifted inputs, packed.  With several inputs, ``shift`` and ``layer`` take one entry per input (or one for
    all); an input whose shift is 0 stays as it is, each other input's first linear layer absorbs its own."""
    layout = view.layout
    shifted = copy.deepcopy(model)
    forward = copy.copy(view.forward)
    forward.model = shifted

    def run(_):
        forward(view.x[:1], torch.zeros(1, dtype=torch.long))
    moved = []
    for k, (s_k, layer_k, x_k) in enumerate(zip(layout.entries("shift", shift), layout.entries("layer", layer),
                                                view.inputs, strict=True)):
        m = _check_shift(s_k, x_k)
        moved.append(x_k.detach() + m)
        if layout.single or bool((m != 0).any()):
            _absorb(shifted, m, x_k[:1].detach(), layer_k, run, None if layout.single else k)
    return shifted, layout.pack(moved)


def _flat(result) -> torch.Tensor:
    """A method's result as one tensor per sample: several inputs' attributions laid end to end."""
    if isinstance(result, (tuple, list)):
        return torch.cat([t.flatten(1) for t in result], 1)
    return result


def input_invariance(model: nn.Module, inputs, method, shift, target=None, *,
                     layer: str | None = None, distance: str = "relative_l2", seed: int | None = 0,
                     batch_size: int | None = None, forward_args=None, forward_kwargs=None, output=None,
                     **options) -> torch.Tensor:
    """Input invariance (Kindermans et al. 2017): distance between the attribution of x on ``model`` and that
    of x + shift on a copy whose first layer absorbs the shift (:func:`absorb_shift`).

    Parameters
    ----------
    method : a registry name, a Method or a callable ``(model, inputs, target) -> attributions``; ``options``
        go to the method (e.g. ``baseline="mean"``).  A method that draws noise (SmoothGrad and its variants)
        gets ``seed`` and the *unshifted* input as its noise key for both calls, so x and x + shift see the
        same noise draws and the same σ, as in Kindermans et al.'s mean-shift setting (a plain callable cannot
        be given a key: its draws are its own business).
    seed : seeds a method that draws noise, unless its options set one (deterministic methods draw nothing).
    shift : a number or a tensor broadcastable to one input (e.g. per channel, shape (C, 1, 1)).  For a model
        taking several inputs (``inputs`` a tuple), one entry per input (or one for all): an input shifted by 0
        stays as it is, every other input's shift is absorbed by the first linear layer that receives it.
    target : fixed once on ``model`` at x (None: its prediction) and used for both.
    layer : the layer that absorbs the shift (default: the first nn.Linear / nn.Conv on the input); one name per
        input (a tuple) for several inputs.
    distance : ``"relative_l2"`` (default), ``"l2"`` or ``"max_abs"`` (see :func:`attribution_distance`); with
        several inputs, over all their attributions together.
    forward_args, forward_kwargs, output : as for the methods; the method gets them too.

    Returns
    -------
    (N,) float64 tensor: 0 for an input-invariant method.
    """
    _check_module(model)
    view = model_inputs(model, inputs, forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                        integers=True)
    refuse_token_ids(select_part(view, None), "input invariance")
    how = opt.choice(DISTANCES)("distance", distance)
    seed = opt.optional(opt.integer(0))("seed", seed)
    resolved = resolve_method(method, options)
    bs = opt.optional(opt.integer(1))("batch_size", batch_size) or default_batch_size(view.x)
    shifted, x_shifted = _shifted(model, view, shift, layer)
    on_shifted = copy.copy(view.forward)
    on_shifted.model = shifted
    _check_equal_function(view.forward.outputs(view.x, bs), on_shifted.outputs(x_shifted, bs), None,
                          "input invariance")
    t = resolve_target_in(view, target, batch_size=bs, keep_callable=True)
    options = view.method_options
    at_x = call_method(resolved.bind(model, seed=seed), view.user_inputs, t, options, noise_key=view.x)
    at_shifted = call_method(resolved.bind(shifted, seed=seed), view.user_rows(x_shifted), t, options,
                             noise_key=view.x)  # the same noise as at x
    return attribution_distance(_flat(at_x), _flat(at_shifted), how)


def implementation_invariance(model_a: nn.Module, model_b: nn.Module, inputs, method, target=None,
                              *, distance: str = "relative_l2", tolerance: float | None = None, seed: int | None = 0,
                              batch_size: int | None = None, forward_args=None, forward_kwargs=None, output=None,
                              **options) -> torch.Tensor:
    """Implementation invariance (Sundararajan et al. 2017): distance between the attributions of two
    functionally equal models.

    The models must agree on ``inputs`` to ``tolerance`` × (1 + max |f|) (default √eps of the dtype), or
    the comparison is refused.  ``target`` is fixed on ``model_a`` (None: its prediction).  ``method``,
    ``distance``, ``seed`` and ``options`` as in :func:`input_invariance` (a method that draws noise draws the
    same noise for both models).  ``inputs`` may be a tuple (a model taking several; the distance runs over all
    their attributions together) or token ids (for a layer method); ``forward_args``, ``forward_kwargs`` and
    ``output`` go to both models and to the method.

    Returns
    -------
    (N,) float64 tensor: 0 for an implementation-invariant method.
    """
    views = [model_inputs(m, inputs, forward_args=forward_args, forward_kwargs=forward_kwargs, output=output,
                          integers=True) for m in (model_a, model_b)]
    how = opt.choice(DISTANCES)("distance", distance)
    opt.optional(opt.real(0))("tolerance", tolerance)
    seed = opt.optional(opt.integer(0))("seed", seed)
    resolved = resolve_method(method, options)
    x = views[0].x
    bs = opt.optional(opt.integer(1))("batch_size", batch_size) or default_batch_size(x)
    _check_equal_function(*(v.forward.outputs(x, bs) for v in views), tolerance, "implementation invariance")
    t = resolve_target_in(views[0], target, batch_size=bs, keep_callable=True)
    key = x if x.is_floating_point() else None
    explained = [_flat(call_method(resolved.bind(m, seed=seed), v.user_inputs, t, v.method_options, noise_key=key))
                 for m, v in zip((model_a, model_b), views, strict=True)]
    return attribution_distance(*explained, how)


__all__ = [
    "SensitivityN", "absorb_shift", "attribution_distance", "completeness_gap", "implementation_invariance",
    "input_invariance", "sensitivity_n",
]
