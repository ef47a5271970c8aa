"""The game of each sample, v_i(z) = S_c(x_i with the groups outside z replaced by the baseline), and the driver
that draws coalitions for it, scores them through the model in chunks and hands them to an estimator.

The players of sample i are its groups (:mod:`.groups`); a Shapley method may leave out the groups that equal the
baseline (null players: removing them changes nothing, so their Shapley value is exactly 0 and the others' values
are those of the game without them).  Samples with the same number of players are estimated together; every
random draw of a sample comes from its own generator (:class:`tribute.core.randomness.SampleStreams`), so a
sample gets the same coalitions alone or in any batch, at any position, with any chunk size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...core.engine import Forward
from ...core.targets import Target
from .groups import FeatureGroups
from .precision import sample_until_precise
from .scoring import clean_scores, perturbed_scores

#: the most players a regression method takes: it solves an M × M system per sample
MAX_REGRESSION_PLAYERS = 2048


@dataclass
class CoalitionGame:
    """The games of the samples of ``x``; ``players[i]`` lists the group indices that are sample i's players."""

    x: torch.Tensor
    baseline: torch.Tensor
    groups: FeatureGroups
    forward: Forward
    target: Target
    batch_size: int
    progress: bool | str
    drop_null: bool
    players: list[torch.Tensor] = field(init=False)
    v1: torch.Tensor = field(init=False)
    v0: torch.Tensor = field(init=False)

    def __post_init__(self):
        keep = self.groups.present()
        if self.drop_null:
            keep = keep & ~self.groups.unchanged(self.x, self.baseline)
        keep = keep.cpu()
        self.players = [keep[i].nonzero().flatten() for i in range(self.x.shape[0])]
        self.v1 = clean_scores(self.forward, self.target, self.x, self.batch_size).to(torch.float64)
        n = self.x.shape[0]
        self.v0 = self.values(torch.arange(n), torch.zeros(n, 1, 0, dtype=torch.bool), players=False)[:, 0]

    def by_count(self) -> dict[int, torch.Tensor]:
        """The samples (CPU indices) of each number of players."""
        counts = torch.tensor([len(p) for p in self.players])
        return {int(c): (counts == c).nonzero().flatten() for c in counts.unique()}

    def values(self, samples: torch.Tensor, z: torch.Tensor, *, players: bool = True) -> torch.Tensor:
        """v(z) (n, k) float64 for coalitions ``z`` (n, k, P) of the players of ``samples`` (all with P players);
        ``players=False``: ``z`` (n, k, 0) and every group removed (v(0))."""
        n, k = z.shape[:2]
        keep = torch.zeros(n, k, self.groups.size, dtype=torch.bool)
        if players:
            keep[:] = True  # groups that are not players equal the baseline: kept or removed, the row is the same
            idx = torch.stack([self.players[i] for i in samples.tolist()])
            keep.scatter_(2, idx[:, None, :].expand(n, k, idx.shape[1]), z.cpu())

        def make_rows(sample, draw):
            return self.groups.rows(self.x, self.baseline, keep[sample, draw], samples[sample])

        scores = perturbed_scores(self.forward.for_samples(samples), self.target.for_samples(samples), n, k,
                                  make_rows, batch_size=self.batch_size, progress=self.progress)
        return scores.to(torch.float64)

    def whole_game(self, samples: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Samples with at most one player: that player's Shapley value is v(1) − v(0), exactly (se 0)."""
        gap = (self.v1 - self.v0).cpu()
        return {i: (gap[i].repeat(len(self.players[i])), torch.zeros(len(self.players[i]), dtype=torch.float64))
                for i in samples.tolist()}

    def spread(self, per_player: dict[int, torch.Tensor]) -> torch.Tensor:
        """Per-sample player values ({sample: (P,)}) as (N, M) group values, 0 for groups that are no players."""
        out = torch.zeros(self.x.shape[0], self.groups.size, dtype=torch.float64, device=self.v1.device)
        for i, values in per_player.items():
            out[i, self.players[i].to(out.device)] = values.to(out.device)
        return out


@dataclass(frozen=True)
class Design:
    """How an estimator samples: ``draw(P, k, generator, first)`` gives k draws (k, ·) for one sample (``first``:
    its first round), ``coalitions(draws)`` turns (B, k, ·) draws into the (B, R, P) coalitions to score, and
    ``estimate(draws, values, v0, v1)`` gives (φ, se), each (B, P)."""

    draw: Callable[[int, int, torch.Generator, bool], torch.Tensor]
    coalitions: Callable[[torch.Tensor], torch.Tensor]
    estimate: Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Sampling:
    """How many draws: ``start`` first, then ``step`` more per round until every standard error is ≤ ``tolerance``
    (None: one round of ``start``), at most ``max_samples`` per sample."""

    start: int
    step: int
    tolerance: float | None
    max_samples: int
    method: str


def play(game: CoalitionGame, samples: torch.Tensor, design: Design, sampling: Sampling,
         generators: list[torch.Generator]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Draw, score and estimate for ``samples`` (CPU indices, all with the same number of players P ≥ 1):
    {sample: (φ (P,), se (P,))}."""
    p = len(game.players[int(samples[0])])
    if p == 0:
        return game.whole_game(samples)
    draws: list[list[torch.Tensor]] = [[] for _ in samples]
    scores: list[list[torch.Tensor]] = [[] for _ in samples]

    def draw(active: torch.Tensor, k: int) -> None:
        d = torch.stack([design.draw(p, k, generators[int(samples[j])], not draws[j]) for j in active.tolist()])
        v = game.values(samples[active], design.coalitions(d))
        for row, j in enumerate(active.tolist()):
            draws[j].append(d[row])
            scores[j].append(v[row])

    def estimate(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = torch.stack([torch.cat(draws[j]) for j in active.tolist()])
        v = torch.stack([torch.cat(scores[j]) for j in active.tolist()])
        idx = samples[active].to(game.v1.device)
        return design.estimate(d.to(v.device), v, game.v0[idx], game.v1[idx])

    if sampling.tolerance is None:
        draw(torch.arange(len(samples)), sampling.start)
    else:
        sample_until_precise(len(samples), draw, lambda a: estimate(a)[1], start=sampling.start, step=sampling.step,
                             tolerance=sampling.tolerance, max_samples=sampling.max_samples, method=sampling.method)
    out = {}
    taken = torch.tensor([sum(len(t) for t in d) for d in draws])
    for count in taken.unique().tolist():  # samples that stopped after the same number of draws, together
        same = (taken == count).nonzero().flatten()
        phi, se = estimate(same)
        out.update({int(samples[j]): (phi[r], se[r]) for r, j in enumerate(same.tolist())})
    return out
