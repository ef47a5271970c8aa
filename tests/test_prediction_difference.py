"""Prediction difference analysis (Robnik-Šikonja & Kononenko 2008; Zintgraf et al. 2017): weights of evidence worked
by hand, the Laplace correction, equality with a brute-force loop over windows, batch independence, several
inputs, token ids and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import assert_same_alone_and_in_any_batch
from torch import nn

import tribute
from tribute.attribution.perturbation.prediction_difference import SlidingWindows
from tribute.core.randomness import SampleStreams

DT = torch.float64


class Known(nn.Module):
    """Outputs probabilities (x₀, 1 − x₀): class 0's probability is feature 0, feature 1 is ignored."""

    def forward(self, x):
        return torch.stack([x[:, 0], 1 - x[:, 0]], 1)


class Logits(nn.Module):
    """Logits (a·x₀, 0): p(class 0) = σ(a·x₀), feature 1 ignored."""

    def forward(self, x):
        return torch.stack([3 * x[:, 0], torch.zeros_like(x[:, 0])], 1)


def log2_odds(p: float) -> float:
    return math.log2(p / (1 - p))


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).to(DT).eval()


def rand(*shape, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


X = torch.tensor([[0.8, 0.3]], dtype=DT)
REFS = torch.tensor([[0.2, 0.9], [0.6, 0.1]], dtype=DT)


def test_hand_worked_weights_of_evidence_on_known_probabilities():
    """p(0 | x) = 0.8; feature 0 resampled from the references gives p = (0.2 + 0.6) / 2 = 0.4, so
    WE = log₂(0.8 / 0.2) − log₂(0.4 / 0.6) = 2 − log₂(2/3); feature 1 makes no difference: WE = 0 exactly."""
    we = tribute.explain(Known(), X, "prediction_difference", target=0, references=REFS, samples=None,
                         probabilities="outputs")
    assert we[0, 0].item() == pytest.approx(2 - math.log2(2 / 3), rel=1e-14)
    assert we[0, 1].item() == 0.0
    # class 1 is the complement: its evidence is the opposite
    other = tribute.explain(Known(), X, "prediction_difference", target=1, references=REFS, samples=None,
                            probabilities="outputs")
    assert other[0, 0].item() == pytest.approx(-we[0, 0].item(), rel=1e-14)


def test_the_laplace_correction_by_hand():
    """N = 8 training examples, K = 2 classes: 0.8 → (0.8·8 + 1)/10 = 0.74 and 0.4 → (0.4·8 + 1)/10 = 0.42."""
    we = tribute.explain(Known(), X, "prediction_difference", target=0, references=REFS, samples=None,
                         probabilities="outputs", training_size=8)
    assert we[0, 0].item() == pytest.approx(log2_odds(0.74) - log2_odds(0.42), rel=1e-14)
    assert we[0, 1].item() == 0.0
    # a probability of exactly 1 has infinite log-odds: refused without the correction, finite with it
    saturated = torch.tensor([[1.0, 0.3]], dtype=DT)
    with pytest.raises(ValueError, match=r"exactly 0 or 1 .* training_size=N"):
        tribute.explain(Known(), saturated, "prediction_difference", target=0, references=REFS, samples=None,
                        probabilities="outputs")
    we = tribute.explain(Known(), saturated, "prediction_difference", target=0, references=REFS, samples=None,
                         probabilities="outputs", training_size=8)
    assert we[0, 0].item() == pytest.approx(log2_odds(9 / 10) - log2_odds(0.42), rel=1e-14)


def test_softmax_probabilities_by_hand():
    """Logits (3x₀, 0): p = σ(3x₀); the window's probability is the mean of the references' σ, not σ of a mean."""
    we = tribute.explain(Logits(), X, "prediction_difference", target=0, references=REFS, samples=None)
    sigma = [1 / (1 + math.exp(-3 * v)) for v in (0.8, 0.2, 0.6)]
    without = (sigma[1] + sigma[2]) / 2
    assert we[0, 0].item() == pytest.approx(log2_odds(sigma[0]) - log2_odds(without), rel=1e-12)
    assert we[0, 1].item() == 0.0


def test_a_callable_target_reads_the_probabilities():
    """The callable gets the class probabilities: picking class 0 is target 0; the sum of both classes is certain,
    so no window gives evidence once corrected (p = 1 everywhere)."""
    options = {"references": REFS, "samples": None}
    by_int = tribute.explain(Logits(), X, "prediction_difference", target=0, **options)
    explainer = tribute.PredictionDifference(Logits(), **options)
    by_callable = explainer.attribute(X, target=lambda p: p[:, 0])
    torch.testing.assert_close(by_callable, by_int, rtol=0, atol=0)
    assert explainer.passes.forward_rows == 1 + 2 * 2  # one clean pass, 2 windows × 2 references
    certain = tribute.explain(Logits(), X, "prediction_difference", target=lambda p: p.sum(1), training_size=10,
                              **options)
    torch.testing.assert_close(certain, torch.zeros_like(certain), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="must return a probability per row"):
        tribute.explain(Logits(), X, "prediction_difference", target=lambda p: 2 * p[:, 0], **options)


def starts(size: int, window: int, stride: int) -> list[int]:
    found = list(range(0, size - window + 1, stride))
    return found if found[-1] == size - window else [*found, size - window]


def brute_force(net, x, refs, window, stride, target, training_size=None):
    """Zintgraf et al.'s Algorithm 1, one window and one sample at a time, every reference once."""
    out = torch.zeros(x.shape, dtype=DT)
    with torch.no_grad():
        for i in range(x.shape[0]):
            p = net(x[i:i + 1]).softmax(1)[0, target].item()
            total, count = torch.zeros(x.shape[1:], dtype=DT), torch.zeros(x.shape[1:], dtype=DT)
            grids = (starts(s, w, t) for s, w, t in zip(x.shape[1:], window, stride, strict=True))
            for corner in itertools.product(*grids):
                box = tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True))
                rows = x[i].repeat(refs.shape[0], *[1] * (x.dim() - 1))
                rows[(slice(None), *box)] = refs[(slice(None), *box)]
                without = net(rows).softmax(1)[:, target].mean().item()
                q, r = p, without
                if training_size is not None:
                    q, r = ((v * training_size + 1) / (training_size + 3) for v in (q, r))
                total[box] += log2_odds(q) - log2_odds(r)
                count[box] += 1
            out[i] = total / count
    return out


