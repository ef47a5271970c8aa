"""The explainer head E of Zeng et al. (2021): transposed convolutions from a feature map to an input-sized map.

E reads the feature maps h (C, h, w) of the classifier's last convolutional stage and upsamples them to the
input's (H, W) with a stack of transposed convolutions, each followed by batch norm and ReLU (Zeng, Kowsar,
Erfani and Bailey 2021, §3.2.3 and §4.1: four deconvolution layers, stride 3, 64, 128, 256 and 512 filters),
then a 1×1 convolution to one channel: the attribution map (N, 1, H, W).

Deviation from the paper.  Stride 3 in four layers multiplies the side by 81 (or, with kernel 3 and no padding,
maps 4 → 11 → 35 → ...): it does not take a 4×4 map to 32×32.  Here each layer's stride, kernel, padding and
output padding are chosen per axis (:func:`plan_axis`) so that the output has exactly (H, W), for any sizes:

- the upsampling factor H/h is reached with strides made of 2s and 3s: the smallest product P = 2^a·3^b with
  h·P ≥ H, one factor per layer, the smallest factors merged when there are more factors than layers (7 → 224
  with four layers: strides 2, 2, 2, 4; 3 → 32: 1, 2, 2, 3) and stride-1 layers in front when there are fewer
  (7 → 28: 1, 1, 2, 2);
- a layer of stride s ≥ 2 has kernel 2s and padding s/2 (exactly ×s, every output fed by two input positions,
  no checkerboard gaps); a stride-1 layer has kernel 3 and padding 1;
- when h·P overshoots H (4 → 28: 32, as a trunk of stride-2 convolutions with padding rounds 28 → 14 → 7 → 4
  up), the surplus is cut by the last layer's padding (a transposed
  convolution's padding crops its full output symmetrically; an odd surplus takes one output padding or an even
  kernel), so no interpolation and no separate crop is ever needed.

Widths. The default narrows toward the output: C/2, C/4, C/8, C/16 channels, none below 8 and none above
16·2^(L−1−i) in layer i of L (128, 64, 32, 16 for four layers). A layer's cost is (input pixels) × (in channels) ×
(out channels) × kernel²; the pixels grow by the stride² per layer, so channels that halve per layer keep the layers
at equal cost, and the cap makes the cost of every layer after the first a property of the input's size, not of C
(the full-resolution layer: H·W/s² · 32·16·(2s)² per image, about the cost of a CNN's first convolution); the first
layer's cost grows linearly in C, like that of the classifier's own last convolution. Without the cap the head grows
with C² (EfficientNet-Lite0's 1280 channels at 7×7 → 224×224: widths 640, 320, 160, 80, the explainer measured at
4.2× the classifier's forward pass; capped: 128, 64, 32, 16). Small feature maps are unaffected (C = 64: 32, 16, 8,
8). ``widths=PAPER_WIDTHS`` gives the paper's 64, 128, 256, 512, whose wide layers at the full resolution cost
several classifier passes (``benchmarks/bench_aligned.py`` measures both on several architectures).

The output layer is a plain 1×1 convolution, without the paper's final ReLU: the alignment targets are
non-negative, but a ReLU at the output stops the gradient at every pixel where it is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: Zeng et al.'s filters per deconvolution layer (§4.1), widening toward the output
PAPER_WIDTHS = (64, 128, 256, 512)
DEFAULT_LAYERS = 4
MIN_DEFAULT_WIDTH = 8
#: the default's channels at the output resolution; each layer nearer the features may have twice its successor's
OUTPUT_WIDTH_CAP = 16


@dataclass(frozen=True)
class AxisStep:
    """One transposed convolution along one axis: ``size_out = (size_in − 1)·stride − 2·padding + kernel +
    output_padding``."""

    size_in: int
    size_out: int
    stride: int
    kernel: int
    padding: int
    output_padding: int = 0


def default_widths(channels: int, layers: int = DEFAULT_LAYERS) -> tuple[int, ...]:
    """The narrowing default: C/2, C/4, ... (one per layer), none below 8, layer i of L at most 16·2^(L−1−i), so
    that the head's cost past its first layer depends on the input's size only, not on C (module doc)."""
    return tuple(max(min(channels // 2 ** (i + 1), OUTPUT_WIDTH_CAP * 2 ** (layers - 1 - i)), MIN_DEFAULT_WIDTH)
                 for i in range(layers))


def _strides(size_in: int, size_out: int, layers: int) -> list[int]:
    """Strides made of 2s and 3s whose product P is the smallest 2^a·3^b with size_in·P ≥ size_out, one factor per
    layer (the smallest merged when there are more factors than layers; stride 1 in front when fewer)."""
    ratio = size_out / size_in
    best = None
    for a in range(0, 64):
        for b in range(0, 41):
            p = 2**a * 3**b
            if p >= ratio - 1e-12 and (best is None or p < best[0]):
                best = (p, a, b)
            if p >= ratio:
                break
        if 2**a >= ratio:
            break
    factors = sorted([2] * best[1] + [3] * best[2])
    while len(factors) > layers:
        factors = sorted([factors[0] * factors[1], *factors[2:]])
    return [1] * (layers - len(factors)) + factors


def _exact(size_in: int, stride: int, size_out: int) -> AxisStep:
    """The kernel, padding and output padding that give ``size_out`` from ``size_in`` at ``stride``, nearest the
    standard layer (kernel 2s, padding s/2; kernel 3, padding 1 at stride 1); the surplus is cut by padding."""
    base_kernel = 2 * stride if stride > 1 else 3
    for kernel in (base_kernel, base_kernel - 1, base_kernel + 1):
        for output_padding in range(stride):
            twice_padding = (size_in - 1) * stride + kernel + output_padding - size_out
            if twice_padding >= 0 and twice_padding % 2 == 0 and kernel >= 1:
                return AxisStep(size_in, size_out, stride, kernel, twice_padding // 2, output_padding)
    raise ValueError(f"no transposed convolution of stride {stride} maps {size_in} to {size_out}")  # unreachable


def plan_axis(size_in: int, size_out: int, layers: int = DEFAULT_LAYERS) -> list[AxisStep]:
    """The layers along one axis, from the feature map's size to the input's, exactly (module doc)."""
    if size_in < 1 or size_out < 1 or layers < 1:
        raise ValueError(f"sizes and layers must be >= 1, got {size_in} → {size_out} in {layers} layers")
    if size_in > size_out:
        raise ValueError(f"the feature map ({size_in}) is larger than the input ({size_out}) along an axis: the "
                         "head only upsamples; choose a layer at or below the input's resolution")
    strides = _strides(size_in, size_out, layers)
    steps, size = [], size_in
    for i, stride in enumerate(strides):
        last = i == layers - 1
        steps.append(_exact(size, stride, size_out if last else size * stride))
        size = steps[-1].size_out
    return steps


class ExplainerHead(nn.Module):
    """E: (N, C, h, w) feature maps → (N, 1, H, W) attribution map (module doc).

    Parameters
    ----------
    channels, feature_size : the feature map's C and (h, w)
    input_size : the input's (H, W), which the output has exactly
    widths : channels of each transposed-convolution layer (default :func:`default_widths`; the paper's:
        :data:`PAPER_WIDTHS`); their number is the number of layers
    """

    def __init__(self, channels: int, feature_size: Sequence[int], input_size: Sequence[int],
                 widths: Sequence[int] | None = None):
        super().__init__()
        widths = default_widths(channels) if widths is None else tuple(widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        (h, w), (big_h, big_w) = tuple(feature_size), tuple(input_size)
        self.plan = (plan_axis(h, big_h, len(widths)), plan_axis(w, big_w, len(widths)))
        self.input_size = (big_h, big_w)
        layers, cin = [], channels
        for width, ph, pw in zip(widths, *self.plan, strict=True):
            layers += [nn.ConvTranspose2d(cin, width, (ph.kernel, pw.kernel), stride=(ph.stride, pw.stride),
                                          padding=(ph.padding, pw.padding),
                                          output_padding=(ph.output_padding, pw.output_padding), bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
            cin = width
        self.upsample = nn.Sequential(*layers)
        self.out = nn.Conv2d(cin, 1, 1)
        self.widths = widths

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        m = self.out(self.upsample(h))
        if tuple(m.shape[-2:]) != self.input_size:  # the plan guarantees it; a wrong h would show here
            raise ValueError(f"the head made a {tuple(m.shape[-2:])} map from features {tuple(h.shape)}; it was "
                             f"built for {self.input_size}")
        return m
