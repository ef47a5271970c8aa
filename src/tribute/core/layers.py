"""Layers: address an intermediate activation, capture it during a forward pass, differentiate at it.

Naming (:mod:`tribute.core.layer_names`)
----------------------------------------
A layer is named as in ``model.named_modules()``: ``"layer4"``, ``"features.7"``, ``"layer4.1.conv2"``
(or given as the submodule itself).  Its activation is the module's *output* (the value its ``forward``
returns, as the caller receives it), or an element of it (``"stage[0]"``) when the module returns a tuple.

A module called more than once in one forward pass (a reused ``nn.ReLU(inplace=True)`` as in
torchvision's ResNet blocks, a shared block) has no single activation, so naming it is an error unless the
call is named too: ``"layer4.1.relu#1"`` is the module's second call, counting from ``#0`` in the order of
the forward pass.  A module that ``forward`` never calls is an error, as is an unknown name (the error lists
the nearest valid names).

Capture
-------
:func:`capture` places a temporary forward hook on the module (removed in ``finally``: the model is left
exactly as it was, also when the forward pass fails) that records the output and hands the rest of the
network a copy of it, so an in-place operation downstream (``relu_``) cannot alter what was recorded and
the gradient taken at the activation is the gradient at the module's output.  The hook can also *replace*
the output with another tensor (integrated gradients in the layer's activation space).

The default layer of the CAM family (a transformer's tokens: :mod:`tribute.core.token_layers`)
-----------------------------------------------------------------------------------------------
:func:`find_default_layer` runs a one-row probe pass that follows the tensors derived from the input (a
torch-function mode tags them) and walks back from the model's output to the nearest four-dimensional tensor (N,
C, H, W) with more than one spatial position: the last spatial feature map before the spatial dimensions collapse
(global pooling, flatten). A tensor whose axes were reordered from a convolution's (channels last, (N, H, W, C),
inside torchvision's ConvNeXt and Swin blocks and in ConvNeXt's ``LayerNorm2d``) is not taken for a map: the probe
follows each 4-D tensor's layout from the convolutions (:class:`_ProbeMode`). In a torchvision ResNet that is the
input of ``avgpool``, which is ``layer4``'s output (not ``layer4[-1].conv2``). If a module returns that tensor,
the layer is that module (the outermost one, e.g. ``layer4`` rather than its last block); if only a function
produces it (``F.adaptive_avg_pool2d`` in a functional model) the layer is that call, found again in later passes
by its position among the calls of the same function on the input's path.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .engine import (
    Forward,
    end_phases,
    forward_under_rules,
    gradient_leaf,
    record_passes,
    row_samples,
    score_gradient,
)
from .interception import Coverage, op_name
from .layer_names import LayerError, ModuleSite, OpSite, Site, output_element, with_element
from .rules import GRADIENT, RuleSet
from .targets import Target
from .threads import this_thread
from .token_layers import SHAPE_FUNCTIONS, is_token_grid, is_tokens, token_model_message

# -- following the tensors derived from the input ----------------------------------------------------

_TAG = "_tribute_layer_path"


def _tensors(args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (b for b in a if isinstance(b, torch.Tensor))


def outputs_of(out: Any) -> list[tuple[int | None, torch.Tensor]]:
    """The tensors an op returned, each with its position in a returned tuple (None: the op returned it)."""
    if isinstance(out, torch.Tensor):
        return [(None, out)]
    if isinstance(out, (list, tuple)):
        return [(i, o) for i, o in enumerate(out) if isinstance(o, torch.Tensor)]
    return []


def _func_name(func: Any) -> str:
    name = op_name(func)
    return name.rsplit(".", 1)[-1]


class PathMode(TorchFunctionMode):
    """Follow the tensors computed from the input: ``mark`` the input; every call with a marked tensor among
    its arguments goes to :meth:`on_call`, which marks the outputs (subclasses record or replace them).

    Its own mark, independent of the rule engine's, so it can sit above an active rule set: it then sees
    the calls the model makes (``F.relu``), before the rule engine routes them."""

    def __init__(self):
        super().__init__()
        self.token = object()

    def mark(self, t: torch.Tensor, value: Any = None) -> None:
        try:
            setattr(t, _TAG, (self.token, value))
        except (AttributeError, RuntimeError):  # some tensor subclasses refuse attributes
            pass

    def tag_of(self, t: Any) -> tuple | None:
        tag = getattr(t, _TAG, None) if isinstance(t, torch.Tensor) else None
        return tag if tag is not None and tag[0] is self.token else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = [t for t in _tensors(args, kwargs) if self.tag_of(t) is not None]
        if not ins:
            return func(*args, **kwargs)
        return self.on_call(func, args, kwargs, ins)

    def on_call(self, func, args, kwargs, ins):
        out = func(*args, **kwargs)
        for _, o in outputs_of(out):
            self.mark(o)
        return out


@dataclass
class _Record:
    func: Any
    occurrence: int
    output_index: int | None
    inputs: list[int]


#: calls that reorder a tensor's axes, whose effect on the layout :meth:`_ProbeMode.layout_after` works out
AXIS_ORDER_FUNCTIONS = frozenset({"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"})
CHANNELS_FIRST = (0, 1, 2, 3)
#: calls whose 4-D output is (N, C, H, W) by definition
CHANNELS_FIRST_FUNCTIONS = frozenset({
    "conv2d", "conv_transpose2d", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
    "adaptive_max_pool2d", "lp_pool2d", "batch_norm", "instance_norm", "group_norm", "pixel_shuffle",
    "pixel_unshuffle", "interpolate", "upsample", "upsample_bilinear", "upsample_nearest"})


class _ProbeMode(PathMode):
    """Record which call made each tensor on the input's path (tensors numbered by serials).

    A call that returns one of its inputs unchanged (``contiguous()``, ``float()`` on a float tensor) is
    transparent; an in-place call gives the tensor a new serial (its new value).

    Layouts.  A 4-D tensor's *layout* says which axis of a convolution's (N, C, H, W) each of its axes is:
    ``(0, 1, 2, 3)`` for the output of a convolution, pooling or batch norm (:data:`CHANNELS_FIRST_FUNCTIONS`, which
    define the layout whatever the input's was: a model may take (N, H, W, C) images and permute them itself),
    ``(0, 2, 3, 1)`` after ``permute(0, 2, 3, 1)`` (channels last, as in the blocks of torchvision's ConvNeXt and
    Swin, whose LayerNorm and Linear layers act on the last axis).  Calls that reorder axes
    (:data:`AXIS_ORDER_FUNCTIONS`) reorder the layout; any other call giving a 4-D tensor keeps the layout of its
    first 4-D input with one (a layer norm over the last axis, an activation, a sum); a 4-D tensor with no such
    ancestor (the input, a token sequence reshaped to a grid) has no known layout (None).
    """

    def __init__(self):
        super().__init__()
        self.records: dict[int, _Record] = {}
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.layouts: dict[int, tuple[int, ...] | None] = {}
        self.counts: dict[Any, int] = {}

    def number(self, t: torch.Tensor, layout: tuple[int, ...] | None = None) -> int:
        s = len(self.shapes)
        self.shapes[s] = tuple(t.shape)
        self.layouts[s] = layout
        self.mark(t, s)
        return s

    def layout_after(self, func, args, kwargs, ins: list[torch.Tensor], out: torch.Tensor) -> tuple[int, ...] | None:
        """The layout of the 4-D ``out`` of ``func`` (class doc)."""
        if out.dim() != 4:
            return None
        name = _func_name(func)
        if name in CHANNELS_FIRST_FUNCTIONS:
            return CHANNELS_FIRST
        known = [(t, self.layouts.get(self.serial(t))) for t in ins if t.dim() == 4]
        known = [(t, lay) for t, lay in known if lay is not None]
        if not known:
            return None
        source, layout = known[0]
        if name not in AXIS_ORDER_FUNCTIONS:
            return layout
        # replay the call on a meta tensor of distinct sizes: the output's sizes say where each axis went
        sizes = (2, 3, 5, 7)
        stand_in = torch.empty(sizes, device="meta")
        swapped = [stand_in if a is source else a for a in args]
        try:
            moved = func(*swapped, **{k: stand_in if v is source else v for k, v in kwargs.items()})
        except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError):
            return None  # a call the replay cannot repeat: the layout is unknown, as for a reshaped token grid
        if not isinstance(moved, torch.Tensor) or sorted(moved.shape) != list(sizes):
            return None
        return tuple(layout[sizes.index(n)] for n in moved.shape)

    def serial(self, t: Any) -> int | None:
        tag = self.tag_of(t)
        return None if tag is None else tag[1]

    def on_call(self, func, args, kwargs, ins):
        before = [(t, self.serial(t), t._version) for t in ins]
        out = func(*args, **kwargs)
        k = self.counts.get(func, 0)
        self.counts[func] = k + 1
        for i, o in outputs_of(out):
            if any(o is t and o._version == v for t, _, v in before):
                continue  # the same tensor, unchanged
            s = self.number(o, self.layout_after(func, args, kwargs, ins, o))
            self.records[s] = _Record(func, k, i, [b for _, b, _ in before])
        return out


def find_default_layer(forward: Forward, x: torch.Tensor) -> Site:
    """The last (N, C, H, W) activation with H·W > 1 on the path from the input to the output (module doc)."""
    model = forward.model
    probe = _ProbeMode()
    module_calls: list[tuple[str, int, int]] = []
    calls: dict[str, int] = {}
    modules = {n: m for n, m in model.named_modules() if n} if isinstance(model, nn.Module) else {}

    def watcher(name: str):
        @this_thread
        def hook(module, args, out):
            k = calls.get(name, 0)
            calls[name] = k + 1
            s = probe.serial(out)
            if s is not None:
                module_calls.append((name, k, s))
        return hook

    row, handles = x[:1].detach(), []
    probe.number(row)
    try:
        for name, m in modules.items():
            handles.append(m.register_forward_hook(watcher(name)))
        with torch.no_grad(), probe:
            out = forward(row, torch.zeros(1, dtype=torch.long))  # the first sample
    finally:
        for h in handles:
            h.remove()
    start = probe.serial(out)
    if start is None:
        raise LayerError("the model's output is not computed from its input by torch operations; pass layer=")
    owner = {s: name for name, _, s in module_calls}  # the outermost module returning each tensor
    queue, seen, found = deque([start]), {start}, None
    while queue:
        s = queue.popleft()
        shape, rec = probe.shapes[s], probe.records.get(s)
        if s in owner and is_tokens(shape):  # a transformer's tokens before any map: see core/token_layers.py
            grids = [(n if calls[n] == 1 else f"{n}#{k}", probe.shapes[t]) for n, k, t in module_calls
                     if is_token_grid(probe.shapes[t])]
            raise LayerError(token_model_message(owner[s], shape, list(dict(grids).items())))
        if (len(shape) == 4 and shape[2] * shape[3] > 1 and probe.layouts[s] in (None, CHANNELS_FIRST)
                and (s in owner or rec is None or _func_name(rec.func) not in SHAPE_FUNCTIONS)):
            found = s
            break
        for p in rec.inputs if rec is not None else ():
            if p not in seen:
                seen.add(p)
                queue.append(p)
    if found is None:
        raise LayerError("found no spatial feature map (an (N, C, H, W) activation with H·W > 1) on the path from "
                         "the input to the output; pass layer= with a module name")
    if found == 0:
        raise LayerError("the last spatial map before the spatial dimensions collapse is the input itself: the model "
                         "has no convolutional feature map to explain; pass layer= with a module name")
    owners = [(name, k) for name, k, s in module_calls if s == found]
    if owners:
        name, k = owners[-1]  # hooks fire inner modules first: the last is the outermost
        return ModuleSite(name, modules[name], k if calls[name] > 1 else None)
    rec = probe.records[found]
    nth = _ordinal(rec.occurrence + 1)
    out_part = "" if rec.output_index is None else f" (its output {rec.output_index})"
    label = f"the output of the {nth} call of {_func_name(rec.func)}{out_part} on the input's path"
    return OpSite(rec.func, rec.occurrence, rec.output_index, label)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# -- capture -----------------------------------------------------------------------------------------


class Capture:
    """What :func:`capture` recorded: the activation, the tensor to differentiate at, the layer's input."""

    def __init__(self, site: Site, *, grad: bool, replace: torch.Tensor | None,
                 tag: Callable[[torch.Tensor], None] | None, keep_input: bool, graph_from_here: bool = False):
        self.site = site
        self.grad = grad
        #: the forward pass runs without a graph up to the layer, which starts it (see :func:`capture`)
        self.graph_from_here = graph_from_here
        self.replace = replace
        self.tag = tag
        self.keep_input = keep_input
        #: the activation the rest of the network saw (the layer's output, or the replacement)
        self.value: torch.Tensor | None = None
        #: differentiate a score with respect to this tensor for ∂S/∂activation (with ``grad=True``)
        self.grad_wrt: torch.Tensor | None = None
        #: the layer's (first tensor) input, with ``keep_input=True``
        self.input: torch.Tensor | None = None
        #: how many times the module was called in the forward pass
        self.calls = 0

    def take_input(self, args: tuple, kwargs: dict) -> None:
        """Record the layer's first tensor argument, before the call (an in-place layer overwrites it)."""
        if self.keep_input:
            first = next(iter(_tensors(args, kwargs)), None)
            self.input = None if first is None else (first.clone() if self.grad else first.detach().clone())

    def take(self, out: Any) -> Any:
        """Record ``out`` (or the element of it the layer names); return what the network should continue with
        (``None``: ``out`` itself)."""
        element = getattr(self.site, "element", None)
        if element is None and not isinstance(out, torch.Tensor) and isinstance(self.site, ModuleSite):
            output_element(self.site, out)  # raises, listing the elements to choose from
        if element is None:
            return self._take(out)
        new = self._take(output_element(self.site, out))
        return None if new is None else with_element(out, element, new)

    def _take(self, out: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(out, torch.Tensor):
            raise LayerError(
                f"{self.site.describe()} returns a {type(out).__name__}, not a tensor: choose another layer"
            )
        rep = self.replace
        if rep is None:
            if not self.grad:
                self.value = out.detach().clone()
                return None
            if self.graph_from_here:
                torch.set_grad_enabled(True)  # the rest of the forward pass records; capture() restores the mode
                out = out.detach().requires_grad_()
            # downstream continues with a copy: in-place ops there cannot overwrite the recorded output
            self.value = self.grad_wrt = out
            new = out.clone()
            if self.tag is not None:  # the input's float path may start here (a layer on token ids)
                self.tag(new)
            return new
        if rep.shape != out.shape:
            raise LayerError(
                f"the replacement for {self.site.describe()} has shape {tuple(rep.shape)} but the layer's output has "
                f"shape {tuple(out.shape)}"
            )
        rep = rep.to(device=out.device, dtype=out.dtype)
        leaf = (rep if rep.requires_grad else rep.detach().requires_grad_()) if self.grad else rep.detach()
        self.value = leaf
        if self.grad:
            self.grad_wrt = leaf
        new = leaf.clone()
        if self.tag is not None:
            self.tag(new)
        return new

    def check(self) -> None:
        site, n = self.site, self.calls
        if isinstance(site, OpSite):
            if self.value is None:
                raise LayerError(f"{site} was not reached in this forward pass (the model took another path); "
                                 "pass layer= with a module name")
            return
        if n == 0:
            raise LayerError(
                f"layer {site.name!r} ({type(site.module).__name__}) is never called during the forward pass: "
                "it is registered in the model but forward() does not use it"
            )
        if site.call is None and n > 1:
            names = ", ".join(repr(f"{site.name}#{k}") for k in range(min(n, 4))) + (", …" if n > 4 else "")
            raise LayerError(
                f"module {site.name!r} is called {n} times in one forward pass, so its activation is ambiguous; "
                f"name the call ({names}), counting from #0 in the order of the forward pass"
            )
        if site.call is not None and site.call >= n:
            raise LayerError(
                f"layer {str(site)!r} names call #{site.call}, but {site.name!r} is called {n} time(s) in one "
                f"forward pass (#0{'' if n == 1 else f' … #{n - 1}'})"
            )


class _CaptureMode(PathMode):
    def __init__(self, cap: Capture):
        super().__init__()
        self.cap = cap
        self.count = 0

    def on_call(self, func, args, kwargs, ins):
        site = self.cap.site
        hit = False
        if func is site.func:
            hit = self.count == site.occurrence
            self.count += 1
            if hit:
                self.cap.take_input(args, kwargs)
        out = func(*args, **kwargs)
        if hit:
            self.cap.calls += 1
            if site.output_index is None:
                new = self.cap.take(out)
                out = out if new is None else new
            else:
                items = list(out)
                new = self.cap.take(items[site.output_index])
                if new is not None:
                    items[site.output_index] = new
                    out = type(out)(items)  # tuple, list or a torch.return_types structseq
        for _, o in outputs_of(out):
            self.mark(o)
        return out


def _capture_module(site: ModuleSite, cap: Capture, keep_input: bool) -> Iterator[Capture]:
    """Hooks on the module that record its wanted call into ``cap`` (this thread's calls), removed also on error."""
    want = 0 if site.call is None else site.call

    @this_thread
    def pre_hook(module, args, kwargs):
        if cap.calls == want:
            cap.take_input(args, kwargs)

    @this_thread
    def hook(module, args, out):
        k = cap.calls
        cap.calls += 1
        return cap.take(out) if k == want else None

    handles = []
    try:
        if keep_input:
            handles.append(site.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(site.module.register_forward_hook(hook))
        yield cap
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(site: Site, x: torch.Tensor, *, grad: bool = False, replace: torch.Tensor | None = None,
            tag: Callable[[torch.Tensor], None] | None = None, keep_input: bool = False,
            graph_from_here: bool = False) -> Iterator[Capture]:
    """Record ``site``'s activation during the forward pass of ``x`` run inside this block.

    With ``grad=True`` the recorded ``grad_wrt`` is a tensor on the autograd graph whose gradient is
    ∂S/∂activation (the caller makes ``x`` require grad); with ``replace`` the layer's output is replaced
    by that tensor (same shape), and ``tag`` is called on what the network continues with (to put it on a
    rule engine's input path).  On leaving the block, a layer that was never called, or a module called
    more than once without a named call, raises :class:`LayerError`.  Hooks and modes are removed also
    when the forward pass fails.  ``graph_from_here`` (a module's output, no replacement): the forward pass
    runs without recording a graph until the layer, whose output starts one as a leaf (∂S/∂A needs nothing
    before it); the grad mode is restored on leaving the block.
    """
    cap = Capture(site, grad=grad, replace=replace, tag=tag, keep_input=keep_input,
                  graph_from_here=graph_from_here and grad and replace is None and isinstance(site, ModuleSite))
    if cap.graph_from_here:
        with torch.no_grad():
            try:
                yield from _capture_module(site, cap, keep_input)
            finally:
                torch.set_grad_enabled(False)  # the hook turned it on: no_grad's exit restores the caller's mode
        cap.check()
        return
    if isinstance(site, ModuleSite):
        yield from _capture_module(site, cap, keep_input)
    else:
        mode = _CaptureMode(cap)
        mode.mark(x)
        with mode:
            yield cap
    cap.check()


# -- gradients at a layer ----------------------------------------------------------------------------


class LayerRows(NamedTuple):
    grad: torch.Tensor
    """∂^g S / ∂A for every row (the layer's shape)"""
    activation: torch.Tensor
    """A for every row: the layer's output, or the replacement the network continued with"""
    scores: torch.Tensor
    """S for the scored rows"""
    outputs: torch.Tensor
    """the model's outputs"""


def layer_gradient_rows(
    forward: Forward,
    rows: torch.Tensor,
    site: Site,
    target: Target,
    sample: torch.Tensor,
    *,
    rules: RuleSet = GRADIENT,
    replace: torch.Tensor | None = None,
    create_graph: bool = False,
    coverage: Coverage | None = None,
    strict=None,
    score_rows: int | None = None,
) -> LayerRows:
    """∂^g S_t / ∂A for the activation A of layer ``site``, for every row of ``rows`` (one forward + backward).

    The counterpart of :func:`tribute.core.engine.gradient_rows` at a layer: the rule set applies to every
    nonlinearity computed from the input, the layer's activation included (so rules act downstream of the
    layer as they would downstream of the input).  With ``replace`` (a tensor of the layer's shape, one row
    per row) the network continues from ``replace`` instead of the layer's output, and the gradient is taken
    there; the rows still run through the layers before it (branches that bypass the layer see them).
    """
    inp = gradient_leaf(rows, create_graph)
    phases: list = []
    with torch.enable_grad():
        try:
            holder = {}

            @contextlib.contextmanager
            def within(mode):
                tag = None
                if mode is not None:
                    def tag(t):  # a replacement, or an output off the input's float path, starts the path anew
                        if replace is not None or not mode.on_path(t):
                            phases.append(mode.tag_input(t, create_graph))
                # plain gradients need no graph before the layer: the forward pass records from it on
                plain = mode is None and not create_graph
                with capture(site, inp, grad=True, replace=replace, tag=tag, graph_from_here=plain) as c:
                    holder["cap"] = c
                    yield c

            out = forward_under_rules(forward, inp, rules=rules, coverage=coverage, strict=strict, phases=phases,
                                      within=within, differentiable=create_graph,
                                      sample=row_samples(sample, rows.shape[0]))
            cap = holder["cap"]
            scored = out if score_rows is None else out[:score_rows]
            if target.needs_argmax:
                target.set_argmax(scored)
            s = target.scores(scored, sample)
            g = score_gradient(s.sum(), cap.grad_wrt, create_graph=create_graph, what=site.describe())
        finally:
            end_phases(phases)
    record_passes(backward=out.shape[0])
    return LayerRows(g, cap.value, s, out)


def layer_activations(forward: Forward, x: torch.Tensor, site: Site, batch_size: int, *,
                      replace: torch.Tensor | None = None,
                      sample: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The activations of ``site`` and the model's outputs for ``x`` (no gradients), in chunks.

    With ``replace`` the layer's output is replaced (row by row) and the outputs are those of the network
    continuing from it.  ``sample[r]`` is the sample row r belongs to (None: the rows are the samples).
    """
    acts, outs = [], []
    if sample is None:
        sample = forward.samples_in_order(x.shape[0])
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            rows = x[i:i + batch_size].detach()
            rep = None if replace is None else replace[i:i + batch_size]
            with capture(site, rows, replace=rep) as cap:
                out = forward(rows, sample[i:i + batch_size])
            acts.append(cap.value)
            outs.append(out)
    return torch.cat(acts), torch.cat(outs)
