"""Smooth masks by smooth max-convolution (Fong, Patrick & Vedaldi 2019, §3.3) and the perturbation pyramid.

A mask is parametrised by values m̄_i ∈ [0, 1] on a coarse grid: point i = (i_y, i_x) sits at the centre of the
i-th ``cell`` × ``cell`` block of pixels, p_i = cell·i + (cell − 1)/2.  The mask at pixel u pools the kernel-
weighted values of the grid points near u with the smooth maximum of temperature T,

    m(u) = smax_T { k(‖u − p_i‖ / σ) m̄_i : i ∈ N(u) },     smax_T(z) = Σ_i z_i e^{z_i/T} / Σ_i e^{z_i/T},

which tends to the max-convolution max_i k(·) m̄_i as T → 0: a mask is at least as smooth as the kernel, and a
region of ones stays one (a weighted mean would erode it).  The kernel is that of the authors' release,
k(d) = exp(−2 max(0, d − ½)²): flat up to σ/2, so that with σ ≥ √2·cell every pixel has a grid point at kernel
value 1 and a block of ones in m̄ gives ones in m without ripples between grid points.  N(u) are the grid points
at most r = ⌈σ / cell⌉ + 1 cells from u's own cell along each axis (farther ones are not pooled); points off the
grid count as m̄ = 0, as in the release's zero padding, so every pixel pools (2r + 1)² values and pixels near the
border, which pool more zeros, start a little below the others when m̄ = 1 (the area constraint then removes them
first rather than keeping them).  Memory: (2r + 1)² values per pixel and row.

The perturbation (§3.1, "blur"): pixel u of the perturbed image is the image blurred with σ_u = σ_max (1 − m(u)),
computed, as in the authors' release, by linear interpolation between ``levels`` images blurred with
σ_l = σ_max (1 − l/(L − 1)), l = 0 … L − 1 (the last is the image itself).  With two levels it is the blend
m ⊙ x + (1 − m) ⊙ blur_σmax(x) of meaningful perturbation.
"""

from __future__ import annotations

import math

import torch

from ...core.baselines import gaussian_blur


def kernel(d: torch.Tensor) -> torch.Tensor:
    """k(d) = exp(−2 max(0, d − ½)²), d the distance in units of σ."""
    return torch.exp(-2 * (d - 0.5).clamp(min=0) ** 2)


def smooth_max(z: torch.Tensor, temperature: float, dim: int) -> torch.Tensor:
    """smax_T over ``dim``: Σ z e^{z/T} / Σ e^{z/T}."""
    return (z * torch.softmax(z / temperature, dim=dim)).sum(dim)


class SmoothMasks:
    """The smooth masks of an (H, W) image from grid values (R, 1, ⌈H/cell⌉, ⌈W/cell⌉), see the module doc."""

    def __init__(self, size: tuple[int, int], cell: int, sigma: float, temperature: float, *, dtype, device):
        h, w = size
        self.size, self.temperature = size, temperature
        self.grid = (math.ceil(h / cell), math.ceil(w / cell))
        self.radius = math.ceil(sigma / cell) + 1
        r = self.radius
        off = torch.arange(-r, r + 1, device=device)
        # per pixel and neighbour offset (K = (2r+1)², H·W): the neighbour's grid index and weight (0 off the grid)
        iy, dy = _axis(h, cell, off, dtype)
        ix, dx = _axis(w, cell, off, dtype)
        gh, gw = self.grid
        valid = ((iy >= 0) & (iy < gh))[:, None, :, None] & ((ix >= 0) & (ix < gw))[None, :, None, :]
        index = iy.clamp(0, gh - 1)[:, None, :, None] * gw + ix.clamp(0, gw - 1)[None, :, None, :]
        dist = (dy[:, None, :, None] ** 2 + dx[None, :, None, :] ** 2).sqrt()
        k = (2 * r + 1) ** 2
        self.index = index.reshape(k, h * w)
        self.weight = (kernel(dist / sigma) * valid).reshape(k, h * w)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """The masks (R, 1, H, W) of grid values (R, 1, gh, gw)."""
        flat = values.flatten(1)  # (R, gh·gw)
        z = flat[:, self.index] * self.weight.to(flat.dtype)  # (R, K, H·W); off the grid: weight 0
        m = smooth_max(z, self.temperature, dim=1)
        return m.view(values.shape[0], 1, *self.size)


def _axis(n: int, cell: int, offsets: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of n pixels: the grid index of each offset from each pixel's cell, (offsets, n), and the
    pixel's signed distance to that grid point."""
    u = torch.arange(n, device=offsets.device)
    i = (u // cell)[None, :] + offsets[:, None]
    return i, u[None, :].to(dtype) - (cell * i + (cell - 1) / 2).to(dtype)


def blur_pyramid(image: torch.Tensor, levels: int, sigma_max: float) -> torch.Tensor:
    """(N, L, C, H, W): level l is ``image`` blurred with σ_max (1 − l/(L − 1)); level L − 1 is the image."""
    steps = [sigma_max * (1 - level / (levels - 1)) for level in range(levels)]
    return torch.stack([gaussian_blur(image, s) for s in steps], 1)


def perturb(pyramid: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Rows of the pyramid (R, L, C, H, W) read at level m·(L − 1) per pixel, linearly between levels; m (R, 1, H, W)
    in [0, 1]: 1 keeps the pixel, 0 blurs it with σ_max."""
    r, levels, c, h, w = pyramid.shape
    pos = m.clamp(0, 1) * (levels - 1)
    low = pos.detach().floor().long().clamp(max=levels - 2)
    frac = (pos - low.to(pos.dtype)).to(pyramid.dtype)
    index = low.unsqueeze(1).expand(r, 1, c, h, w)
    below = pyramid.gather(1, index).squeeze(1)
    above = pyramid.gather(1, index + 1).squeeze(1)
    return below + frac * (above - below)
