"""Segments of images for the group methods: superpixels (SLIC, quickshift) or a regular grid.

Each image (C, H, W) gets one segment map (H, W) shared by its channels.  SLIC (Achanta et al. 2012) and
quickshift (Vedaldi & Soatto 2008) come from scikit-image and run on the image rescaled to [0, 1] (per image,
over all its channels), so their colour distances mean the same whatever the input's value range; a
normalised input (mean 0, std 1) is segmented as the picture it shows.  Options (``segment_options=``):

- ``"slic"``: ``n_segments`` (default 50), ``compactness`` (10), ``sigma`` (1, pixels of Gaussian smoothing
  before segmenting), passed to :func:`skimage.segmentation.slic`; any number of channels.
- ``"quickshift"``: ``kernel_size`` (4), ``max_dist`` (200), ``ratio`` (0.2): LIME's image explainer's values
  (Ribeiro et al. 2016), passed to :func:`skimage.segmentation.quickshift`; grey images are repeated to RGB,
  other channel counts are refused.
- ``"grid"``: ``cell`` (an int or (height, width) in pixels; default an eighth of the image's height and width,
  rounded up, so about 8 × 8 cells); the last row and column of cells may be smaller.
"""

from __future__ import annotations

import math

import torch

from ..._optional import require

SEGMENTERS = ("slic", "quickshift", "grid")
_DEFAULTS = {
    "slic": {"n_segments": 50, "compactness": 10.0, "sigma": 1.0},
    "quickshift": {"kernel_size": 4, "max_dist": 200.0, "ratio": 0.2},
    "grid": {"cell": None},
}


def segment_images(x: torch.Tensor, method: str, options: dict | None = None) -> torch.Tensor:
    """Segment maps (N, H, W), integer labels, for images ``x`` (N, C, H, W)."""
    options = dict(options or {})
    unknown = set(options) - set(_DEFAULTS[method])
    if unknown:
        raise ValueError(f"segments={method!r} takes segment_options {sorted(_DEFAULTS[method])}, "
                         f"got {sorted(unknown)}")
    options = {**_DEFAULTS[method], **options}
    if method == "grid":
        return _grid(x, options["cell"])
    segmentation = require("skimage.segmentation", "demo", "SLIC and quickshift segments")
    images = _unit_range(x.detach()).permute(0, 2, 3, 1).to("cpu", torch.float64).numpy()
    maps = []
    for img in images:
        if method == "slic":
            seg = segmentation.slic(img, start_label=0, channel_axis=-1, **options)
        else:
            if img.shape[-1] not in (1, 3):
                raise ValueError(f"quickshift segments RGB or grey images; these have {img.shape[-1]} channels: "
                                 "use segments='slic' or 'grid'")
            rgb = img.repeat(3, axis=-1) if img.shape[-1] == 1 else img
            seg = segmentation.quickshift(rgb, **options)
        maps.append(torch.from_numpy(seg.astype("int64")))
    return torch.stack(maps).to(x.device)


def _unit_range(x: torch.Tensor) -> torch.Tensor:
    """Each image rescaled to [0, 1] over all its values (a constant image becomes 0)."""
    flat = x.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    span = torch.where(high > low, high - low, torch.ones_like(high))
    return (x - low.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1)


def _grid(x: torch.Tensor, cell) -> torch.Tensor:
    h, w = x.shape[-2:]
    if cell is None:
        cell = (math.ceil(h / 8), math.ceil(w / 8))
    ch, cw = (cell, cell) if isinstance(cell, int) else tuple(cell)
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in (ch, cw)):
        raise ValueError(f"segment_options cell must be a positive int or a pair of them, got {cell!r}")
    rows = torch.arange(h, device=x.device) // ch
    cols = torch.arange(w, device=x.device) // cw
    labels = rows[:, None] * math.ceil(w / cw) + cols[None, :]
    return labels.expand(x.shape[0], h, w)
