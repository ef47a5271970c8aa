"""The working directory the documented commands run in (docs/cli.md, README.md): a user's model module, its
weights, photos, a copy of one photo and a saved tensor of inputs.  ``python tests/cli_fixture.py DIR`` makes one."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

MYMODELS = '''"""A small CNN for 3x32x32 images with 10 classes (the user's module of docs/cli.md)."""
from torch import nn

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
INPUT_SIZE = 32


def make():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10),
    )
'''
#: the photos, by file name, and scikit-image's names for them
PHOTOS = {"cat.png": "chelsea", "astronaut.png": "astronaut", "coffee.png": "coffee"}
DIGITS = 8  # samples in digits.pt


def make_workdir(folder: Path) -> Path:
    """Write mymodels.py, mymodel.pt (seeded weights), photos/ (three photos), cat.png and digits.pt in ``folder``."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mymodels.py").write_text(MYMODELS)
    namespace: dict = {}
    exec(compile(MYMODELS, "mymodels.py", "exec"), namespace)
    torch.manual_seed(0)
    torch.save(namespace["make"]().state_dict(), folder / "mymodel.pt")
    (folder / "photos").mkdir(exist_ok=True)
    for name, source in PHOTOS.items():
        image = Image.fromarray(getattr(data, source)())
        image.thumbnail((160, 160))  # small files: the commands resize them anyway
        image.save(folder / "photos" / name)
    (folder / "cat.png").write_bytes((folder / "photos" / "cat.png").read_bytes())
    g = torch.Generator().manual_seed(1)
    torch.save({"inputs": torch.rand(DIGITS, 3, 32, 32, generator=g), "labels": torch.arange(DIGITS) % 10},
               folder / "digits.pt")
    return folder


if __name__ == "__main__":
    print(make_workdir(Path(sys.argv[1])))
