"""DeepLIFT RevealCancel on deep residual networks (issue 13): summation-to-delta at every depth of a float64
ResNet-18-like and ResNet-50-like network, parts that stay bounded, agreement across precisions, and the paper's
Linear rule by hand and against an exact-rational reference."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute


class Basic(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN, plus the input (through a strided 1×1 conv-BN when the shape
    changes), then ReLU."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.down = _shortcut(cin, width, stride)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.down(x))


class Bottleneck(nn.Module):
    """ResNet-50's bottleneck block: 1×1 reduce, 3×3, 1×1 expand (×4), each with batch norm, plus the shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        out = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.down = _shortcut(cin, out, stride)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        return self.relu(self.bn3(self.conv3(h)) + self.down(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class DeepResNet(nn.Module):
    """A small-width ResNet: stem conv-BN-ReLU-pool (3×3, stride 2; ``pool`` "max" as ResNet's, or "avg"), four
    stages of ``blocks``, global average pooling and a linear head.  ``depth`` (0 … number of blocks) cuts the
    network after that many blocks and reads out a fixed random weighting of the cut's feature map instead of the
    head (``None``: the whole network)."""

    def __init__(self, block, blocks=(3, 4, 6, 3), width: int = 8, classes: int = 10, pool: str = "max"):
        super().__init__()
        self.pool = getattr(F, pool + "_pool2d")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, n in enumerate(blocks):
            for i in range(n):
                w = width * 2 ** stage
                layers.append(block(cin, w, 2 if stage and not i else 1))
                cin = w * block.expansion
        self.blocks = nn.ModuleList(layers)
        self.fc = nn.Linear(cin, classes)
        self.depth: int | None = None
        self.readout: torch.Tensor | None = None

    def features(self, x, depth: int) -> torch.Tensor:
        h = self.pool(self.stem(x), 3, 2, 1)
        for block in self.blocks[:depth]:
            h = block(h)
        return h

    def forward(self, x):
        if self.depth is None:
            return self.fc(F.adaptive_avg_pool2d(self.features(x, len(self.blocks)), 1).flatten(1))
        h = self.features(x, self.depth)
        return (h * self.readout_for(h)).flatten(1).sum(1, keepdim=True)

    def readout_for(self, h: torch.Tensor) -> torch.Tensor:
        if self.readout is None or self.readout.shape != h.shape[1:]:
            g = torch.Generator().manual_seed(self.depth)
            self.readout = torch.randn(h.shape[1:], generator=g, dtype=h.dtype)
        return self.readout


