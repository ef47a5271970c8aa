"""Regenerate the example images of tribute.viz in this folder: ``python docs/figures/make_figures.py [OUT_DIR]``.

Every figure function of :mod:`tribute.viz` has one example here, drawn from synthetic data (seeded; nothing is
downloaded; a few seconds).  The synthetic "photo" is a bright disc on a shaded background; the "attributions" are
shaped like what methods give on such a photo (signed and noisy, smooth, unsigned, coarse), so that the figures
show what they do, not what any method finds.  When ``curve_examples.py`` beside this file exposes ``EXAMPLES``
(a list of (file name, zero-argument function returning a figure)), those are drawn too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from tribute.viz import (
    class_contrast_figure,
    family_figure,
    heatmap_figure,
    method_figure,
    overlay_figure,
    save_figure,
    token_figure,
)

HERE = Path(__file__).resolve().parent
SIZE = 48


def _photo_and_maps(seed: int = 0):
    """A (3, 48, 48) image in [0, 1] and signed, smooth, unsigned and coarse maps of its disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    disc = np.exp(-(((xx - 0.45) ** 2 + (yy - 0.5) ** 2) / 0.03))
    image = np.stack([0.2 + 0.7 * disc, 0.3 + 0.3 * yy, 0.5 - 0.3 * disc]).clip(0, 1)
    edge = np.gradient(disc)[1]
    noisy = edge * 4 + 0.15 * rng.standard_normal((SIZE, SIZE)) * disc
    smooth = disc - 0.3 * np.exp(-(((xx - 0.8) ** 2 + (yy - 0.2) ** 2) / 0.01))
    coarse = np.kron(disc[::8, ::8], np.ones((8, 8)))
    return image, {"gradient": noisy, "integrated_gradients": smooth, "saliency": np.abs(noisy),
                   "deeplift": smooth * (0.6 + 0.4 * rng.random((SIZE, SIZE))), "gradcam": coarse,
                   "occlusion": np.kron(smooth[::6, ::6], np.ones((6, 6)))}


def heatmap_example():
    image, maps = _photo_and_maps()
    return heatmap_figure(maps["gradient"], image, title="a signed map (gradient-like)")


def overlay_example():
    image, maps = _photo_and_maps()
    return overlay_figure(image, maps["integrated_gradients"], title="a smooth map over the image")


def method_example():
    images, maps = zip(*(_photo_and_maps(s) for s in (0, 1)), strict=True)
    stacked = {m: np.stack([d[m] for d in maps]) for m in ("gradient", "integrated_gradients", "saliency")}
    return method_figure(np.stack(images), stacked, ["photo 1", "photo 2"],
                         notes={"saliency": "unsigned: a sequential scale from 0"})


def family_example():
    image, maps = _photo_and_maps()
    return family_figure(image[None], {m: a[None] for m, a in maps.items()}, ["disc (synthetic)"],
                         notes={"gradcam": "coarse: the last convolution's resolution"})


def class_contrast_example():
    image, maps = _photo_and_maps()
    first = maps["integrated_gradients"]
    other = np.roll(first, 12, axis=1)
    return class_contrast_figure(image, {"disc": first, "disc, brighter": 1.5 * first + 0.05, "shadow": other},
                                 title="one image, three classes")


def edge_case_example():
    """The awkward maps: all zero, constant, extreme values, NaN and ±inf: each shown and named."""
    ramp = np.linspace(-1, 1, SIZE * SIZE).reshape(SIZE, SIZE)
    broken = ramp.copy()
    broken[5:10, 5:10], broken[30:33, 30:40], broken[40:, :4] = np.nan, np.inf, -np.inf
    maps = {"all zero": np.zeros((SIZE, SIZE)), "constant": np.full((SIZE, SIZE), 0.7), "extreme": ramp * 1e30,
            "NaN and ±inf": broken}
    return method_figure(None, {k: v[None] for k, v in maps.items()})


def token_example():
    sentences = [["[CLS]", "a", "gripping", ",", "beautifully", "shot", "film", "[SEP]"],
                 ["[CLS]", "the", "plot", "is", "thin", "[SEP]"],
                 ["[CLS]", "broken", "values", "[SEP]"]]
    values = [np.array([0.0, 0.02, 0.61, 0.01, 0.45, 0.12, 0.08, 0.0]), np.array([0.0, -0.01, -0.2, 0.03, -0.52, 0.0]),
              np.array([0.0, np.nan, 0.3, np.inf])]
    return token_figure(sentences, values, titles=["positive review", "negative review", "non-finite"], width=6.0)


EXAMPLES = [
    ("heatmap_figure.png", heatmap_example),
    ("overlay_figure.png", overlay_example),
    ("method_figure.png", method_example),
    ("family_figure.png", family_example),
    ("class_contrast_figure.png", class_contrast_example),
    ("edge_cases.png", edge_case_example),
    ("token_figure.png", token_example),
]


def all_examples() -> list:
    """:data:`EXAMPLES`, then the curve examples of ``curve_examples.py`` when it exists."""
    curves = HERE / "curve_examples.py"
    if not curves.exists():
        return list(EXAMPLES)
    spec = importlib.util.spec_from_file_location("curve_examples", curves)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(EXAMPLES) + list(getattr(module, "EXAMPLES", []))


def main(out_dir: str | Path = HERE) -> list[Path]:
    written = []
    for name, make in all_examples():
        path = save_figure(make(), Path(out_dir) / name)
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")
        written.append(path)
    return written


if __name__ == "__main__":
    main(*sys.argv[1:2])
