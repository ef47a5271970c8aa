"""The engine: modified gradients of a score, row by row, over batches taken in chunks.

Everything here is method-agnostic.  A method supplies a rule set (which g replaces f' at the
nonlinearities), the rows to evaluate (the input, points on a path, noisy copies, references) and
how to turn each row's gradient into a contribution (multiplier and weight); the engine runs the rows
through the model in chunks of at most ``batch_size`` rows and sums the contributions per sample.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .forward_args import ForwardArgs
from .inputs import Layout
from .interception import Coverage, apply_rules, note_inputs
from .outputs import select_output
from .rules import GRADIENT, RuleSet
from .strictness import Strictness
from .targets import Target
from .train_guard import MODE_DEPENDENT, refuse_train_mode

# Input elements per chunk that the default batch size aims at, and its cap in rows.  A CIFAR image
# gives 32 rows per chunk, a 224×224 photo 6.  The cap is measured: on a CIFAR ResNet-18 a 64-row chunk's
# activations (17 MB per layer1 tensor) overflow a 32 MB L3 cache and IG ran 13-15 % slower than at 32 rows.
_DEFAULT_CHUNK_ELEMENTS = 2**20
_DEFAULT_MAX_ROWS = 32


@dataclass(eq=False)
class PassCount:
    """Rows pushed through the model forward and backward (one row = one input sample)."""

    forward_rows: int = 0
    backward_rows: int = 0

    def add(self, forward: int = 0, backward: int = 0) -> None:
        self.forward_rows += forward
        self.backward_rows += backward


_local = threading.local()


def _counters() -> list[PassCount]:
    if not hasattr(_local, "counters"):
        _local.counters = []
    return _local.counters


@contextlib.contextmanager
def count_passes() -> Iterator[PassCount]:
    """Count the rows tribute sends through models inside this block (nested blocks all count)."""
    c = PassCount()
    _counters().append(c)
    try:
        yield c
    finally:
        stack = _counters()
        del stack[next(i for i, d in enumerate(stack) if d is c)]


def record_passes(forward: int = 0, backward: int = 0) -> None:
    """Add rows to every active :func:`count_passes` block (for code that runs the model itself, e.g. attacks)."""
    for c in _counters():
        c.add(forward, backward)



def check_model(model: nn.Module) -> None:
    """Refuse models the engine cannot see into, and train mode where it changes the result."""
    if not callable(model):
        raise TypeError(f"model must be a callable nn.Module, got {type(model).__name__}")
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise TypeError(
            "TorchScript models run outside Python, where the engine cannot apply its rules; "
            "pass the original nn.Module instead"
        )
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise TypeError(
            f"{type(model).__name__} runs replicas in threads the engine cannot reach (its interception "
            "is thread-local); pass the wrapped model.module instead"
        )
    if isinstance(model, nn.Module) and model.training:
        culprits = [n or type(m).__name__ for n, m in model.named_modules()
                    if isinstance(m, MODE_DEPENDENT) and m.training]
        if culprits:
            raise ValueError(
                "the model is in train mode and its output depends on it "
                f"({', '.join(culprits[:3])}{', …' if len(culprits) > 3 else ''}); call model.eval() first"
            )


def model_dtype(model: nn.Module) -> torch.dtype | None:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def check_inputs(model: nn.Module, x: torch.Tensor, *, integers: bool = False, name: str = "inputs") -> None:
    """Inputs must be a batch of finite floating-point values in the model's dtype; with ``integers`` (layer
    methods, which differentiate at a layer) integer inputs such as token ids are accepted too."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 and (x.is_floating_point() or not integers):
        raise ValueError(f"{name} must be a batch with the samples along dim 0, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} hold no samples (dim 0 has size 0)")
    if not x.is_floating_point():
        if integers and not x.is_complex() and x.dtype != torch.bool:
            return
        hint = (": token ids cannot be attributed at the input; attribute at the embedding layer's output with a "
                "layer method, e.g. tribute.explain(model, ids, 'layer_integrated_gradients', layer=<the embedding "
                "module's name>, reduce='sum')") if not x.is_complex() and x.dtype != torch.bool else ""
        raise TypeError(f"{name} must be floating point, got {x.dtype}{hint}")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN or inf (samples {rows[:10]}{'…' if len(rows) > 10 else ''})")
    dt = model_dtype(model)
    if dt is not None and dt != x.dtype:
        raise TypeError(
            f"{name} are {x.dtype} but the model's parameters are {dt}: convert one of them "
            f"(e.g. inputs.to({dt}) or model.to({x.dtype}))"
        )


