"""Small models shared by the tests: the same architecture written in several ways."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# The test models are tiny: one intra-op thread avoids oversubscribing the cores (pytest-xdist runs a
# worker per core), which otherwise makes each pass hundreds of times slower.
torch.set_num_threads(1)

RELU_STYLES = ("modules", "inplace_reused", "functional", "method")


class ResidualCNN(nn.Module):
    """conv-BN-ReLU, a residual block, max-free pooling, linear head; the ReLU written as ``style``.

    ``style``: separate ``nn.ReLU`` modules, one reused ``nn.ReLU(inplace=True)`` (torchvision's
    ResNet blocks), ``F.relu`` or ``Tensor.relu``.  All four compute the same function.
    """

    def __init__(self, style: str = "modules", classes: int = 5, channels: int = 6, bias: bool = True):
        super().__init__()
        self.style = style
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.fc = nn.Linear(channels * 4, classes, bias=bias)
        self.relu_a, self.relu_b, self.relu_c = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.relu = nn.ReLU(inplace=True)

    def act(self, x: torch.Tensor, which: str) -> torch.Tensor:
        if self.style == "modules":
            return getattr(self, "relu_" + which)(x)
        if self.style == "inplace_reused":
            return self.relu(x)
        if self.style == "functional":
            return F.relu(x)
        return x.relu()

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)), "a")
        r = h
        h = self.act(self.conv2(h), "b")
        h = self.act(self.conv3(h) + r, "c")
        h = F.avg_pool2d(h, 4)
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch-norm layers non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def residual_cnns(dtype=torch.float64, seed: int = 0, **kw) -> dict[str, nn.Module]:
    """The four ways of writing the same network, with identical weights, in eval mode."""
    torch.manual_seed(seed)
    ref = randomise_bn(ResidualCNN("modules", **kw), seed)
    nets = {}
    for style in RELU_STYLES:
        net = ResidualCNN(style, **kw)
        net.load_state_dict(ref.state_dict())
        nets[style] = net.to(dtype).eval()
    return nets


class MLP(nn.Module):
    """A small fully connected network with a chosen nonlinearity (as a module)."""

    def __init__(self, sizes=(6, 8, 8, 3), act: type[nn.Module] = nn.ReLU, bias: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(sizes) - 2:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def mlp(act=nn.ReLU, bias=True, seed=0, sizes=(6, 8, 8, 3), dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(sizes, act, bias).to(dtype).eval()


@pytest.fixture
def cnns():
    return residual_cnns()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)


def fixture_module(folder: str, name: str = "model"):
    """Import ``tests/fixtures/<folder>/<name>.py`` under a name of its own (several fixtures have a model.py)."""
    path = Path(__file__).parent / "fixtures" / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tribute_fixture_{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fashion_fixture(n: int | None = None, dtype: torch.dtype = torch.float32):
    """The committed Fashion-MNIST CNN (tests/fixtures/fashion, eval mode) in ``dtype``, and the first ``n`` of its
    stored held-out images (in [0, 1]) and their labels."""
    module = fixture_module("fashion")
    images, labels = module.samples()
    return module.load().to(dtype), images[:n].to(dtype), labels[:n]
