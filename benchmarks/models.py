"""Benchmark models: a CIFAR-size ResNet-18 in plain PyTorch (the architecture: tribute.explainers.resnet).

``resnet18_cifar()`` is the usual CIFAR variant of He et al.'s ResNet-18 (width 64 of
:class:`tribute.explainers.resnet.ResNetCIFAR`): a 3×3 stem with no max pooling, four stages of two
BasicBlocks (64, 128, 256, 512 channels), batch norm, global average pooling and a 10-way linear head;
3×32×32 inputs.  Each BasicBlock owns a single ``nn.ReLU(inplace=True)`` that it calls twice, exactly as
torchvision's BasicBlock does.  Weights are a random initialisation from a fixed seed (``_init`` below, which
the benchmarks' numbers depend on; the library's own ``tribute.explainers.resnet18_cifar`` keeps PyTorch's
default initialisation); the model is returned in eval mode.

``separate_relus(model)`` returns a copy with the same weights in which every ReLU *call* has its own
``nn.ReLU`` module (not in place).  Captum's module-hook methods (DeepLift, GuidedBackprop,
Deconvolution, LRP) need that: they attach to ReLU modules, and a module called twice per forward or
working in place breaks their bookkeeping.  The benchmark uses the copy on the Captum side only, and
checks that both give identical logits.
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib

import torch
from torch import nn

from tribute.explainers.resnet import BasicBlock, ResNetCIFAR

__all__ = ["INPUT_SHAPE", "NUM_CLASSES", "BasicBlock", "ResNetCIFAR", "fashion_fixture", "random_inputs",
           "resnet18_cifar", "separate_relus"]

NUM_CLASSES = 10
INPUT_SHAPE = (3, 32, 32)


def _init(model: nn.Module, seed: int) -> None:
    """Kaiming init for convs, and batch-norm statistics and affines drawn so that activations stay O(1)
    and the ReLUs see both signs (a freshly initialised BN has mean 0, var 1, which is unrealistic)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1.0 + 0.1 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(1.0 + 0.5 * torch.rand(c, generator=g))
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features**0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * bound)


def resnet18_cifar(seed: int = 0) -> ResNetCIFAR:
    """ResNet-18 for 3×32×32 inputs and 10 classes, randomly initialised from ``seed``, in eval mode."""
    model = ResNetCIFAR((2, 2, 2, 2), NUM_CLASSES, in_channels=3, width=64)
    _init(model, seed)
    return model.eval()


class _SeparateReluBlock(nn.Module):
    """A BasicBlock with one non-in-place ReLU module per call (same submodules otherwise)."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


def separate_relus(model: ResNetCIFAR) -> ResNetCIFAR:
    """A deep copy of ``model`` (same weights) whose every ReLU call has its own, non-in-place module."""
    m = copy.deepcopy(model)
    m.relu = nn.ReLU()
    for name in ("layer1", "layer2", "layer3", "layer4"):
        stage = getattr(m, name)
        setattr(m, name, nn.Sequential(*[_SeparateReluBlock(b) for b in stage]))
    return m.eval()


def random_inputs(n: int, seed: int = 1) -> torch.Tensor:
    """``n`` CIFAR-shaped inputs with pixel-like statistics (roughly normalised images)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *INPUT_SHAPE), generator=g)


def fashion_fixture(n: int | None = None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The committed Fashion-MNIST CNN (tests/fixtures/fashion, eval mode) and its stored test images and
    labels (the first ``n``, or all 64), loaded from the fixture's own ``model.py``."""
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fashion" / "model.py"
    spec = importlib.util.spec_from_file_location("bench_fashion_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images, labels = module.samples()
    return module.load(), images[:n], labels[:n]
