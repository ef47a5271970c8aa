"""What LIME, KernelSHAP and Shapley sampling share: a coalition game per sample over its groups, played by
sample count of players, the per-group results given to every feature of the group, with their standard errors.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import torch

from ...core import options as opt
from ...core.targets import Target
from .base import GroupPerturbation, Sampled
from .coalition_game import CoalitionGame
from .groups import FeatureGroups

#: the options every coalition method takes besides its own ``samples`` and ``max_samples``
TOLERANCE = opt.Option(None, opt.optional(opt.real(0, low_open=True)),
                       "sample until every standard error is at most this (score units)")


class CoalitionMethod(Sampled, GroupPerturbation):
    """A group method whose attribution is a coalition game's estimate: subclasses say how a set of samples with
    ``p`` players each is played (:meth:`_play`)."""

    default_segments = "auto"
    #: whether groups equal to the baseline are null players, dropped with the value exactly 0 (Shapley values);
    #: a surrogate (LIME) keeps them
    drop_null: ClassVar[bool] = True

    def _check(self, o: SimpleNamespace, groups: FeatureGroups) -> None:
        """Refuse options that cannot work together, before any pass (the groups are known)."""

    def _play(self, game: CoalitionGame, p: int, samples: torch.Tensor, generators: list,
              o: SimpleNamespace) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
        """Sample index → (per-player estimate, its standard error or None) for ``samples``, each with ``p``
        players."""
        raise NotImplementedError

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        groups = self._groups(x, o)
        self._check(o, groups)
        game = CoalitionGame(x, self._baseline(x, o), groups, o.call.forward, target, o.batch_size, o.progress,
                             drop_null=self.drop_null)
        generators = self._streams(x, o).generators
        found = {}
        for p, samples in game.by_count().items():
            found.update(self._play(game, p, samples, generators, o))
        phi = game.spread({i: f[0] for i, f in found.items()})
        like = x if x.is_floating_point() else phi.new_empty(x.shape)
        errors = {i: f[1] for i, f in found.items()}
        se = None if any(e is None for e in errors.values()) else groups.spread(game.spread(errors), x).to(like.dtype)
        self._report(o, "standard_error", se)
        return groups.spread(phi, x).to(like.dtype)
