"""Feature groups: which features of a sample a perturbation removes together.

A group method (feature ablation, LIME, KernelSHAP, Shapley sampling) treats the M groups of a sample as its
players: a coalition z ∈ {0, 1}^M keeps the features of the groups with z_g = 1 and replaces the others by the
baseline.  The groups come from

- ``feature_mask=``: integer labels broadcastable to the inputs, the same for every sample (leading dim 1 or
  none) or one map per sample (leading dim N).  Features with the same label form one group.  With several
  inputs, a tuple with one mask per input (None: each feature of that input alone); a label used in two inputs
  is one group spanning both.
- ``segments=``: ``"slic"``, ``"quickshift"`` or ``"grid"`` (:mod:`.segments`) on image inputs (N, C, H, W),
  one segment map per image shared by its channels; ``"features"``: each feature alone.  With several inputs,
  one entry per input.

Labels are renumbered per sample to 0…M_i − 1 in increasing order, so samples may have different numbers of
groups (superpixels); the group index of a sample's features is what :attr:`FeatureGroups.index` holds and what
an explainer's ``segments`` attribute gives back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...core.inputs import Layout
from .segments import SEGMENTERS, segment_images

NAMES = ("features", *SEGMENTERS)


@dataclass(frozen=True)
class FeatureGroups:
    """The groups of each sample: ``index`` (N, D) is the group of each packed feature (D features per sample),
    in [0, ``counts[i]``) for sample i."""

    index: torch.Tensor
    counts: torch.Tensor

    @property
    def size(self) -> int:
        """M, the largest number of groups of a sample (coalitions are (·, M); a sample with fewer groups
        ignores the entries past its own count)."""
        return int(self.counts.max())

    def present(self) -> torch.Tensor:
        """(N, M) bool: whether group g exists in sample i."""
        return torch.arange(self.size, device=self.counts.device) < self.counts[:, None]

    def rows(self, x: torch.Tensor, baseline: torch.Tensor, keep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Perturbed copies: row r is sample ``sample[r]`` of ``x`` with the features of every group g where
        ``keep[r, g]`` is False taken from the baseline."""
        sample = sample.to(x.device)
        kept = keep.to(x.device).gather(1, self.index[sample])
        flat = torch.where(kept, x.reshape(x.shape[0], -1)[sample], baseline.reshape(x.shape[0], -1)[sample])
        return flat.view(len(sample), *x.shape[1:])

    def unchanged(self, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        """(N, M) bool: groups whose features all equal the baseline, so that removing them changes nothing (their
        attribution is exactly 0, whatever rounding the batch composition brings to the scores)."""
        differs = (x != baseline).reshape(x.shape[0], -1).to(torch.int64)
        moved = torch.zeros(x.shape[0], self.size, dtype=torch.int64, device=x.device)
        return moved.scatter_add_(1, self.index.to(x.device), differs) == 0

    def spread(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-group values (N, M) given to every feature of their group, shaped like ``like`` (N, …)."""
        return values.gather(1, self.index.to(values.device)).view(like.shape)


def feature_groups(x: torch.Tensor, xs: tuple[torch.Tensor, ...], layout: Layout, feature_mask: Any,
                   segments: Any, segment_options: dict | None, *, default: str) -> FeatureGroups:
    """The groups of the packed inputs ``x`` (the inputs ``xs`` as given), from ``feature_mask`` or ``segments``
    (``default`` when neither is given: a name of :data:`NAMES`, or ``"auto"``: ``"slic"`` for images, each
    feature alone otherwise)."""
    if feature_mask is not None and segments is not None:
        raise ValueError("give feature_mask= or segments=, not both")
    n = x.shape[0]
    if feature_mask is not None:
        masks = layout.entries("feature_mask", feature_mask)
        if layout.count > 1 and not isinstance(feature_mask, tuple):
            raise ValueError(f"the model takes {layout.count} inputs: feature_mask must be a tuple with one mask "
                             "(or None) per input")
        labels = [None if m is None else _mask_labels(m, t, k, layout)
                  for k, (m, t) in enumerate(zip(masks, xs, strict=True))]
        if all(lab is None for lab in labels):
            raise ValueError("feature_mask has no mask: give a mask for at least one input")
        # an input without a mask: each of its features alone, numbered after every given label
        start = max(int(lab.amax()) for lab in labels if lab is not None) + 1
        for k, t in enumerate(xs):
            if labels[k] is None:
                labels[k] = _features(t) + start
                start += t[0].numel()
    else:
        names = layout.entries("segments", default if segments is None else segments)
        labels = [_segment_labels(s, t, k, layout, segment_options) for k, (s, t) in enumerate(zip(names, xs,
                                                                                                     strict=True))]
        labels = _offset(labels) if layout.count > 1 else labels
    flat = torch.cat([lab.reshape(n, -1) for lab in labels], 1).to(x.device)
    return _renumber(flat)


def _features(t: torch.Tensor) -> torch.Tensor:
    """Each feature of ``t`` alone: labels 0…D − 1, the same for every sample."""
    return torch.arange(t[0].numel(), device=t.device).view(1, *t.shape[1:]).expand_as(t)


def _mask_labels(m: Any, t: torch.Tensor, k: int, layout: Layout) -> torch.Tensor:
    name = "feature_mask" if layout.single else f"feature_mask[{k}]"
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be an integer tensor, got {type(m).__name__}")
    if m.is_floating_point() or m.is_complex():
        if not bool(torch.isfinite(m).all()) or not bool((m == m.round()).all()):
            raise ValueError(f"{name} must hold integer group labels; it holds non-integer values "
                             f"(e.g. {m[m != m.round()].flatten()[0].item()!r})")
        m = m.long()
    elif m.dtype == torch.bool:
        m = m.long()
    if m.dim() > t.dim() or (m.dim() == t.dim() and m.shape[0] not in (1, t.shape[0])):
        raise ValueError(f"{name} of shape {tuple(m.shape)} must be shared by the samples (leading dim 1 or "
                         f"none) or have one map per sample ({t.shape[0]}); the inputs are {tuple(t.shape)}")
    try:
        return torch.broadcast_to(m.to(t.device), t.shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(m.shape)} does not broadcast to the inputs' shape "
                         f"{tuple(t.shape)}") from None


def _segment_labels(name: Any, t: torch.Tensor, k: int, layout: Layout, options: dict | None) -> torch.Tensor:
    what = "segments" if layout.single else f"segments[{k}]"
    if name is None or name == "features":
        return _features(t)
    image = t.dim() == 4 and t.is_floating_point()
    if name == "auto":
        return segment_images(t, "slic", options).unsqueeze(1).expand_as(t) if image else _features(t)
    if name not in SEGMENTERS:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, NAMES))} or None, got {name!r}")
    if not image:
        raise ValueError(f"{what}={name!r} segments images (N, C, H, W) of floats; input {k} has shape "
                         f"{tuple(t.shape)} and dtype {t.dtype}: pass feature_mask= instead")
    return segment_images(t, name, options).unsqueeze(1).expand_as(t)


def _offset(labels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Segments of several inputs made disjoint: input k's labels start after input k − 1's largest."""
    out, start = [], 0
    for lab in labels:
        lab = lab - lab.amin() + start
        out.append(lab)
        start = int(lab.amax()) + 1
    return out


def _renumber(flat: torch.Tensor) -> FeatureGroups:
    """Labels (N, D) renumbered per sample to 0…M_i − 1 in increasing order of the labels."""
    if bool((flat == flat[:1]).all()):  # one map for every sample: renumber once
        _, inverse = torch.unique(flat[0], return_inverse=True)
        count = int(inverse.max()) + 1
        return FeatureGroups(inverse.expand_as(flat).contiguous(),
                             torch.full((flat.shape[0],), count, dtype=torch.long, device=flat.device))
    index = torch.empty_like(flat, dtype=torch.long)
    counts = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    for i, row in enumerate(flat):
        _, index[i] = torch.unique(row, return_inverse=True)
        counts[i] = int(index[i].max()) + 1
    return FeatureGroups(index, counts)
