"""Metrics on any input a model takes (issue 12): several inputs, forward arguments, structured outputs, tokens.

Checked: each metric on (image, table) with only the image perturbed (``input_index=0``) equals the same metric
on the image with the table held as a forward argument; joint ranking over both inputs gives the deletion and
MoRF/LeRF curves of a linear model in closed form, and equals the metric on one packed input; per-sample
forward arguments follow the rows (a batch equals one sample at a time); completeness and sensitivity-n over
both inputs of IG and DeepLIFT; deletion / insertion over token ids on a bag-of-embeddings model (curves worked
by hand) and on a small random BERT with its attention mask; structured outputs; evaluate() on such data; and
the errors for what cannot be done.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import image_and_table, image_and_table_inputs
from torch import nn

import tribute
from tribute.core.tokens import token_baseline
from tribute.metrics import (
    completeness_gap,
    deletion,
    evaluate,
    implementation_invariance,
    infidelity,
    input_invariance,
    insertion,
    local_lipschitz,
    max_sensitivity,
    pixel_perturbation,
    road,
    sensitivity_n,
)
from tribute.metrics.common import derived_seed

DT = torch.float64


# -- models and data -------------------------------------------------------------------------------------------------
class Packed(nn.Module):
    """``inner`` on one packed input z = (image flattened, table) per row: the model a joint metric sees."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, z):
        return self.inner(z[:, :72].reshape(-1, 2, 6, 6), z[:, 72:])


class DictOutput(nn.Module):
    """``inner``'s scores in a dict, next to another tensor (the way Hugging Face models answer)."""

    def __init__(self, inner, key: str = "logits"):
        super().__init__()
        self.inner, self.key = inner, key

    def forward(self, *args):
        return {self.key: self.inner(*args), "features": args[0].flatten(1)}


