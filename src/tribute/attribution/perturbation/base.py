"""What every perturbation method shares: the baseline that removed features take, forward passes only, and
what a call reports beside the attribution (the groups it used, the standard error of a sampled estimate).

``baseline=`` is any baseline of :mod:`tribute.core.baselines` (a number, a tensor broadcastable to the inputs,
a callable or a name such as ``"blur"``); for token ids (integer inputs) a token id (the pad or mask token).
A perturbation method runs the model forward only, under :func:`torch.inference_mode`: it has no
``differentiable=``, and no rules, so ``strict=`` holds trivially.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import torch

from ...core import options as opt
from ...core.baselines import check_baseline, make_baseline
from ...core.method import Method
from ...core.randomness import NOISE_KEY_OPTION, SampleStreams, packed_noise_key
from .groups import NAMES, FeatureGroups, feature_groups

FORWARD_ONLY = "a perturbation method runs forward passes only"


def check_feature_mask(name: str, v: Any) -> Any:
    ok = v is None or isinstance(v, torch.Tensor) or (
        isinstance(v, tuple) and all(t is None or isinstance(t, torch.Tensor) for t in v))
    if not ok:
        raise TypeError(f"{name} must be an integer tensor, a tuple of them (one per input, None for an input "
                        f"whose features are each alone) or None, got {type(v).__name__}")
    return v


def check_segments(name: str, v: Any) -> Any:
    entries = v if isinstance(v, tuple) else (v,)
    for e in entries:
        if e is not None and e not in NAMES:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, NAMES))}, None, or a tuple of them "
                             f"(one per input), got {e!r}")
    return v


class PerturbationMethod(Method):
    """Base class of the perturbation methods: forward passes only, a baseline for removed features, integer
    inputs (token ids) accepted, and per-call reports read from the explainer by the calling thread."""

    accepts_integer_inputs = True
    #: reads the model's outputs only (no autograd): a score detached from the graph is still a score to it
    forward_only: ClassVar[bool] = True
    options = {
        "baseline": opt.Option("zero", check_baseline, "what a removed feature becomes (tribute.core.baselines; "
                               "a token id for token inputs)", per_input="baseline"),
        "baseline_options": opt.Option(None, opt.anything),
        "seed": opt.Option(None, opt.optional(opt.integer(0))),
        "differentiable": opt.Option(False, opt.refused(FORWARD_ONLY)),
    }

    @property
    def standard_error(self) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
        """The standard error of each feature's attribution in the last call of the calling thread (same
        structure as the attribution), for a method that estimates by sampling; None otherwise."""
        return getattr(self._last_call, "standard_error", None)

    def _report(self, o: SimpleNamespace, name: str, value: torch.Tensor | None) -> None:
        """Keep ``value`` (packed like the attribution, or None) as this thread's last-call ``name``."""
        if value is not None and self._per_input_result(o):
            value = o.call.layout.result(value.detach())
        setattr(self._last_call, name, value)

    @staticmethod
    def _baseline(x: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
        """The values removed features take, shaped like the packed inputs ``x`` (several inputs' baselines are
        already resolved and packed by the base class)."""
        return make_baseline(o.baseline, x, o.baseline_options, o.seed)

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return True  # every method scores the clean inputs first (scoring.clean_scores), which fixes the target


class Sampled:
    """Mixin of the perturbation methods that draw random perturbations (LIME, sampled KernelSHAP, Shapley sampling,
    RISE): each sample draws from its own stream (:class:`tribute.core.randomness.SampleStreams`), keyed by the
    sample's bytes and ``seed``, or by ``noise_key`` (the robustness metrics key the draws of a perturbed input by
    the unperturbed one, so that both see the same perturbations)."""

    options = {"noise_key": NOISE_KEY_OPTION}

    @staticmethod
    def _streams(x: torch.Tensor, o: SimpleNamespace) -> SampleStreams:
        key = x if o.noise_key is None else packed_noise_key(o.noise_key, x, o.call.layout)
        return SampleStreams(key, o.seed)


class GroupPerturbation(PerturbationMethod):
    """A perturbation method whose players are groups of features (:mod:`.groups`)."""

    #: the grouping used when neither ``feature_mask`` nor ``segments`` is given
    default_segments = "features"
    options = {
        "feature_mask": opt.Option(None, check_feature_mask, "integer group labels broadcastable to the inputs"),
        "segments": opt.Option(None, check_segments, "'slic', 'quickshift', 'grid' or 'features'"),
        "segment_options": opt.Option(None, opt.anything, "options of the segmentation (see .segments)"),
    }

    @property
    def segments(self) -> torch.Tensor | tuple[torch.Tensor, ...] | None:
        """The group of every feature in the last call of the calling thread (integer labels 0…M_i − 1 per sample,
        the inputs' shape and structure); None before a call."""
        return getattr(self._last_call, "segments", None)

    def _groups(self, x: torch.Tensor, o: SimpleNamespace) -> FeatureGroups:
        """This call's groups of the packed inputs ``x``, reported as the explainer's ``segments``."""
        layout = o.call.layout
        xs = (x,) if layout.single else layout.unpack(x)
        groups = feature_groups(x, xs, layout, o.feature_mask, o.segments, o.segment_options,
                                default=self.default_segments)
        self._report(o, "segments", groups.index.view(x.shape))
        return groups
