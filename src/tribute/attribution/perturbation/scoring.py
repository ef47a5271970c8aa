"""The model's scores on perturbed copies of the inputs, in chunks, without gradients.

A perturbation method asks for the score of k perturbed copies of each of n samples.  The copies are built
chunk by chunk from (sample, draw) indices by the method's ``make_rows`` and go through the model in chunks of
at most ``batch_size`` rows under :func:`torch.inference_mode`: memory is bounded by one chunk whatever n·k is
(32 CIFAR images × 225 occlusion windows never hold 7,200 images at once), and the model sees many copies per
pass, never one copy per pass.  The rows are taken sample-major, so the copies of one sample are contiguous.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...core.engine import Forward, accumulation_dtype, chunks_with_progress
from ...core.targets import Target

MakeRows = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def score_rows(forward: Forward, target: Target, rows: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """S(rows): one score per row (``sample[r]`` is the sample row r copies), without gradients, in at least
    float32 (float64 for float64 inputs)."""
    with torch.inference_mode():
        s = target.scores(forward(rows, sample), sample)
    dtype = accumulation_dtype(rows.dtype) if rows.is_floating_point() else accumulation_dtype(s.dtype)
    return s.to(dtype)


def perturbed_scores(forward: Forward, target: Target, n: int, k: int, make_rows: MakeRows, *,
                     batch_size: int, progress: bool | str = False) -> torch.Tensor:
    """The (n, k) scores S(make_rows(i, j)) of k perturbed copies of each of n samples.

    ``make_rows(sample, draw)`` gets two index tensors (CPU, long) of a chunk's rows and returns those rows
    (sample ``sample[r]``'s copy number ``draw[r]``), shaped like the packed inputs.
    """
    out = None
    for chunk in chunks_with_progress(n * k, batch_size, progress, unit="perturbation"):
        r = torch.arange(chunk.start, chunk.stop)
        sample, draw = r // k, r % k
        s = score_rows(forward, target, make_rows(sample, draw), sample)
        if out is None:
            out = s.new_empty(n * k)
        out[chunk.start:chunk.stop] = s
    return out.view(n, k)


def clean_scores(forward: Forward, target: Target, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """S(x) for the unperturbed samples; fixes ``target=None`` to the predicted classes from the same pass
    (so a method using this spends no extra pass on the prediction)."""
    sample = forward.samples_in_order(x.shape[0])
    with torch.inference_mode():
        outputs = torch.cat([forward(c, s) for c, s in zip(x.split(batch_size), sample.split(batch_size),
                                                             strict=True)])
        target.resolve(outputs)
        s = target.scores(outputs, sample)
    dtype = accumulation_dtype(x.dtype) if x.is_floating_point() else accumulation_dtype(s.dtype)
    return s.to(dtype)
