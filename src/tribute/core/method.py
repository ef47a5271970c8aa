"""The base class every attribution method derives from.

``Method(model, **options).attribute(inputs, target=None, **options) -> Tensor``: options given to the
constructor are defaults for every call; options given to ``attribute`` override them for that call.
The result has the input's shape, dtype and device.  The model is never changed: the engine only reads
it, and nothing it sets up on the model outlives the call, also when the call fails (an LRP explainer keeps
its own copies of the weights its rules derive between calls: :mod:`tribute.lrp.weight_cache`).

The base class does the plumbing once for every method: it validates the options, resolves ``target=None``
to the prediction on the clean inputs, and keeps the state of one call (the model seen through the input
transform, the coverage record of its passes under rules) in a :class:`Call` that travels with the call's options
as ``o.call``, never on the explainer.  One explainer may therefore be used from several threads at once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType, SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn

from . import options as opt
from .engine import (
    Forward,
    PassCount,
    check_inputs,
    check_model,
    count_passes,
    default_batch_size,
    gradient_rows,
    narrow_range_reason,
)
from .forward_args import ForwardArgs
from .inputs import Layout, check_nested_options, resolve_per_input
from .interception import Coverage
from .outputs import check_output
from .rules import GRADIENT, RuleSet
from .strictness import Strictness, WarnOnce
from .targets import Target


class NonFiniteAttributionError(ValueError):
    """The attribution came out NaN or infinite (e.g. a gradient evaluated where it is singular)."""


COMMON_OPTIONS: dict[str, opt.Option] = {
    "input_transform": opt.Option(None, opt.function,
                                  "callable applied to inputs before the model (e.g. tribute.Normalize); "
                                  "a tuple of callables or None, one per input, for several inputs",
                                  per_input="transform"),
    "forward_args": opt.Option(None, opt.anything,
                               "extra positional arguments of every forward pass, after the inputs; tensors are "
                               "per sample (dim 0 the batch), tribute.constant(t) is the same for every sample"),
    "forward_kwargs": opt.Option(None, opt.anything, "extra keyword arguments of every forward pass (as forward_args)"),
    "output": opt.Option(None, check_output,
                         "which part of a structured output holds the scores: a field name, a position or a "
                         "callable (default: the tensor itself, else 'logits', else the only tensor)"),
    "batch_size": opt.Option(None, opt.optional(opt.integer(1)),
                             "most rows sent through the model at once (default: from the input size)"),
    "differentiable": opt.Option(False, opt.boolean, "keep the attribution on the autograd graph"),
    "strict": opt.Option(None, opt.optional(opt.boolean),
                         "methods with rules (not the plain gradient): by default (None) and with True, an op on the "
                         "input's float path that the rules do not cover, or rules that change nothing on the model, "
                         "is an error; False accepts the plain gradient there with one warning per explainer. True "
                         "also records the coverage of gradient methods"),
    "progress": opt.Option(False, opt.anything, "show a progress bar over chunks (True or a label)"),
}


@dataclass(frozen=True)
class Call:
    """The state of one :meth:`Method.attribute` call, handed to ``_attribute`` as ``o.call``.

    ``forward`` is the model as the method sees it (``model(input_transform(x))``, counted); ``coverage``
    records which ops met a rule in the passes under rules (every pass of a rule method; gradient methods' only
    with ``strict=True``); ``strictness`` is what ops without a rule do (:mod:`tribute.core.strictness`).
    """

    forward: Forward
    coverage: Coverage | None = None
    strictness: Strictness = Strictness()

    def for_samples(self, sample: torch.Tensor) -> Call:
        """This call's state for a nested call whose samples are the rows ``sample`` of this call's samples."""
        return replace(self, forward=self.forward.for_samples(sample))

    @property
    def layout(self) -> Layout:
        """How the packed rows hold the model's inputs (:mod:`tribute.core.inputs`)."""
        return self.forward.layout


