"""The samples a command explains: image files or folders of them, or a saved tensor.

Images (PNG, JPEG and what else Pillow reads) become (C, H, W) float tensors in [0, 1], RGB or grey, brought to the
model's input size by :func:`fit_size` (scaled so that the image covers the size, then centre-cropped: the aspect
ratio is kept) or by the demo model's own preparation.  Pixels stay in [0, 1]: a normalisation (``--mean/--std``)
is given to the methods as ``input_transform=``, so attributions and heat maps are in pixel space.

A saved tensor is a ``.pt`` file (``torch.save`` of a tensor, an ``(inputs, labels)`` pair or a dict with
``"inputs"`` and optionally ``"labels"``) or a ``.npy`` file (one array of inputs), used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import CommandError
from .models import LoadedModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TENSOR_SUFFIXES = (".pt", ".pth", ".npy")


@dataclass
class Samples:
    """The samples: ``inputs`` (N, ...) as the methods get them, one name each, labels when the file has them, and
    ``kind`` (``"image"`` or ``"features"``) for the report."""

    inputs: torch.Tensor
    names: list[str]
    labels: torch.Tensor | None = None
    kind: str = "image"


def is_tensor_file(path: str) -> bool:
    return Path(path).suffix.lower() in TENSOR_SUFFIXES


def read_samples(paths: list[str], loaded: LoadedModel, channels: int | None = None) -> Samples:
    """Images from ``paths`` (files and folders) or the one saved tensor among them, for ``loaded``'s model."""
    if not paths:
        raise CommandError("no input given: name image files, folders of images, or a .pt/.npy file")
    tensors = [p for p in paths if is_tensor_file(p)]
    if tensors:
        if len(paths) > 1:
            raise CommandError(f"give one saved tensor ({tensors[0]}) alone, not together with other inputs")
        return read_tensor_file(paths[0], _dtype(loaded))
    files = image_files(paths)
    images = [read_image(f, channels or loaded.channels or 3) for f in files]
    images = [prepare(im, loaded) for im in images]
    sizes = {tuple(im.shape[-2:]) for im in images}
    if len(sizes) > 1:
        pairs = list(zip(files, images, strict=True))[:4]
        seen = ", ".join(f"{f.name} {im.shape[-1]}x{im.shape[-2]}" for f, im in pairs)
        raise CommandError(f"the images have different sizes ({seen}): give --size (e.g. --size 224) or declare "
                           "INPUT_SIZE in the model's module")
    return Samples(torch.stack(images).to(_dtype(loaded)), unique_names(files))


def _dtype(loaded: LoadedModel) -> torch.dtype:
    """The model's floating dtype (its first floating parameter or buffer), float32 when it has none."""
    for t in (*loaded.model.parameters(), *loaded.model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def image_files(paths: list[str]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders' images in name order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CommandError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise CommandError(f"no such file or folder: {p}")
    return files


def unique_names(files: list[Path]) -> list[str]:
    """Each file's name without its suffix; the full file name where two files share a stem."""
    stems = [f.stem for f in files]
    names = [f.stem if stems.count(f.stem) == 1 else f.name for f in files]
    if len(set(names)) != len(names):  # the same file name in two folders
        names = [str(f).replace("/", "_") for f in files]
    return names


def read_image(path: Path, channels: int) -> torch.Tensor:
    """The image at ``path`` as a (channels, H, W) float tensor in [0, 1] (RGB for 3 channels, grey for 1)."""
    from .._optional import require

    image_module = require("PIL.Image", "data", "images read from files")
    if channels not in (1, 3):
        raise CommandError(f"--channels must be 1 (grey) or 3 (RGB), got {channels}")
    try:
        with image_module.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            w, h = im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise CommandError(f"cannot read image {path}: {e}") from None
    return data.view(h, w, channels).permute(2, 0, 1).float() / 255.0


def fit_size(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``image`` (C, H, W) scaled (antialiased bilinear) so that it covers ``size`` = (height, width), then
    centre-cropped to it: the aspect ratio is kept, the borders of the longer side are cut."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image
    scale = max(size[0] / h, size[1] / w)
    scaled = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    out = F.interpolate(image[None], size=scaled, mode="bilinear", align_corners=False, antialias=True)[0]
    top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return out[:, top:top + size[0], left:left + size[1]].clamp(0.0, 1.0)


def prepare(image: torch.Tensor, loaded: LoadedModel) -> torch.Tensor:
    """One image brought to the model's input size (the model's own preparation, else :func:`fit_size`)."""
    if loaded.prepare is not None:
        return loaded.prepare(image)
    return image if loaded.size is None else fit_size(image, loaded.size)


def read_tensor_file(path: str, dtype: torch.dtype) -> Samples:
    """Samples from a ``.pt`` or ``.npy`` file (see the module doc); floating inputs in the model's dtype."""
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"no such file: {path}")
    labels = None
    try:
        if file.suffix.lower() == ".npy":
            import numpy as np

            data = torch.from_numpy(np.load(file, allow_pickle=False))
        else:
            data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CommandError(f"cannot read {path}: {e}") from None
    if isinstance(data, dict):
        if "inputs" not in data:
            raise CommandError(f"{path} holds a dict without 'inputs' (keys: {', '.join(map(str, data))})")
        data, labels = data["inputs"], data.get("labels")
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        data, labels = data
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] == 0:
        raise CommandError(f"{path} must hold a tensor of samples (N, ...), an (inputs, labels) pair or "
                           "{'inputs': ..., 'labels': ...}")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (data.shape[0],)):
        raise CommandError(f"{path}: labels must be a tensor of shape ({data.shape[0]},), one class per sample")
    inputs = data.to(dtype) if data.is_floating_point() else data
    kind = "image" if inputs.dim() == 4 and inputs.shape[1] in (1, 3) else "features"
    return Samples(inputs, [str(i) for i in range(inputs.shape[0])], labels, kind)
