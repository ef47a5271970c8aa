"""The input contract of issue 12 over every registered method (``tribute.methods()``).

On one two-input model (an image and a table), each method
- returns the right structure: one tensor per input for input-shaped methods, a map or a layer's activation for the
  CAM and layer methods (``input_index=`` names the image);
- equals the same method run on the image alone with the table held as a forward argument, where the two are the
  same computation (the baseline methods hold the table at itself, ``baseline=("zero", table)``); the methods whose
  random streams are keyed by each sample's bytes (noise, references) draw differently when the table is part of
  the sample, so they are checked by hand instead;
- with a per-sample forward argument, equals the samples explained one at a time, in chunks that cut across samples;
- takes a target as an int, a tensor or a callable, with the same result (or a clear refusal);
- reads the scores of a dict-returning model with ``output=``, and refuses to guess without it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import concurrently
from torch import nn

import tribute
from tribute.core.randomness import SampleStreams, draw_references

DT = torch.float64
N = 3
NOISY = {"smoothgrad", "smoothgrad_squared", "vargrad", "expected_gradients", "layer_expected_gradients",
         # sampled coalitions, keyed by the whole sample too (and LIME's table features are players of its surrogate);
         # KernelSHAP's exact regime is checked against the table held in tests/test_kernel_shap.py
         "kernel_shap", "shapley_sampling", "lime"}


class ImageTable(nn.Module):
    """Two convolutions and global average pooling for a (2, 5, 5) image, a dense layer for a table of 4, a linear
    head on both.  Every method applies: ``relu2``'s maps feed global average pooling and a linear head, as CAM
    needs.  Two optional per-sample arguments (one number per sample): ``gate`` shifts the first feature maps (it
    changes which units are active, so every method's result), ``scale`` multiplies the features the head reads."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.dense, self.relu3 = nn.Linear(4, 5), nn.ReLU()
        self.head = nn.Linear(4 + 5, 3)

    def forward(self, image, table, gate=None, scale=None):
        a = self.relu1(self.conv1(image))
        if gate is not None:
            a = a + gate[:, None, None, None]
        f = torch.cat([self.relu2(self.conv2(a)).mean((2, 3)), self.relu3(self.dense(table))], 1)
        if scale is not None:
            f = f * scale[:, None]
        return self.head(f)


class DictOut(nn.Module):
    """The same network returning a dict with two tensors and no ``logits``: the scores must be named."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image, table, **kwargs):
        return {"scores": self.net(image, table, **kwargs),
                "extra": torch.zeros(image.shape[0], 2, dtype=image.dtype)}


def _net(seed: int = 0) -> ImageTable:
    torch.manual_seed(seed)
    return ImageTable().to(DT).eval()


def _data(n: int = N, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 5, 5, generator=g, dtype=DT), torch.rand(n, 4, generator=g, dtype=DT)


REFS = (torch.rand(4, 2, 5, 5, generator=torch.Generator().manual_seed(7), dtype=DT),
        torch.rand(4, 4, generator=torch.Generator().manual_seed(8), dtype=DT))


def _options(method: str, net: nn.Module, *, image_only: bool = False, table=None) -> dict:
    """The method's cheap options on the two-input model (``image_only``: for the image with the table held);
    ``table``: hold the table at itself in the baseline methods (``baseline=("zero", table)``)."""
    cls = tribute.get_method(method)
    schema = cls.schema()
    o = dict(cls.example_options)
    if "layer" in schema:
        o["layer"] = net.relu2
    if "input_index" in schema and not image_only:
        o["input_index"] = 0
    if "references" in schema:  # expected gradients, prediction difference
        o["references"] = REFS[0] if image_only else REFS
    if table is not None and "baseline" in schema and schema["baseline"].per_input == "baseline" and not image_only:
        o["baseline"] = ("zero", table)
    return o


def _expected_shapes(method: str, img: torch.Tensor, tab: torch.Tensor):
    cls = tribute.get_method(method)
    if method == "guided_gradcam":
        return img.shape  # guided backprop ⊙ Grad-CAM: the image's shape
    if cls.returns == "map":
        return (img.shape[0], 1, *img.shape[-2:])
    if cls.returns == "layer":
        return (img.shape[0], 4, 5, 5)  # relu2's activation
    return (img.shape, tab.shape)


@pytest.mark.parametrize("method", tribute.methods())
def test_two_inputs_give_the_right_structure_and_equal_the_table_held_as_a_forward_argument(method):
    net, (img, tab) = _net(), _data()
    both = tribute.explain(net, (img, tab), method, target=1, **_options(method, net, table=tab))
    shapes = _expected_shapes(method, img, tab)
    if isinstance(shapes, tuple) and isinstance(shapes[0], torch.Size):
        assert isinstance(both, tuple) and tuple(a.shape for a in both) == shapes
        assert all(a.dtype == DT for a in both)
        image_part = both[0]
    else:
        assert isinstance(both, torch.Tensor) and tuple(both.shape) == tuple(shapes)
        image_part = both
    if method in NOISY:
        assert all(bool(torch.isfinite(a).all()) for a in (both if isinstance(both, tuple) else (both,)))
        return  # their streams are keyed by the whole sample (image and table): see the tests by hand below
    held = tribute.explain(net, img, method, target=1, forward_args=(tab,), **_options(method, net, image_only=True))
    torch.testing.assert_close(image_part, held, rtol=1e-10, atol=1e-12)
    if isinstance(both, tuple) and "baseline" in tribute.get_method(method).schema():
        assert float(both[1].abs().max()) == 0.0  # the table at its baseline: no difference, no attribution


@pytest.mark.parametrize("method", tribute.methods())
def test_a_per_sample_forward_argument_gives_each_sample_its_own_result(method):
    net, (img, tab) = _net(), _data()
    kwargs = {"gate": torch.tensor([-0.4, 0.3, 0.0], dtype=DT), "scale": torch.tensor([1.0, 0.5, 2.0], dtype=DT)}
    options = {**_options(method, net), "batch_size": 2}  # chunks cut across samples
    if method == "layer_expected_gradients":
        with pytest.raises(ValueError, match="per-sample forward arguments"):
            tribute.explain(net, (img, tab), method, target=2, forward_kwargs=kwargs, **options)
        return
    batched = tribute.explain(net, (img, tab), method, target=2, forward_kwargs=kwargs, **options)
    for i in range(N):
        alone = tribute.explain(net, (img[i:i + 1], tab[i:i + 1]), method, target=2,
                                forward_kwargs={k: v[i:i + 1] for k, v in kwargs.items()}, **options)
        for b, a in zip(_parts(batched), _parts(alone), strict=True):
            torch.testing.assert_close(b[i:i + 1], a, rtol=1e-10, atol=1e-12)
    # the arguments matter: without them the result differs
    plain = tribute.explain(net, (img, tab), method, target=2, **options)
    assert not all(torch.allclose(p, q) for p, q in zip(_parts(batched), _parts(plain), strict=True))


def _parts(a):
    return a if isinstance(a, tuple) else (a,)


@pytest.mark.parametrize("method", tribute.methods())
def test_a_target_as_an_int_a_tensor_or_a_callable_gives_the_same_attribution(method):
    net, (img, tab) = _net(), _data()
    options = _options(method, net)
    by_int = tribute.explain(net, (img, tab), method, target=1, **options)
    by_tensor = tribute.explain(net, (img, tab), method, target=torch.ones(N, dtype=torch.long), **options)
    for p, q in zip(_parts(by_int), _parts(by_tensor), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    if method == "contrastive_gradcam":  # "why P rather than Q" needs a class P
        with pytest.raises(ValueError, match="not a callable"):
            tribute.explain(net, (img, tab), method, target=lambda out: out[:, 1], **options)
        return
    by_callable = tribute.explain(net, (img, tab), method, target=lambda out: out[:, 1], **options)
    for p, q in zip(_parts(by_int), _parts(by_callable), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", tribute.methods())
def test_output_names_the_scores_of_a_dict_returning_model(method):
    net, (img, tab) = _net(), _data()
    wrapped = DictOut(net).eval()
    options = _options(method, net)  # layer= is the module itself, found inside the wrapper too
    plain = tribute.explain(net, (img, tab), method, target=0, **options)
    named = tribute.explain(wrapped, (img, tab), method, target=0, output="scores", **options)
    for p, q in zip(_parts(plain), _parts(named), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"'scores'.*'extra'.*output="):
        tribute.explain(wrapped, (img, tab), method, target=0, **options)


# -- the noisy methods, by hand ------------------------------------------------------------------------------

def test_smoothgrad_with_the_table_free_of_noise_is_the_mean_gradient_of_the_image_over_its_noise():
    """σ = (s, 0): each draw of the packed row (image and table, keyed by the whole sample) moves the image only, so
    SmoothGrad's image part is the mean of the image's gradients at those points with the table held."""
    net, (img, tab) = _net(), _data()
    k, s, seed = 4, 0.3, 11
    sg = tribute.explain(net, (img, tab), "smoothgrad", target=1, samples=k, sigma=(s, 0.0), seed=seed)
    packed = torch.cat([img.flatten(1), tab], 1)
    sample = torch.arange(N).repeat_interleave(k)
    noise = SampleStreams(packed, seed).draw("normal", sample, (packed.shape[1],), dtype=DT, device="cpu")
    image_noise = noise[:, :img[0].numel()].reshape(N * k, *img.shape[1:])
    grads = tribute.explain(net, img[sample] + s * image_noise, "gradient", target=1, forward_args=(tab[sample],))
    torch.testing.assert_close(sg[0], grads.view(N, k, *img.shape[1:]).mean(1), rtol=1e-10, atol=1e-12)
    table_grads = tribute.explain(net, (img[sample] + s * image_noise, tab[sample]), "gradient", target=1)[1]
    torch.testing.assert_close(sg[1], table_grads.view(N, k, 4).mean(1), rtol=1e-10, atol=1e-12)


def test_expected_gradients_on_two_inputs_is_the_mean_over_its_draws_by_hand():
    """(1/K) Σ_k (x − x̄_jk) ⊙ ∇S(x̄_jk + α_k(x − x̄_jk)) with the (reference, α) draws of each sample's stream, keyed by
    the whole sample (Erion et al. 2021): each input moves along the path from its own reference."""
    net, (img, tab) = _net(), _data()
    k, seed = 5, 3
    eg = tribute.explain(net, (img, tab), "expected_gradients", target=2, references=REFS, samples=k, seed=seed)
    sample = torch.arange(N).repeat_interleave(k)
    streams = SampleStreams(torch.cat([img.flatten(1), tab], 1), seed)
    j, alpha = draw_references(streams, sample, REFS[0].shape[0], dtype=DT, device="cpu")
    xs, refs = (img[sample], tab[sample]), (REFS[0][j], REFS[1][j])
    points = tuple(r + alpha.view(-1, *[1] * (x.dim() - 1)) * (x - r) for x, r in zip(xs, refs, strict=True))
    grads = tribute.explain(net, points, "gradient", target=2)
    for part, x, r, g in zip(eg, xs, refs, grads, strict=True):
        by_hand = ((x - r) * g).view(N, k, *x.shape[1:]).mean(1)
        torch.testing.assert_close(part, by_hand, rtol=1e-10, atol=1e-12)


def test_output_naming_a_field_of_a_model_that_returns_a_tensor_is_refused():
    net, (img, tab) = _net(), _data()
    with pytest.raises(TypeError, match=r"output='scores' names a field, but the model returned a tensor \(3, 3\)"):
        tribute.explain(net, (img, tab), "gradient", target=0, output="scores")
    # a callable is taken as it is: it picks the scores from whatever the model returns
    picked = tribute.explain(net, (img, tab), "gradient", target=0, output=lambda out: out * 2)
    plain = tribute.explain(net, (img, tab), "gradient", target=0)
    for p, q in zip(picked, plain, strict=True):
        torch.testing.assert_close(p, 2 * q, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", tribute.methods())
def test_a_one_tuple_is_one_input_given_as_a_tuple(method):
    """``(image,)`` gives what ``image`` gives, as a 1-tuple for input-shaped methods (the structure given)."""
    net, (img, tab) = _net(), _data()
    options = _options(method, net, image_only=True)
    model, held = net, {"forward_args": (tab,)}
    if method == "layer_expected_gradients":  # no per-sample forward arguments: one table for every row
        model, held = (lambda i: net(i, tab[:1].expand(i.shape[0], -1))), {}
    tensor = tribute.explain(model, img, method, target=1, **held, **options)
    if "references" in options:
        options["references"] = (options["references"],)
    one = tribute.explain(model, (img,), method, target=1, **held, **options)
    if _expected_shapes(method, img, tab) == (img.shape, tab.shape):
        assert isinstance(one, tuple) and len(one) == 1
        one = one[0]
    torch.testing.assert_close(one, tensor, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["layer_gradient", "layer_integrated_gradients", "gradcam", "scorecam",
                                    "guided_gradcam"])
def test_two_threads_capture_their_own_layers_and_arguments_on_one_model(method):
    """Module hooks are process-wide: each thread's capture sees only its own calls of the layer (else a thread
    would meet the other's call: 'called 2 times', or worse, the other's activation)."""
    net, (img, tab) = _net(), _data()
    explainer = tribute.get_method(method)(net, **tribute.get_method(method).example_options)
    index = {"input_index": 0} if "input_index" in explainer.schema() else {}
    work_of = [{"layer": "conv2", "forward_kwargs": {"gate": torch.tensor([0.1, -0.2, 0.3], dtype=DT)}},
               {"layer": "relu2", "forward_kwargs": {"scale": torch.tensor([2.0, 1.0, -1.0], dtype=DT)}}]
    alone = [explainer.attribute((img, tab), target=1, **index, **w) for w in work_of]
    results = concurrently(lambda i: explainer.attribute((img, tab), target=1, **index, **work_of[i]), 10)
    for i in (0, 1):
        assert all(torch.equal(r, alone[i]) for r in results[i])
