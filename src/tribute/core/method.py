"""The base class every attribution method derives from.

``Method(model, **options).attribute(inputs, target=None, **options) -> Tensor``: options given to the
constructor are defaults for every call; options given to ``attribute`` override them for that call.
The result has the input's shape, dtype and device.  The model is never changed: the engine only reads
it, and nothing it sets up on the model outlives the call, also when the call fails (an LRP explainer keeps
its own copies of the weights its rules derive between calls: :mod:`tribute.lrp.weight_cache`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn

from . import options as opt
from .engine import Forward, PassCount, check_inputs, check_model, count_passes, default_batch_size, gradient_rows
from .interception import Coverage
from .rules import GRADIENT, RuleSet
from .targets import Target


class NonFiniteAttributionError(ValueError):
    """The attribution came out NaN or infinite (e.g. a gradient evaluated where it is singular)."""


COMMON_OPTIONS: dict[str, opt.Option] = {
    "input_transform": opt.Option(None, opt.function,
                                  "callable applied to inputs before the model (e.g. tribute.Normalize)"),
    "batch_size": opt.Option(None, opt.optional(opt.integer(1)),
                             "most rows sent through the model at once (default: from the input size)"),
    "differentiable": opt.Option(False, opt.boolean, "keep the attribution on the autograd graph"),
    "strict": opt.Option(False, opt.boolean,
                         "raise if an op on the input's path is nonlinear and has no rule"),
    "progress": opt.Option(False, opt.anything, "show a progress bar over chunks (True or a label)"),
}


class Method:
    """Base class: subclasses set ``name``, ``options`` and implement :meth:`_attribute`."""

    name: ClassVar[str] = ""
    #: what ``attribute`` returns: ``"input"`` (the input's shape), ``"map"`` ((N, 1, H, W), the CAM family)
    #: or ``"layer"`` (the shape of a layer's activation)
    returns: ClassVar[str] = "input"
    #: the backward rules of this method (seed 001, Table 1); GRADIENT leaves the model's gradient as is
    rules: ClassVar[RuleSet] = GRADIENT
    options: ClassVar[dict[str, opt.Option]] = {}

    def __init__(self, model: nn.Module, **options: Any):
        check_model(model)
        self.model = model
        self._defaults = opt.validate(self.schema(), options, type(self).__name__)
        self.passes = PassCount()
        self.coverage: Coverage | None = None

    @classmethod
    def schema(cls) -> dict[str, opt.Option]:
        merged: dict[str, opt.Option] = dict(COMMON_OPTIONS)
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("options", {}))
        return merged

    def attribute(self, inputs: torch.Tensor, target=None, **options: Any) -> torch.Tensor:
        """Attributions for ``inputs`` (batch first) with respect to ``target``; see :mod:`tribute.core.targets`."""
        o = self._namespace(options)
        check_model(self.model)
        check_inputs(self.model, inputs)
        if o.batch_size is None:
            o.batch_size = default_batch_size(inputs)
        self._forward = Forward(self.model, o.input_transform)
        self.coverage = Coverage() if o.strict else None
        tgt = Target(target, inputs.shape[0])
        with count_passes() as count:
            a = self._attribute(inputs, tgt, o)
        self.passes = count
        if not o.differentiable:
            a = a.detach()
        bad = ~torch.isfinite(a)
        if bool(bad.any()):
            rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
            raise NonFiniteAttributionError(
                f"{self.name or type(self).__name__} produced NaN or inf attributions for samples {rows[:10]}: "
                "a gradient was evaluated where it is singular (e.g. sqrt or log at 0)"
            )
        return a.to(inputs.dtype)

    __call__ = attribute

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        raise NotImplementedError

    def rule_set(self, o: SimpleNamespace) -> RuleSet:
        """The rules for this call (a method whose rules take options overrides this)."""
        return self.rules

    def _namespace(self, options: dict[str, Any]) -> SimpleNamespace:
        """Defaults, constructor options and ``options`` (validated) as one namespace."""
        schema = self.schema()
        given = opt.validate(schema, options, type(self).__name__)
        return SimpleNamespace(**{**{k: v.default for k, v in schema.items()}, **self._defaults, **given})

    # -- helpers for subclasses -------------------------------------------------------------------
    def _gradients(self, rows: torch.Tensor, target: Target, sample: torch.Tensor, o: SimpleNamespace,
                   *, rules: RuleSet | None = None, score_rows: int | None = None,
                   relevance: bool = False) -> torch.Tensor:
        """Modified gradient of each row's score under this method's rules (one forward + backward)."""
        return gradient_rows(
            self._forward, rows, target, sample,
            rules=self.rule_set(o) if rules is None else rules,
            create_graph=o.differentiable, coverage=self.coverage, strict=o.strict, score_rows=score_rows,
            relevance=relevance,
        )

    def _fix_target(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> None:
        """Resolve ``target=None`` to the prediction on the clean input (one forward pass, no backward)."""
        if target.needs_argmax:
            target.set_argmax(self._forward.outputs(x.detach(), o.batch_size))
