"""kernel_shap on small models: exact where it enumerates (against the Shapley values by brute force and Captum's
ShapleyValues), w ⊙ (x − baseline) per group on a linear model, Captum's KernelShap fed the same coalitions,
samples independent of the batch, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tribute
from tribute.attribution.perturbation.coalitions import all_coalitions, paired_kernel_coalitions
from tribute.attribution.perturbation.shapley_estimators import exact_shapley
from tribute.core.randomness import SampleStreams

DT = torch.float64


class SmallCNN(nn.Module):
    """A conv-ReLU-conv net with a product of two channels: interactions of every order between the pixels."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 16, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = self.conv2(h)
        h = torch.cat([h[:, :1] * h[:, 1:], h[:, 1:]], 1)
        return self.fc(h.flatten(1))


class PlantedSquare(nn.Module):
    """Responds only to the square [1:3, 1:3] of a (1, 4, 4) image: its score is a nonlinear function of it."""

    def forward(self, x):
        s = x[:, 0, 1:3, 1:3].flatten(1)
        score = torch.tanh(s.sum(1)) + s.prod(1)
        return torch.stack([score, -score], 1)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN().to(DT).eval()


def linear_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).to(DT).eval()


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=DT)


#: eight groups of two pixels (the 4 × 4 image's rows, each split in halves)
MASK = (torch.arange(16) // 2).view(1, 1, 4, 4)
#: the quarters of the image: four groups of 2 × 2 pixels, the planted square spread over all four
QUARTERS = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]).view(1, 1, 4, 4)


def brute_force_shapley(model, x, baseline, mask, target: int) -> torch.Tensor:
    """Shapley values (N, M) of the groups of ``mask``, from the model's scores on all 2^M coalitions."""
    labels = mask.expand_as(x).reshape(x.shape[0], -1)
    m = int(labels.max()) + 1
    z = all_coalitions(m)
    with torch.no_grad():
        values = []
        for i in range(x.shape[0]):
            kept = z[:, labels[i]]
            rows = torch.where(kept, x[i].reshape(-1), baseline.expand_as(x)[i].reshape(-1)).view(-1, *x.shape[1:])
            values.append(model(rows)[:, target])
    return exact_shapley(torch.stack(values))


