"""The 5,000 handwritten digits that ship with OpenCV's samples, as 28×28 grey images in [0, 1].

OpenCV's ``samples/data/digits.png`` (installed by the Debian package ``opencv-doc`` as
``/usr/share/doc/opencv-doc/examples/data/digits.png``) is one 2000 × 1000 grey image: a grid of 100 columns by 50
rows of 20×20 digits, 500 of each class, the classes in order, five grid rows each (the layout OpenCV's own
``digits.py`` sample reads).  :func:`load_opencv_digits` cuts the grid, scales the 0–255 values to [0, 1] and
*pads* each 20×20 digit with 4 black pixels on every side to 28×28, rather than resizing it: padding keeps every
pixel value as it is (no interpolation) and gives MNIST's own layout, a digit in a 20×20 box in the middle of a
28×28 field, so the digits and Fashion-MNIST share one input size and the same models and presets.  The split is
stratified and seeded.
"""

from __future__ import annotations

import pathlib

import torch

from .._optional import require
from .digits import Split, check_split_options, stratified_test_mask

OPENCV_DIGITS_PNG = pathlib.Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
#: The grid of digits.png: cell size, columns, rows, classes.
CELL, COLUMNS, ROWS, CLASSES = 20, 100, 50, 10


def load_opencv_digits(*, test_fraction: float = 0.2, seed: int = 0, pad: int = 4,
                       path: str | pathlib.Path = OPENCV_DIGITS_PNG, dtype: torch.dtype = torch.float32) -> Split:
    """OpenCV's 5,000 digits as ``Split(train=(x, y), test=(x, y))``, x of shape (N, 1, 20 + 2·pad, 20 + 2·pad).

    Within each class a seeded random permutation (its own ``torch.Generator``) puts ``round(test_fraction ·
    500)`` images in the test set (100 of 500 by default: 4,000 training and 1,000 test images); each part keeps
    the file's order.  Values are the PNG's 0–255 grey levels divided by 255; the padding is 0 (black, the
    background of the digits).

    ``test_fraction``, ``seed`` and ``dtype`` are those of :func:`tribute.data.load_digits`; ``pad`` is the number
    of black pixels added on every side (>= 0: 4 gives 28×28, MNIST's layout; 0 the raw 20×20 cells) and ``path``
    the digits.png to read (default: where Debian's ``opencv-doc`` installs it).
    """
    check_split_options(test_fraction, seed, dtype)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    grid = _read_grey_png(pathlib.Path(path))
    if grid.shape != (ROWS * CELL, COLUMNS * CELL):
        raise ValueError(f"{path}: a {grid.shape[1]}×{grid.shape[0]} image; OpenCV's digits.png is "
                         f"{COLUMNS * CELL}×{ROWS * CELL} ({COLUMNS} × {ROWS} digits of {CELL}×{CELL})")
    # (rows·20, cols·20) → (rows, cols, 20, 20) → row-major cells, as OpenCV's split2d orders them
    cells = grid.reshape(ROWS, CELL, COLUMNS, CELL).permute(0, 2, 1, 3).reshape(ROWS * COLUMNS, 1, CELL, CELL)
    x = torch.nn.functional.pad(cells.to(torch.float64).div(255.0), (pad,) * 4).to(dtype)
    y = torch.arange(CLASSES).repeat_interleave(ROWS * COLUMNS // CLASSES)
    test = stratified_test_mask(y, test_fraction, seed)
    return Split(train=(x[~test], y[~test]), test=(x[test], y[test]))


def _read_grey_png(path: pathlib.Path) -> torch.Tensor:
    """The PNG at ``path`` as a (H, W) uint8 tensor of grey levels (Pillow reads it)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: OpenCV's digits come with the Debian package opencv-doc "
                                "(`apt-get install opencv-doc`), or pass path= to a copy of OpenCV's "
                                "samples/data/digits.png")
    image = require("PIL.Image", "viz", "the OpenCV digits")
    with image.open(path) as im:
        grey = im.convert("L")
        return torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).reshape(grey.height, grey.width)
