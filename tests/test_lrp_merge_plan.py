"""The merge plan (tribute.lrp.merge_plan), in both forms of LRP, and the weight cache's all-at-once sampling.

An explainer's first pass learns which linear layers batch norm merges into; its next passes compute those layers
with the merged weights and skip the batch-norm op.  Every later pass must give what a pass without the plan gives
(the relevance form, or an explainer that keeps nothing), also when the model runs differently from the pass the
plan came from, when its batch norm changes, and when forward hooks watch it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import residual_cnns
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import tribute
from tribute.lrp import Composite, Epsilon
from tribute.lrp.weight_cache import WeightCache


class RelevanceForm(Composite):
    """The same rules; being a subclass it is computed in the relevance form."""


def relevance_form(net, x, target, eps=1e-6):
    comp = RelevanceForm(conv=Epsilon(eps), dense=Epsilon(eps), name="epsilon")
    return tribute.explain(net, x, "lrp", target=target, composite=comp)


# ε in the gradient form, ε in the relevance form, and the relevance form's other rules
COMPOSITES = {
    "epsilon": {"composite": "epsilon"},
    "epsilon_relevance_form": {"composite": RelevanceForm(conv=Epsilon(1e-6), dense=Epsilon(1e-6))},
    "zplus": {"composite": "zplus"},
    "gamma": {"composite": "gamma"},
    "alpha_beta": {"composite": "alpha_beta"},
}


def without_plan(net, x, target, config):
    """The relevance from an explainer that keeps nothing (so plans nothing)."""
    return tribute.LRP(net, cache_weights=False, **COMPOSITES[config])(x, target=target)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13 * b.abs().max().item())


class BatchNormKernels(TorchDispatchMode):
    """Counts the batch-norm kernels that run."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += "batch_norm" in func.__name__
        return func(*args, **(kwargs or {}))


def batch_norm_kernels(explainer, x, target) -> tuple[int, torch.Tensor]:
    with BatchNormKernels() as mode:
        a = explainer(x, target=target)
    return mode.count, a


def images(n=3, seed=1):
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", COMPOSITES)
@pytest.mark.parametrize("style", ["modules", "inplace_reused", "functional", "method"])
def test_the_second_call_skips_batch_norm_and_gives_the_same_relevance(style, config):
    net, x, t = residual_cnns()[style], images(), torch.tensor([0, 2, 4])
    n_norms = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    ex = tribute.LRP(net, **COMPOSITES[config])
    first_kernels, first = batch_norm_kernels(ex, x, t)
    assert len(ex._plan.merges) == n_norms > 0
    second_kernels, second = batch_norm_kernels(ex, x, t)
    assert second_kernels == 0  # every batch norm merged into its layer's weights
    reference = without_plan(net, x, t, config)
    close(first, reference)
    close(second, reference)
    if config == "epsilon":
        assert first_kernels >= n_norms
        close(second, relevance_form(net, x, t))


def test_cache_weights_false_uses_no_plan():
    net, x = residual_cnns()["modules"], images()
    ex = tribute.LRP(net, composite="epsilon", cache_weights=False)
    ex(x, target=1)
    kernels, _ = batch_norm_kernels(ex, x, 1)
    assert kernels > 0 and not ex.weights._entries


class Switching(nn.Module):
    """conv → (×2 first, on ``scaled``) → one of two batch norms → ReLU → dense."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 64, 5)
        self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        for bn in (self.bn_a, self.bn_b):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
        self.scaled, self.use_b = False, False

    def forward(self, x):
        z = self.conv(x)
        if self.scaled:
            z = z * 2.0  # the layer's output is read before batch norm
        z = (self.bn_b if self.use_b else self.bn_a)(z)
        return self.fc(torch.relu(z).flatten(1))


@pytest.mark.parametrize("config", COMPOSITES)
@pytest.mark.parametrize("change", ["read_before_the_norm", "another_norm"])
def test_a_model_that_runs_differently_is_replanned(change, config):
    torch.manual_seed(0)
    net, x = Switching().double().eval(), images(2)
    ex = tribute.LRP(net, **COMPOSITES[config])
    ex(x, target=3)
    assert list(ex._plan.merges) == [0]
    if change == "read_before_the_norm":
        net.scaled = True
    else:
        net.use_b = True
    after = ex(x, target=3)
    close(after, without_plan(net, x, 3, config))
    assert list(ex._plan.merges) == ([] if change == "read_before_the_norm" else [0])
    close(ex(x, target=3), without_plan(net, x, 3, config))  # and with the new plan


@pytest.mark.parametrize("config", COMPOSITES)
@pytest.mark.parametrize("change", ["running_var_through_data", "affine_in_place", "replaced_norm_weight"])
def test_merged_weights_follow_changes_of_the_batch_norm(change, config):
    torch.manual_seed(0)
    net, x = Switching().double().eval(), images(2)
    ex = tribute.LRP(net, **COMPOSITES[config])
    before = ex(x, target=3)
    ex(x, target=3)  # the plan and merged weights are in use now
    if change == "running_var_through_data":
        net.bn_a.running_var.data.mul_(3.0)  # no version change
    elif change == "affine_in_place":
        with torch.no_grad():
            net.bn_a.bias.add_(0.7)
    else:
        net.bn_a.weight = nn.Parameter(net.bn_a.weight.detach() * -1.0)
    after = ex(x, target=3)
    close(after, without_plan(net, x, 3, config))
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("config", ["epsilon", "gamma"])
def test_forward_hooks_see_the_model_s_own_values(config):
    """A hook on the layer would see batch norm's values under a plan: models with hooks run without one."""
    net, x = residual_cnns()["modules"], images()
    seen = []
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, i, out: seen.append(out.detach().clone()))
    try:
        ex = tribute.LRP(net, **COMPOSITES[config])
        ex(x, target=1)
        kernels, a = batch_norm_kernels(ex, x, 1)
        assert kernels > 0 or config != "epsilon"  # (the relevance form runs batch norm as its own affine map)
        with torch.no_grad():
            plain = conv(x)
        assert torch.equal(seen[-1], plain)
        close(a, without_plan(net, x, 1, config))
    finally:
        handle.remove()


def test_weight_cache_compares_all_samples_at_once_and_each_entry_after_a_change():
    a, b = torch.randn(10_000, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    c = torch.randn(12, dtype=torch.float32)
    cache = WeightCache()
    ea, ec = cache.entry((a, b)), cache.entry((c,))
    cache.get(ea, "x", lambda: (a.sum(),))
    cache.get(ec, "x", lambda: (c.sum(),))
    assert cache.for_pass().sampled_now == {ea, ec}  # both dtypes compared, nothing changed
    c.data[3] += 1.0  # a write no version counter sees, in the float32 group
    view = cache.for_pass()
    assert view.sampled_now == frozenset()
    assert view.entry((a, b)) is ea  # still valid, checked on its own
    assert view.entry((c,)) is not ec  # derived afresh
    assert cache.misses == 2 and cache.get(view.entry((a, b)), "x", lambda: (None,))[0] == a.sum()
