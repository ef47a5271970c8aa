"""A layer's output overwritten by an in-place ReLU that is its only reader is kept as ReLU(z), not copied first.

Rules that say so (``LinearRule.positive_z_suffices``) read ReLU(z) where no relevance reaches z ≤ 0; anywhere
else the layer recomputes z.  Every case must equal the same network written with out-of-place ReLUs, and the
in-place network must make no more copies than that one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import tribute
from tribute.lrp import Composite, Epsilon, LinearRule

DT = torch.float64


class Plain(nn.Module):
    """conv → ReLU → conv → ReLU → (sigmoid, if asked) → dense; no batch norm, so the ReLUs overwrite the convs'
    own outputs when ``inplace``."""

    def __init__(self, inplace: bool, squash: bool = False, zero_after: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 36, 4)
        self.inplace, self.squash, self.zero_after = inplace, squash, zero_after

    def forward(self, x):
        z = self.c1(x)
        if self.zero_after:  # a ReLU reads z, then another op writes z in place
            h = F.relu(z)
            z.zero_()
        else:
            h = F.relu(z, inplace=self.inplace)
        h = F.relu(self.c2(h), inplace=self.inplace)
        if self.squash:  # a rule downstream that is not proportional to its input: relevance may reach z ≤ 0
            h = torch.sigmoid(h)
        return self.fc(h.flatten(1))


class Counts(TorchDispatchMode):
    """Copies and convolutions (forward or transposed) run."""

    def __init__(self):
        super().__init__()
        self.copies = self.convolutions = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.copies += func.__name__.startswith(("clone", "copy"))
        self.convolutions += func.__name__.startswith("convolution")
        return func(*args, **(kwargs or {}))


def counts_and_relevance(net, x, **kw):
    with Counts() as mode:
        a = tribute.LRP(net, cache_weights=False, **kw)(x, target=2)
    return (mode.copies, mode.convolutions), a


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13 * b.abs().max().item())


class RelevanceForm(Composite):
    """ε everywhere, computed in the relevance form (a subclass: not the gradient form)."""


class ZNeeded(Epsilon):
    """The ε rule, not declaring that ReLU(z) suffices: the layer must recompute z."""

    positive_z_suffices = False


COMPOSITES = {
    "zplus": {"composite": "zplus"},
    "gamma": {"composite": "gamma"},
    "alpha_beta": {"composite": "alpha_beta"},
    "epsilon_relevance_form": {"composite": RelevanceForm(conv=Epsilon(0.01), dense=Epsilon(0.01))},
    "rule_needing_z": {"composite": RelevanceForm(conv=ZNeeded(0.01), dense=Epsilon(0.01))},
}


@pytest.mark.parametrize("squash", [False, True], ids=["relu_only", "sigmoid_downstream"])
@pytest.mark.parametrize("config", COMPOSITES)
def test_in_place_relus_give_the_same_relevance_without_copies(config, squash):
    x = torch.randn(2, 3, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(1))
    (copies, convs), got = counts_and_relevance(Plain(True, squash).to(DT).eval(), x, **COMPOSITES[config])
    (copies_out, convs_out), expected = counts_and_relevance(Plain(False, squash).to(DT).eval(), x,
                                                             **COMPOSITES[config])
    close(got, expected)
    assert got.abs().sum() > 0
    assert copies <= copies_out
    # z recomputed (one more convolution per layer) only where the rule reads z and relevance may reach z ≤ 0
    recomputed = 0 if (config != "rule_needing_z" and not squash) else 2  # both convolutions' outputs
    assert convs == convs_out + recomputed


def test_a_layer_output_written_by_another_op_after_its_relu_is_recomputed():
    x = torch.randn(2, 3, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(2))
    got = tribute.LRP(Plain(False, zero_after=True).to(DT).eval(), composite="alpha_beta")(x, target=1)
    close(got, tribute.LRP(Plain(False).to(DT).eval(), composite="alpha_beta")(x, target=1))


def test_positive_z_suffices_is_declared_by_the_built_in_rules_only():
    from tribute import lrp as P

    built_in = [P.Epsilon, P.AlphaBeta, P.ZPlus, P.Gamma, P.Box, P.Flat, P.WSquare]
    assert all(r.positive_z_suffices for r in built_in)
    assert LinearRule.positive_z_suffices is False
