"""Models with several inputs (issue 12): a tuple of tensors in, a tuple of attributions out.

The axioms hold over all inputs together (completeness of IG, summation-to-delta of DeepLIFT, conservation
of ε-LRP), a second input held fixed as a forward argument gives the same attribution of the first, options
that describe the inputs take one entry per input, and Captum's tuple inputs agree where the definitions
coincide.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ImageAndTable, image_and_table, image_and_table_inputs
from torch import nn

import tribute
from tribute.core.baselines import make_baseline

DT = torch.float64


class TwoImages(nn.Module):
    """A siamese pair: one convolution applied to both images, the difference of their features scored."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu_a, self.relu_b = nn.ReLU(), nn.ReLU()
        self.head = nn.Linear(4 * 16, 2)

    def forward(self, a, b):
        return self.head((self.relu_a(self.conv(a)) - self.relu_b(self.conv(b))).flatten(1))


_model = image_and_table
_inputs = image_and_table_inputs


def _total(attributions):
    return sum(a.flatten(1).sum(1) for a in attributions)


def test_attributions_come_back_in_the_inputs_structure():
    model, (img, tab) = _model(), _inputs()
    for inputs in ((img, tab), [img, tab]):
        a = tribute.explain(model, inputs, "gradient", target=0)
        assert isinstance(a, tuple) and len(a) == 2
        assert a[0].shape == img.shape and a[1].shape == tab.shape
        assert a[0].dtype == DT and a[1].dtype == DT
    single = tribute.explain(model, (img, tab), "gradient", target=0)
    # the gradient of each input is autograd's, input by input
    leaves = [img.clone().requires_grad_(), tab.clone().requires_grad_()]
    model(*leaves)[:, 0].sum().backward()
    for a, leaf in zip(single, leaves, strict=True):
        torch.testing.assert_close(a, leaf.grad, rtol=0, atol=0)


def test_integrated_gradients_is_complete_over_both_inputs_together():
    model, (img, tab) = _model(F.softplus), _inputs()
    a = tribute.explain(model, (img, tab), "integrated_gradients", target=2, steps=64)
    gain = model(img, tab)[:, 2] - model(torch.zeros_like(img), torch.zeros_like(tab))[:, 2]
    torch.testing.assert_close(_total(a), gain.detach(), rtol=1e-10, atol=1e-12)
    # each input alone is not complete: both carry part of the score
    assert all(float(p.flatten(1).sum(1).abs().min()) > 1e-6 for p in a)


def test_deeplift_sums_to_the_score_difference_over_both_inputs():
    model, (img, tab) = _model(), _inputs()
    base = (img.mean() * torch.ones_like(img), torch.full_like(tab, 0.5))
    a = tribute.explain(model, (img, tab), "deeplift", target=1, baseline=base)
    gain = model(img, tab)[:, 1] - model(*base)[:, 1]
    torch.testing.assert_close(_total(a), gain.detach(), rtol=1e-12, atol=1e-12)


def test_deeplift_sums_to_delta_on_two_images():
    torch.manual_seed(3)
    model = TwoImages().to(DT).eval()
    a, b = torch.randn(3, 1, 6, 6, dtype=DT), torch.randn(3, 1, 6, 6, dtype=DT)
    phi = tribute.explain(model, (a, b), "deeplift", target=0)
    gain = model(a, b)[:, 0] - model(torch.zeros_like(a), torch.zeros_like(b))[:, 0]
    torch.testing.assert_close(_total(phi), gain.detach(), rtol=1e-12, atol=1e-12)


