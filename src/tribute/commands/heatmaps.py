"""PNG heat maps of a run's attributions, ``heatmaps/<method>/<name>.png``: each map encoded straight to PNG by
:func:`tribute.viz.encode.encode_map` (no matplotlib figure per map), over the image it explains."""

from __future__ import annotations

import torch

from ..atomic_files import write_bytes
from .inputs import Samples


def display_images(samples: Samples) -> torch.Tensor | None:
    """The images the maps are drawn over, in [0, 1]: image files' pixels as they are, a saved tensor's images
    rescaled per image from their own range; None for inputs that are not images."""
    if samples.kind != "image":
        return None
    x = samples.inputs.detach().float()
    low, high = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    if bool((low >= 0).all() and (high <= 1).all()):
        return x
    return (x - low) / (high - low).clamp(min=1e-12)


def write_heatmaps(run, stores: dict, samples: Samples, *, progress: bool = True) -> dict[str, dict]:
    """Write every method's heat map of every sample; per method the colour scale of each map (the magnitude
    shown at full colour, :func:`tribute.viz.encode.encode_map`) and how many values were not finite (empty for
    inputs that are not images)."""
    from tqdm.auto import tqdm

    from ..viz.encode import encode_map

    images = display_images(samples)
    if images is None:
        return {}
    n, about = len(samples.names), {}
    bar = tqdm(total=len(stores) * n, desc="heat maps", unit="map", disable=not progress or len(stores) * n < 50)
    for method, store in stores.items():
        attributions = store.attributions()  # every shard read once
        if attributions.dim() == 4 and attributions.shape[-2:] != images.shape[-2:]:
            # a map at a layer's resolution: drawn over the image at the image's size, as CAMs are shown
            attributions = torch.nn.functional.interpolate(attributions.float(), size=images.shape[-2:],
                                                           mode="bilinear", align_corners=False)
        scales, nonfinite = [], 0
        for i in range(n):
            encoded = encode_map(attributions[i], image=images[i])
            path = run.heatmap_path(method, samples.names[i])
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(str(path), encoded.png)
            scales.append(encoded.scale)
            nonfinite += encoded.nonfinite
            bar.update()
        about[method] = {"heatmap_scales": scales, "nonfinite_values": nonfinite}
    bar.close()
    return about
