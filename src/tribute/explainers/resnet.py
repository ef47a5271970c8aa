"""A CIFAR-style ResNet-18 in plain PyTorch, of any width, input channels and classes (He et al. 2016).

The CIFAR variant of He et al.'s ResNet-18, as Zeng et al. 2021 use it on CIFAR-10: a 3×3 stem convolution
(stride 1) with batch norm and ReLU and *no* max pooling, four stages of two BasicBlocks with ``width``·(1, 2, 4,
8) channels (the last three halve the spatial size with a stride-2 first block and a 1×1 projection shortcut),
global average pooling and a linear head.  ``width=64`` is the standard ResNet-18 (11.17 M parameters for 3
input channels and 10 classes); the experiments on 28×28 grey images use 8 or 16.  A 32×32 input leaves a 4×4
map after ``layer4``, a 28×28 input a 4×4 map too (28 → 14 → 7 → 4 with padding 1).

Each BasicBlock owns one ``nn.ReLU(inplace=True)`` that it calls twice, as torchvision's does; tribute's layer
naming handles that (``"layer4.1.relu#1"``), and the default CAM layer (:func:`tribute.core.find_default_layer`)
is ``layer4``, the input of the global pooling.
"""

from __future__ import annotations

import torch
from torch import nn

#: Blocks per stage of ResNet-18.
RESNET18_LAYERS = (2, 2, 2, 2)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """A 3×3 convolution with padding 1 and no bias (batch norm follows)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, plus the shortcut (identity, or a strided 1×1 conv and bn), then the same ReLU again."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetCIFAR(nn.Module):
    """A CIFAR-style ResNet (module docstring): 3×3 stem without max pooling, four stages, pooling, linear head.

    Parameters
    ----------
    layers : tuple of int
        BasicBlocks per stage; (2, 2, 2, 2) is ResNet-18.
    num_classes : int
        Outputs of the linear head.
    in_channels : int
        Channels of the input images (1 for grey, 3 for colour).
    width : int
        Channels of the stem and the first stage; stage i has ``width``·2^i.
    """

    def __init__(self, layers: tuple[int, ...] = RESNET18_LAYERS, num_classes: int = 10, in_channels: int = 3,
                 width: int = 64):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if len(layers) != 4 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be four integers >= 1 (blocks per stage), got {layers!r}")
        self.width, self.in_channels, self.num_classes = width, in_channels, num_classes
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], width
        for i, n in enumerate(layers):
            cout = width * 2**i
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNetCIFAR takes images (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_cifar(num_classes: int = 10, *, in_channels: int = 3, width: int = 64,
                   seed: int | None = None) -> ResNetCIFAR:
    """A CIFAR-style ResNet-18 (module docstring) with PyTorch's default initialisation, in eval mode.

    With ``seed`` the initialisation is drawn from the global generator seeded with it inside
    ``torch.random.fork_rng``, so the same seed gives the same weights and the caller's random state is left as
    it was; without, from the global generator as it stands.
    """
    if seed is None:
        return ResNetCIFAR(RESNET18_LAYERS, num_classes, in_channels, width).eval()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNetCIFAR(RESNET18_LAYERS, num_classes, in_channels, width).eval()
