"""Batches, chunks and random streams: a sample's attribution depends on nothing but the sample."""

from __future__ import annotations

import pytest
import torch
from conftest import residual_cnns
from test_model_invariance import GENERAL_METHODS, options_for

import tribute
from tribute.core.engine import chunk_rows, default_batch_size

RANDOM_BASELINES = [("integrated_gradients", {"baseline": "uniform", "seed": 3, "steps": 4}),
                    ("integrated_gradients", {"baseline": "gaussian", "seed": 3, "steps": 4}),
                    ("deeplift", {"baseline": "gaussian", "seed": 5, "baseline_options": {"sigma": 0.2}}),
                    ("smoothgrad", {"base": "integrated_gradients", "base_options": {"steps": 3}, "samples": 2,
                                    "seed": 1})]


def cases(images):
    for method in GENERAL_METHODS:
        yield method, options_for(method, images)
    yield from RANDOM_BASELINES


def test_a_batch_gives_what_its_samples_give_one_at_a_time(images):
    net = residual_cnns()["inplace_reused"]
    for method, kw in cases(images):
        batch = tribute.explain(net, images, method, target=torch.tensor([0, 1, 2, 3]), **kw)
        for i in range(4):
            alone = tribute.explain(net, images[i : i + 1], method, target=i, **kw)
            torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-10, atol=1e-13, msg=f"{method} {sorted(kw)}")


def test_order_in_the_batch_does_not_matter_for_seeded_noise(images):
    net = residual_cnns()["modules"]
    perm = torch.tensor([2, 0, 3, 1])
    for method in ("smoothgrad", "vargrad", "expected_gradients"):
        kw = options_for(method, images)
        a = tribute.explain(net, images, method, target=1, **kw)
        b = tribute.explain(net, images[perm], method, target=1, **kw)
        torch.testing.assert_close(a[perm], b, rtol=1e-10, atol=1e-13)
        other = tribute.explain(net, images, method, target=1, **{**kw, "seed": kw["seed"] + 1})
        assert (other - a).abs().max() > 1e-6, "a different seed must give different noise"


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_chunk_size_changes_nothing(batch_size, images):
    net = residual_cnns()["functional"]
    for method, kw in cases(images):
        ref = tribute.explain(net, images, method, target=2, **kw)
        got = tribute.explain(net, images, method, target=2, batch_size=batch_size, **kw)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-13, msg=f"{method} {sorted(kw)}")


def test_chunks_are_even_and_cover_all_rows():
    for total in (1, 5, 64, 65, 200, 1600):
        for size in (1, 7, 64, 256):
            chunks = chunk_rows(total, size)
            rows = [r for c in chunks for r in c]
            assert rows == list(range(total))
            assert max(len(c) for c in chunks) <= size
            assert max(len(c) for c in chunks) - min(len(c) for c in chunks) <= 1


def test_default_batch_size_bounds_memory():
    assert default_batch_size(torch.zeros(1, 3, 32, 32)) == 32
    assert default_batch_size(torch.zeros(1, 3, 224, 224)) == 6
    assert default_batch_size(torch.zeros(1, 3, 2048, 2048)) == 1


def test_pass_counts(images):
    net = residual_cnns()["modules"]
    n = images.shape[0]

    def count(method, **kw):
        m = tribute.get_method(method)(net, **kw)
        m.attribute(images, target=0)
        return m.passes.forward_rows, m.passes.backward_rows

    assert count("gradient") == (n, n)
    assert count("guided_backprop") == (n, n)
    assert count("deeplift") == (2 * n, 2 * n)  # input and reference in one 2N batch
    assert count("integrated_gradients", steps=8) == (8 * n, 8 * n)
    assert count("smoothgrad", samples=3) == (3 * n, 3 * n)
    # target=None: one clean forward pass fixes the predicted class for all steps
    m = tribute.IntegratedGradients(net, steps=8)
    m.attribute(images)
    assert (m.passes.forward_rows, m.passes.backward_rows) == (n + 8 * n, 8 * n)
    with tribute.count_passes() as outer:
        tribute.explain(net, images, "gradient", target=0)
        tribute.explain(net, images, "integrated_gradients", target=0, steps=2)
    assert (outer.forward_rows, outer.backward_rows) == (n + 2 * n, n + 2 * n)


def test_progress_bar_when_asked(images, capsys):
    net = residual_cnns()["modules"]
    tribute.explain(net, images, "integrated_gradients", target=0, steps=8, batch_size=4, progress="IG")
    assert "IG" in capsys.readouterr().err
    tribute.explain(net, images, "integrated_gradients", target=0, steps=8, batch_size=4)
    assert capsys.readouterr().err == ""
