"""Extra forward arguments (issue 12): held constant, not attributed, and following every expanded row.

Methods expand the batch (integration steps, noise samples, references), so each row must meet its own
sample's mask.  The proof: a batch with per-sample masks, attributed in chunks that cut across samples,
equals the same samples attributed one at a time.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import MaskedSequence, concurrently, masked_sequences

import tribute

DT = torch.float64


Masked = MaskedSequence


def _setup(n=5, seed=0):
    return masked_sequences(n, seed)[:3]


CASES = {
    "integrated_gradients": {"steps": 6},
    "smoothgrad": {"samples": 4, "seed": 3},
    "expected_gradients": {"samples": 5, "seed": 3},
    "deeplift": {},
    "input_x_gradient": {},
    "vargrad": {"samples": 3, "seed": 1},
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_per_sample_arguments_follow_the_expanded_rows(method):
    model, x, mask = _setup()
    options = dict(CASES[method])
    if method == "expected_gradients":
        options["references"] = torch.randn(3, 7, 3, dtype=DT, generator=torch.Generator().manual_seed(9))
    # batch_size 4 cuts the rows of one sample across chunks and mixes samples in a chunk
    batched = tribute.explain(model, x, method, target=2, batch_size=4, forward_kwargs={"mask": mask}, **options)
    for i in range(x.shape[0]):
        alone = tribute.explain(model, x[i:i + 1], method, target=2, forward_kwargs={"mask": mask[i:i + 1]},
                                **options)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-12)


def test_forward_arguments_equal_a_closure_over_the_same_sample():
    model, x, mask = _setup()
    by_argument = tribute.explain(model, x, "integrated_gradients", target=0, steps=8, forward_args=(mask,))
    for i in range(x.shape[0]):
        m = mask[i:i + 1]
        closure = tribute.explain(lambda t, m=m: model(t, m), x[i:i + 1], "integrated_gradients", target=0,
                                  steps=8)
        torch.testing.assert_close(by_argument[i:i + 1], closure, rtol=1e-12, atol=1e-14)


def test_the_prediction_for_target_none_uses_each_samples_arguments():
    model, x, mask = _setup()
    predicted = model(x, mask).argmax(1)
    a = tribute.explain(model, x, "gradient", forward_args=(mask,))
    b = tribute.explain(model, x, "gradient", target=predicted, forward_args=(mask,))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_constant_argument_is_passed_unchanged_even_when_its_first_dimension_equals_n():
    _, x, _ = _setup(n=3)
    weights = torch.randn(3, dtype=DT)  # the same 3 weights for every sample; N is 3 too, by coincidence
    g = tribute.explain(lambda t, w: (t.sum(1) * w).sum(-1, keepdim=True), x, "gradient", target=0,
                        forward_args=(tribute.constant(weights),))
    torch.testing.assert_close(g, weights.expand_as(x), rtol=0, atol=0)  # every sample met all three weights


def test_non_tensor_arguments_are_passed_as_they_are():
    model, x, mask = _setup()
    a = tribute.explain(model, x, "gradient", target=1, forward_args=(mask,), forward_kwargs={"scale": 3.0})
    b = tribute.explain(model, x, "gradient", target=1, forward_args=(mask,))
    torch.testing.assert_close(a, 3.0 * b, rtol=1e-12, atol=1e-15)


def test_a_per_sample_argument_whose_first_dimension_is_not_n_is_refused():
    model, x, mask = _setup()
    with pytest.raises(ValueError, match=r"forward_kwargs\['mask'\].*\(4, 7\).*N = 5.*tribute.constant"):
        tribute.explain(model, x, "gradient", target=0, forward_kwargs={"mask": mask[:4]})
    with pytest.raises(ValueError, match=r"forward_args\[0\].*tribute.constant"):
        tribute.explain(model, x, "gradient", target=0, forward_args=(torch.tensor(1.0),))


def test_forward_arguments_must_be_a_tuple_and_a_dict():
    model, x, mask = _setup()
    with pytest.raises(TypeError, match="forward_args must be a tuple or list"):
        tribute.explain(model, x, "gradient", target=0, forward_args=mask)
    with pytest.raises(TypeError, match="forward_kwargs must be a dict"):
        tribute.explain(model, x, "gradient", target=0, forward_kwargs=[mask])


def test_layer_integrated_gradients_with_a_per_sample_mask_equals_one_sample_at_a_time():
    model, x, mask = _setup()
    batched = tribute.explain(model, x, "layer_integrated_gradients", layer="inner", target=3, steps=5,
                              batch_size=3, forward_args=(mask,))
    for i in range(x.shape[0]):
        alone = tribute.explain(model, x[i:i + 1], "layer_integrated_gradients", layer="inner", target=3, steps=5,
                                forward_args=(mask[i:i + 1],))
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-12)


def test_lrp_with_a_per_sample_mask_equals_one_sample_at_a_time():
    torch.manual_seed(0)

    class ReluMasked(Masked):
        def forward(self, x, mask):
            h = F.relu(self.inner(x)) * mask.unsqueeze(-1)
            return self.head(h.sum(1))

    model = ReluMasked().to(DT).eval()
    _, x, mask = _setup()
    batched = tribute.explain(model, x, "lrp", target=0, batch_size=2, forward_args=(mask,))
    for i in range(x.shape[0]):
        alone = tribute.explain(model, x[i:i + 1], "lrp", target=0, forward_args=(mask[i:i + 1],))
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-12)


def test_refined_integrated_gradients_gives_each_sample_its_own_arguments():
    """tolerance= refines only the samples not yet converged; their rows must still meet their own masks.  Sample 0
    sits at the baseline (converged at once), so the samples refined afterwards are not the first ones."""
    model, x, mask = _setup()
    x = x.clone()
    x[0] = 0.0
    options = {"steps": 2, "tolerance": 1e-4, "batch_size": 3}
    batched = tribute.explain(model, x, "integrated_gradients", target=1, forward_args=(mask,), **options)
    for i in range(x.shape[0]):
        alone = tribute.explain(model, x[i:i + 1], "integrated_gradients", target=1, forward_args=(mask[i:i + 1],),
                                **options)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-12)
    gain = (model(x, mask)[:, 1] - model(torch.zeros_like(x), mask)[:, 1]).detach()
    torch.testing.assert_close(batched.flatten(1).sum(1), gain, rtol=0, atol=2e-4 * float(gain.abs().max()))


def test_smoothgrad_of_a_base_method_that_expands_rows_again_keeps_each_samples_arguments():
    """SmoothGrad's noisy copies go to integrated gradients, which expands them into path points: a mask follows a
    row through both expansions."""
    model, x, mask = _setup()
    options = {"samples": 3, "seed": 2, "base": "integrated_gradients", "base_options": {"steps": 4},
               "batch_size": 4}
    batched = tribute.explain(model, x, "smoothgrad", target=0, forward_kwargs={"mask": mask}, **options)
    for i in range(x.shape[0]):
        alone = tribute.explain(model, x[i:i + 1], "smoothgrad", target=0, forward_kwargs={"mask": mask[i:i + 1]},
                                **options)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method, options", [
    ("integrated_gradients", {"steps": 4, "batch_size": 3}),
    ("lrp", {"batch_size": 2}),
    ("smoothgrad", {"samples": 3, "seed": 0, "batch_size": 4}),
])
def test_two_threads_with_different_forward_arguments_on_one_explainer(method, options):
    torch.manual_seed(0)

    class ReluMasked(Masked):
        def forward(self, x, mask):
            return self.head((F.relu(self.inner(x)) * mask.unsqueeze(-1)).sum(1))

    model, x, mask = ReluMasked().to(DT).eval(), *_setup()[1:]
    explainer = tribute.get_method(method)(model, **options)
    calls = [(x[:3], {"mask": mask[:3]}), (x[2:], {"mask": mask[2:]})]
    alone = [explainer.attribute(xi, target=1, forward_kwargs=kw) for xi, kw in calls]
    results = concurrently(lambda i: explainer.attribute(calls[i][0], target=1, forward_kwargs=calls[i][1]), 8)
    for i in (0, 1):
        for r in results[i]:
            torch.testing.assert_close(r, alone[i], rtol=1e-12, atol=1e-14)