class Masked(nn.Module):
    """Scores of the features a per-sample mask keeps, scaled by a constant per feature."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x, mask, scale):
        return self.lin(torch.tanh(x * mask * scale))


_model = image_and_table


def _inputs(n=4, seed=1):
    return image_and_table_inputs(n, seed, image=torch.rand)  # pixels in [0, 1): replacements stay in range


def _masked(n=5):
    torch.manual_seed(2)
    model = Masked().to(DT).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g, dtype=DT)
    mask = (torch.rand(n, 6, generator=g) > 0.4).to(DT)
    scale = tribute.constant(torch.linspace(0.5, 1.5, 6, dtype=DT))
    return model, x, mask, scale


def _exactly(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- one named input equals that input alone with the others held as forward arguments -------------------------------
def _curves(joint, alone):
    _exactly(joint.curve, alone.curve)
    _exactly(joint.score, alone.score)


@pytest.mark.parametrize("metric, joint_options, alone_options", [
    (pixel_perturbation, {"steps": 6, "patch_size": 2, "replacement": ("blur", "zero")},
     {"steps": 6, "patch_size": 2, "replacement": "blur"}),
    (pixel_perturbation, {"order": "lerf", "steps": 4, "reduce": None}, {"order": "lerf", "steps": 4, "reduce": None}),
    (deletion, {"steps": 5, "reduce": "abs_sum"}, {"steps": 5, "reduce": "abs_sum"}),
    (insertion, {"steps": 5, "replacement": "noise", "seed": 3}, {"steps": 5, "replacement": "noise", "seed": 3}),
    (road, {"fractions": (0.25, 0.5), "seed": 1}, {"fractions": (0.25, 0.5), "seed": 1}),
])
def test_one_named_input_equals_it_alone_with_the_other_as_a_forward_argument(metric, joint_options, alone_options):
    model, (img, tab) = _model(), _inputs()
    a_img, a_tab = tribute.explain(model, (img, tab), "input_x_gradient", target=1)
    joint = metric(model, (img, tab), (a_img, a_tab), None, input_index=0, batch_size=7, **joint_options)
    alone = metric(model, img, a_img, None, forward_args=(tab,), batch_size=7, **alone_options)
    _curves(joint, alone)
    # input k's attributions alone are taken too, and the table is really held: moving it changes the curve
    _curves(metric(model, (img, tab), a_img, None, input_index=0, batch_size=7, **joint_options), alone)
    other = metric(model, img, a_img, None, forward_args=(tab + 1,), batch_size=7, **alone_options)
    assert not torch.equal(other.curve, alone.curve)


@pytest.mark.parametrize("options", [{"perturbation": "square", "samples": 6},
                                     {"perturbation": "noisy_baseline", "samples": 6, "baseline": "mean"},
                                     {"perturbation": "subset", "samples": 5, "convention": "salience"}])
def test_infidelity_of_one_named_input_equals_it_alone(options):
    model, (img, tab) = _model(), _inputs()
    a_img, a_tab = tribute.explain(model, (img, tab), "input_x_gradient", target=2)
    joint = infidelity(model, (img, tab), (a_img, a_tab), 2, input_index=0, batch_size=5, **options)
    alone = infidelity(model, img, a_img, 2, forward_args=(tab,), batch_size=5, **options)
    _exactly(joint, alone)


def test_completeness_and_sensitivity_n_of_one_named_input_equal_it_alone():
    model, (img, tab) = _model(F.softplus), _inputs()
    a_img = tribute.explain(model, img, "integrated_gradients", target=0, steps=32, forward_args=(tab,))
    for metric, options in ((completeness_gap, {}), (sensitivity_n, {"ns": [1, 7, 30], "samples": 4, "seed": 2})):
        joint = metric(model, (img, tab), a_img, 0, input_index=0, batch_size=6, **options)
        alone = metric(model, img, a_img, 0, forward_args=(tab,), batch_size=6, **options)
        _exactly(getattr(joint, "score", joint), getattr(alone, "score", alone))
    # IG of the image with the table held is complete for the image alone
    assert float(completeness_gap(model, (img, tab), a_img, 0, input_index=0).abs().max()) < 1e-9


def test_sensitivity_of_one_named_input_equals_it_alone():
    # the head is linear, so the table's gradient does not depend on the image: moving the image changes the
    # image's part of the explanation only, and the norms over both inputs equal those over the image's
    model, (img, tab) = _model(), _inputs()
    for metric in (max_sensitivity, local_lipschitz):
        joint = metric(model, (img, tab), "gradient", 1, input_index=0, samples=4, batch_size=3, radius=0.05)
        alone = metric(model, img, "gradient", 1, forward_args=(tab,), samples=4, batch_size=3, radius=0.05)
        torch.testing.assert_close(joint, alone, rtol=1e-13, atol=1e-15)


# -- all inputs jointly ----------------------------------------------------------------------------------------------
class LinearTwo(nn.Module):
    """s(img, tab) = Σ w_img·img + Σ w_tab·tab, scored as logits (s, −s)."""

    def __init__(self):
        super().__init__()
        self.w_img = torch.tensor([0.5, -2.0, 1.5, 3.0], dtype=DT)
        self.w_tab = torch.tensor([1.0, -0.5, 2.0], dtype=DT)

    def forward(self, img, tab):
        s = (img.flatten(1) * self.w_img).sum(1) + (tab * self.w_tab).sum(1)
        return torch.stack([s, -s], 1)


def test_joint_deletion_and_morf_lerf_curves_of_a_linear_model_in_closed_form():
    model = LinearTwo()
    img = torch.tensor([[[[1.0, 0.5], [-1.0, 2.0]]], [[[0.2, 0.4], [0.6, -0.8]]]], dtype=DT)
    tab = torch.tensor([[2.0, 1.0, -1.0], [0.5, -3.0, 1.0]], dtype=DT)
    w = torch.cat([model.w_img, model.w_tab])
    x = torch.cat([img.flatten(1), tab], 1)
    phi = w * x  # each element's exact contribution against 0
    attributions = (phi[:, :4].reshape(img.shape), phi[:, 4:])
    removed_to = torch.tensor([0.0] * 4 + [1.0] * 3, dtype=DT)  # the image's elements to 0, the table's to 1
    for order in ("morf", "lerf"):
        r = pixel_perturbation(model, (img, tab), attributions, 0, order=order, steps=7, replacement=(0.0, 1.0),
                               score="logit")
        for i in range(2):
            ranked = sorted(range(7), key=lambda j: -phi[i, j] if order == "morf" else phi[i, j])
            expected, s = [], float(model(img[i:i + 1], tab[i:i + 1])[0, 0])
            expected.append(s)
            for j in ranked:  # removing element j changes the score by w_j (r_j − x_j)
                s += float(w[j] * (removed_to[j] - x[i, j]))
                expected.append(s)
            torch.testing.assert_close(r.curve[i], torch.tensor(expected, dtype=DT), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r.score, (r.curve[:, :1] - r.curve).mean(1))
    d = deletion(model, (img, tab), attributions, 0, steps=7, score="logit")  # both inputs to 0 by default
    by_hand = model(img, tab)[:, :1] - torch.cat([torch.zeros(2, 1, dtype=DT),
                                                    phi.sort(1, descending=True).values.cumsum(1)], 1)
    torch.testing.assert_close(d.curve, by_hand, rtol=1e-12, atol=1e-12)


def test_joint_metrics_equal_the_metric_on_one_packed_input():
    model, (img, tab) = _model(), _inputs()
    a = tribute.explain(model, (img, tab), "input_x_gradient", target=1)
    z = torch.cat([img.flatten(1), tab], 1)
    packed_model, packed_a = Packed(model), torch.cat([a[0].flatten(1), a[1]], 1)
    for metric, options in ((pixel_perturbation, {"steps": 9, "replacement": "zero"}),
                            (deletion, {"fractions": (0.1, 0.3, 0.7)}), (insertion, {"steps": 4, "replacement": 0.5})):
        joint = metric(model, (img, tab), a, 1, batch_size=5, **options)
        alone = metric(packed_model, z, packed_a, 1, batch_size=5, **options)
        _exactly(joint.curve, alone.curve)
    # the ball of all features together is the packed input's ball, drawn from the same streams
    joint = max_sensitivity(model, (img, tab), "gradient", 1, samples=3, batch_size=4)
    alone = max_sensitivity(packed_model, z, "gradient", 1, samples=3, batch_size=4)
    torch.testing.assert_close(joint, alone, rtol=1e-13, atol=1e-15)
    gap = completeness_gap(model, (img, tab), a, 1, baseline=(0.0, 0.0))
    _exactly(gap, completeness_gap(packed_model, z, packed_a, 1))


def test_a_replacement_per_input_is_resolved_against_its_own_input():
    model, (img, tab) = _model(), _inputs()
    a = tribute.explain(model, (img, tab), "input_x_gradient", target=1)
    # everything removed: the last point is the model on (blurred image, table of 0.25)
    r = deletion(model, (img, tab), a, 1, steps=2, replacement=("blur", 0.25), replacement_options=({"sigma": 1.0},
                                                                                                   None), score="logit")
    from tribute.core.baselines import gaussian_blur
    end = model(gaussian_blur(img, 1.0), torch.full_like(tab, 0.25))[:, 1]
    torch.testing.assert_close(r.curve[:, -1], end.detach(), rtol=1e-12, atol=1e-12)


def test_infidelity_over_both_inputs_of_a_linear_model_is_zero_for_the_gradient_and_input_x_gradient():
    model = LinearTwo()
    g = torch.Generator().manual_seed(5)
    img, tab = torch.rand(3, 1, 2, 2, generator=g, dtype=DT) + 0.1, torch.rand(3, 3, generator=g, dtype=DT) + 0.1
    grad = tribute.explain(model, (img, tab), "gradient", target=0)
    ixg = tribute.explain(model, (img, tab), "input_x_gradient", target=0)
    for spec, options in (("gaussian", ({"sigma": 0.1}, {"sigma": 2.0})), (("square", "subset"), None)):
        value = infidelity(model, (img, tab), grad, 0, perturbation=spec, perturbation_options=options, samples=7,
                           normalize=False)
        assert float(value.abs().max()) < 1e-20
    # removals (I = x − 0 on a set) in the salience reading: input × gradient predicts them exactly
    value = infidelity(model, (img, tab), ixg, 0, perturbation=("square", "subset"), convention="salience",
                       samples=7, normalize=False)
    assert float(value.abs().max()) < 1e-20
    # the draws of each input are its own: a different table perturbation changes the score of a wrong map
    wrong = (grad[0], -grad[1])
    one = infidelity(model, (img, tab), wrong, 0, perturbation=("gaussian", "gaussian"), samples=5)
    two = infidelity(model, (img, tab), wrong, 0, perturbation=("gaussian", "subset"), samples=5)
    assert not torch.equal(one, two)


# -- forward arguments follow the rows ------------------------------------------------------------------------------
def _one_at_a_time(fn, x, mask, scale):
    return torch.cat([fn(x[i:i + 1], {"mask": mask[i:i + 1], "scale": scale}) for i in range(x.shape[0])])


@pytest.mark.parametrize("name", ["deletion", "insertion", "infidelity", "max_sensitivity", "completeness_gap",
                                  "sensitivity_n"])
def test_a_batch_with_per_sample_masks_equals_one_sample_at_a_time(name):
    model, x, mask, scale = _masked()
    a = tribute.explain(model, x, "integrated_gradients", target=0, steps=16,
                        forward_kwargs={"mask": mask, "scale": scale})
    fns = {
        "deletion": lambda x_, a_, kw: deletion(model, x_, a_, 0, steps=3, batch_size=4, forward_kwargs=kw).curve,
        "insertion": lambda x_, a_, kw: insertion(model, x_, a_, 0, steps=3, replacement="zero", batch_size=4,
                                                  forward_kwargs=kw).curve,
        "infidelity": lambda x_, a_, kw: infidelity(model, x_, a_, 0, samples=5, batch_size=4, forward_kwargs=kw),
        "max_sensitivity": lambda x_, a_, kw: max_sensitivity(model, x_, "integrated_gradients", 0, samples=3,
                                                              batch_size=4, forward_kwargs=kw,
                                                              method_options={"steps": 4}),
        "completeness_gap": lambda x_, a_, kw: completeness_gap(model, x_, a_, 0, batch_size=4, forward_kwargs=kw),
        "sensitivity_n": lambda x_, a_, kw: sensitivity_n(model, x_, a_, 0, ns=[2, 4], samples=4, batch_size=4, seed=1,
                                                          forward_kwargs=kw).output_drops,
    }
    fn = fns[name]
    batch = fn(x, a, {"mask": mask, "scale": scale})
    alone = torch.cat([fn(x[i:i + 1], a[i:i + 1], {"mask": mask[i:i + 1], "scale": scale}) for i in range(len(x))])
    torch.testing.assert_close(batch, alone, rtol=1e-12, atol=1e-14)
    # and the mask is used: without it (all ones) the numbers change
    unmasked = fn(x, a, {"mask": torch.ones_like(mask), "scale": scale})
    assert not torch.allclose(batch, unmasked)


def test_completeness_of_ig_under_a_mask_holds_with_the_mask_only():
    model, x, mask, scale = _masked()
    kw = {"mask": mask, "scale": scale}
    a = tribute.explain(model, x, "integrated_gradients", target=2, steps=64, forward_kwargs=kw)
    assert float(completeness_gap(model, x, a, 2, forward_kwargs=kw).abs().max()) < 1e-10
    wrong = completeness_gap(model, x, a, 2, forward_kwargs={"mask": torch.ones_like(mask), "scale": scale})
    assert float(wrong.abs().max()) > 1e-3


# -- completeness and sensitivity-n over both inputs -------------------------------------------------------------------
def test_ig_and_deeplift_are_complete_over_both_inputs():
    smooth, relu, (img, tab) = _model(F.softplus), _model(), _inputs()
    base = ("zero", 0.5)
    ig = tribute.explain(smooth, (img, tab), "integrated_gradients", target=2, steps=64, baseline=base)
    dl = tribute.explain(relu, (img, tab), "deeplift", target=2, baseline=base)
    for model, a in ((smooth, ig), (relu, dl)):
        assert float(completeness_gap(model, (img, tab), a, 2, baseline=base).abs().max()) < 1e-9
        # measured against another baseline for the table, the gap shows
        assert float(completeness_gap(model, (img, tab), a, 2, baseline=0).abs().min()) > 1e-6
        # sensitivity-n at n = all features is completeness (Ancona et al. 2019, Eq 9)
        full = sensitivity_n(model, (img, tab), a, 2, ns=[76], samples=2, baseline=base)
        gap = full.attribution_sums - full.output_drops
        torch.testing.assert_close(gap[:, 0, 0], completeness_gap(model, (img, tab), a, 2, baseline=base),
                                   rtol=0, atol=1e-12)


def test_sensitivity_n_of_a_linear_model_over_both_inputs_is_one_for_every_n():
    model = LinearTwo()
    g = torch.Generator().manual_seed(7)
    img, tab = torch.randn(3, 1, 2, 2, generator=g, dtype=DT), torch.randn(3, 3, generator=g, dtype=DT)
    a = tribute.explain(model, (img, tab), "input_x_gradient", target=0)
    r = sensitivity_n(model, (img, tab), a, 0, ns=[1, 3, 6], samples=12, seed=1)
    torch.testing.assert_close(r.attribution_sums, r.output_drops, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.correlation, torch.ones_like(r.correlation), rtol=1e-12, atol=1e-12)


# -- invariances -------------------------------------------------------------------------------------------------------
def test_input_invariance_shifts_each_input_by_its_own_entry():
    model, (img, tab) = _model(), _inputs()
    shift = (torch.tensor([0.3, -0.2], dtype=DT).view(2, 1, 1), 0.7)
    # the gradient does not see a shift its first layers absorb (Kindermans et al. 2017); input × gradient does
    assert float(input_invariance(model, (img, tab), "gradient", shift, 1).max()) < 1e-12
    assert float(input_invariance(model, (img, tab), "input_x_gradient", shift, 1).min()) > 1e-3
    # an input shifted by 0 is left alone: shifting only the table moves only the table's attribution
    only_table = input_invariance(model, (img, tab), "input_x_gradient", (0, 0.7), 1, distance="max_abs")
    ixg = tribute.explain(model, (img, tab), "input_x_gradient", target=1)
    expected = (0.7 * tribute.explain(model, (img, tab), "gradient", target=1)[1]).abs().flatten(1).amax(1)
    torch.testing.assert_close(only_table, expected.to(only_table.dtype), rtol=1e-10, atol=1e-12)
    assert ixg[0].shape == img.shape
    copy_of = copy.deepcopy(model)
    assert float(implementation_invariance(model, copy_of, (img, tab), "integrated_gradients", 1, steps=8).max()) == 0


def test_input_invariance_refuses_a_layer_shared_by_two_inputs():
    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.head = nn.Linear(2 * 16, 2)

        def forward(self, a, b):
            return self.head((torch.relu(self.conv(a)) - torch.relu(self.conv(b))).flatten(1))

    torch.manual_seed(0)
    model = Siamese().to(DT).eval()
    a, b = torch.rand(2, 1, 6, 6, dtype=DT), torch.rand(2, 1, 6, 6, dtype=DT)
    with pytest.raises(ValueError, match="called 2 times"):
        input_invariance(model, (a, b), "gradient", (0.5, 0), 0)
    with pytest.raises(TypeError, match="must be an nn.Module"):
        input_invariance(lambda x, y: model(x, y), (a, b), "gradient", (0.5, 0), 0)


# -- token sequences ---------------------------------------------------------------------------------------------------
PAD, CLS, SEP = 0, 1, 2
VALUES = torch.tensor([0.0, 0.5, -0.25, 3.0, -1.0, 2.0, 0.75, 1.5, -2.0, 4.0, 0.25, -0.5], dtype=DT)


class Bag(nn.Module):
    """Score = Σ_t mask_t e(id_t): each token's value is exactly its contribution."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(len(VALUES), 1).to(DT)
        with torch.no_grad():
            self.emb.weight.copy_(VALUES[:, None])

    def forward(self, ids, attention_mask):
        v = self.emb(ids)[..., 0] * attention_mask
        return torch.stack([v.sum(1), -v.sum(1)], 1)


