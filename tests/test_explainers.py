"""The aligned explainer's head, wrapper and registered method (tribute.explainers; Zeng et al. 2021).

- the head maps any feature size to the input's size exactly, by the planned transposed convolutions;
- the wrapper gives the classifier's own logits and the head's map from one pass, leaves the classifier as it was,
  and is a classifier to every other tribute method and metric (their results equal those on the classifier);
- ``"aligned"`` returns the head's map from one forward pass, for the predicted class only;
- bad input: an unknown layer, a layer whose output is not 4-D, a wrong input shape, another model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN
from torch import nn

import tribute
from tribute.explainers import PAPER_WIDTHS, AlignedExplainer, ExplainerHead, default_widths, plan_axis


def net(seed: int = 0, dtype=torch.float64) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(6, 12).to(dtype)  # (1, 8, 8) → 10; the CAM layer is the last block, `last`
    with torch.no_grad():  # batch-norm statistics away from the identity, so eval mode differs from train mode
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def images(n: int = 5, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def wrapper(seed: int = 0, **kw) -> AlignedExplainer:
    torch.manual_seed(seed + 100)
    return AlignedExplainer(net(seed), (1, 8, 8), **kw).eval()


# -- the head --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size_in", range(1, 12))
@pytest.mark.parametrize("size_out", [1, 3, 8, 17, 28, 32, 64, 224])
def test_the_plan_reaches_the_input_size_exactly(size_in, size_out):
    if size_in > size_out:
        with pytest.raises(ValueError, match="only upsamples"):
            plan_axis(size_in, size_out)
        return
    steps = plan_axis(size_in, size_out)
    size = size_in
    for s in steps:  # the transposed convolution's size formula, layer by layer
        assert s.size_in == size and 0 <= s.output_padding < max(s.stride, 1) and s.padding >= 0
        size = (size - 1) * s.stride - 2 * s.padding + s.kernel + s.output_padding
        assert size == s.size_out
    assert size == size_out
    product = 1
    for s in steps:
        product *= s.stride
    surplus = size_in * product - size_out
    assert 0 <= surplus < size_out  # upsampled to at least the input (never twice), the surplus cut by padding
    for k in range(8):  # a trunk of stride-2 layers rounding up (28 → 14 → 7 → 4): less than one feature cell cut
        if size_in == -(-size_out // 2**k):
            assert surplus < product


@pytest.mark.parametrize("feature, inp, strides", [((4, 4), (32, 32), (1, 2, 2, 2)), ((7, 7), (28, 28), (1, 1, 2, 2)),
                                                   ((7, 7), (224, 224), (2, 2, 2, 4)), ((4, 7), (28, 28), None)])
def test_the_head_maps_features_to_the_input_size(feature, inp, strides):
    head = ExplainerHead(16, feature, inp).eval()
    out = head(torch.randn(2, 16, *feature))
    assert out.shape == (2, 1, *inp)
    if strides is not None:
        assert tuple(s.stride for s in head.plan[0]) == strides
        convs = [m for m in head.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert [c.stride[0] for c in convs] == list(strides)
    assert tuple(s.size_out for s in head.plan[1])[-1] == inp[1]


def test_widths_narrow_by_default_and_the_paper_s_widen():
    assert default_widths(64) == (32, 16, 8, 8)  # the experiment's width-8 ResNet-18: no cap reached
    assert default_widths(32) == (16, 8, 8, 8)  # none below 8
    assert default_widths(512) == (128, 64, 32, 16)  # capped at 16·2^(L−1−i)
    assert default_widths(2048, layers=5) == (256, 128, 64, 32, 16)
    paper = ExplainerHead(512, (4, 4), (32, 32), PAPER_WIDTHS)
    convs = [m for m in paper.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512] and paper.out.in_channels == 512
    assert all(isinstance(m, nn.BatchNorm2d) for m in paper.upsample[1::3])
    assert all(isinstance(m, nn.ReLU) for m in paper.upsample[2::3])
    with pytest.raises(ValueError, match="positive ints"):
        ExplainerHead(8, (2, 2), (8, 8), (4, 0))


def _multiply_adds(head: ExplainerHead, features: torch.Tensor) -> list[int]:
    """Multiply-adds per image of each transposed convolution, counted from the shapes the layers saw."""
    counts = []
    hooks = [m.register_forward_hook(lambda m, i, o: counts.append(
        i[0][0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1]))
        for m in head.modules() if isinstance(m, nn.ConvTranspose2d)]
    with torch.no_grad():
        head(features)
    for h in hooks:
        h.remove()
    return counts


def test_the_default_head_s_cost_past_its_first_layer_does_not_grow_with_the_channels():
    # an ImageNet-sized CNN's last stage (7×7) to 224×224: every layer after the first costs the same for any C,
    # the first grows linearly in C; uncapped (C/2, C/4, ...) the full-resolution layer alone grows as C²
    costs = {c: _multiply_adds(ExplainerHead(c, (7, 7), (224, 224)), torch.zeros(1, c, 7, 7))
             for c in (256, 512, 1280, 2048)}
    assert len({tuple(v[1:]) for v in costs.values()}) == 1
    assert costs[2048][0] == 8 * costs[256][0] == 49 * 2048 * 128 * 4 * 4
    assert costs[256][-1] == 56 * 56 * 32 * 16 * 8 * 8  # stride 4, kernel 8: 7→224 needs 2, 2, 2, 4
    uncapped = _multiply_adds(ExplainerHead(1280, (7, 7), (224, 224), (640, 320, 160, 80)), torch.zeros(1, 1280, 7, 7))
    assert sum(costs[1280]) < 0.1 * sum(uncapped)


# -- the wrapper -----------------------------------------------------------------------------------------------

def test_one_pass_gives_the_classifier_s_logits_and_an_input_sized_map():
    w, x = wrapper(), images()
    calls = []
    handle = w.classifier.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        out = w(x)
    finally:
        handle.remove()
    assert len(calls) == 1  # one pass of the classifier for both outputs
    assert list(out) == ["logits", "attribution"]
    assert out["attribution"].shape == (5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], w.classifier(x), rtol=0, atol=0)
        # the map is the head applied to the default layer's output: the CAM layer, 'last'
        assert w.layer == "last" and w.feature_shape == (12, 4, 4)
        torch.testing.assert_close(out["attribution"], w.head(w.classifier.last(w.classifier.stem(x))), rtol=0,
                                   atol=0)


def test_the_classifier_is_left_as_it_was():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    w = AlignedExplainer(model, (1, 8, 8))
    assert model.training and all(m.training for m in model.modules())  # the probe pass restored the mode
    for k, v in model.state_dict().items():  # ...and did not update batch-norm statistics
        assert torch.equal(v, before[k]), k
    model.eval()
    w.eval()(images())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks  # the hooks of the pass are gone
    bad = images()[:, :, :4]
    with pytest.raises(ValueError, match=r"takes images \(N, 1, 8, 8\)"):
        w(bad)
    with pytest.raises(TypeError, match="bogus"):  # the classifier fails inside the pass: the hook goes all the same
        w(images(), bogus=1)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_named_layer_and_bad_layers():
    w = wrapper(layer="stem")
    assert w.feature_shape == (6, 8, 8) and w(images())["attribution"].shape == (5, 1, 8, 8)
    with pytest.raises(tribute.LayerError, match="no layer named 'lats'.*'last'"):
        wrapper(layer="lats")
    with pytest.raises(tribute.LayerError, match=r"layer 'fc' gives an activation of shape \(1, 10\), not a feature"):
        wrapper(layer="fc")
    with pytest.raises(ValueError, match="input_shape must be one image's"):
        AlignedExplainer(net(), (8, 8))


def test_other_methods_see_the_wrapper_as_the_classifier():
    w, x = wrapper(), images()
    for method, kw, layer_kw in [("gradient", {}, {}), ("integrated_gradients", {"steps": 8}, {}),
                                 ("lrp", {}, {}), ("gradcam", {}, {"layer": "last"})]:
        on_wrapper = tribute.explain(w, x, method, target=3, **kw,
                                     **{k: "classifier." + v for k, v in layer_kw.items()})
        on_classifier = tribute.explain(w.classifier, x, method, target=3, **kw, **layer_kw)
        torch.testing.assert_close(on_wrapper, on_classifier, rtol=1e-10, atol=1e-12, msg=method)
    # forward arguments reach the classifier
    g = tribute.explain(w, x, "gradient", target=3, forward_kwargs={"gain": tribute.constant(2.0)})
    torch.testing.assert_close(g, tribute.explain(w.classifier, x, "gradient", target=3,
                                                  forward_kwargs={"gain": tribute.constant(2.0)}))


# -- the registered method -------------------------------------------------------------------------------------

def test_aligned_returns_the_head_s_map_from_one_forward_pass():
    w, x = wrapper(), images()
    explainer = tribute.get_method("aligned")(w)
    a = explainer.attribute(x)
    assert explainer.passes.forward_rows == 5 and explainer.passes.backward_rows == 0
    with torch.no_grad():
        torch.testing.assert_close(a, w(x)["attribution"], rtol=0, atol=0)
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.float64 and not a.requires_grad
    # in chunks: the same maps, one forward row per sample
    chunked = explainer.attribute(x, batch_size=2)
    torch.testing.assert_close(chunked, a, rtol=1e-12, atol=1e-14)
    assert explainer.passes.forward_rows == 5
    # through explain, one sample at a time equals the batch
    for i in range(5):
        torch.testing.assert_close(tribute.explain(w, x[i:i + 1], "aligned"), a[i:i + 1], rtol=1e-12, atol=1e-14)


def test_a_target_other_than_the_prediction_is_refused():
    w, x = wrapper(), images()
    with torch.no_grad():
        predicted = w(x)["logits"].argmax(1)
    a = tribute.explain(w, x, "aligned")
    torch.testing.assert_close(tribute.explain(w, x, "aligned", target=predicted), a, rtol=0, atol=0)
    other = predicted.clone()
    other[2] = (other[2] + 1) % 10
    with pytest.raises(ValueError, match=r"differs from the prediction for samples \[2\]"):
        tribute.explain(w, x, "aligned", target=other)
    with pytest.raises(ValueError, match="callable target names no class"):
        tribute.explain(w, x, "aligned", target=lambda out: out[:, 0])
    with pytest.raises(ValueError, match="output= unset"):
        tribute.explain(w, x, "aligned", output="logits")


def test_aligned_refuses_a_model_without_a_head():
    with pytest.raises(TypeError, match="AlignedExplainer's head.*AlignedExplainer\\(classifier, input_shape\\)"):
        tribute.explain(net(), images(), "aligned")


def test_the_map_is_differentiable_on_request():
    w, x = wrapper(), images(2)
    a = tribute.explain(w, x, "aligned", differentiable=True)
    assert a.requires_grad
    a.sum().backward()
    assert w.head.out.weight.grad is not None


def test_metrics_and_evaluate_take_the_aligned_explainer():
    w, x = wrapper(), images(4)
    maps = tribute.explain(w, x, "aligned")
    curve = tribute.metrics.deletion(w, x, maps, steps=4)
    assert curve.score.shape == (4,) and bool(torch.isfinite(curve.score).all())
    # the same metric on the classifier with the same maps: the wrapper is the classifier to it
    torch.testing.assert_close(curve.score, tribute.metrics.deletion(w.classifier, x, maps, steps=4).score)
    table = tribute.evaluate(w, x, methods=["aligned", "gradient"], metrics=["deletion"], progress=False)
    text = str(table)
    assert "aligned" in text and "gradient" in text
    # the parameter randomisation test fixes the trained model's prediction for its randomised copies: the head's
    # one map is taken for it on request, and re-initialising the last block changes the maps
    with pytest.raises(ValueError, match="accept_any_target=True"):
        tribute.metrics.parameter_randomisation(w, x, "aligned", layers=["classifier.last.0"], mode="independent")
    result = tribute.metrics.parameter_randomisation(w, x, "aligned", layers=["classifier.last.0"],
                                                     mode="independent", method_options={"accept_any_target": True})
    other = tribute.explain(w, x, "aligned", target=(maps.new_zeros(4, dtype=torch.long) + 5), accept_any_target=True)
    torch.testing.assert_close(other, maps, rtol=0, atol=0)  # one map, whatever the class
    assert result.scores.shape[1:] == (1, 4) and bool((result.scores < 0.999).all())


class Functional(nn.Module):
    """The same kind of network with F.relu and F.adaptive_avg_pool2d: its default layer is a function's output."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 12, 3, padding=1, stride=2)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 1).flatten(1))