class Forward:
    """``model(*transform(unpack(x)), *forward_args, **forward_kwargs)``, counted, with the scores picked from
    structured outputs (``output=``).

    The transform (e.g. normalisation) keeps x in pixel space.  ``layout`` unpacks rows that hold several
    inputs (:mod:`tribute.core.inputs`); ``args`` are the call's extra forward arguments
    (:mod:`tribute.core.forward_args`), given to each row as its sample's.  A model that is not an
    ``nn.Module`` runs under :func:`tribute.core.train_guard.refuse_train_mode`.
    """

    def __init__(self, model: nn.Module, input_transform: Callable | None = None, *, layout: Layout | None = None,
                 args: ForwardArgs | None = None, output=None):
        check_model(model)
        self.model = model
        self.layout = layout
        self.args = args
        self.output = output
        self.transform = input_transform
        self._guard = not isinstance(model, nn.Module)

    def __call__(self, x: torch.Tensor, sample: torch.Tensor | None = None) -> torch.Tensor:
        """The scores for rows ``x``; ``sample[r]`` is the sample row r belongs to (None: the rows are the
        samples, in order), which picks each row's forward arguments."""
        if self.layout is None or self.layout.single:
            inputs = (x if self.transform is None else self.transform(x),)
        else:
            inputs = self.layout.unpack(x)
            note_inputs(inputs)
            if self.transform is not None:
                inputs = tuple(t if f is None else f(t) for f, t in zip(self.transform, inputs, strict=True))
        args, kwargs = ((), {}) if self.args is None else self.args.take(sample, x.shape[0])
        with refuse_train_mode() if self._guard else contextlib.nullcontext():
            out = self.model(*inputs, *args, **kwargs)
        if not isinstance(out, torch.Tensor) or self.output is not None:
            out = select_output(out, self.output)
        record_passes(forward=x.shape[0])
        return out

    def transformed(self, x: torch.Tensor) -> torch.Tensor:
        """The packed rows as the model receives them: ``input_transform`` applied to each input."""
        if self.transform is None:
            return x
        if self.layout is None or self.layout.single:
            return self.transform(x)
        return self.layout.pack([t if f is None else f(t)
                                 for f, t in zip(self.transform, self.layout.unpack(x), strict=True)])

    def untransformed(self) -> Forward:
        """This forward without ``input_transform``: for rows already transformed (LRP takes relevance at the
        model's own input)."""
        view = copy.copy(self)
        view.transform = None
        return view

    def for_samples(self, sample: torch.Tensor) -> Forward:
        """This forward for a nested call whose samples are the rows ``sample`` of this call's samples."""
        if self.args is None or not self.args.per_sample:
            return self
        view = copy.copy(self)
        view.args = self.args.for_samples(sample)
        return view

    def samples_in_order(self, rows: int) -> torch.Tensor:
        """The sample indices of rows that are the samples themselves, in order; refused when the call has
        per-sample forward arguments and ``rows`` is not their number of samples."""
        if self.args is not None:
            self.args.take(None, rows)
        return torch.arange(rows)

    def outputs(self, x: torch.Tensor, batch_size: int, sample: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs for a batch without gradients, in chunks (``sample`` as in :meth:`__call__`)."""
        if sample is None:
            sample = self.samples_in_order(x.shape[0])
        with torch.no_grad():
            return torch.cat([self(c, s) for c, s in zip(x.split(batch_size), sample.split(batch_size), strict=True)])


def default_batch_size(x: torch.Tensor) -> int:
    per_row = max(1, x[0].numel())
    return max(1, min(_DEFAULT_MAX_ROWS, _DEFAULT_CHUNK_ELEMENTS // per_row))


def gradient_rows(
    forward: Forward,
    points: torch.Tensor,
    target: Target,
    sample: torch.Tensor,
    *,
    rules: RuleSet = GRADIENT,
    create_graph: bool = False,
    coverage: Coverage | None = None,
    strict: Strictness | bool | None = None,
    score_rows: int | None = None,
    relevance: bool = False,
    outputs: list | None = None,
) -> torch.Tensor:
    """∂^g S_t(row) / ∂row for every row of ``points`` (Ancona et al. 2019, Eq 16), under rule set ``rules``.

    ``sample[r]`` names the sample row r belongs to (for its target).  With ``score_rows`` only the first
    rows carry a score (DeepLIFT's references ride along in the same pass).  With ``create_graph`` the
    gradients stay on the autograd graph, also back to ``points`` if it requires grad.  With ``relevance``
    (LRP) the backward pass starts from the score's value instead of 1: R_out = S_c(x) at the target.  A list
    ``outputs`` receives the model's outputs of every row (detached), for checks of the method's identity.
    """
    leaf = gradient_leaf(points, create_graph)
    phases: list = []
    with torch.enable_grad():
        out = forward_under_rules(forward, leaf, rules=rules, coverage=coverage, strict=strict, phases=phases,
                                  differentiable=create_graph, sample=row_samples(sample, leaf.shape[0]))
        scored = out if score_rows is None else out[:score_rows]
        if target.needs_argmax:
            target.set_argmax(scored)
        s = target.scores(scored, sample)
        try:
            start = s.detach() if relevance else torch.ones_like(s)
            g = score_gradient(s, leaf, start, create_graph=create_graph)
        finally:
            end_phases(phases)
    record_passes(backward=out.shape[0])
    if outputs is not None:
        outputs.append(out.detach())
    return g


class DisconnectedInputError(RuntimeError):
    """The score does not reach the tensor attributed to through autograd, so its gradient there is undefined.

    Raised by every gradient-based method instead of autograd's "appears to not have been used in the graph":
    the model's forward cuts the input off the graph (``x.detach()``, layers under ``torch.no_grad()``, a
    reentrant checkpoint) or its output is constant.  The model's *values* may well depend on the input;
    only its gradient, which these methods read, does not.
    """


def disconnected(what: str = "the input") -> DisconnectedInputError:
    """The one message for a score that does not reach ``what``."""
    return DisconnectedInputError(
        f"the score does not depend on {what} through autograd, so its gradient there is not defined (is there "
        "a torch.no_grad(), .detach() or reentrant checkpoint in forward(), or is the output constant?)"
    )


def score_gradient(score: torch.Tensor, wrt: torch.Tensor, start: torch.Tensor | None = None, *,
                   create_graph: bool = False, what: str = "the input") -> torch.Tensor:
    """∂⟨start, score⟩/∂wrt; :class:`DisconnectedInputError` where the score does not reach ``wrt``."""
    if not (score.requires_grad and wrt.requires_grad):
        raise disconnected(what)
    (g,) = torch.autograd.grad(score, wrt, start, create_graph=create_graph, allow_unused=True)
    if g is None:
        raise disconnected(what)
    return g


def narrow_range_reason(dtype: torch.dtype) -> str | None:
    """Why a method's non-finite result may be ``dtype``'s fault: float16's narrow range; None for other dtypes.

    bfloat16 has float32's range (only fewer digits), so it overflows where float32 would.
    """
    if dtype != torch.float16:
        return None
    info = torch.finfo(dtype)
    return (f"in {dtype}, whose range (largest {info.max:.6g}, smallest {info.tiny:.3g}) is too narrow for an "
            "intermediate quotient or product of this method (e.g. a stabiliser ε that rounds to 0): run the "
            "model and inputs in torch.bfloat16 or torch.float32")


def gradient_leaf(rows: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """The tensor gradients are taken at: ``rows`` itself when the result must stay on the caller's graph,
    else a fresh leaf (nothing flows back to the caller's tensors)."""
    if not rows.is_floating_point():
        return rows  # token ids: layer methods differentiate at the layer, never at the ids
    return rows if create_graph and rows.requires_grad else rows.detach().requires_grad_()


def row_samples(sample: torch.Tensor, rows: int) -> torch.Tensor:
    """The sample of each of ``rows`` rows whose first ``len(sample)`` are scored: references that ride along
    in the same pass (DeepLIFT's x̄) follow in blocks of the same samples in the same order."""
    if rows == len(sample):
        return sample
    if len(sample) == 0 or rows % len(sample):
        raise RuntimeError(f"internal: {rows} rows are not blocks of the {len(sample)} scored rows' samples")
    return sample.repeat(rows // len(sample))


def forward_under_rules(forward: Forward, leaf: torch.Tensor, *, rules: RuleSet, coverage: Coverage | None,
                        strict: Strictness | bool | None, phases: list, within: Callable | None = None,
                        differentiable: bool = True, sample: torch.Tensor | None = None) -> torch.Tensor:
    """``forward(leaf, sample)`` with ``rules`` applied to the tensors computed from ``leaf``.

    Each tagged input opens a phase (appended to ``phases``; see :class:`tribute.core.rules.Phase`) that the
    caller ends with :func:`end_phases` after the attribution's backward pass.  ``within(mode)`` may give a
    further context for the pass (layer capture).  ``strict`` (a :class:`~tribute.core.strictness.Strictness`, or
    the option's value) decides what ops without a rule do: rule sets other than the plain gradient refuse them
    unless it is False (then a warning); the plain gradient runs without the function mode unless it is True.
    """
    policy = strict if isinstance(strict, Strictness) else Strictness(strict)
    use_mode = policy.records(rules)
    if use_mode and coverage is None:
        coverage = Coverage()
    with apply_rules(rules, coverage=coverage) if use_mode else contextlib.nullcontext() as mode:
        if mode is not None:
            phases.append(mode.tag_input(leaf, differentiable))
        propagation = getattr(mode, "propagation", None)  # LRP's rules at linear layers see modules
        with (propagation.track_modules(forward.model) if propagation else contextlib.nullcontext()), \
                (within(mode) if within is not None else contextlib.nullcontext()):
            out = forward(leaf, sample)
    if hasattr(propagation, "finish"):  # the ops handler's last word on the output (LRP's gradient form)
        out = propagation.finish(out)
    if use_mode:
        coverage.passes += 1
        policy.check(rules, coverage)
    return out


def end_phases(phases: list) -> None:
    """Later backward passes through these graphs differentiate the attribution (rule nodes answer f')."""
    for p in phases:
        p.first_order = False


def chunk_rows(total: int, batch_size: int) -> list[range]:
    """Split ``total`` rows into the fewest chunks of at most ``batch_size``, of near-equal size."""
    n_chunks = max(1, math.ceil(total / batch_size))
    base, extra = divmod(total, n_chunks)
    bounds = [0]
    for i in range(n_chunks):
        bounds.append(bounds[-1] + base + (i < extra))
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def chunks_with_progress(total: int, batch_size: int, progress: bool | str = False,
                         unit: str = "row") -> Iterator[range]:
    """:func:`chunk_rows` of ``total`` rows, with a progress bar over the rows when ``progress`` is true (a
    string labels the bar) and there is more than one chunk; the bar is closed however the loop ends."""
    chunks = chunk_rows(total, batch_size)
    if not progress or len(chunks) == 1:
        yield from chunks
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=progress if isinstance(progress, str) else f"{unit}s", unit=unit, leave=False)
    try:
        for rows in chunks:
            yield rows
            bar.update(len(rows))
    finally:
        bar.close()


def accumulate(
    n: int,
    k: int,
    contribution: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    progress: bool | str = False,
) -> torch.Tensor:
    """Σ_j contribution(sample i, draw j) for j < k, for each of ``n`` samples.

    The n·k rows are taken sample-major in chunks of at most ``batch_size``; ``contribution(sample,
    draw)`` gets two index tensors of a chunk's rows and returns one tensor per row.
    """
    total = None
    single = len(chunk_rows(n * k, batch_size)) == 1
    for rows in chunks_with_progress(n * k, batch_size, progress):
        r = torch.arange(rows.start, rows.stop)
        sample, draw = r // k, r % k
        c = contribution(sample, draw)
        if single and k == 1:  # one chunk of the samples in order: c is the total
            return c
        if total is None:
            total = c.new_zeros((n, *c.shape[1:]))
        total = total.index_add(0, sample.to(c.device), c)
    return total


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums are kept in at least float32 (half-precision inputs would lose the weights' precision)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