def _tokens():
    ids = torch.tensor([[CLS, 3, 4, 5, 6, SEP], [CLS, 7, 8, SEP, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=DT)
    return Bag().eval(), ids, mask, VALUES[ids] * mask


TOKEN_OPTIONS = {"replacement_token": PAD, "keep_tokens": (PAD, CLS, SEP), "score": "logit", "steps": 4}


def test_token_deletion_and_insertion_curves_by_hand():
    model, ids, mask, a = _tokens()
    kw = {"forward_kwargs": {"attention_mask": mask}, **TOKEN_OPTIONS}
    # sample 0: 4 removable tokens 3.0, -1.0, 2.0, 0.75 (total 5.0 with [CLS] 0.5 and [SEP] −0.25): one per step;
    # sample 1: 2 removable tokens 1.5, −2.0, rounding half up: 1, 1, 2, 2 removed; [PAD] is 0 and masked
    d = deletion(model, ids, a, 0, **kw)
    torch.testing.assert_close(d.curve, torch.tensor([[5.0, 2.0, 0.0, -0.75, 0.25],
                                                      [-0.25, -1.75, -1.75, 0.25, 0.25]], dtype=DT))
    i = insertion(model, ids, a, 0, **kw)
    torch.testing.assert_close(i.curve, torch.tensor([[0.25, 3.25, 5.25, 6.0, 5.0],
                                                      [0.25, 1.75, 1.75, -0.25, -0.25]], dtype=DT))
    lerf = pixel_perturbation(model, ids, a, 0, order="lerf", **kw)
    torch.testing.assert_close(lerf.curve[0], torch.tensor([5.0, 6.0, 5.25, 3.25, 0.25], dtype=DT))
    torch.testing.assert_close(lerf.score[0], torch.tensor(1.05, dtype=DT))
    # without special tokens, [CLS] and [SEP] are ranked and removed like the others (and padding too)
    plain = deletion(model, ids, a, 0, **{**kw, "keep_tokens": ()})
    torch.testing.assert_close(plain.curve[0, -1], torch.tensor(0.0, dtype=DT))


def test_token_curves_of_a_padded_batch_equal_each_sequence_alone():
    model, ids, mask, a = _tokens()
    batch = deletion(model, ids, a, 0, forward_kwargs={"attention_mask": mask}, **TOKEN_OPTIONS)
    alone = deletion(model, ids[1:, :4], a[1:, :4], 0, forward_kwargs={"attention_mask": mask[1:, :4]},
                     **TOKEN_OPTIONS)
    _exactly(batch.curve[1:], alone.curve)


def test_layer_integrated_gradients_of_token_ids_through_evaluate():
    model, ids, mask, a = _tokens()
    method = ("lig", "layer_integrated_gradients", {"layer": "emb", "reduce": "sum", "baseline_token": PAD,
                                                    "keep_tokens": (PAD, CLS, SEP), "steps": 4})
    table = evaluate(model, ids, [method], [("deletion", "deletion", TOKEN_OPTIONS)], target=0,
                     forward_kwargs={"attention_mask": mask}, batch_size=1, progress=False)
    # IG of a linear model is exact: the per-token attributions are the tokens' values, so the curves are by hand
    expected = deletion(model, ids, a, 0, forward_kwargs={"attention_mask": mask}, **TOKEN_OPTIONS)
    torch.testing.assert_close(table.curves["lig", "deletion"], expected.curve, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(table["lig", "deletion"], expected.score, rtol=1e-12, atol=1e-12)


BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(35)]]
B_PAD, B_UNK, B_CLS, B_SEP, B_MASK = range(5)


def _bert(transformers):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                                     num_labels=3)
    return transformers.BertForSequenceClassification(config).to(DT).eval()