class BoundMethod:
    """A method run inside another method's call (see :meth:`Method.bind`): ``bound(rows, target)``."""

    def __init__(self, method: Method, o: SimpleNamespace):
        self.method = method
        self.options = o

    def __call__(self, rows: torch.Tensor, target: Target, sample: torch.Tensor | None = None) -> torch.Tensor:
        """The method's attribution of ``rows`` for the calling method's resolved ``target`` (one with a class or
        a callable); ``sample[r]`` is the calling call's sample that row r belongs to (None: the rows are the
        calling call's samples, in order)."""
        if target.needs_argmax:
            raise ValueError("a bound method needs a resolved target: the calling method fixes target=None first")
        if sample is None:
            sample = torch.arange(rows.shape[0])
            if target.n != len(sample):
                raise ValueError(f"{rows.shape[0]} rows for a target of {target.n} samples: pass sample=")
        o = SimpleNamespace(**vars(self.options))
        o.call = o.call.for_samples(sample)
        return self.method._attribute(rows, target.for_samples(sample), o)


class Method:
    """Base class: subclasses set ``name``, ``options`` and implement :meth:`_attribute`.

    ``_attribute(x, target, o)`` gets the inputs, the resolved target (a class per sample or a callable,
    see :meth:`_predicts_on_first_pass`) and the call's options, with the call's state in ``o.call``.
    """

    name: ClassVar[str] = ""
    #: what ``attribute`` returns: ``"input"`` (the input's shape), ``"map"`` ((N, 1, H, W), the CAM family)
    #: or ``"layer"`` (the shape of a layer's activation)
    returns: ClassVar[str] = "input"
    #: the backward rules of this method (Ancona et al. 2019, Table 1); GRADIENT leaves the model's gradient as is
    rules: ClassVar[RuleSet] = GRADIENT
    options: ClassVar[dict[str, opt.Option]] = {}
    #: options that make this method cheap on a tiny model (few steps or samples), for tests, examples and
    #: the demo; options the inputs decide (a tensor of references) are the caller's
    example_options: ClassVar[dict[str, Any]] = {}
    #: whether integer inputs (token ids) are accepted: only where the method differentiates at a layer
    accepts_integer_inputs: ClassVar[bool] = False

    def __init__(self, model: nn.Module, **options: Any):
        check_model(model)
        self.model = model
        self._defaults = opt.validate(self.schema(), options, type(self).__name__)
        self._last_call = threading.local()
        self._warned = WarnOnce()  # strict=False warns once per explainer and problem, across calls and threads

    @classmethod
    def schema(cls) -> dict[str, opt.Option]:
        merged: dict[str, opt.Option] = dict(COMMON_OPTIONS)
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("options", {}))
        return merged

    @property
    def defaults(self) -> Mapping[str, Any]:
        """The options given to the constructor (validated), read-only: the defaults of every call."""
        return MappingProxyType(self._defaults)

    @property
    def passes(self) -> PassCount:
        """Rows the last call *of the calling thread* sent through the model (a report; zero before a call)."""
        return getattr(self._last_call, "passes", PassCount())

    @property
    def coverage(self) -> Coverage | None:
        """Which ops on the input's path met a rule in the last call of the calling thread: filled on every call of
        a rule method, on a gradient method's only with ``strict=True`` (else None)."""
        coverage = getattr(self._last_call, "coverage", None)
        return coverage if coverage is not None and coverage.passes else None

    def attribute(self, inputs: torch.Tensor | tuple[torch.Tensor, ...], target=None,
                  **options: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Attributions for ``inputs`` (batch first; a tensor, or a tuple of tensors for a model taking several)
        with respect to ``target`` (see :mod:`tribute.core.targets`); a tuple of inputs gets a tuple back."""
        o, layout, x = self._prepare(inputs, options)
        tgt = Target(target, x.shape[0])
        with count_passes() as count:
            if tgt.needs_argmax and not self._predicts_on_first_pass(x, o):
                tgt.set_argmax(o.call.forward.outputs(x.detach(), o.batch_size))
            a = self._attribute(x, tgt, o)
        self._last_call.passes = count
        a = self._postprocess(a, x, o)
        if not o.differentiable:
            a = a.detach()
        self._check_finite(a, x.dtype)
        a = a.to(x.dtype) if x.is_floating_point() else a
        return layout.result(a) if self._per_input_result(o) else a

    def _prepare(self, inputs: Any, options: dict[str, Any], *,
                 check_layout: bool = True) -> tuple[SimpleNamespace, Layout, torch.Tensor]:
        """A call's validated options with its state in ``o.call``, the inputs' layout and the packed inputs, after
        checking the model, the inputs, the forward arguments and (``check_layout``) that this method takes them."""
        o = self._namespace(options)
        check_model(self.model)
        layout, xs = Layout.of(inputs)
        for k, t in enumerate(xs):
            check_inputs(self.model, t, integers=self.accepts_integer_inputs,
                         name="inputs" if layout.single else f"inputs[{k}]")
        args = ForwardArgs(o.forward_args, o.forward_kwargs, xs[0].shape[0])
        if check_layout:
            self._check_layout(layout, o)
        resolve_per_input(self.schema(), o, layout, xs)
        x = layout.pack(xs)
        if o.batch_size is None:
            o.batch_size = default_batch_size(x)
        forward = Forward(self.model, o.input_transform, layout=layout, args=None if args.empty else args,
                          output=o.output)
        o.call = Call(forward, Coverage(), Strictness(o.strict, self.name or type(self).__name__, self._warned))
        self._last_call.coverage = o.call.coverage
        return o, layout, x

    @classmethod
    def _per_input_result(cls, o: SimpleNamespace) -> bool:
        """Whether this call's result holds one value per packed input feature, given back in the user's structure
        (one tensor per input); a map or a layer's activation is returned as it is."""
        return cls.returns == "input"

    def _check_layout(self, layout: Layout, o: SimpleNamespace) -> None:
        """Refuse inputs this method cannot take; a method whose result is not input-shaped (a CAM, a layer's
        activation) overrides this to say which of several inputs it explains."""
        if not layout.single and self.returns != "input":
            raise ValueError(f"{self.name or type(self).__name__} does not take several inputs")

    def _postprocess(self, a: torch.Tensor, x: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
        """The attribution as returned (a method with a reduction option overrides this)."""
        return a

    def _check_finite(self, a: torch.Tensor, dtype: torch.dtype) -> None:
        bad = ~torch.isfinite(a)
        if bool(bad.any()):
            rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
            reason = narrow_range_reason(dtype) or ("a gradient was evaluated where it is singular "
                                                    "(e.g. sqrt or log at 0)")
            raise NonFiniteAttributionError(
                f"{self.name or type(self).__name__} produced NaN or inf attributions for samples {rows[:10]}: "
                f"{reason}"
            )

    __call__ = attribute

    def bind(self, call: Call, **options: Any) -> BoundMethod:
        """This method run inside another method's ``call``, on that call's model view and coverage record.

        For wrappers such as SmoothGrad, which evaluate a base method on rows they make: the result
        ``bound(rows, target)`` is the base method's attribution of ``rows`` with ``options`` (validated
        against its schema; its constructor options are defaults).  The target must already be resolved.
        """
        o = self._namespace(options)
        if o.batch_size is None:
            raise ValueError("a bound method needs batch_size= (the calling method's)")
        if call.layout is not None:
            self._check_layout(call.layout, o)
        check_nested_options(self.schema(), o, call.layout)
        o.call = call
        return BoundMethod(self, o)

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        raise NotImplementedError

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        """Whether this call's first model pass runs all the clean inputs ``x`` through the model unchanged
        and fixes ``target=None`` from those outputs (:meth:`Target.resolve`; the engine's gradient functions
        do so on the rows they score).  Then :meth:`attribute` spends no forward pass of its own on the
        prediction; otherwise (the default) it runs one, without backward, before ``_attribute``."""
        return False

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
                   relevance: bool = False, outputs: list | None = None) -> torch.Tensor:
        """Modified gradient of each row's score under this method's rules (one forward + backward)."""
        return gradient_rows(
            o.call.forward, rows, target, sample,
            rules=self.rule_set(o) if rules is None else rules,
            create_graph=o.differentiable, coverage=o.call.coverage, strict=o.call.strictness, score_rows=score_rows,
            relevance=relevance, outputs=outputs,
        )