def realistic(model: nn.Module, seed: int = 0, dtype=torch.float64, size: int = 16) -> nn.Module:
    """Batch-norm statistics measured on 64 images (uniform pixels), random affine parameters (a few negative
    scales) and a random head bias; eval mode, ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    model = model.to(dtype)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the statistics of the whole measuring batch
    model.train()
    with torch.no_grad():
        model(torch.rand(64, 3, size, size, generator=g, dtype=dtype))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.num_features, generator=g, dtype=dtype) * 0.5 + 1)
                m.bias.copy_(torch.randn(m.num_features, generator=g, dtype=dtype) * 0.2)
        model.fc.bias.copy_(torch.randn(model.fc.out_features, generator=g, dtype=dtype))
    return model.eval()


def resnet18_like(seed: int = 0, dtype=torch.float64, pool: str = "max") -> DeepResNet:
    """20 weight layers (17 convolutions on the main path, 3 shortcut convolutions) in 8 basic blocks."""
    torch.manual_seed(seed)
    return realistic(DeepResNet(Basic, (2, 2, 2, 2), pool=pool), seed, dtype)


def resnet50_like(seed: int = 0, dtype=torch.float64, pool: str = "max") -> DeepResNet:
    """53 convolutions (49 on the main path, 4 shortcut convolutions) in 16 bottleneck blocks, and the head."""
    torch.manual_seed(seed)
    return realistic(DeepResNet(Bottleneck, (3, 4, 6, 3), pool=pool), seed, dtype)


NETS = {"resnet18": resnet18_like, "resnet50": resnet50_like}


def summation_error(net, x, baseline, target=0) -> float:
    """|Σφ − (S(x) − S(x̄))| / |S(x) − S(x̄)|, the worst over the batch."""
    a = tribute.explain(net, x, "deeplift_reveal_cancel", target=target, baseline=baseline)
    with torch.no_grad():
        delta = net(x)[:, target] - net(baseline)[:, target]
    return ((a.flatten(1).sum(1) - delta).abs() / delta.abs()).max().item()


def images(n=2, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g, dtype=dtype)


def parts_per_block(net, x) -> list[float]:
    """max |Δ⁺| / max |Δ| at the output of every block during one RevealCancel pass."""
    ratios: list[float] = []

    def record(module, args, out):
        p, q = out._tribute_twins
        ratios.append((p.abs().max() / (p + q).abs().max()).item())

    hooks = [b.register_forward_hook(record) for b in net.blocks]
    try:
        tribute.explain(net, x, "deeplift_reveal_cancel", target=0)
    finally:
        for h in hooks:
            h.remove()
    return ratios


@pytest.mark.parametrize("name", NETS)
def test_summation_to_delta_at_every_depth(name):
    # before the paper's Linear rule (parts through W⁺/W⁻ apart) the error grew from 2e-16 after the stem to
    # 2e-4 (ResNet-18) and 6e14 (ResNet-50) at the last block; now it stays at rounding (measured ≤ 1e-14)
    net, x = NETS[name](), images()
    for depth in [*range(len(net.blocks) + 1), None]:
        net.depth = depth
        assert summation_error(net, x, torch.zeros_like(x)) < 1e-9, depth


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("name", NETS)
def test_summation_to_delta_from_a_random_baseline(name, pool):
    # with max pooling, input and reference select unlike entries: the pooled parts (those of the entry the input
    # selects) then do not sum to the pooled difference, and the next ReLU, which reads f(z) − f(z̄) from the
    # forward pass, restores the sum (measured ≤ 3e-15; Rescale, without that re-anchoring, misses ΔS by 4× on
    # ResNet-18 and 2× on ResNet-50 here)
    net, x = NETS[name](pool=pool), images()
    base = torch.rand(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    for depth in (1, len(net.blocks) // 2):
        net.depth = depth
        assert summation_error(net, x, base) < 1e-9, depth
    net.depth = None
    assert summation_error(net, x, base, target=3) < 1e-9


@pytest.mark.parametrize("name", NETS)
def test_summation_to_delta_in_float32(name):
    # issue 13's float32 bound, 1e-4 relative (measured ≤ 2e-6; parts propagated apart: 8e4 and 4e20)
    net, x = NETS[name]().float(), images().float()
    for base in (torch.zeros_like(x), torch.rand(x.shape, generator=torch.Generator().manual_seed(7))):
        assert summation_error(net, x, base) < 1e-4


def test_the_parts_stay_bounded_with_depth():
    # the parts are sums of one layer's terms of one sign: on ResNet-50 max|Δ⁺|/max|Δ| stays ≤ 2 (measured) at
    # every block; propagated apart they grew ×20–100 per block, to 4e15 (all digits of Δ lost)
    ratios = parts_per_block(resnet50_like(), images())
    assert len(ratios) == 16
    assert max(ratios) < 10, ratios


def test_float32_agrees_with_float64_on_a_resnet50_like_net():
    # the attribution itself (not only its sum) is stable under rounding: float32 within 1e-3 of float64,
    # relative to the largest attribution (measured 1.6e-5; parts propagated apart gave 6e5)
    x, net = images(), resnet50_like()
    a64 = tribute.explain(net, x, "deeplift_reveal_cancel", target=0)
    a32 = tribute.explain(copy.deepcopy(net).float(), x.float(), "deeplift_reveal_cancel", target=0)
    assert ((a32.double() - a64).abs().max() / a64.abs().max()).item() < 1e-3


class Cancel(nn.Module):
    """y = ReLU(½ − ReLU(x₁ − x₂)), with both linear steps as ``nn.Linear`` layers."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(2, 1), nn.Linear(1, 1)
        with torch.no_grad():
            self.first.weight.copy_(torch.tensor([[1.0, -1.0]]))
            self.first.bias.zero_()
            self.second.weight.fill_(-1.0)
            self.second.bias.fill_(0.5)

    def forward(self, x):
        return torch.relu(self.second(torch.relu(self.first(x))))


