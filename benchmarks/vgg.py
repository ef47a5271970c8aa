"""Benchmark models beyond ResNet-18: a VGG-11 written by hand, and Hugging Face's ConvNeXt-Tiny.

``vgg11(image_size)`` is torchvision's VGG-11 layout ("A" in Simonyan & Zisserman 2015), batch-norm free: eight
3×3 convolutions 64-M-128-M-256-256-M-512-512-M-512-512-M (M: 2×2 max pooling, stride 2), each followed by
``nn.ReLU(inplace=True)``, then torchvision's adaptive average pooling to 7×7 and three linear layers
(25088 → 4096 → 4096 → 1000) with ReLU and dropout (inactive in eval mode).  At 64×64 input the last feature map
is 2×2: the adaptive pooling to 7×7 would only repeat entries, so ``image_size < 224`` drops it and shrinks the
classifier's first layer to 512·s² inputs, s = image_size / 32 (2048 at 64×64).  Weights are drawn with variance
2/fan-in (Kaiming, as torchvision's init) and small random biases, so every ReLU sees both signs.

``convnext_tiny()`` is ``transformers.ConvNextForImageClassification`` with ConvNeXt-Tiny's widths 96-192-384-768
and depths 3-3-9-3 (Liu et al. 2022: 4×4 patchify stem, 7×7 depthwise convolutions, LayerNorm, GELU, layer
scale), random weights in the realistic state of tests/conftest.py (variance 1/fan-in, random biases, norm
affines in [0.5, 1.5], layer scales in [0.5, 1.5]: at initialisation HF's layer scales of 1e-6 would make every
block the identity).  Both are float32 and in eval mode.
"""

from __future__ import annotations

import common  # noqa: F401 (puts tests/ on the path, for the shared zoo support)
import torch
from torch import nn
from zoo_support import Logits, realistic_state  # noqa: F401 (Logits: the benchmarks import it from here)

#: torchvision's configuration "A": output channels of each convolution, "M" a max pooling
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """torchvision's VGG layout without batch norm: ``features``, ``avgpool``, ``classifier``."""

    def __init__(self, config=VGG11, image_size: int = 224, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        side = image_size // 32
        # at 224: torchvision's 7×7; below, the map is smaller than 7×7 and pooling to 7×7 only repeats entries
        self.avgpool = nn.AdaptiveAvgPool2d(7) if side >= 7 else nn.Identity()
        flat = cin * (7 * 7 if side >= 7 else side * side)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg11(image_size: int = 64, num_classes: int = 1000, seed: int = 0) -> VGG:
    """VGG-11 (no batch norm) for ``image_size``² inputs, random weights from ``seed``, float32, eval mode."""
    model = VGG(VGG11, image_size, num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def convnext_tiny(image_size: int = 64, num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """Hugging Face ConvNeXt-Tiny (96-192-384-768, depths 3-3-9-3) with random weights in a realistic state."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.ConvNextConfig(num_channels=3, hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3],
                                         patch_size=4, image_size=image_size, num_labels=num_classes)
    return realistic_state(transformers.ConvNextForImageClassification(config), seed, torch.float32)
