"""``"random"``, the registered random attribution: i.i.d. U[0, 1) per feature, seeded per sample, the same draw as
the random row that evaluate and ROAR computed before it was registered (one implementation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tribute
from tribute.metrics.methods import random_attribution, resolve_method


def model_and_inputs(n: int = 6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()
    return model, torch.rand(n, 3, 5, 5, generator=torch.Generator().manual_seed(1))


def test_random_is_listed_and_explained_by_name():
    assert "random" in tribute.methods()
    model, x = model_and_inputs()
    a = tribute.explain(model, x, "random", seed=0)
    assert a.shape == x.shape and a.dtype == x.dtype
    # the very draw of the callable that ROAR's and evaluate's random row always used
    assert torch.equal(a, random_attribution(model, x, None, seed=0))


def test_seeded_per_sample_reproducible_and_independent_of_the_batch_and_the_target():
    model, x = model_and_inputs()
    a = tribute.explain(model, x, "random", seed=3)
    assert torch.equal(a, tribute.explain(model, x, "random", seed=3))
    assert not torch.equal(a, tribute.explain(model, x, "random", seed=4))
    assert torch.equal(a[2:3], tribute.explain(model, x[2:3], "random", seed=3))  # alone as in the batch
    assert torch.equal(a[[4, 1]], tribute.explain(model, x[[4, 1]], "random", seed=3))
    assert torch.equal(a, tribute.explain(model, x, "random", target=2, seed=3))  # the target is not read
    unseeded = [tribute.explain(model, x, "random") for _ in range(2)]
    assert not torch.equal(*unseeded)  # seed=None: fresh draws, as every stochastic method


def test_the_values_are_uniform_on_the_unit_interval():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4000, 2)).eval()
    x = torch.rand(5, 4000, generator=torch.Generator().manual_seed(2))
    a = tribute.explain(model, x, "random", seed=0).flatten().double()
    assert 0 <= a.min() and a.max() < 1
    # U[0, 1): mean 1/2, variance 1/12; the largest gap between the empirical and the uniform CDF is small
    # (Kolmogorov–Smirnov: 1.63/sqrt(n) is the 1 % critical value)
    n = a.numel()
    assert abs(a.mean() - 0.5) < 4 * (1 / 12) ** 0.5 / n ** 0.5
    assert abs(a.var() - 1 / 12) < 0.01
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (ecdf - a.sort().values).abs().max() < 1.63 / n ** 0.5
    # features of one sample are not correlated with each other (neighbours' correlation near 0)
    rows = a.view(5, 4000)
    assert abs(torch.corrcoef(torch.stack([rows[:, :-1].flatten(), rows[:, 1:].flatten()]))[0, 1]) < 0.05


def test_evaluate_and_roar_rank_by_the_same_random_row_as_before():
    model, x = model_and_inputs(8)
    assert resolve_method("random").klass is tribute.get_method("random")
    table = tribute.evaluate(model, x, ["random", ("callable", random_attribution)], ["aopc_morf", "aopc_lerf"],
                             progress=False, seed=5)
    for metric in ("aopc_morf", "aopc_lerf"):
        assert torch.equal(torch.as_tensor(table.scores["random", metric]),
                           torch.as_tensor(table.scores["callable", metric])), metric


def test_options_it_cannot_honour_are_refused():
    model, x = model_and_inputs()
    with pytest.raises(TypeError, match="differentiable= is not accepted here"):
        tribute.explain(model, x, "random", seed=0, differentiable=True)
    with pytest.raises(TypeError, match="must be floating point"):
        tribute.explain(model, torch.zeros(2, 3, 5, 5, dtype=torch.long), "random", seed=0)
