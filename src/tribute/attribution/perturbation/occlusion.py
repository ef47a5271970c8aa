"""Occlusion (Zeiler & Fergus 2014): a window slides over the input; each feature's attribution is the mean, over
the windows that cover it, of the score lost when that window is replaced by the baseline,

    φ_f = (1 / |W_f|) Σ_{w ∈ W_f} [S(x) − S(x with window w set to the baseline)],   W_f = {w : f ∈ w}.

``window`` is a box over the last dims of an input's per-sample shape: ``(3, 4, 4)`` over (C, H, W), or
``(4, 4)`` over (H, W), the dims in front spanned whole (a 4 × 4 patch of every channel); an int is a window over
the last dim of a sequence (N, T) (refused for inputs with more dims, where it would be ambiguous).  ``stride`` is
an int or one step per window dim (default 1, as Captum's ``Occlusion``); a step larger than the window along a
dim it does not span is refused (the features between two windows would be covered by none).

Where a window stops along a dim of length L (window w, stride s), ``border=``:

- ``"cover"`` (default): windows at 0, s, 2s, … while they fit, and one more flush with the far edge (at L − w)
  when (L − w) is not a multiple of s.  Every window has the full size w, every feature is covered.
- ``"truncate"``: Captum's placement (``Occlusion`` in Captum 0.9): windows at 0, s, …, ⌈(L − w)/s⌉·s, the last
  one running past the far edge and cut there (a smaller window).

Both coincide when s divides L − w (Zeng et al. 2021's setting, window (3, 4, 4) and stride 2 on 32 × 32
images, gives 15 × 15 = 225 windows either way).

Several inputs: ``window`` is one box for every input (over the last dims of each) or a tuple with one box per
input, e.g. ``window=((3, 4, 4), (2,))`` for an image and a table; ``stride`` is then an int or one entry per
input (a stride whose entries are tuples is per input whatever the window).  Each window covers features of its
own input only, the other inputs held as they are.  Token ids (N, T): a window over T, the removed tokens set to
``baseline`` (a token id, e.g. the pad or mask token).

The windows are built chunk by chunk from their indices; every window of every sample goes through the model in
chunks of ``batch_size`` rows: 1 + (number of windows) forward passes per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from ...core import options as opt
from ...core.engine import accumulate
from ...core.registry import register as register_method
from ...core.targets import Target
from .base import PerturbationMethod
from .scoring import clean_scores, score_rows

BORDERS = ("cover", "truncate")


def _positive_ints(v: Any) -> bool:
    items = v if isinstance(v, tuple) else (v,)
    return len(items) > 0 and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in items)


def check_window(name: str, v: Any) -> Any:
    """An int or a tuple of ints ≥ 1 (one box), or a tuple of those (one box per input); None: not given."""
    if v is None or _positive_ints(v):
        return v
    if isinstance(v, tuple) and v and all(_positive_ints(e) for e in v):
        return v
    raise ValueError(f"{name} must be a positive int, a tuple of positive ints (the window's size along the last "
                     f"dims of the input, e.g. (3, 4, 4)) or a tuple of those (one per input), got {v!r}")


def check_stride(name: str, v: Any) -> Any:
    if _positive_ints(v) or (isinstance(v, tuple) and v and all(_positive_ints(e) for e in v)):
        return v
    raise ValueError(f"{name} must be a positive int, a tuple of positive ints (one per window dim) or a tuple "
                     f"of those (one per input), got {v!r}")


def _starts(length: int, size: int, stride: int, border: str) -> list[int]:
    """Where the windows of one dim begin."""
    if size == length:
        return [0]
    if border == "truncate":
        return [i * stride for i in range(math.ceil((length - size) / stride) + 1)]
    starts = list(range(0, length - size + 1, stride))
    return starts if starts[-1] == length - size else [*starts, length - size]


@dataclass(frozen=True)
class Windows:
    """The windows over one input's per-sample shape: along each dim d, ``axes[d][p]`` (bool, length L_d) marks
    the positions covered by placement p; a window is one placement per dim (their outer product)."""

    axes: tuple[torch.Tensor, ...]

    @property
    def count(self) -> int:
        return math.prod(a.shape[0] for a in self.axes)

    def boxes(self, j: torch.Tensor) -> torch.Tensor:
        """(len(j), D) bool: the features of windows ``j`` (row-major over the placements), flattened."""
        sizes = [a.shape[0] for a in self.axes]
        box = None
        for d in reversed(range(len(self.axes))):  # unravel j, last dim fastest
            part = self.axes[d][j % sizes[d]]
            j = j // sizes[d]
            box = part if box is None else part.view(*part.shape, *[1] * (box.dim() - 1)) & box.unsqueeze(1)
        return box.reshape(box.shape[0], -1)

    def coverage(self) -> torch.Tensor:
        """(D,) how many windows cover each feature (the outer product of the per-dim counts)."""
        total = torch.ones((), dtype=torch.long)
        for a in self.axes:
            total = total.unsqueeze(-1) * a.sum(0)
        return total.reshape(-1)


def place(shape: tuple[int, ...], window: Any, stride: Any, border: str, name: str = "window") -> Windows:
    """The windows of size ``window`` (over the last dims of ``shape``) placed with ``stride`` and ``border``."""
    if isinstance(window, int):
        if len(shape) != 1:
            raise ValueError(f"{name}={window} is ambiguous for inputs of per-sample shape {shape}: give a tuple "
                             f"over the last dims, e.g. {(window, window)} for {window} × {window} patches of "
                             f"every channel, or {tuple(shape)[:-2] + (window, window)}")
        window = (window,)
    if len(window) > len(shape):
        raise ValueError(f"{name}={window} has {len(window)} dims but the input's per-sample shape {shape} has "
                         f"{len(shape)}")
    strides = (stride,) * len(window) if isinstance(stride, int) else tuple(stride)
    if len(strides) != len(window):
        raise ValueError(f"stride={stride} must be an int or have one entry per dim of {name}={window}")
    lead = len(shape) - len(window)
    axes = [torch.ones(1, length, dtype=torch.bool) for length in shape[:lead]]  # spanned whole
    for d, (length, size, step) in enumerate(zip(shape[lead:], window, strides, strict=True)):
        if size > length:
            raise ValueError(f"{name}={window} is larger than the input along dim {lead + d + 1} "
                             f"({size} > {length}; per-sample shape {shape})")
        if step > size and size < length:
            raise ValueError(f"stride={stride} steps by {step} along dim {lead + d + 1}, more than {name}'s {size}: "
                             "the features between two windows would be covered by none; use a stride <= the window")
        starts = torch.tensor(_starts(length, size, step, border))[:, None]
        pos = torch.arange(length)
        axes.append((pos >= starts) & (pos < starts + size))
    return Windows(tuple(axes))


def windows_per_input(shapes: tuple[tuple[int, ...], ...], window: Any, stride: Any, border: str) -> list[Windows]:
    """The windows of each input: ``window`` shared, or given per input (a tuple whose entries are tuples)."""
    if window is None:
        raise ValueError("occlusion needs window=: the size of the occluding box over the last dims of the input, "
                         "e.g. window=(3, 4, 4) over (C, H, W) (Zeng et al. 2021) or window=3 over tokens (N, T)")
    count = len(shapes)
    nested = isinstance(window, tuple) and any(isinstance(e, tuple) for e in window)
    if nested and len(window) != count:
        raise ValueError(f"window has {len(window)} entries (one per input) but the model takes {count} inputs")
    windows = window if nested else (window,) * count
    # per input: a stride whose entries are tuples, or any tuple of strides beside windows given per input
    if isinstance(stride, tuple) and (nested or any(isinstance(e, tuple) for e in stride)):
        if len(stride) != count:
            raise ValueError(f"stride has {len(stride)} entries but the model takes {count} inputs (with window "
                             "given per input, stride is an int or one entry per input)")
        strides = stride
    else:
        strides = (stride,) * count
    return [place(s, w, st, border, name="window" if count == 1 else f"window (input {k})")
            for k, (s, w, st) in enumerate(zip(shapes, windows, strides, strict=True))]


@register_method("occlusion")
class Occlusion(PerturbationMethod):
    """Occlusion (Zeiler & Fergus 2014): each feature gets the mean score lost over the sliding windows that cover
    it when they are set to the baseline (see the module doc for ``window``, ``stride`` and ``border``)."""

    options = {
        "window": opt.Option(None, check_window, "the occluding box over the last dims of the input (required)"),
        "stride": opt.Option(1, check_stride, "the window's step: an int or one per window dim"),
        "border": opt.Option("cover", opt.choice(BORDERS), "'cover' (a last window flush with the far edge) or "
                                                           "'truncate' (Captum's: the last window cut at the edge)"),
    }
    example_options = {"window": (2,)}

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        layout = o.call.layout
        shapes = (tuple(x.shape[1:]),) if layout.single else layout.shapes
        placed = windows_per_input(shapes, o.window, o.stride, o.border)
        full = clean_scores(o.call.forward, target, x, o.batch_size)
        n = x.shape[0]
        flat_x, flat_b = x.reshape(n, -1), self._baseline(x, o).reshape(n, -1)
        boxes = _packed_boxes(placed, x.device)

        def contribution(sample: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
            box = boxes(draw)
            kept, removed = flat_x[sample], flat_b[sample]
            s = score_rows(o.call.forward, target, torch.where(box, removed, kept).view(len(sample), *x.shape[1:]),
                           sample)
            # a window already at the baseline changes nothing: exactly 0, whatever rounding the batch brings
            moved = (box & (kept != removed)).any(1)
            lost = torch.where(moved, full[sample] - s, torch.zeros_like(s))
            return lost[:, None] * box

        total = accumulate(n, sum(w.count for w in placed), contribution, batch_size=o.batch_size,
                           progress=o.progress)
        cover = torch.cat([w.coverage() for w in placed]).to(total.device)
        return (total / cover).view(x.shape)


def _packed_boxes(placed: list[Windows], device: torch.device):
    """``boxes(j)``: (len(j), D) bool over the packed features for window indices ``j`` numbered input after
    input (input k's windows follow input k − 1's, each covering features of its own input only)."""
    if len(placed) == 1:
        return lambda j: placed[0].boxes(j).to(device)
    starts = torch.tensor([0, *[w.count for w in placed]]).cumsum(0)
    offsets = [0, *torch.tensor([math.prod(a.shape[1] for a in w.axes) for w in placed]).cumsum(0).tolist()]

    def boxes(j: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(j), offsets[-1], dtype=torch.bool)
        for k, w in enumerate(placed):
            mine = (j >= starts[k]) & (j < starts[k + 1])
            if bool(mine.any()):
                out[mine, offsets[k]:offsets[k + 1]] = w.boxes(j[mine] - starts[k])
        return out.to(device)

    return boxes