def test_a_default_layer_that_only_a_function_computes():
    torch.manual_seed(0)
    model = Functional().double().eval()
    w = AlignedExplainer(model, (1, 8, 8)).eval()
    assert w.layer == "the output of the 2nd call of relu on the input's path" and w.feature_shape == (12, 4, 4)
    x = images()
    out = w(x)
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=0)
        h = F.relu(model.c2(F.relu(model.c1(x))))
        torch.testing.assert_close(out["attribution"], w.head(h), rtol=0, atol=0)
    torch.testing.assert_close(tribute.explain(w, x, "aligned"), out["attribution"].detach(), rtol=0, atol=0)


def test_one_wrapper_explained_from_two_threads_and_in_float32():
    """The forward hook acts on its own thread's pass only: two threads on one wrapper get their own maps."""
    from conftest import concurrently

    w = wrapper()
    batches = [images(3, seed=11), images(3, seed=12)]
    alone = [tribute.explain(w, b, "aligned") for b in batches]
    results = concurrently(lambda i: tribute.explain(w, batches[i], "aligned"), 10)
    for i in (0, 1):
        assert all(torch.equal(r, alone[i]) for r in results[i])
    w32 = AlignedExplainer(net(dtype=torch.float32), (1, 8, 8)).eval()
    a = tribute.explain(w32, images(dtype=torch.float32), "aligned")
    assert a.dtype == torch.float32 and a.shape == (5, 1, 8, 8)
    with pytest.raises(TypeError, match="float64 but the model's parameters are torch.float32"):
        tribute.explain(w32, images(), "aligned")


