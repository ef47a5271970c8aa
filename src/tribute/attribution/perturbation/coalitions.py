"""Coalitions of M players (groups of features) for the sampled Shapley and LIME estimators.

A coalition is a row z ∈ {0, 1}^M (a bool tensor): z_i = 1 keeps player i, 0 removes it.  Every random draw
goes through the ``torch.Generator`` the caller gives (a sample's own stream, :mod:`tribute.core.randomness`),
on the CPU, so a sample's coalitions do not depend on the device, the batch or the chunking; the global RNG
is never touched.  Rows are built on the CPU and moved to ``device``.
"""

from __future__ import annotations

import torch

#: the most players whose 2^M coalitions :func:`all_coalitions` lists (2^20 rows of 20 bools: 20 MB)
MAX_ENUMERATED_PLAYERS = 20


def check_players(m: int) -> int:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"the number of players (groups) must be an integer >= 1, got {m!r}")
    return m


def all_coalitions(m: int, device=None) -> torch.Tensor:
    """All 2^M coalitions as a (2^M, M) bool tensor; row k is the binary expansion of k (bit i is player i)."""
    check_players(m)
    if m > MAX_ENUMERATED_PLAYERS:
        raise ValueError(f"{m} players have 2^{m} coalitions, too many to enumerate "
                         f"(at most {MAX_ENUMERATED_PLAYERS} players); sample them instead")
    k = torch.arange(2 ** m, device=device)
    return (k[:, None] >> torch.arange(m, device=device)) & 1 == 1


def shapley_kernel_weights(z: torch.Tensor) -> torch.Tensor:
    """The Shapley kernel π(z) = (M − 1) / (C(M, |z|) |z| (M − |z|)) of Lundberg & Lee (2017, Theorem 2), float64.

    Infinite for the empty and the full coalition, which the constrained regression fixes exactly instead.
    """
    m = z.shape[-1]
    s = z.sum(-1).to(torch.float64)
    log_binom = torch.lgamma(torch.tensor(m + 1.0, dtype=torch.float64)) - torch.lgamma(s + 1) - torch.lgamma(m - s + 1)
    return (m - 1) / (torch.exp(log_binom) * s * (m - s))


def kernel_size_probabilities(m: int) -> torch.Tensor:
    """P(|z| = s) for s = 1 … M − 1 when z is drawn with probability ∝ the Shapley kernel (float64, length M − 1).

    Summing π(z) over the C(M, s) coalitions of size s gives (M − 1) / (s (M − s)): sizes near 1 and M − 1 dominate.
    """
    if check_players(m) < 2:
        raise ValueError("the Shapley kernel needs at least 2 players")
    s = torch.arange(1, m, dtype=torch.float64)
    p = 1 / (s * (m - s))
    return p / p.sum()


def _subsets_of_size(sizes: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """For each size s: a subset of s players drawn uniformly (the s smallest of M uniform keys)."""
    keys = torch.rand(len(sizes), m, generator=generator, dtype=torch.float64)
    rank = keys.argsort(dim=1).argsort(dim=1)
    return rank < sizes[:, None]


def paired_kernel_coalitions(m: int, pairs: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """2·``pairs`` coalitions drawn from the Shapley kernel with the paired-sample trick (Covert & Lee 2021).

    Row 2k is drawn with probability ∝ π(z) (a size from :func:`kernel_size_probabilities`, then a uniform
    subset of that size); row 2k + 1 is its complement 1 − z, which has the same kernel weight.  A pair is one
    draw of the estimator's CLT: its two terms are strongly negatively correlated, which is what makes the
    trick reduce the variance.
    """
    p = kernel_size_probabilities(m)
    sizes = torch.multinomial(p, pairs, replacement=True, generator=generator) + 1
    z = _subsets_of_size(sizes, m, generator)
    return torch.stack([z, ~z], 1).reshape(2 * pairs, m).to(device)


def lime_coalitions(m: int, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """``n`` coalitions as LIME's image explainer draws them (Ribeiro et al. 2016; lime_image): row 0 keeps
    every player (the instance itself), each other row keeps each player independently with probability 1/2."""
    check_players(m)
    if n < 1:
        raise ValueError(f"LIME needs at least 1 sample, got {n}")
    z = torch.rand(n, m, generator=generator, dtype=torch.float64) < 0.5
    z[0] = True
    return z.to(device)


def more_lime_coalitions(m: int, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """``n`` further coalitions from the same stream, without the all-ones row (for a refinement round)."""
    return (torch.rand(n, m, generator=generator, dtype=torch.float64) < 0.5).to(device)


def antithetic_permutations(m: int, pairs: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """2·``pairs`` orderings of the players, (2·pairs, M) long: row 2k is uniform, row 2k + 1 its reverse
    (antithetic sampling, Mitchell et al. 2022).  Along a reversed ordering the prefixes are the complements of
    the original's, which cancels the odd-order terms of the marginal contributions' error."""
    check_players(m)
    perm = torch.rand(pairs, m, generator=generator, dtype=torch.float64).argsort(dim=1)
    return torch.stack([perm, perm.flip(1)], 1).reshape(2 * pairs, m).to(device)


def prefix_coalitions(perms: torch.Tensor) -> torch.Tensor:
    """The interior prefixes of each ordering: (P, M − 1, M) bool, [p, k] holds the first k + 1 players of
    ordering p.  The empty and the full coalition are the same for every ordering and are left out."""
    p, m = perms.shape
    rank = torch.empty_like(perms)
    rank.scatter_(1, perms, torch.arange(m, device=perms.device).expand(p, m))
    return rank[:, None, :] <= torch.arange(m - 1, device=perms.device)[None, :, None]

