"""PNG heat maps of a run's attributions, ``heatmaps/<method>/<name>.png``: each map encoded straight to PNG by
:func:`tribute.viz.encode.encode_map` (no matplotlib figure per map), over the image it explains."""

from __future__ import annotations

import sys

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


def write_heatmaps(run, stores: dict, samples: Samples, *, progress: bool = True) -> int:
    """Write every method's heat map of every sample; the number written (0 for inputs that are not images)."""
    images = display_images(samples)
    if images is None:
        return 0
    try:
        from ..viz.encode import encode_map
    except ImportError as e:  # the encoder ships with the report; say so rather than leave the folder empty unsaid
        print(f"tribute explain: no heat maps written: {e}", file=sys.stderr)
        return 0
    from tqdm.auto import tqdm

    count = 0
    n = len(samples.names)
    bar = tqdm(total=len(stores) * n, desc="heat maps", unit="map", disable=not progress or len(stores) * n < 50)
    for method, store in stores.items():
        attributions = store.attributions()  # every shard read once
        for i in range(n):
            path = run.heatmap_path(method, samples.names[i])
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(str(path), encode_map(attributions[i], image=images[i]).png)
            count += 1
            bar.update()
    bar.close()
    return count
