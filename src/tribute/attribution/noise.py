"""SmoothGrad and its variants: attributions averaged over noisy copies of the input (Nielsen et al. 2022, §3.1).

For noise ε_k ∼ N(0, σ²I), k = 1…K, and any base method φ (default: the gradient),
- SmoothGrad (Smilkov et al. 2017, Eq 3):      (1/K) Σ_k φ(x + ε_k)
- SmoothGrad² (Hooker et al. 2019):            (1/K) Σ_k φ(x + ε_k)²
- VarGrad (Adebayo et al. 2018):               (1/K) Σ_k φ(x + ε_k)² − ((1/K) Σ_k φ(x + ε_k))²
  (the population variance).
σ is ``sigma`` (absolute) or ``noise_level`` × (max − min) of each sample (Smilkov's 10–20 %); for a model
with several inputs, of each input of each sample, and either may be a tuple with one value per input.  Noise
comes from per-sample streams seeded by ``seed``: a sample gets the same noise alone or in any batch.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..core import options as opt
from ..core.engine import accumulate
from ..core.method import COMMON_OPTIONS, BoundMethod, Method
from ..core.randomness import NOISE_KEY_OPTION, SampleStreams, packed_noise_key
from ..core.registry import get_method
from ..core.registry import register as register_method
from ..core.targets import Target


class _NoiseAggregate(Method):
    """Shared by the three: draw noisy copies in chunks, run the base method on them, aggregate.

    A subclass says what is averaged over the noise (:meth:`per_draw`) and how the averages make the
    attribution (:meth:`finish`).
    """

    options = {
        "base": opt.Option("gradient", opt.anything, "name of the registered method to smooth"),
        "base_options": opt.Option(None, opt.anything, "options for the base method"),
        "samples": opt.Option(50, opt.integer(1)),
        "sigma": opt.Option(None, opt.optional(opt.real(0)), per_input="elementwise"),
        "noise_level": opt.Option(0.15, opt.real(0), per_input="elementwise"),
        "seed": opt.Option(None, opt.optional(opt.integer(0))),
        "noise_key": NOISE_KEY_OPTION,
    }
    example_options = {"samples": 3, "seed": 0}

    def per_draw(self, a: torch.Tensor) -> torch.Tensor:
        """What is averaged over the noise, from the base attribution φ(x + ε_k) of one draw."""
        return a

    def finish(self, mean: torch.Tensor) -> torch.Tensor:
        """The attribution from the average of :meth:`per_draw` over the ``samples`` draws."""
        return mean

    @classmethod
    def _per_input_result(cls, o: SimpleNamespace) -> bool:
        return get_method(o.base)._per_input_result(o)  # the base's result: a map or a layer stays as it is

    def _base(self, o: SimpleNamespace) -> BoundMethod:
        cls = get_method(o.base)
        if issubclass(cls, _NoiseAggregate):
            raise ValueError(f"base={o.base!r}: smoothing a smoothed method is not supported")
        inherited = {k: getattr(o, k) for k in COMMON_OPTIONS if k != "progress"}
        return cls(self.model, **(o.base_options or {})).bind(o.call, **inherited)

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        base = self._base(o)
        key = x if o.noise_key is None else packed_noise_key(o.noise_key, x, o.call.layout)
        # σ per sample, or per feature when several inputs each have their own noise level and value range
        scale = o.sigma if o.sigma is not None else o.noise_level * o.call.layout.value_range(key)
        sigma = torch.as_tensor(scale, dtype=x.dtype, device=x.device).expand_as(x)
        streams = SampleStreams(key, o.seed)

        def contribution(sample, _):
            noise = streams.draw("normal", sample, tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
            return self.per_draw(base(x[sample] + sigma[sample] * noise, target, sample))

        total = accumulate(x.shape[0], o.samples, contribution, batch_size=o.batch_size, progress=o.progress)
        return self.finish(total / o.samples)


@register_method("smoothgrad")
class SmoothGrad(_NoiseAggregate):
    """SmoothGrad (Smilkov et al. 2017): the base attribution averaged over Gaussian noise."""


@register_method("smoothgrad_squared")
class SmoothGradSquared(_NoiseAggregate):
    """SmoothGrad² (Hooker et al. 2019): the mean of the squared base attribution over noise."""

    def per_draw(self, a):
        return a * a


@register_method("vargrad")
class VarGrad(_NoiseAggregate):
    """VarGrad (Adebayo et al. 2018): the population variance of the base attribution over noise."""

    def per_draw(self, a):
        a = a.to(torch.float64)  # E[φ²] − E[φ]² cancels digits: sum in double
        return torch.stack([a, a * a], 1)

    def finish(self, mean):
        return (mean[:, 1] - mean[:, 0] ** 2).clamp(min=0)
