"""What the default-layer search of :mod:`tribute.core.layers` needs to know about token models.

A vision transformer's path from the image to the output runs through tokens (N, T, C), not through a
convolutional feature map: its only (N, C, H, W) tensor is the patch embedding (or, in Swin, windows and
attention scores: other things laid out in four dimensions).  So when the walk back from the output meets
a module output of tokens before any feature map, the model has no map to default to, and the error lists
the layers that can be laid out as one (T or T − 1 tokens on a square grid) for ``layer=`` with
``reshape="tokens"``.
"""

from __future__ import annotations

import math

#: functions that only lay out the same values anew: a 4-D tensor they make (Swin's window partition, a
#: channels-last view) is not a feature map of its own
SHAPE_FUNCTIONS = frozenset({"view", "reshape", "permute", "transpose", "flatten", "unflatten", "contiguous",
                             "expand", "unsqueeze", "squeeze", "movedim", "swapaxes", "roll", "pad"})


def is_tokens(shape: tuple[int, ...]) -> bool:
    """(N, T, C) with several tokens and channels: a sequence of token vectors."""
    return len(shape) == 3 and shape[1] > 1 and shape[2] > 1


def _square(n: int) -> bool:
    return n > 1 and math.isqrt(n) ** 2 == n


def is_token_grid(shape: tuple[int, ...]) -> bool:
    """Tokens whose T or T − 1 (after a class token) is a square: reshapeable into a square map."""
    return is_tokens(shape) and (_square(shape[1]) or _square(shape[1] - 1))


def token_model_message(stop: str, stop_shape: tuple[int, ...], candidates: list[tuple[str, tuple[int, ...]]]) -> str:
    """The default-layer error on a token model: where the tokens were met, and the layers to choose from."""
    head = (f"no spatial feature map (N, C, H, W) before the output: the path runs through tokens (N, T, C), "
            f"{stop!r} gives {tuple(stop_shape)}")
    if not candidates:
        return (f"{head}, and no layer's tokens fill a square grid (T or T − 1 a square); pass layer= (with "
                "reshape= a callable laying the tokens out as (N, C, h, w) for a class activation map)")
    shown = candidates[::-1][:8]  # nearest to the output first
    listed = ", ".join(f"{name!r} {tuple(shape)}" for name, shape in shown)
    more = f" (and {len(candidates) - len(shown)} earlier)" if len(candidates) > len(shown) else ""
    return (f"{head}, so the model is a transformer and its patch embedding is no feature map to explain. Pass "
            f"layer= with a layer of tokens and reshape='tokens' (prefix_tokens= for class/register tokens) to lay "
            f"them out on the image's grid (or layer= a convolutional layer before the tokens); layers whose tokens "
            f"fill a square grid, nearest the output first (one row's shapes): {listed}{more}. A head that reads a "
            "class token (ViT) sees no patch token after the last attention: take a layer before it (the last "
            "block's layernorm_before)")
