"""Per-sample random streams.

Each sample gets its own ``torch.Generator``, seeded from ``seed`` and the sample's own bytes, so a
sample draws the same noise alone or in any batch, at any position, with any chunk size.  The global
RNG is never touched.  The bytes are read through a ``uint8`` view of the tensor, which works for every
dtype (bfloat16 has no numpy counterpart) and, for the dtypes numpy has, are the very bytes numpy's
``tobytes`` gives: float32 and float64 samples keep the streams they always had.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import torch

from . import options as opt


class SampleStreams:
    """One generator per sample; draws for a sample come in order however the rows are chunked."""

    def __init__(self, x: torch.Tensor, seed: int | None):
        if seed is None:  # fresh entropy, without touching torch's global generator
            seed = secrets.randbits(62)
        data = x.detach().to("cpu").contiguous()
        self.generators = []
        for i in range(x.shape[0]):
            h = hashlib.blake2b(_raw_bytes(data[i]), digest_size=8, key=str(seed).encode()[:64])
            g = torch.Generator()
            g.manual_seed(int.from_bytes(h.digest(), "little") & (2**63 - 1))
            self.generators.append(g)

    def draw(self, kind: str, sample: torch.Tensor, shape: tuple, *, dtype, device) -> torch.Tensor:
        """Draw ``len(sample)`` rows, row r from ``sample[r]``'s stream.

        ``kind`` is ``"normal"`` or ``"uniform"`` (on [0, 1)).  Rows of one sample must be requested in
        order.  Each row is drawn by its own call: torch's CPU ``randn`` takes a different path for
        short and long requests, so ``randn(10, n)`` is not ``cat(randn(3, n), randn(7, n))``; one
        call per row keeps a row's values independent of how rows are chunked and batched.
        """
        draw = {"normal": torch.randn, "uniform": torch.rand}.get(kind)
        if draw is None:
            raise ValueError(f"unknown draw kind {kind!r}")
        rows = [draw(shape, generator=self.generators[i], dtype=torch.float64) for i in sample.tolist()]
        return torch.stack(rows).to(device=device, dtype=dtype)


def _raw_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a contiguous CPU tensor in memory order, for any dtype."""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def draw_references(streams: SampleStreams, sample: torch.Tensor, n_refs: int, *, dtype, device):
    """For each row: the index of a reference drawn uniformly from ``n_refs`` and α ∼ U(0, 1).

    One draw of two uniforms per row keeps a row's (reference, α) independent of the chunking.
    """
    u = streams.draw("uniform", sample, (2,), dtype=torch.float64, device="cpu")
    j = (u[:, 0] * n_refs).long().clamp(max=n_refs - 1).to(device)
    return j, u[:, 1].to(device, dtype)


def check_noise_key(name: str, v: Any) -> Any:
    if v is None or isinstance(v, torch.Tensor) or (
            isinstance(v, (tuple, list)) and v and all(isinstance(t, torch.Tensor) for t in v)):
        return v
    raise TypeError(f"{name} must be a tensor, a tuple of tensors (one per input) or None, got {type(v).__name__}")


#: the option of a method that draws random numbers per sample: the rows that key the streams instead of the inputs
NOISE_KEY_OPTION = opt.Option(None, check_noise_key,
                              "inputs like the attributed ones (a tensor, or a tuple with one per input) whose rows "
                              "key each sample's random stream (and set its noise scale) instead of the inputs (the "
                              "robustness metrics pass the unperturbed input)")


def packed_noise_key(key, x: torch.Tensor, layout) -> torch.Tensor:
    """``noise_key`` packed like the inputs ``x`` (``layout``: :class:`tribute.core.inputs.Layout`): a tuple with
    one tensor per input, or the packed rows themselves."""
    if isinstance(key, (tuple, list)):
        if len(key) != layout.count:
            raise ValueError(f"noise_key has {len(key)} tensors but the model takes {layout.count} inputs")
        shapes = [tuple(t.shape) for t in key]
        if any(s[1:] != want or s[0] != x.shape[0] for s, want in zip(shapes, layout.shapes, strict=True)):
            want = [(x.shape[0], *s) for s in layout.shapes]
            raise ValueError(f"noise_key must have the inputs' shapes {want}, got {shapes}")
        key = layout.pack([t.detach() for t in key])
    if key.shape != x.shape:
        raise ValueError(f"noise_key must have the inputs' shape {tuple(x.shape)}, got {tuple(key.shape)}")
    return key.detach()