def _bert_batch():
    g = torch.Generator().manual_seed(4)
    lengths = (9, 6, 4)
    ids = torch.full((3, 9), B_PAD)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.cat([torch.tensor([B_CLS]), torch.randint(5, len(BERT_VOCAB), (n - 2,), generator=g),
                                torch.tensor([B_SEP])])
        mask[i, :n] = 1
    return ids, mask, lengths


def test_token_deletion_on_bert_with_its_attention_mask(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(BERT_VOCAB) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(vocab))
    model, (ids, mask, lengths) = _bert(transformers), _bert_batch()
    kw = {"forward_kwargs": {"attention_mask": mask}}
    a = tribute.explain(model, ids, "layer_integrated_gradients", layer="bert.embeddings.word_embeddings", target=0,
                        steps=8, baseline_token="mask", tokenizer=tokenizer, reduce="sum", **kw)
    r = deletion(model, ids, a, 0, replacement_token="mask", tokenizer=tokenizer, steps=4, score="logit", **kw)
    with torch.no_grad():
        clean = model(ids, attention_mask=mask).logits[:, 0]
        masked = token_baseline(ids, B_MASK, (B_PAD, B_UNK, B_CLS, B_SEP, B_MASK))
        gone = model(masked, attention_mask=mask).logits[:, 0]
        # step 1 of sentence 0 (7 tokens between [CLS] and [SEP]): round(7/4) = 2 most relevant tokens masked
        top = a[0, 1:8].argsort(descending=True, stable=True)[:2] + 1
        step1 = ids[:1].clone()
        step1[0, top] = B_MASK
        first = model(step1, attention_mask=mask[:1]).logits[0, 0]
    torch.testing.assert_close(r.curve[:, 0], clean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.curve[:, -1], gone, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.curve[0, 1], first, rtol=1e-12, atol=1e-12)
    # padding is a special token: each sentence alone, without padding or mask, has the same curve
    for i, n in enumerate(lengths):
        alone = deletion(model, ids[i:i + 1, :n], a[i:i + 1, :n], 0, replacement_token="mask", tokenizer=tokenizer,
                         steps=4, score="logit")
        torch.testing.assert_close(alone.curve[0], r.curve[i], rtol=1e-9, atol=1e-11)