def test_epsilon_lrp_conserves_relevance_over_both_inputs_on_a_bias_free_model():
    model = _model()
    for m in model.modules():
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    img, tab = _inputs()
    r = tribute.explain(model, (img, tab), "lrp", target=0, composite="epsilon", epsilon=1e-12)
    torch.testing.assert_close(_total(r), model(img, tab)[:, 0].detach(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift", "gradient", "input_x_gradient"])
def test_a_second_input_held_as_a_forward_argument_gives_the_same_attribution(method):
    model, (img, tab) = _model(F.softplus if method == "integrated_gradients" else F.relu), _inputs()
    options = {"steps": 16} if method == "integrated_gradients" else {}
    if method in ("integrated_gradients", "deeplift"):
        # the table stays at its value along the path: its baseline is itself
        options["baseline"] = ("zero", tab)
    both = tribute.explain(model, (img, tab), method, target=1, **options)
    options.pop("baseline", None)
    held = tribute.explain(model, img, method, target=1, forward_args=(tab,), **options)
    torch.testing.assert_close(held, both[0], rtol=1e-12, atol=1e-14)
    if method in ("integrated_gradients", "deeplift"):
        assert float(both[1].abs().max()) == 0.0


def test_a_named_baseline_is_resolved_against_each_input():
    model, (img, tab) = _model(F.softplus), _inputs()
    a = tribute.explain(model, (img, tab), "integrated_gradients", target=0, steps=8, baseline=("blur", "mean"))
    blurred, mean = make_baseline("blur", img), make_baseline("mean", tab)
    b = tribute.explain(model, (img, tab), "integrated_gradients", target=0, steps=8, baseline=(blurred, mean))
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_noise_levels_per_input_are_relative_to_each_inputs_range():
    model, (img, tab) = _model(), _inputs(n=1)
    levels = (0.1, 0.3)
    by_level = tribute.explain(model, (img, tab), "smoothgrad", target=0, samples=5, seed=7, noise_level=levels)
    ranges = [float(t.max() - t.min()) for t in (img, tab)]
    sigmas = tuple(lv * r for lv, r in zip(levels, ranges, strict=True))
    by_sigma = tribute.explain(model, (img, tab), "smoothgrad", target=0, samples=5, seed=7, sigma=sigmas)
    for p, q in zip(by_level, by_sigma, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # the same level for both inputs is not the same noise: the table's range differs from the image's
    same = tribute.explain(model, (img, tab), "smoothgrad", target=0, samples=5, seed=7, noise_level=0.1)
    torch.testing.assert_close(same[0], by_level[0], rtol=1e-12, atol=1e-14)  # image: same level
    assert not torch.allclose(same[1], by_level[1])


def test_expected_gradients_takes_references_per_input():
    model, (img, tab) = _model(F.softplus), _inputs()
    refs = (torch.zeros(6, 2, 6, 6, dtype=DT), torch.randn(6, 4, dtype=DT))
    a = tribute.explain(model, (img, tab), "expected_gradients", target=0, references=refs, samples=4000, seed=0)
    expected_gain = model(img, tab)[:, 0] - model(*refs)[:, 0].mean()
    # in expectation the attributions sum to S(x) − E[S(x̄)]; 4000 draws of (x̄, α) keep the error small
    torch.testing.assert_close(_total(a), expected_gain.detach(), rtol=0.05, atol=0.05)


def test_inputs_that_disagree_in_batch_size_are_refused():
    model, (img, tab) = _model(), _inputs()
    with pytest.raises(ValueError, match=r"disagree.*inputs\[0\]: 4, inputs\[1\]: 3"):
        tribute.explain(model, (img, tab[:3]), "gradient", target=0)


def test_inputs_of_different_dtypes_are_refused_with_the_way_out():
    model, (img, tab) = _model(), _inputs()
    with pytest.raises(TypeError, match="forward_args= or forward_kwargs="):
        tribute.explain(model, (img, tab.float()), "gradient", target=0)


def test_a_per_input_option_with_the_wrong_number_of_entries_is_refused():
    model, (img, tab) = _model(), _inputs()
    with pytest.raises(ValueError, match="baseline has 3 entries but the model takes 2 inputs"):
        tribute.explain(model, (img, tab), "integrated_gradients", target=0, steps=4,
                        baseline=("zero", "zero", "zero"))


def test_a_nan_in_one_of_the_inputs_is_named():
    model, (img, tab) = _model(), _inputs()
    tab = tab.clone()
    tab[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"inputs\[1\] contain NaN or inf \(samples \[2\]\)"):
        tribute.explain(model, (img, tab), "gradient", target=0)


def _captum_pairs():
    ca = pytest.importorskip("captum.attr")
    return {
        "saliency": (lambda m: ca.Saliency(m), {"abs": True}, {}),
        "input_x_gradient": (lambda m: ca.InputXGradient(m), {}, {}),
        "deeplift": (lambda m: ca.DeepLift(m), {}, {}),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "deeplift"])
def test_tuple_inputs_agree_with_captum(method):
    torch.manual_seed(3)
    model = TwoImages().to(DT).eval()  # module ReLUs: Captum's DeepLift sees them
    a, b = torch.randn(3, 1, 6, 6, dtype=DT), torch.randn(3, 1, 6, 6, dtype=DT)
    make, captum_options, tribute_options = _captum_pairs()[method]
    theirs = make(model).attribute((a, b), target=1, **captum_options)
    ours = tribute.explain(model, (a, b), method, target=1, **tribute_options)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_integrated_gradients_on_tuple_inputs_agrees_with_captum():
    ca = pytest.importorskip("captum.attr")
    model, (img, tab) = _model(F.softplus), _inputs()
    theirs = ca.IntegratedGradients(model).attribute((img, tab), target=0, n_steps=32, method="gausslegendre")
    ours = tribute.explain(model, (img, tab), "integrated_gradients", target=0, steps=32)
    for p, q in zip(ours, theirs, strict=True):
        # Captum builds its nodes in float32 (see test_reference_captum): agreement to its rounding
        torch.testing.assert_close(p, q.detach(), rtol=1e-6, atol=1e-7)


def test_multi_input_integrated_gradients_passes_as_many_rows_as_single_input():
    model, (img, tab) = _model(F.softplus), _inputs()
    ig = tribute.IntegratedGradients(model, steps=16)
    ig.attribute((img, tab), target=0)
    both = ig.passes
    ig.attribute(img, target=0, forward_args=(tab,))
    one = ig.passes
    assert (both.forward_rows, both.backward_rows) == (one.forward_rows, one.backward_rows) == (4 * 16, 4 * 16)


class TableAndImage(ImageAndTable):
    """The same network with the image second: input_index=1."""

    def forward(self, table, image):
        return super().forward(image, table)


@pytest.mark.parametrize("method", ["gradcam", "gradcam_plus_plus", "scorecam", "guided_gradcam", "fullgrad",
                                    "contrastive_gradcam"])
def test_image_methods_explain_the_input_named_by_input_index(method):
    torch.manual_seed(0)
    model, (img, tab) = TableAndImage().to(DT).eval(), _inputs()
    options = {"layer": model.conv} if method != "fullgrad" else {}  # a function has no module names
    options.update(tribute.get_method(method).example_options)
    both = tribute.explain(model, (tab, img), method, target=1, input_index=1, **options)
    held = tribute.explain(lambda i, t: model(t, i), img, method, target=1, forward_args=(tab,), **options)
    assert not isinstance(both, tuple)
    torch.testing.assert_close(both, held, rtol=1e-12, atol=1e-14)


def test_image_methods_need_input_index_with_several_inputs():
    model, (img, tab) = _model(), _inputs()
    with pytest.raises(ValueError, match="gradcam explains one image.*input_index="):
        tribute.explain(model, (img, tab), "gradcam", target=0, layer="conv")
    with pytest.raises(ValueError, match=r"input_index must be an integer in \[0, 2\)"):
        tribute.explain(model, (img, tab), "gradcam", target=0, layer="conv", input_index=2)
    with pytest.raises(ValueError, match="makes 2-D class activation maps"):
        tribute.explain(model, (img, tab), "gradcam", target=0, layer="conv", input_index=1)


def test_layer_methods_take_several_inputs():
    model, (img, tab) = _model(F.softplus), _inputs()
    a = tribute.explain(model, (img, tab), "layer_integrated_gradients", layer="dense", target=0, steps=64,
                        baseline=(img, torch.zeros_like(tab)))
    # the image is held at its value; the dense layer is a cut for the table: completeness at the layer
    gain = model(img, tab)[:, 0] - model(img, torch.zeros_like(tab))[:, 0]
    torch.testing.assert_close(a.sum(1), gain.detach(), rtol=1e-9, atol=1e-11)


# -- second reading of issue 12: each input's first layer, constants beside the path, nested methods ----------------

class ImageTableRelu(nn.Module):
    """conv → ReLU → global mean for the image, dense → ReLU for the table, a linear head (module names for LRP)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.dense = nn.Linear(4, 5)
        self.head = nn.Linear(3 + 5, 3)

    def forward(self, image, table):
        return self.head(torch.cat([F.relu(self.conv(image)).mean((2, 3)), F.relu(self.dense(table))], 1))


class TableImageRelu(ImageTableRelu):
    """The same network taking the table first: the table's dense layer then runs before the image's convolution."""

    def forward(self, table, image):
        h = F.relu(self.dense(table))
        return self.head(torch.cat([F.relu(self.conv(image)).mean((2, 3)), h], 1))


def _relu_model(cls=ImageTableRelu):
    torch.manual_seed(5)
    return cls().to(DT).eval()


def _positive_inputs(n=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 5, 5, generator=g, dtype=DT), torch.rand(n, 4, generator=g, dtype=DT)


@pytest.mark.parametrize("order", ["image_first", "table_first"])
def test_a_composites_first_layer_rule_meets_every_inputs_first_layer(order):
    """epsilon_plus_flat puts the flat rule (Lapuschkin et al. 2019) on the first layer of *each* input, whichever
    runs first: the same as naming both layers; on a dense layer the flat rule spreads a unit's relevance evenly
    over its 4 inputs, so every feature of the table gets the same share."""
    from tribute.lrp import Composite, Epsilon, Flat, ZPlus

    cls = ImageTableRelu if order == "image_first" else TableImageRelu
    model, (img, tab) = _relu_model(cls), _positive_inputs()
    inputs, k_table = ((img, tab), 1) if order == "image_first" else ((tab, img), 0)
    named = Composite(conv=ZPlus(), dense=Epsilon(1e-6), by_name={"conv": Flat(), "dense": Flat()})
    flat = tribute.explain(model, inputs, "lrp", target=1, composite="epsilon_plus_flat")
    by_name = tribute.explain(model, inputs, "lrp", target=1, composite=named)
    for p, q in zip(flat, by_name, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    table = flat[k_table]
    torch.testing.assert_close(table, table[:, :1].expand_as(table), rtol=1e-12, atol=1e-14)
    # the ε rule the dense layer would get as a second layer does not spread evenly
    eps = tribute.explain(model, inputs, "lrp", target=1, composite="epsilon_plus")[k_table]
    assert float((eps - eps[:, :1]).abs().max()) > 1e-3 * float(eps.abs().max())


def test_a_composite_reads_first_on_each_inputs_first_layer_only():
    """A composite of its own that asks ``layer.first`` sees it on exactly the first layer of each input."""
    from tribute.lrp import Composite, Epsilon

    seen = []

    class Recording(Composite):
        def rule(self, layer):
            seen.append((layer.name, layer.first))
            return super().rule(layer)

    model, inputs = _relu_model(), _positive_inputs()
    tribute.explain(model, inputs, "lrp", target=0, composite=Recording(conv=Epsilon(1e-6), dense=Epsilon(1e-6)))
    assert sorted(set(seen)) == [("conv", True), ("dense", True), ("head", False)]


class WithToken(nn.Module):
    """A learned vector concatenated beside the input's features (a [CLS]-like token): off the input's path; a
    layer mixes both before a nonlinearity, so the token's parts (zero) meet the input's."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.randn(3))
        self.inner = nn.Linear(4, 5)
        self.mix = nn.Linear(8, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.cat([self.inner(x), self.token.expand(x.shape[0], -1)], 1)
        return self.head(torch.tanh(self.mix(torch.tanh(h))))


def test_reveal_cancel_gives_no_difference_to_a_constant_concatenated_beside_the_input():
    """Σφ = S(x) − S(x̄) (Shrikumar et al. 2017, §3.5.3): a concatenated constant has the same value in the input and
    reference rows, so its parts are zero, whatever its value."""
    torch.manual_seed(0)
    model = WithToken().to(DT).eval()
    x = torch.randn(4, 4, dtype=DT)
    phi = tribute.explain(model, x, "deeplift_reveal_cancel", target=1)
    gain = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(phi.sum(1), gain.detach(), rtol=1e-10, atol=1e-12)


class MixedImageTable(ImageTableRelu):
    """The image's and the table's features mixed by a layer and a ReLU before the head."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(3 + 5, 3 + 5)

    def forward(self, image, table):
        h = torch.cat([F.relu(self.conv(image)).mean((2, 3)), F.relu(self.dense(table))], 1)
        return self.head(F.relu(self.mix(h)))


def test_reveal_cancel_with_the_table_held_as_a_forward_argument_equals_the_table_at_its_baseline():
    model, (img, tab) = _relu_model(MixedImageTable), _positive_inputs()
    both = tribute.explain(model, (img, tab), "deeplift_reveal_cancel", target=2, baseline=("zero", tab))
    held = tribute.explain(model, img, "deeplift_reveal_cancel", target=2, forward_args=(tab,))
    torch.testing.assert_close(held, both[0], rtol=1e-12, atol=1e-14)
    gain = model(img, tab)[:, 2] - model(torch.zeros_like(img), tab)[:, 2]
    torch.testing.assert_close(held.flatten(1).sum(1), gain.detach(), rtol=1e-10, atol=1e-12)


def test_a_nested_base_method_takes_the_same_baseline_as_at_the_top_level():
    """σ = 0: SmoothGrad of integrated gradients is integrated gradients, with the base's per-input baselines (a
    number per input, or 'zero', is one value per feature; it was once taken as a name and became noise)."""
    model, (img, tab) = _model(F.softplus), _inputs(n=3)
    for baseline in ("zero", (0.0, 0.5), (torch.full((1, 2, 6, 6), 0.25, dtype=DT), "zero")):
        ig = tribute.explain(model, (img, tab), "integrated_gradients", target=0, steps=8, baseline=baseline)
        sg = tribute.explain(model, (img, tab), "smoothgrad", target=0, samples=2, sigma=0.0,
                             base="integrated_gradients", base_options={"steps": 8, "baseline": baseline})
        for p, q in zip(sg, ig, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_a_nested_base_method_refuses_what_it_cannot_pair_with_noisy_copies():
    model, (img, tab) = _model(F.softplus), _inputs(n=3)
    for base_options in ({"baseline": ("blur", "zero")}, {"baseline": (torch.zeros(3, 2, 6, 6, dtype=DT), 0.0)}):
        with pytest.raises(ValueError, match="nested in another"):
            tribute.explain(model, (img, tab), "smoothgrad", target=0, samples=2, base="integrated_gradients",
                            base_options={"steps": 4, **base_options})
    # one input: a per-sample baseline would meet noisy copies of other samples
    with pytest.raises(ValueError, match="one entry per sample"):
        tribute.explain(model, img, "smoothgrad", target=0, samples=2, base="integrated_gradients",
                        base_options={"steps": 4, "baseline": torch.zeros_like(img)}, forward_args=(tab,))


def test_smoothgrad_of_an_image_method_on_two_inputs_returns_its_map():
    model, (img, tab) = _relu_model(), _positive_inputs()
    cam = tribute.explain(model, (img, tab), "gradcam", target=0, layer="conv", input_index=0)
    sg = tribute.explain(model, (img, tab), "smoothgrad", target=0, samples=2, sigma=0.0, base="gradcam",
                         base_options={"layer": "conv", "input_index": 0})
    assert isinstance(sg, torch.Tensor)
    torch.testing.assert_close(sg, cam, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="input_index="):
        tribute.explain(model, (img, tab), "smoothgrad", target=0, samples=2, base="gradcam",
                        base_options={"layer": "conv"})


def test_noise_key_takes_the_inputs_structure():
    model, (img, tab) = _model(), _inputs(n=2)
    options = {"target": 0, "samples": 3, "seed": 4, "noise_level": (0.1, 0.2)}
    own = tribute.explain(model, (img, tab), "smoothgrad", **options)
    keyed = tribute.explain(model, (img, tab), "smoothgrad", noise_key=(img, tab), **options)
    for p, q in zip(own, keyed, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise_key has 1 tensors but the model takes 2 inputs"):
        tribute.explain(model, (img, tab), "smoothgrad", noise_key=(img,), **options)


def test_full_gradient_of_two_inputs_is_complete_over_both():
    """S(x) = Σ_k Σ (∇_{x_k} S ⊙ x_k) + Σ_l Σ bias-gradients (Srinivas & Fleuret 2019, Eq 1), over both inputs,
    with a per-sample forward argument and the scores named in a dict."""

    class Scaled(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image, table, scale):
            return {"scores": self.net(image, table) * scale[:, None], "other": torch.zeros(2)}

    model, (img, tab) = Scaled(_relu_model()).eval(), _positive_inputs()
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=DT)
    d = tribute.FullGrad(model).full_gradient((img, tab), target=1, forward_args=(scale,), output="scores")
    assert isinstance(d.input_term, tuple) and [t.shape for t in d.input_term] == [img.shape, tab.shape]
    total = _total(d.input_term) + sum(t.flatten(1).sum(1) for t in d.bias_terms)
    torch.testing.assert_close(total, model(img, tab, scale)["scores"][:, 1].detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "deeplift", "lrp_epsilon", "lrp"])
def test_strict_counts_the_unpacking_of_several_inputs_as_linear(method):
    model, (img, tab) = _relu_model(), _positive_inputs()
    options = {} if method == "lrp" else {"input_transform": (tribute.Normalize([0.5, 0.4], [0.2, 0.3]), None)}
    strict = tribute.explain(model, (img, tab), method, target=0, strict=True, **options)
    plain = tribute.explain(model, (img, tab), method, target=0, **options)
    for p, q in zip(strict, plain, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_differentiable_attributions_of_two_inputs_are_differentiated_to_each_input(method):
    """The attribution stays on the graph through the packing: its derivative with respect to each input is
    autograd's double backward on the separate tensors."""
    model, (img, tab) = _model(F.softplus), _inputs(n=2)
    v = (torch.randn_like(img), torch.randn_like(tab))
    xs = (img.clone().requires_grad_(), tab.clone().requires_grad_())
    a = tribute.explain(model, xs, method, target=1, differentiable=True)
    ours = torch.autograd.grad(sum((p * w).sum() for p, w in zip(a, v, strict=True)), xs)
    ref = (img.clone().requires_grad_(), tab.clone().requires_grad_())
    g = torch.autograd.grad(model(*ref)[:, 1].sum(), ref, create_graph=True)
    if method == "input_x_gradient":
        g = tuple(x * gx for x, gx in zip(ref, g, strict=True))
    theirs = torch.autograd.grad(sum((p * w).sum() for p, w in zip(g, v, strict=True)), ref)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method, options", [("gradient", {}), ("integrated_gradients", {"steps": 4}),
                                             ("deeplift", {}), ("lrp", {}), ("smoothgrad", {"samples": 2, "seed": 0})])