def test_the_linear_rule_splits_the_net_difference_by_hand():
    # at (3, 1) from 0: z = x₁ − x₂ has Δz⁺ = 3, Δz⁻ = −1, so h = ReLU(z) has Δh⁺ = 2.5, Δh⁻ = −0.5 and
    # m⁺ = 5/6, m⁻ = 1/2 (as for Min in test_reveal_cancel.py).  v = ½ − h goes from 0.5 to −1.5: its one term
    # −1·Δh = −2 (the net Δh = 2, the Linear rule of §3.5.1) is negative, so Δv⁺ = 0 and Δv⁻ = −2.  y = ReLU(v):
    # Δy⁻ = ½[ReLU(−1.5) − ReLU(0.5)] + ½[ReLU(−1.5) − ReLU(0.5)] = −0.5, m⁻ = 1/4, and Δy⁺ = 0.
    # Both parts of h get −1·m⁻ = −1/4; z⁺ gets −1/4·5/6 = −5/24, z⁻ gets −1/4·1/2 = −1/8;
    # x₁ (term +3, in z⁺): 3·(−5/24) = −5/8; x₂ (term −1, in z⁻): 1·(−1)·(−1/8) = 1/8; Σ = −1/2 = Δy.
    # (Δh⁺ and Δh⁻ through the weight apart, Δv⁺ = 0.5 and Δv⁻ = −2.5, would give (−3/4, 1/4).)
    x = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    a = tribute.explain(Cancel().double(), x, "deeplift_reveal_cancel", target=0)
    torch.testing.assert_close(a, torch.tensor([[-5 / 8, 1 / 8]], dtype=torch.float64), rtol=0, atol=1e-15)


def test_a_difference_that_cancels_exactly_keeps_its_multipliers_by_hand():
    # y = 3·ReLU(x₁ − x₂ − 1) at (2, 2) from 0: z goes from −1 to −1 (Δz = 0) through Δz⁺ = 2, Δz⁻ = −2, so
    # Δh⁺ = ½[ReLU(1) − 0] + ½[ReLU(−1) − ReLU(−3)] = ½ and Δh⁻ = ½[ReLU(−3) − 0] + ½[ReLU(−1) − ReLU(1)] = −½,
    # m⁺ = m⁻ = 1/4.  At y = 3h the net Δh = 0: both parts of h get w/2·(m_y⁺ + m_y⁻) = 3/2·2 = 3 (§3.5.1; a
    # multiplier 0 would hide the cancelling evidence).  z⁺, z⁻ get 3/4; x₁ (term +2): 3/2, x₂ (term −2): −3/2.
    net = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        net[0].bias.fill_(-1.0)
        net[2].weight.fill_(3.0)
    a = tribute.explain(net, torch.tensor([[2.0, 2.0]], dtype=torch.float64), "deeplift_reveal_cancel", target=0)
    torch.testing.assert_close(a, torch.tensor([[1.5, -1.5]], dtype=torch.float64), rtol=0, atol=1e-15)


def _relu(t: Fraction) -> Fraction:
    return max(t, Fraction(0))


def _secant(dy: Fraction, dz: Fraction, zbar: Fraction, other: Fraction) -> Fraction:
    """Δy^±/Δz^±, or where the part is 0 its limit, the mean slope ½[ReLU'(z̄) + ReLU'(z̄ + other part)]."""
    return dy / dz if dz else Fraction(int(zbar > 0) + int(zbar + other > 0), 2)