# -- structured outputs ------------------------------------------------------------------------------------------------
def test_metrics_read_the_scores_from_a_structured_output():
    model, (img, tab) = _model(), _inputs()
    a = tribute.explain(model, (img, tab), "gradient", target=1)
    wrapped = DictOutput(model)
    _curves(deletion(wrapped, (img, tab), a, 1, steps=4), deletion(model, (img, tab), a, 1, steps=4))
    _curves(deletion(wrapped, (img, tab), a, 1, steps=4, output="logits"), deletion(model, (img, tab), a, 1, steps=4))
    # a field that is not called logits must be named, and then the method called by the metric gets it too
    scores = DictOutput(model, key="scores")
    with pytest.raises(ValueError, match="say which holds the scores with output="):
        deletion(scores, (img, tab), a, 1, steps=4)
    _exactly(max_sensitivity(scores, (img, tab), "gradient", 1, samples=2, output="scores"),
             max_sensitivity(model, (img, tab), "gradient", 1, samples=2))
    _exactly(infidelity(scores, (img, tab), a, 1, samples=3, output=lambda out: out["scores"]),
             infidelity(model, (img, tab), a, 1, samples=3))


# -- evaluate ----------------------------------------------------------------------------------------------------------
def test_evaluate_on_two_inputs_equals_the_metric_functions():
    model, (img, tab) = _model(), _inputs(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    methods = ["gradient", ("ig", "integrated_gradients", {"steps": 8})]
    metrics = ["deletion", ("deletion@img", "deletion", {"input_index": 0}), "completeness_gap", "infidelity",
               ("max_sens", "max_sensitivity", {"samples": 2})]
    table = evaluate(model, ((img, tab), y), methods, metrics, target="label", batch_size=4, progress=False)
    ig = tribute.explain(model, (img, tab), "integrated_gradients", target=y, steps=8)
    torch.testing.assert_close(table["ig", "deletion"], deletion(model, (img, tab), ig, y).score, rtol=0, atol=0)
    torch.testing.assert_close(table["ig", "deletion@img"], deletion(model, (img, tab), ig, y, input_index=0).score,
                               rtol=0, atol=0)
    torch.testing.assert_close(table["ig", "completeness_gap"], completeness_gap(model, (img, tab), ig, y).abs(),
                               rtol=0, atol=1e-15)
    seed = derived_seed(0, "metric/infidelity")
    torch.testing.assert_close(table["ig", "infidelity"], infidelity(model, (img, tab), ig, y, seed=seed),
                               rtol=1e-12, atol=1e-15)
    sens = max_sensitivity(model, (img, tab), "gradient", y, samples=2, seed=derived_seed(0, "metric/max_sens"))
    torch.testing.assert_close(table["gradient", "max_sens"], sens, rtol=1e-12, atol=1e-15)
    # the same through an iterable of ((img, tab), y) batches
    again = evaluate(model, [((img[:4], tab[:4]), y[:4]), ((img[4:], tab[4:]), y[4:])], methods, metrics,
                     target="label", progress=False)
    assert again.equals(table)


def test_evaluate_cuts_per_sample_forward_arguments_per_batch():
    model, x, mask, scale = _masked(7)
    kw = {"mask": mask, "scale": scale}
    methods, metrics = ["gradient", "input_x_gradient"], ["deletion", "completeness_gap",
                                                         ("sens", "max_sensitivity", {"samples": 2})]
    whole = evaluate(model, x, methods, metrics, forward_kwargs=kw, batch_size=7, progress=False)
    cut = evaluate(model, x, methods, metrics, forward_kwargs=kw, batch_size=3, progress=False)
    for key in whole.scores:
        torch.testing.assert_close(whole.scores[key], cut.scores[key], rtol=1e-12, atol=1e-14)
    grad = tribute.explain(model, x, "gradient", forward_kwargs=kw)
    torch.testing.assert_close(whole["gradient", "deletion"], deletion(model, x, grad, forward_kwargs=kw).score)
    with pytest.raises(ValueError, match=r"forward_kwargs\['mask'\] has 7 rows but the data hold 5"):
        evaluate(model, x[:5], methods, ["deletion"], forward_kwargs=kw, progress=False)
    with pytest.raises(TypeError, match="plain callable"):
        evaluate(model, x, [("mine", lambda m, inputs, t: inputs)], ["deletion"], forward_kwargs=kw, progress=False)
    with pytest.raises(TypeError, match="metric 'mine' does not take forward_kwargs="):
        evaluate(model, x, ["gradient"], [("mine", lambda m, inputs, a, t: a.sum(1))], forward_kwargs=kw,
                 progress=False)


# -- per-sample scores and errors --------------------------------------------------------------------------------------
def test_every_per_sample_metric_gives_one_score_per_sample_of_two_inputs():
    model, (img, tab) = _model(F.softplus), _inputs(3)
    a = tribute.explain(model, (img, tab), "integrated_gradients", target=0, steps=8)
    scores = [
        pixel_perturbation(model, (img, tab), a, 0, steps=3).score, deletion(model, (img, tab), a, 0, steps=3).score,
        insertion(model, (img, tab), a, 0, steps=3, replacement=("blur", "zero")).score,
        road(model, (img, tab), a, 0, input_index=0, fractions=(0.5,)).score,
        infidelity(model, (img, tab), a, 0, samples=3), completeness_gap(model, (img, tab), a, 0),
        sensitivity_n(model, (img, tab), a, 0, ns=[2, 5], samples=3).score,
        max_sensitivity(model, (img, tab), "gradient", 0, samples=2),
        local_lipschitz(model, (img, tab), "gradient", 0, samples=2, radius=(0.02, 0.0)),
    ]
    for s in scores:
        assert s.shape == (3,) and bool(torch.isfinite(s).all())


def test_bad_inputs_give_clear_errors():
    model, (img, tab) = _model(), _inputs()
    a = tribute.explain(model, (img, tab), "gradient", target=0)
    with pytest.raises(ValueError, match="one tensor per input, got 1 tensors"):
        deletion(model, (img, tab), (a[0],), 0)
    with pytest.raises(ValueError, match=r"attributions\[1\] has shape \(4, 3\); with several inputs"):
        deletion(model, (img, tab), (a[0], a[1][:, :3]), 0)
    with pytest.raises(ValueError, match=r"attributions\[0\] has shape \(4, 1, 6, 6\).*input_index=k"):
        deletion(model, (img, tab), (a[0].sum(1, keepdim=True), a[1]), 0)
    with pytest.raises(ValueError, match=r"input_index must be an integer in \[0, 2\)"):
        deletion(model, (img, tab), a, 0, input_index=2)
    with pytest.raises(ValueError, match="attributions has 3 entries but the model takes 2 inputs"):
        deletion(model, (img, tab), (*a, a[1]), 0, input_index=0)
    with pytest.raises(ValueError, match="ranked element by element.*reduce=None"):
        deletion(model, (img, tab), a, 0, reduce="sum")
    with pytest.raises(ValueError, match="patches tile one image"):
        deletion(model, (img, tab), a, 0, patch_size=2)
    with pytest.raises(ValueError, match=r"inputs\[1\]: a blur baseline needs inputs with two spatial dims"):
        insertion(model, (img, tab), a, 0)  # insertion's blur applies to every input unless told per input
    with pytest.raises(ValueError, match=r"nested: \(\(img, tab\), labels\)"):
        evaluate(model, (img, tab), ["gradient"], ["deletion"], progress=False)
    with pytest.raises(ValueError, match="ROAD imputes .* input_index=k"):
        road(model, (img, tab), a, 0)
    with pytest.raises(ValueError, match=r"ROAD imputes pixels of images: inputs\[1\] must be"):
        road(model, (img, tab), a, 0, input_index=1)
    with pytest.raises(ValueError, match=r"inputs\[1\]: square removal needs inputs with two spatial dims"):
        infidelity(model, (img, tab), a, 0, perturbation="square", samples=2)
    with pytest.raises(ValueError, match="replacement_token, keep_tokens and tokenizer apply to token ids"):
        deletion(model, (img, tab), a, 0, replacement_token=0)
    with pytest.raises(ValueError, match="draws from one Euclidean ball"):
        max_sensitivity(model, (img, tab), "gradient", 0, radius=(0.1, 0.2), ball="l2")
    with pytest.raises(ValueError, match=r"forward_args\[0\] is a tensor.*tribute.constant"):
        deletion(model, img, a[0], 0, forward_args=(tab[:2],))
    with pytest.raises(TypeError, match="plain callable.*forward_args="):
        max_sensitivity(model, img, lambda m, x, t: x, 0, forward_args=(tab,))
    bag, ids, mask, t_a = _tokens()
    kw = {"forward_kwargs": {"attention_mask": mask}}
    with pytest.raises(ValueError, match="replacement='blur' makes real values.*token ids.*replacement_token="):
        deletion(bag, ids, t_a, 0, replacement="blur", replacement_token=PAD, **kw)
    with pytest.raises(ValueError, match="a removed token is replaced by a baseline token; pass replacement_token="):
        insertion(bag, ids, t_a, 0, **kw)
    with pytest.raises(ValueError, match="pass tokenizer="):
        deletion(bag, ids, t_a, 0, replacement_token="mask", **kw)
    with pytest.raises(TypeError, match="infidelity moves inputs by real amounts.*token ids"):
        infidelity(bag, ids, t_a, 0, **kw)
    with pytest.raises(TypeError, match="ROAD moves inputs by real amounts"):
        road(bag, ids, t_a, 0, **kw)
    with pytest.raises(ValueError, match="attributions have shape"):
        deletion(bag, ids, t_a[:, :, None].expand(-1, -1, 3), 0, replacement_token=PAD, **kw)


def test_a_train_mode_model_is_refused_unchanged_with_several_inputs():
    model, (img, tab) = _model(), _inputs()
    a = tribute.explain(model, (img, tab), "gradient", target=0)
    model.conv = nn.Sequential(model.conv, nn.Dropout(0.5)).to(DT)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    for call in (lambda: deletion(model, (img, tab), a, 0), lambda: infidelity(model, (img, tab), a, 0),
                 lambda: max_sensitivity(model, (img, tab), "gradient", 0)):
        with pytest.raises(ValueError, match="train mode"):
            call()
    assert model.training and all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_a_function_is_a_model_and_one_running_in_train_mode_is_refused_unchanged():
    model, (img, tab) = _model(), _inputs()
    a = tribute.explain(model, (img, tab), "gradient", target=0)

    def function(image, table):
        return model(image, table)
    _curves(deletion(function, (img, tab), a, 0, steps=3), deletion(model, (img, tab), a, 0, steps=3))
    _exactly(max_sensitivity(function, (img, tab), "gradient", 0, samples=2),
             max_sensitivity(model, (img, tab), "gradient", 0, samples=2))
    table = evaluate(function, ((img, tab), None), ["gradient"], ["deletion"], target=0, progress=False)
    _exactly(table["gradient", "deletion"], deletion(model, (img, tab), a, 0).score.double())
    # a function hides its modules from the check: the guard stops the train-mode op before it runs
    norm = nn.BatchNorm1d(4).to(DT).train()

    def normalised(image, table):
        return model(image, norm(table))
    before = norm.running_mean.clone()
    for call in (lambda: deletion(normalised, (img, tab), a, 0),
                 lambda: evaluate(normalised, ((img, tab), None), ["gradient"], ["deletion"], progress=False)):
        with pytest.raises(ValueError, match="train"):
            call()
    assert torch.equal(norm.running_mean, before) and int(norm.num_batches_tracked) == 0


def test_evaluate_passes_the_map_of_one_input_to_metrics_that_name_it():
    model, (img, tab) = _model(), _inputs()
    cam = ("gc", "gradcam", {"layer": "conv", "input_index": 0})
    table = evaluate(model, ((img, tab), None), [cam], [("del", "deletion", {"input_index": 0, "steps": 4})],
                     target=1, progress=False)
    a = tribute.explain(model, (img, tab), "gradcam", target=1, layer="conv", input_index=0)
    assert a.shape == (4, 1, 6, 6)
    _exactly(table["gc", "del"], deletion(model, (img, tab), a, 1, input_index=0, steps=4).score)
    with pytest.raises(ValueError, match="got Tensor.*input_index=k"):
        evaluate(model, ((img, tab), None), [cam], ["deletion"], target=1, progress=False)
