"""Drawing more samples until a sampled attribution is as precise as asked."""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_until_precise(count: int, draw: Callable[[torch.Tensor, int], None],
                         standard_error: Callable[[torch.Tensor], torch.Tensor], *, start: int, step: int,
                         tolerance: float, max_samples: int, method: str) -> torch.Tensor:
    """Draw ``start`` samples for each of ``count`` samples, then ``step`` more at a time for the samples not yet
    precise, until every player's standard error is ≤ ``tolerance`` (absolute, in score units).

    ``draw(active, k)`` adds k draws to the samples ``active`` (indices, updating the estimates it keeps);
    ``standard_error(active)`` gives their current standard errors, (len(active), M).  A sample stops as soon as
    its largest standard error is within the tolerance (a NaN one, from too few draws, is not); a round that would
    take a sample beyond ``max_samples`` draws is an error naming the samples, never a quietly imprecise result.
    Returns the number of draws each sample took.  Each sample's draws depend only on its own stream and its own
    standard errors, so the result does not depend on the batch.
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    if start > max_samples:
        raise ValueError(f"{method}: samples={start} exceeds max_samples={max_samples}")
    taken = torch.zeros(count, dtype=torch.long)
    active = torch.arange(count)
    draw(active, start)
    taken[active] += start
    while True:
        se = standard_error(active).to("cpu")
        done = (se <= tolerance).all(-1)
        active = active[~done]
        if len(active) == 0:
            return taken
        if int(taken[active].max()) + step > max_samples:
            worst = se[~done].nan_to_num(float("inf")).amax(-1)
            raise RuntimeError(
                f"{method} did not reach tolerance={tolerance:g} within max_samples={max_samples} for samples "
                f"{active.tolist()[:10]} (largest standard errors {[round(float(s), 6) for s in worst[:10]]}); "
                f"raise max_samples or the tolerance")
        draw(active, step)
        taken[active] += step
