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

import torch


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
