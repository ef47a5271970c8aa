"""Real photos for the demo: scikit-image's bundled images, prepared like ImageNet validation images.

The photos ship inside scikit-image, so nothing is downloaded.  Each is resized so that its shorter
side is 256 pixels and centre-cropped to 224 × 224, the usual ImageNet evaluation protocol, and kept in
[0, 1] pixel space: normalisation belongs to the model (see :mod:`tribute.data.models`), so that
attributions, baselines and noise are all in pixel units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._optional import require

#: scikit-image loader names of photos whose main object is an ImageNet class, by our short name.
PHOTOS: dict[str, str] = {
    "chelsea": "chelsea",  # a tabby cat
    "coffee": "coffee",  # a cup of espresso
    "rocket": "rocket",  # a rocket on its launch pad (missile / projectile)
    "motorcycle": "stereo_motorcycle",  # a motorcycle (moped); the loader returns a stereo pair
    "camera": "camera",  # the cameraman: a camera on a tripod (grayscale)
}
# One object filling the frame each, all confidently classified.  (The motorcycle's "moped" evidence
# lies largely in the garage shelves behind it: instructive, but not the first thing to show.)
DEFAULT_PHOTOS: tuple[str, ...] = ("chelsea", "coffee", "rocket")

RESIZE = 256
CROP = 224


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """An image array (H, W), (H, W, 3) or (H, W, 4) of uint8 or floats in [0, 1] as a (3, H, W) float tensor."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    image = image[..., :3]  # drop alpha
    if image.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
    elif image.dtype == bool:
        t = torch.from_numpy(np.ascontiguousarray(image)).float()
    else:
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return t.permute(2, 0, 1).contiguous()


def resize_and_crop(image: torch.Tensor, resize: int = RESIZE, crop: int = CROP) -> torch.Tensor:
    """Resize a (3, H, W) image so its shorter side is ``resize``, then take the central ``crop`` × ``crop``.

    Downscaling uses an antialiased bilinear filter: without it, the high frequencies of the large
    photos alias into the small image and change what the model sees (and explains).
    """
    if image.dim() != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
    if crop > resize:
        raise ValueError(f"crop ({crop}) cannot be larger than resize ({resize})")
    h, w = image.shape[-2:]
    scale = resize / min(h, w)
    size = (max(resize, round(h * scale)), max(resize, round(w * scale)))
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    top = (size[0] - crop) // 2
    left = (size[1] - crop) // 2
    # bilinear interpolation can overshoot slightly at sharp edges; keep the pixels a valid image
    return resized[:, top : top + crop, left : left + crop].clamp(0.0, 1.0)


def load_photo(name: str) -> np.ndarray:
    """The raw photo ``name`` (a key of :data:`PHOTOS`) as scikit-image returns it."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}")
    data = require("skimage.data", "demo", "the demo photos")
    image = getattr(data, PHOTOS[name])()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    return image


def load_photos(names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Photos as a float tensor (N, 3, 224, 224) in [0, 1] pixel space, and their names.

    Parameters
    ----------
    names : sequence of str, optional
        Keys of :data:`PHOTOS`; default :data:`DEFAULT_PHOTOS`.

    Returns
    -------
    images : torch.Tensor
        float32, shape (N, 3, 224, 224), values in [0, 1].
    names : list of str
    """
    names = list(DEFAULT_PHOTOS if names is None else names)
    if not names:
        raise ValueError("no photos requested")
    images = torch.stack([resize_and_crop(to_tensor(load_photo(n))) for n in names])
    return images, names