@pytest.mark.parametrize("window, stride, training_size", [((3, 2, 2), (1, 2, 2), None), ((3, 3, 4), 3, 50),
                                                           ((3, 1, 1), 1, None)])
def test_equals_a_brute_force_loop_over_windows(window, stride, training_size):
    """Windows that do not reach the border (stride 2 or 3 over 7 pixels) get one more window at the border."""
    net, x, refs = small_cnn(), rand(2, 3, 7, 7), rand(4, 3, 7, 7, seed=5)
    we = tribute.explain(net, x, "prediction_difference", target=2, references=refs, samples=None, window=window,
                         stride=stride, training_size=training_size, batch_size=11)
    torch.testing.assert_close(we, brute_force(net, x, refs, window, (stride,) * 3 if isinstance(stride, int) else
                                               stride, 2, training_size), rtol=1e-9, atol=1e-12)


def test_the_default_window_spans_the_channels_and_4x4_pixels_at_stride_1():
    net, x, refs = small_cnn(), rand(1, 3, 6, 6), rand(3, 3, 6, 6, seed=5)
    explainer = tribute.PredictionDifference(net, references=refs, samples=None)
    we = explainer.attribute(x, target=0)
    torch.testing.assert_close(we, brute_force(net, x, refs, (3, 4, 4), (1, 1, 1), 0), rtol=1e-9, atol=1e-12)
    assert explainer.passes.forward_rows == 1 + 9 * 3  # the clean pass, 3 × 3 windows × 3 references