def test_the_figures_take_the_aligned_maps():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tribute.viz import method_figure

    w, x = wrapper(), images(2)
    fig = method_figure(x.expand(-1, 3, -1, -1).float(), {"aligned": tribute.explain(w, x, "aligned").float(),
                                                          "gradient": tribute.explain(w, x, "gradient").float()})
    assert len(fig.axes) == 2 * 3  # per image: the image, then one map per method
    plt.close(fig)


def test_the_alignment_target_and_loss_by_hand():
    from tribute.explainers import alignment_loss, alignment_map

    a = torch.tensor([[[[1.0, -3.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, -2.0]]],  # two channels
                      [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)  # all zero
    g = alignment_map(a)
    # Σ_c |a_c| = [[2, 4], [0, 4]], mean 2.5 → divided; the zero map stays zero
    torch.testing.assert_close(g[0, 0], torch.tensor([[0.8, 1.6], [0.0, 1.6]], dtype=torch.float64))
    assert g.shape == (2, 1, 2, 2) and torch.equal(g[1], torch.zeros(1, 2, 2, dtype=torch.float64))
    assert torch.allclose(g[0].mean(), torch.tensor(1.0, dtype=torch.float64))
    # scale-free: the same map for the attribution times 1000
    torch.testing.assert_close(alignment_map(1000 * a), g)
    e = torch.zeros_like(g)
    torch.testing.assert_close(alignment_loss(e, g, "mse"), torch.tensor([(0.64 + 2.56 + 2.56) / 4, 0.0],
                                                                         dtype=torch.float64))
    torch.testing.assert_close(alignment_loss(e, g, "l2"), torch.tensor([(0.64 + 2.56 + 2.56) ** 0.5, 0.0],
                                                                        dtype=torch.float64))
    with pytest.raises(ValueError, match="loss must be one of 'mse', 'l2'"):
        alignment_loss(e, g, "l1")
    with pytest.raises(ValueError, match="differ in shape"):
        alignment_loss(e[:, :, :1], g)
    with pytest.raises(ValueError, match=r"image attributions \(N, C, H, W\)"):
        alignment_map(a[0])
