"""The 1000 ImageNet (ILSVRC 2012) class names, in the order of the classifiers' outputs.

``imagenet_classes.txt`` holds one class per line, its WordNet synonyms separated by commas (a copy
of the list Debian's ``opencv-doc`` ships as ``classification_classes_ILSVRC2012.txt``).  It is package
data, so no download or system package is needed.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

N_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The class names, index i being output i of an ImageNet classifier (e.g. 281 is ``"tabby, tabby cat"``)."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != N_CLASSES:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} classes, expected {N_CLASSES}")
    return names


def short_class_name(index: int) -> str:
    """The first synonym of class ``index`` (``"tabby"`` for 281), for figure titles."""
    return imagenet_classes()[index].split(",")[0].strip()