def test_every_feature_is_covered_and_averaged_over_its_windows():
    windows = SlidingWindows(((5,),), ((2,),), ((2,),))  # starts 0, 2 and the border window 3
    assert windows.count == 3
    mask = windows.mask(torch.arange(3))
    assert mask.tolist() == [[True, True, False, False, False], [False, False, True, True, False],
                             [False, False, False, True, True]]
    spread = windows.spread(torch.tensor([[1.0, 2.0, 4.0]], dtype=DT))
    assert spread.tolist() == [[1.0, 1.0, 2.0, 3.0, 4.0]]


def test_sampled_references_are_per_sample_streams():
    """samples=3: a sample's draws are the same alone or in a batch, at any position and batch size; with every
    reference the same, the draws cannot matter and the result is the exact one."""
    net, x, refs = small_cnn(), rand(4, 3, 6, 6), rand(6, 3, 6, 6, seed=5)
    options = {"references": refs, "samples": 3, "seed": 4, "window": (3, 3, 3), "stride": 2}
    assert_same_alone_and_in_any_batch(net, x, "prediction_difference", torch.tensor([3, 1, 0, 2]),
                                       batch_sizes=(5, 64), tol=1e-10, **options)
    same = refs[:1].expand(5, -1, -1, -1)
    drawn = tribute.explain(net, x, "prediction_difference", target=1, **{**options, "references": same})
    exact = tribute.explain(net, x, "prediction_difference", target=1, **{**options, "references": same[:1],
                                                                            "samples": None})
    torch.testing.assert_close(drawn, exact, rtol=1e-10, atol=1e-12)


def test_two_inputs_each_with_its_windows_equal_each_held_as_a_forward_argument():
    torch.manual_seed(0)
    conv, dense, head = nn.Conv2d(2, 3, 3, padding=1).to(DT), nn.Linear(4, 3).to(DT), nn.Linear(6, 3).to(DT)

    def two(image, table):
        return head(torch.cat([torch.relu(conv(image)).mean((2, 3)), torch.tanh(dense(table))], 1))

    img, tab = rand(3, 2, 5, 5), rand(3, 4, seed=2)
    refs = (rand(4, 2, 5, 5, seed=3), rand(4, 4, seed=4))
    options = {"samples": 2, "seed": 1}
    both = tribute.explain(two, (img, tab), "prediction_difference", target=0, references=refs,
                           window=((2, 2, 2), (2,)), stride=(1, 2), **options)
    image_alone = tribute.explain(two, img, "prediction_difference", target=0, references=refs[0],
                                  window=(2, 2, 2), stride=1, forward_args=(tab,), **options)
    table_alone = tribute.explain(lambda t, i: two(i, t), tab, "prediction_difference", target=0,
                                  references=refs[1], window=(2,), stride=2, forward_args=(img,), **options)
    torch.testing.assert_close(both[0], image_alone, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both[1], table_alone, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="one entry per input"):
        tribute.explain(two, (img, tab), "prediction_difference", target=0, references=refs, window=(2, 2, 2))


def test_token_ids_are_resampled_from_reference_sequences():
    torch.manual_seed(0)
    emb, head = nn.Embedding(10, 4).to(DT), nn.Linear(4, 3).to(DT)

    def tokens(ids):
        return head(torch.tanh(emb(ids)).mean(1))

    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]])
    refs = torch.tensor([[0, 0, 0, 0, 0], [2, 2, 3, 3, 5]])
    we = tribute.explain(tokens, ids, "prediction_difference", target=1, references=refs, samples=None, window=2)
    assert we.dtype == DT and we.shape == ids.shape
    with torch.no_grad():
        torch.testing.assert_close(we, brute_force(tokens, ids, refs, (2,), (1,), 1), rtol=1e-9, atol=1e-12)
    with pytest.raises(TypeError, match="token-id references"):
        tribute.explain(tokens, ids, "prediction_difference", target=1, references=refs.to(DT), samples=None)


def test_rows_are_built_in_chunks_and_passes_counted():
    seen = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn()

        def forward(self, x):
            seen.append(x.shape[0])
            return self.net(x)

    x, refs = rand(2, 3, 6, 6), rand(3, 3, 6, 6, seed=5)
    explainer = tribute.PredictionDifference(Counting().eval(), references=refs, samples=4, seed=0, batch_size=8)
    explainer.attribute(x, target=0)
    assert max(seen) <= 8 and sum(seen) == explainer.passes.forward_rows == 2 + 2 * 9 * 4


