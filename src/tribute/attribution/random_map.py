"""``"random"``: a seeded random attribution, the yardstick that ROAR and the faithfulness metrics compare against.

Every feature of every sample gets an independent draw from the uniform distribution on [0, 1), so the ranking of
the features is a uniformly random permutation: a method that ranks features no better than this explains nothing
(Hooker et al. 2019 use it as ROAR's baseline).  Each sample draws from its own stream, seeded from ``seed`` and the
sample's bytes (:class:`tribute.core.randomness.SampleStreams`), so a sample gets the same map alone or in any batch.
The model and the target are not read.  :func:`tribute.metrics.methods.random_attribution` (what
:func:`tribute.evaluate` and ROAR call ``"random"``) is this same draw.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import torch

from ..core import options as opt
from ..core.method import Method
from ..core.randomness import SampleStreams
from ..core.registry import register
from ..core.targets import Target


def uniform_draws(inputs: torch.Tensor, seed: int | None) -> torch.Tensor:
    """I.i.d. U[0, 1) values of ``inputs``' shape and dtype, row i from sample i's stream keyed by ``seed`` (None:
    fresh entropy, not reproducible)."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError("a random attribution needs a non-empty batch of inputs")
    if not inputs.is_floating_point():
        raise TypeError(f"a random attribution needs floating-point inputs, got {inputs.dtype}")
    streams = SampleStreams(inputs, seed)
    return streams.draw("uniform", torch.arange(inputs.shape[0]), tuple(inputs.shape[1:]), dtype=inputs.dtype,
                        device=inputs.device)


@register("random")
class RandomAttribution(Method):
    """φ_i ∼ U[0, 1) i.i.d. per feature (see the module doc): a random ranking, the baseline row of ROAR and
    ``tribute.evaluate``.  ``seed`` makes it reproducible (None: different on every call).

    The options that say how to run the model (``input_transform``, ``forward_args``, ``forward_kwargs``,
    ``output``, ``batch_size``, ``strict``, ``progress``) are accepted, because evaluate, ROAR and the metrics give
    them to every method they compare, and change nothing: the model is never run.
    """

    #: reads neither the model's outputs nor its gradient: a model cut off the autograd graph changes nothing
    forward_only: ClassVar[bool] = True
    #: the model and the target are not read (the contract tests of model, target and options skip it)
    reads_model: ClassVar[bool] = False
    options = {
        "seed": opt.Option(None, opt.optional(opt.integer(0)), "seed of the per-sample random streams"),
        "differentiable": opt.Option(False, opt.refused("a random attribution does not depend on the inputs' "
                                                        "values smoothly: it has no gradient")),
    }
    example_options = {"seed": 0}

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return True  # the target is not read: no forward pass to resolve it

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        return uniform_draws(x, o.seed)