def test_half_precision_tuples_equal_the_table_held_in_the_same_dtype(method, options, dtype):
    """Packing several inputs (cat, split, reshape) is exact in any dtype: the image's attribution is the one with
    the table held, in the inputs' dtype (SmoothGrad without noise: its streams are keyed by the whole sample)."""
    model = _relu_model().to(dtype)
    img, tab = (t.to(dtype) for t in _positive_inputs())
    extra = {"baseline": ("zero", tab)} if "baseline" in tribute.get_method(method).schema() else {}
    if method == "smoothgrad":
        options = {**options, "sigma": 0.0}
    try:
        held = tribute.explain(model, img, method, target=0, forward_args=(tab,), **options)
    except tribute.NonFiniteAttributionError:  # float16's range: the same refusal either way
        with pytest.raises(tribute.NonFiniteAttributionError, match=f"in {dtype}"):
            tribute.explain(model, (img, tab), method, target=0, **options, **extra)
        return
    both = tribute.explain(model, (img, tab), method, target=0, **options, **extra)
    assert both[0].dtype == dtype and both[1].dtype == dtype
    torch.testing.assert_close(both[0], held, rtol=1e-2, atol=1e-3)


# -- Captum with tuple inputs and additional forward arguments ----------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method, captum_name", [("guided_backprop", "GuidedBackprop"),
                                                 ("deconvnet", "Deconvolution")])