X8, R8 = rand(2, 3, 8, 8), rand(3, 3, 8, 8, seed=5)


@pytest.mark.parametrize("options, error, match", [
    ({"references": R8, "window": (3, 9, 2)}, ValueError, "a window larger than the input"),
    ({"references": R8, "window": (3, 2)}, ValueError, "has 2 sizes but a sample of input 0 has 3 dims"),
    ({"references": R8, "window": 2.5}, TypeError, "window must be an int"),
    ({"references": R8, "stride": 0}, ValueError, "stride must be >= 1"),
    ({"references": R8, "window": (3, 2, 2), "stride": 3}, ValueError,
     "stride 3 > window 2 in dim 1 of input 0 leaves features outside every window"),
    ({}, ValueError, "needs references="),
    ({"references": R8[:, :, :4]}, ValueError, r"references must be a tensor of shape \(M, 3, 8, 8\)"),
    ({"references": [R8]}, TypeError, "references must be a tensor"),
    ({"references": R8, "sampling": "conditional"}, ValueError, "conditional sampling .* is not implemented"),
    ({"references": R8, "probabilities": "outputs"}, ValueError, "probabilities='outputs' .* lie in"),
    ({"references": R8, "samples": 0}, ValueError, "samples must be an integer >= 1"),
    ({"references": R8, "training_size": 0}, ValueError, "training_size must be an integer >= 1"),
    ({"references": R8, "baseline": 0.0}, TypeError, "no option 'baseline'"),
])
def test_bad_input_is_a_clear_error(options, error, match):
    with pytest.raises(error, match=match):
        tribute.explain(small_cnn(), X8, "prediction_difference", target=0, **options)


def test_the_standard_error_is_calibrated_against_the_exact_reference_set_average():
    """samples=20 estimates what samples=None gives exactly: over 100 seeds, its 95 % interval (delta method) holds
    the exact value for 90–99 % of the features × samples × seeds; samples=None reports no error."""
    net, x, refs = small_cnn(), rand(2, 3, 8, 8), rand(40, 3, 8, 8, seed=5)
    options = {"references": refs, "window": (3, 4, 4), "stride": 2}
    exact_explainer = tribute.PredictionDifference(net, samples=None, **options)
    exact = exact_explainer.attribute(x, target=0)
    assert exact_explainer.standard_error is None
    explainer = tribute.PredictionDifference(net, samples=20, batch_size=512, **options)
    covered = []
    for seed in range(100):
        a = explainer.attribute(x, target=0, seed=seed)
        assert explainer.standard_error.shape == x.shape
        covered.append(((a - exact).abs() <= 1.96 * explainer.standard_error).flatten())
    rate = float(torch.cat(covered).to(DT).mean())
    assert 0.90 <= rate <= 0.99, rate  # 0.957 here


def test_the_standard_error_of_one_window_by_hand():
    """One window (the whole sample), S draws: SE = |L'(q̄)| · sd(draws) / √S with L = log₂ odds."""
    x, refs = torch.tensor([[0.7, 0.2]], dtype=DT), torch.tensor([[0.1, 0.0], [0.4, 0.0], [0.5, 0.0]], dtype=DT)
    explainer = tribute.PredictionDifference(Known(), references=refs, samples=6, seed=2, window=2,
                                             probabilities="outputs")
    we = explainer.attribute(x, target=0)
    picked = torch.randint(3, (1, 6), generator=SampleStreams(x, 2).generators[0])
    draws = refs[picked[0], 0]
    q = float(draws.mean())
    assert we[0, 0].item() == pytest.approx(log2_odds(0.7) - log2_odds(q), rel=1e-12)
    se = float(draws.std()) / 6 ** 0.5 / (q * (1 - q) * math.log(2))
    torch.testing.assert_close(explainer.standard_error, torch.full_like(x, se), rtol=1e-10, atol=0)