def _exact_forward(layers, x, xbar):
    """The paper's RevealCancel forward in exact rationals on a ReLU MLP: per layer (Δa of its input, (Δz⁺, Δz⁻),
    (m⁺, m⁻) of its ReLU or None after the last layer)."""
    a, abar, record = x, xbar, []
    for k, (w, b) in enumerate(layers):
        da = [p - q for p, q in zip(a, abar, strict=True)]
        terms = [[wij * dj for wij, dj in zip(row, da, strict=True)] for row in w]
        zp = [sum((t for t in row if t > 0), Fraction(0)) for row in terms]
        zn = [sum((t for t in row if t < 0), Fraction(0)) for row in terms]
        z = [sum((wij * aj for wij, aj in zip(row, a, strict=True)), bi) for row, bi in zip(w, b, strict=True)]
        zbar = [sum((wij * aj for wij, aj in zip(row, abar, strict=True)), bi) for row, bi in zip(w, b, strict=True)]
        if k == len(layers) - 1:
            record.append((da, (zp, zn), None))
            return record
        m = []
        for p, q, zi, zb in zip(zp, zn, z, zbar, strict=True):
            yp = (_relu(zb + p) - _relu(zb)) / 2 + (_relu(zi) - _relu(zb + q)) / 2
            yn = (_relu(zb + q) - _relu(zb)) / 2 + (_relu(zi) - _relu(zb + p)) / 2
            m.append((_secant(yp, p, zb, q), _secant(yn, q, zb, p)))
        record.append((da, (zp, zn), m))
        a, abar = [_relu(t) for t in z], [_relu(t) for t in zbar]


def exact_reveal_cancel(layers, x, xbar, target: int) -> list[Fraction]:
    """φ of the paper's RevealCancel (§3.5.3) on a ReLU MLP, in exact rationals: the multipliers of a layer's
    input are Σ_i w_ij·m_i^± by the sign of w_ij·Δa_j (½ w_ij (m_i⁺ + m_i⁻) where Δa_j = 0), for both parts."""
    record = _exact_forward(layers, x, xbar)
    mp = [Fraction(int(i == target)) for i in range(len(layers[-1][1]))]
    mn = list(mp)
    for k in range(len(layers) - 1, -1, -1):
        w, (da, _, _) = layers[k][0], record[k]
        m_in = []
        for j, dj in enumerate(da):
            col = [(row[j], p, q) for row, p, q in zip(w, mp, mn, strict=True)]
            if dj == 0:
                m_in.append(sum((wij * (p + q) / 2 for wij, p, q in col), Fraction(0)))
            else:
                m_in.append(sum((wij * (p if wij * dj > 0 else q) for wij, p, q in col), Fraction(0)))
        if k == 0:
            return [mj * dj for mj, dj in zip(m_in, da, strict=True)]
        relu_m = record[k - 1][2]
        mp = [mj * r[0] for mj, r in zip(m_in, relu_m, strict=True)]
        mn = [mj * r[1] for mj, r in zip(m_in, relu_m, strict=True)]


def test_equals_an_exact_rational_reference():
    # an independent, loop-by-loop implementation of the paper's equations in exact rationals (the float64
    # weights and inputs converted exactly); the float64 pass agrees to rounding
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    g = torch.Generator().manual_seed(5)
    x, base = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    a = tribute.explain(net, x, "deeplift_reveal_cancel", target=1, baseline=base)
    layers = [([[Fraction(v) for v in row] for row in m.weight.tolist()], [Fraction(v) for v in m.bias.tolist()])
              for m in net if isinstance(m, nn.Linear)]
    for row, b, got in zip(x.tolist(), base.tolist(), a, strict=True):
        want = exact_reveal_cancel(layers, [Fraction(v) for v in row], [Fraction(v) for v in b], target=1)
        torch.testing.assert_close(got, torch.tensor([float(v) for v in want], dtype=torch.float64),
                                   rtol=1e-12, atol=1e-14)