def test_guided_backprop_and_deconvnet_on_tuple_inputs_agree_with_captum(method, captum_name):
    ca = pytest.importorskip("captum.attr")
    torch.manual_seed(3)
    model = TwoImages().to(DT).eval()  # module ReLUs, as Captum's hooks need
    a, b = torch.randn(3, 1, 6, 6, dtype=DT), torch.randn(3, 1, 6, 6, dtype=DT)
    theirs = getattr(ca, captum_name)(model).attribute((a, b), target=1)
    ours = tribute.explain(model, (a, b), method, target=1)
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-12)


class GatedImageTable(nn.Module):
    """Module ReLUs (for Captum's DeepLift), a named layer, and a per-sample ``gate`` passed positionally."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu_conv = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()
        self.dense, self.relu_dense = nn.Linear(4, 5), nn.ReLU()
        self.head = nn.Linear(3 + 5, 3)

    def forward(self, image, table, gate):
        h = self.relu_conv(self.conv(image)).mean((2, 3))
        return self.head(torch.cat([h, self.relu_dense(self.dense(table)) * gate[:, None]], 1))


def _gated():
    torch.manual_seed(4)
    model = GatedImageTable().to(DT).eval()
    img, tab = _positive_inputs()
    return model, img, tab, torch.tensor([1.0, -0.5, 2.0], dtype=DT)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_layer_integrated_gradients_with_tuple_inputs_and_forward_arguments_agrees_with_captum():
    ca = pytest.importorskip("captum.attr")
    model, img, tab, gate = _gated()
    theirs = ca.LayerIntegratedGradients(model, model.relu_conv).attribute(
        (img, tab), target=2, additional_forward_args=(gate,), n_steps=16, method="gausslegendre")
    ours = tribute.explain(model, (img, tab), "layer_integrated_gradients", layer="relu_conv", target=2, steps=16,
                           forward_args=(gate,))
    # Captum builds its nodes in float32 (see test_reference_captum): agreement to its rounding
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_layer_gradient_x_activation_and_deeplift_with_forward_arguments_agree_with_captum():
    ca = pytest.importorskip("captum.attr")
    model, img, tab, gate = _gated()
    theirs = ca.LayerGradientXActivation(model, model.relu_dense).attribute(
        (img, tab), target=0, additional_forward_args=(gate,))
    ours = tribute.explain(model, (img, tab), "layer_gradient_x_activation", layer="relu_dense", target=0,
                           forward_args=(gate,))
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-10, atol=1e-12)
    theirs = ca.DeepLift(model).attribute((img, tab), target=0, additional_forward_args=(gate,))
    ours = tribute.explain(model, (img, tab), "deeplift", target=0, forward_args=(gate,))
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-12)


class TwoBranches(nn.Module):
    """Two images, each with its own convolution: the last spatial map before the output is the first image's."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, a, b):
        return self.head(torch.cat([F.relu(self.conv_a(a)).mean((2, 3)), F.relu(self.conv_b(b)).mean((2, 3))], 1))


def test_image_methods_on_several_inputs_need_the_images_layer():
    """The default layer could be a map of another image (here the first): Grad-CAM of the second image needs its
    layer named, and then it is the map of that image's own branch."""
    torch.manual_seed(0)
    model = TwoBranches().to(DT).eval()
    a, b = torch.rand(2, 1, 6, 6, dtype=DT), torch.rand(2, 1, 6, 6, dtype=DT)
    with pytest.raises(ValueError, match=r"needs layer=, a layer on the branch of the image \(input 1\)"):
        tribute.explain(model, (a, b), "gradcam", target=0, input_index=1)
    cam = tribute.explain(model, (a, b), "gradcam", target=0, input_index=1, layer="conv_b")
    held = tribute.explain(lambda y, x: model(x, y), b, "gradcam", target=0, forward_args=(a,), layer=model.conv_b)
    torch.testing.assert_close(cam, held, rtol=1e-12, atol=1e-14)