def spread(phi: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return phi.gather(1, mask.expand_as(like).reshape(like.shape[0], -1)).view(like.shape)


def test_exact_regime_equals_the_shapley_values_by_enumeration():
    net, x = small_cnn(), images()
    base = torch.full_like(x, 0.25)
    e = tribute.KernelShap(net, feature_mask=MASK, baseline=0.25)
    a = e.attribute(x, target=2)  # 2^8 − 2 = 254 ≤ 2048 samples: enumerated
    want = spread(brute_force_shapley(net, x, base, MASK, 2), MASK, x)
    assert float((a - want).abs().max()) < 1e-10
    assert float(e.standard_error.abs().max()) == 0.0
    assert e.passes.forward_rows == 3 * (254 + 2)  # every interior coalition, the instance and the baseline
    gap = net(x)[:, 2] - net(base)[:, 2]
    torch.testing.assert_close(a.sum((1, 2, 3)) / 2, gap.detach(), rtol=0, atol=1e-10)  # each group has two pixels


def test_exact_regime_equals_captum_shapley_values():
    captum = pytest.importorskip("captum.attr")
    net, x = small_cnn(1), images(2, seed=3)
    ours = tribute.KernelShap(net, feature_mask=QUARTERS, exact=True).attribute(x, target=0)
    theirs = captum.ShapleyValues(net).attribute(x, target=0, feature_mask=QUARTERS)
    # Captum 0.9 returns its sums in float32 here: agreement to its rounding
    assert float((ours - theirs.double()).abs().max()) < 1e-6 * float(ours.abs().max())


def test_linear_model_gives_w_times_x_minus_baseline_per_group_when_sampled():
    net, x = linear_net(), images()
    base = torch.full_like(x, 0.375)  # a number the float32 baseline option holds exactly
    e = tribute.KernelShap(net, feature_mask=MASK, baseline=0.375, exact=False, samples=64, seed=0)
    a = e.attribute(x, target=1)
    per_pixel = (net[1].weight[1].view(1, 1, 4, 4) * (x - base)).detach()
    per_group = torch.zeros(3, 8, dtype=DT).index_add_(1, MASK.flatten(), per_pixel.flatten(1))
    assert float((a - spread(per_group, MASK, x)).abs().max()) < 1e-12
    assert float(e.standard_error.max()) < 1e-12


def test_planted_square_puts_everything_on_the_square_exactly():
    x = images(2, seed=5)
    mask = torch.arange(16).view(1, 1, 4, 4)  # each pixel alone: 16 players, sampled
    e = tribute.KernelShap(PlantedSquare(), feature_mask=mask, samples=512, seed=0)
    a = e.attribute(x, target=0)
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 1:3] = True
    gap = PlantedSquare()(x)[:, 0] - PlantedSquare()(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(a.sum((1, 2, 3)), gap, rtol=0, atol=1e-10)  # efficiency, for any sample
    # outside the square the players are null: their estimates are 0 up to the sampling error
    assert float(a[..., ~inside].abs().max()) <= 5 * float(e.standard_error[..., ~inside].max()) + 1e-12
    exact = tribute.KernelShap(PlantedSquare(), feature_mask=QUARTERS, seed=0).attribute(x, target=0)
    want = spread(brute_force_shapley(PlantedSquare(), x, torch.zeros_like(x), QUARTERS, 0), QUARTERS, x)
    assert float((exact - want).abs().max()) < 1e-10


def _captum_same_coalitions(net, x, mask, samples, seed, target):
    """Captum's KernelShap (its Shapley kernel similarity, linear regression) fed tribute's coalitions."""
    captum = pytest.importorskip("captum.attr")
    from captum._utils.models.linear_model import SkLearnLinearRegression

    m = int(mask.max()) + 1
    out = []
    for i in range(x.shape[0]):
        z = paired_kernel_coalitions(m, samples // 2, SampleStreams(x, seed).generators[i])
        rows = [torch.ones(1, m), torch.zeros(1, m)] + [r[None].to(torch.get_default_dtype()) for r in z]

        def perturb(*_, rows=rows, **__):
            yield from rows

        ks = captum.KernelShap(net)
        lime = captum.LimeBase(net, SkLearnLinearRegression(), ks.kernel_shap_similarity_kernel, perturb, True,
                               lambda z, original, **kw: torch.where(z.view(-1)[mask.flatten()].bool().view(
                                   original.shape), original, torch.zeros_like(original)), None)
        coef = lime.attribute(x[i:i + 1], target=target, n_samples=len(rows), num_interp_features=m)
        out.append(coef.flatten().double())
    return torch.stack(out)


def test_sampled_regime_equals_captum_fed_the_same_coalitions():
    pytest.importorskip("sklearn")
    net, x = small_cnn(2), images(2, seed=7)
    mask = torch.arange(16).view(1, 1, 4, 4) // 1  # 16 players: 2^16 − 2 coalitions, sampled
    e = tribute.KernelShap(net, feature_mask=mask, samples=200, seed=3)
    a = e.attribute(x, target=1)
    theirs = _captum_same_coalitions(net, x, mask, 200, 3, 1)
    ours = a.flatten(1)
    # Captum approximates the constraint with weight 10⁶ on the two ends: agreement to about 1e-6 of the scale
    scale = float(ours.abs().max())
    assert float((ours - theirs).abs().max()) < 1e-5 * scale


def test_a_sample_draws_the_same_alone_in_any_batch_and_chunking():
    net, x = small_cnn(), images(4, seed=9)
    mask = torch.arange(16).view(1, 1, 4, 4)
    batch = tribute.KernelShap(net, feature_mask=mask, samples=100, seed=4).attribute(x, target=0)
    alone = tribute.KernelShap(net, feature_mask=mask, samples=100, seed=4, batch_size=7).attribute(x[2:3], target=0)
    flipped = tribute.KernelShap(net, feature_mask=mask, samples=100, seed=4, batch_size=3).attribute(x.flip(0),
                                                                                                     target=0)
    torch.testing.assert_close(alone, batch[2:3], rtol=0, atol=1e-12)
    torch.testing.assert_close(flipped.flip(0), batch, rtol=0, atol=1e-12)
    other = tribute.KernelShap(net, feature_mask=mask, samples=100, seed=5).attribute(x, target=0)
    assert float((other - batch).abs().max()) > 1e-6  # another seed, other coalitions


def test_tolerance_samples_until_every_standard_error_is_within_it():
    net, x = small_cnn(), images(2)
    mask = torch.arange(16).view(1, 1, 4, 4)
    e = tribute.KernelShap(net, feature_mask=mask, samples=64, seed=0)
    e.attribute(x, target=0)
    first = float(e.standard_error.max())
    e.attribute(x, target=0, tolerance=first / 4)
    assert float(e.standard_error.max()) <= first / 4
    assert e.passes.forward_rows > 2 * (64 + 2)
    with pytest.raises(RuntimeError, match="did not reach tolerance"):
        e.attribute(x, target=0, tolerance=first / 100, max_samples=256)


def test_groups_at_the_baseline_are_null_players_left_out():
    net, x = small_cnn(), images(2)
    x[:, :, :2] = 0.0  # the first four groups equal the zero baseline
    e = tribute.KernelShap(net, feature_mask=MASK)
    a = e.attribute(x, target=0)
    assert bool((a[:, :, :2] == 0).all())
    assert e.passes.forward_rows == 2 * (2 ** 4 - 2 + 2)  # the game of the four other groups
    want = spread(brute_force_shapley(net, x, torch.zeros_like(x), MASK, 0), MASK, x)
    assert float((a - want).abs().max()) < 1e-10


def test_two_inputs_equal_the_second_held_as_a_forward_argument_in_the_exact_regime():
    class TwoInputs(nn.Module):
        def forward(self, img, table):
            return small_cnn()(img) * table[:, :1] + table.sum(1, keepdim=True)

    x, table = images(2), torch.rand(2, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    both = tribute.KernelShap(TwoInputs(), feature_mask=(QUARTERS, None), baseline=(0.0, table)).attribute(
        (x, table), target=1)
    held = tribute.KernelShap(TwoInputs(), feature_mask=QUARTERS).attribute(x, target=1, forward_args=(table,))
    assert float((both[0] - held).abs().max()) < 1e-12
    assert float(both[1].abs().max()) == 0.0


def test_clear_errors():
    net, x = small_cnn(), images(2)
    mask = torch.arange(16).view(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"exact=True: 16 groups have 2\^16 − 2 = 65534 coalitions"):
        tribute.KernelShap(net, feature_mask=mask, exact=True, max_samples=10_000).attribute(x, target=0)
    with pytest.raises(ValueError, match="samples must be even"):
        tribute.KernelShap(net, feature_mask=mask, samples=101).attribute(x, target=0)
    with pytest.raises(ValueError, match="raise samples"):
        tribute.KernelShap(net, feature_mask=mask, samples=8, seed=0).attribute(x, target=0)
    with pytest.raises(ValueError, match="feature_mask"):
        tribute.KernelShap(net, feature_mask=torch.zeros(1, 1, 3, 3, dtype=torch.long)).attribute(x, target=0)
    assert math.isfinite(float(tribute.KernelShap(net, feature_mask=mask, samples=64, seed=0).attribute(
        x, target=0).sum()))


class CubicModel(nn.Module):
    """f(x) = Σ a_i x_i + Σ b_ij x_i x_j + Σ c_ijk x_i x_j x_k on 8 features: interactions up to the third order,
    which antithetic and paired sampling do not cancel."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(8, generator=g, dtype=DT)
        self.b = torch.triu(torch.randn(8, 8, generator=g, dtype=DT), 1)
        i, j, k = torch.meshgrid(*(torch.arange(8),) * 3, indexing="ij")
        self.c = torch.randn(8, 8, 8, generator=g, dtype=DT) * ((i < j) & (j < k))

    def forward(self, x):
        s = x @ self.a + torch.einsum("ni,ij,nj->n", x, self.b, x) + torch.einsum("ni,ijk,nj,nk->n", x, self.c, x, x)
        return torch.stack([s, -s], 1)


def coverage_over_seeds(method: str, samples: int, seeds: int = 200) -> float:
    """The share of (feature, seed) pairs whose 95 % interval φ̂ ± 1.96 se holds the exact Shapley value."""
    model, x = CubicModel(), torch.rand(1, 8, generator=torch.Generator().manual_seed(3), dtype=DT) + 0.5
    features = torch.arange(8).view(1, 8)
    exact = brute_force_shapley(model, x, torch.zeros_like(x), features, 0)
    e = tribute.get_method(method)(model, samples=samples)
    hits = 0
    for seed in range(seeds):
        a = e.attribute(x, target=0, seed=seed)
        hits += int(((a - exact).abs() <= 1.959964 * e.standard_error).sum())
    return hits / (8 * seeds)


def test_standard_error_is_calibrated_on_a_model_with_three_way_interactions():
    cover = coverage_over_seeds("kernel_shap", 128)  # 2^8 − 2 = 254 > 128: sampled
    assert 0.90 <= cover <= 0.99, cover


def test_token_ids_are_removed_by_the_baseline_token_and_padding_is_a_null_player():
    from conftest import text_batch, text_model

    model = text_model("bert")
    ids, mask = text_batch(3, 7)  # sentences of 7, 5 and 3 tokens, right-padded with 0: 7, 5 and 3 players
    e = tribute.KernelShap(model)
    a = e(ids, target=1, baseline=0, forward_kwargs={"attention_mask": mask})
    assert a.shape == ids.shape and a.dtype == DT
    z = all_coalitions(7)
    with torch.no_grad():
        for i in range(3):
            rows = torch.where(z, ids[i], torch.zeros_like(ids[i]))
            values = model(input_ids=rows, attention_mask=mask[i].expand_as(rows)).logits[:, 1]
            want = exact_shapley(values[None])[0]
            assert float((a[i] - want).abs().max()) < 1e-10
    assert bool((a[mask == 0] == 0).all())
    assert mask.sum(1).tolist() == [7, 5, 3]
    assert e.passes.forward_rows == 3 * 2 + (2 ** 7 - 2) + (2 ** 5 - 2) + (2 ** 3 - 2)


def test_a_group_spanning_two_inputs_is_one_player():
    from conftest import two_inputs

    model, img, tab, _ = two_inputs(2)
    image_mask = torch.zeros(1, 2, 6, 6, dtype=torch.long)
    image_mask[..., 3:] = 1
    table_mask = torch.tensor([[1, 1, 2, 3]])  # the first two columns join the image's right half
    ai, at = tribute.KernelShap(model).attribute((img, tab), target=0, feature_mask=(image_mask, table_mask))
    z = all_coalitions(4)
    with torch.no_grad():
        values = []
        for i in range(2):
            keep_img = z[:, image_mask.expand(1, 2, 6, 6).flatten()].view(-1, 2, 6, 6)
            keep_tab = z[:, table_mask.flatten()]
            values.append(model(torch.where(keep_img, img[i], 0.0), torch.where(keep_tab, tab[i], 0.0))[:, 0])
        want = exact_shapley(torch.stack(values))
    torch.testing.assert_close(ai, spread(want, image_mask, img), rtol=0, atol=1e-10)
    torch.testing.assert_close(at, spread(want, table_mask, tab), rtol=0, atol=1e-10)
