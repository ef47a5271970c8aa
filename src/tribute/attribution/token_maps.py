"""Class activation maps at a transformer's layer: tokens (N, T, C) rearranged into a map (N, C, h, w).

A vision transformer (Dosovitskiy et al. 2021) cuts the image into an h × w grid of patches and carries
one token per patch, after k leading class/register tokens (ViT: k = 1; Swin, Liu et al. 2021: k = 0;
DeiT's distillation token: k = 2; Darcet et al. 2024's registers: k = 1 + registers).  Its layers output
(N, T, C) with T = k + h·w.  Applying a CAM there, as Chefer et al. (2021) do for their Grad-CAM baseline
on ViT and as pytorch-grad-cam's ``reshape_transform`` does in common practice, means dropping the k
leading tokens and laying the others out on the grid: A (N, C, h, w).

``reshape="tokens"`` does this; k is ``prefix_tokens=`` or inferred: the k ∈ {0, 1} for which T − k
tokens fill a grid of the image's aspect ratio (h/w = H/W); none or both is an error asking for
``prefix_tokens=``.  ``reshape=`` may also be a callable taking the layer's output to (N, C, h, w).

Why the gradient is right.  The rearrangement only selects and moves entries, B_j = A_{π(j)}, so
∂S/∂B_j = ∂S/∂A_{π(j)}: the map's gradient is the same rearrangement of ∂S/∂A, and the dropped
tokens' gradients are simply not used.  A callable is checked to be such a rearrangement: it is run
once on a tensor of distinct entry numbers, which must come back as distinct whole numbers from the
same sample (an interpolation, a sum or a mixing of samples is an error, not a silently wrong map).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from ..core import options as opt
from ..core.layer_names import LayerError, Site
from ..core.layers import LayerRows


def check_reshape(name: str, v: Any) -> Any:
    """Option check for ``reshape=``: None (the layer is a map already), ``"tokens"`` or a callable."""
    if v is None or v == "tokens" or callable(v):
        return v
    raise TypeError(f"{name} must be None, 'tokens' (tokens (N, T, C) laid out on the image's grid) or a callable "
                    f"taking the layer's output to (N, C, h, w); got {v!r}")


TOKEN_MAP_OPTIONS = {
    "reshape": opt.Option(None, check_reshape,
                          "'tokens': a transformer layer's (N, T, C) tokens become an (N, C, h, w) map (leading "
                          "class/register tokens dropped); or a callable rearranging the layer's output so"),
    "prefix_tokens": opt.Option(None, opt.optional(opt.integer(0)),
                                "with reshape='tokens': how many leading class/register tokens to drop "
                                "(default: inferred, 1 or 0)"),
}


def token_grid(t: int, image_size: tuple[int, int], prefix: int | None) -> tuple[int, int, int]:
    """(k, h, w): k leading tokens dropped, the other T − k on an h × w grid with h/w = H/W."""
    def grid(k: int) -> tuple[int, int] | None:
        n = t - k
        if n < 1:
            return None
        height, width = image_size
        h = round(math.sqrt(n * height / width))
        for hh in (h - 1, h, h + 1):
            if hh > 0 and n % hh == 0 and hh * width == (n // hh) * height:
                return hh, n // hh
        return None

    if prefix is not None:
        g = grid(prefix)
        if g is None:
            raise LayerError(f"reshape='tokens' with prefix_tokens={prefix}: the other {t - prefix} of the layer's "
                             f"{t} tokens do not fill a grid of the image's aspect ratio {image_size[0]}:"
                             f"{image_size[1]}; check prefix_tokens= or pass reshape= a callable")
        return (prefix, *g)
    found = [(k, *g) for k in (0, 1) if (g := grid(k)) is not None]
    if len(found) != 1:
        why = "neither" if not found else "both"
        raise LayerError(f"reshape='tokens': {why} of the layer's {t} tokens and {t - 1} tokens (after one class "
                         f"token) fill a grid of the image's aspect ratio {image_size[0]}:{image_size[1]}; say how "
                         "many leading class/register tokens to drop with prefix_tokens=, or pass reshape= a callable")
    return found[0]


def _tokens_to_map(a: torch.Tensor, image_size: tuple[int, int], prefix: int | None) -> torch.Tensor:
    if a.dim() != 3:
        raise LayerError(f"reshape='tokens' needs a layer giving tokens (N, T, C); this one gives {tuple(a.shape)}")
    k, h, w = token_grid(a.shape[1], image_size, prefix)
    return a[:, k:].reshape(a.shape[0], h, w, a.shape[2]).permute(0, 3, 1, 2)


class TokenMap:
    """The rearrangement B = A.flatten()[index] of a layer's output A into a map B (N, C, h, w)."""

    def __init__(self, index: torch.Tensor, shape: torch.Size):
        self.index = index
        self.shape = shape

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return a.reshape(-1)[self.index]

    def back(self, m: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """A with the map's entries replaced by ``m`` (the entries the map leaves out stay as in ``a``)."""
        return a.reshape(-1).index_put((self.index.reshape(-1),), m.reshape(-1)).reshape(a.shape)


def token_map(method: str, site: Site, a: torch.Tensor, image: torch.Tensor, o: SimpleNamespace) -> TokenMap:
    """The rearrangement ``reshape=`` asks for, checked on a tensor of entry numbers (module doc)."""
    if o.prefix_tokens is not None and o.reshape != "tokens":
        raise ValueError("prefix_tokens= goes with reshape='tokens'")
    fn: Callable = o.reshape
    if o.reshape == "tokens":
        size = tuple(image.shape[-2:])
        def fn(t):
            return _tokens_to_map(t, size, o.prefix_tokens)
    numbers = torch.arange(a.numel(), dtype=torch.float64, device=a.device).reshape(a.shape)
    out = fn(numbers)
    where = f"{method}: reshape= at {site.describe()} (output shape {tuple(a.shape)})"
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != a.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LayerError(f"{where} must give a map (N, C, h, w) with N = {a.shape[0]}; got {got}")
    index = out.round().long()
    per_row = a[0].numel()
    rows = torch.arange(a.shape[0], device=a.device).reshape(-1, 1, 1, 1)
    if (out.dtype != torch.float64 or not torch.equal(index.to(out.dtype), out) or int(index.min()) < 0
            or int(index.max()) >= a.numel() or index.flatten().unique().numel() != index.numel()
            or not bool((index // per_row == rows).all())):
        raise LayerError(f"{where} must only select and rearrange entries of each sample (slicing, reshape, "
                         "permute), not combine them (interpolation, sums) or mix samples: otherwise its gradient is "
                         "not the rearranged gradient")
    return TokenMap(index, a.shape)


def as_feature_map(method: str, site: Site, a: torch.Tensor, image: torch.Tensor,
                   o: SimpleNamespace) -> TokenMap | None:
    """None when the layer's output is a map (N, K, h, w) already and no ``reshape=`` is asked; else its rearrangement.

    A layer of another shape without ``reshape=`` is an error naming the way out."""
    if o.reshape is not None:
        return token_map(method, site, a, image, o)
    if o.prefix_tokens is not None:
        raise ValueError("prefix_tokens= goes with reshape='tokens'")
    if a.dim() != 4:
        hint = (" ; a transformer's tokens (N, T, C) become a map with reshape='tokens' (prefix_tokens= for the "
                "class/register tokens)") if a.dim() == 3 else ""
        raise LayerError(f"{method} needs a convolutional feature map (N, K, h, w) at its layer, but {site.describe()} "
                         f"gives shape {tuple(a.shape)}; choose another layer={hint}")
    return None


def feature_map_rows(method: str, site: Site, r: LayerRows, image: torch.Tensor, o: SimpleNamespace) -> LayerRows:
    """``r`` with the activation and its gradient as maps (N, K, h, w), rearranged alike (module doc)."""
    m = as_feature_map(method, site, r.activation, image, o)
    if m is None:
        return r
    grad = m(r.grad)
    blind = (grad.flatten(1) == 0).all(1) & (r.grad.flatten(1) != 0).any(1)
    if bool(blind.any()):
        raise LayerError(
            f"{method}: at {site.describe()} the score depends on the tokens reshape= leaves out (class/register "
            f"tokens) but not on the map's (samples {blind.nonzero().flatten().tolist()[:5]}): after a ViT's last "
            "attention the head reads only the class token, so the map would be 0. Choose an earlier layer, e.g. "
            "the input of the last block's attention (its layernorm_before)"
        )
    return r._replace(activation=m(r.activation), grad=grad)
