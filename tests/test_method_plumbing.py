"""The plumbing every method shares (Method in tribute.core.method): the target resolved once, per-call state in
the call (threads), wrappers binding a base method, and no option accepted and ignored."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import tribute
from tribute.core.engine import Forward
from tribute.core.method import Call
from tribute.core.targets import Target
from tribute.core.tensors import per_sample


class GapNet(nn.Module):
    """conv-ReLU-conv-ReLU, global average pooling, linear head: every method (CAM included) applies."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def gapnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return GapNet().double().eval()


def inputs(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


NORMALIZE = tribute.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])


def example(method: str, x: torch.Tensor) -> dict:
    """The method's cheap example options, with the reference inputs that expected gradients needs."""
    cls = tribute.get_method(method)
    o = dict(cls.example_options)
    if "baselines" in cls.schema():
        o["baselines"] = inputs(5, seed=9)
    return o


def test_per_sample_broadcasts_one_value_per_row():
    x = torch.ones(3, 2, 4)
    v = torch.tensor([1.0, 2.0, 3.0])
    assert per_sample(v, x).shape == (3, 1, 1)
    assert torch.equal((per_sample(v, x) * x)[:, 1, 3], v)
    with pytest.raises(ValueError, match="one value per row"):
        per_sample(torch.ones(3, 1), x)


# -- target=None --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [None, 1])
@pytest.mark.parametrize("method", tribute.methods())
def test_target_none_is_the_argmax_and_costs_at_most_one_forward_pass(method, batch_size):
    net, x = gapnet(), inputs()
    with torch.no_grad():
        predicted = net(x).argmax(1)
    kw = {**example(method, x), "batch_size": batch_size}
    m = tribute.get_method(method)(net, **kw)
    given = m.attribute(x, target=predicted)
    given_passes = m.passes
    free = m.attribute(x)
    extra = m.passes.forward_rows - given_passes.forward_rows
    torch.testing.assert_close(free, given)  # (an LRP explainer's second call merges batch norm: rounding)
    # one forward pass of the clean inputs without backward, or none where the method's own first pass is it
    assert extra in (0, x.shape[0]), extra
    assert m.passes.backward_rows == given_passes.backward_rows


@pytest.mark.parametrize("batch_size", [None, 1])
def test_softplus_smoothing_explains_the_model_s_own_prediction(batch_size):
    """softplus_β changes the forward pass, so the first pass is not the prediction: a pass of its own fixes it."""
    net, x = gapnet(), inputs()
    m = tribute.Gradient(net, softplus_beta=0.5, batch_size=batch_size)
    with torch.no_grad():
        predicted = net(x).argmax(1)
    torch.testing.assert_close(m.attribute(x), m.attribute(x, target=predicted), rtol=0, atol=0)
    assert m.passes.forward_rows == x.shape[0] == m.passes.backward_rows


# -- per-call state lives in the call -------------------------------------------------------------------------

@pytest.mark.parametrize("method, options", [
    ("gradient", {"batch_size": 1}),
    ("integrated_gradients", {"steps": 6, "batch_size": 5}),
    ("smoothgrad", {"samples": 4, "seed": 0, "batch_size": 3}),
])
def test_one_explainer_used_from_two_threads_gives_the_single_threaded_results(method, options):
    net = gapnet()
    explainer = tribute.get_method(method)(net, input_transform=NORMALIZE, **options)
    batches = [inputs(3, seed=s) for s in (11, 12)]
    alone = [explainer.attribute(b, target=1) for b in batches]
    start = threading.Barrier(2)
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(i):
        try:
            start.wait()
            for _ in range(15):
                results[i].append(explainer.attribute(batches[i], target=1))
        except BaseException as e:  # noqa: BLE001 - reported below, a thread cannot raise into the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in (0, 1):
        assert len(results[i]) == 15
        for r in results[i]:
            assert torch.equal(r, alone[i])


def test_passes_and_coverage_report_the_last_call_of_the_calling_thread():
    net, x = gapnet(), inputs()
    m = tribute.Gradient(net, strict=False)
    m.attribute(x, target=0)
    seen = {}

    def other():
        seen["passes"] = m.passes.forward_rows
        m.attribute(x[:1], target=0, strict=True)
        seen["ruled"] = m.coverage is not None

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == {"passes": 0, "ruled": True}
    assert m.passes.forward_rows == x.shape[0] and m.coverage is None
    assert not hasattr(m, "_forward")


# -- wrappers bind a base method --------------------------------------------------------------------------------

def test_a_bound_method_runs_on_the_call_s_model_view():
    net, x = gapnet(), inputs()
    target = Target(torch.tensor([0, 1, 2, 0]), x.shape[0])
    base = tribute.InputXGradient(net)
    bound = base.bind(Call(Forward(net, NORMALIZE)), batch_size=2)
    expected = tribute.InputXGradient(net, input_transform=NORMALIZE).attribute(x, target=target.index)
    torch.testing.assert_close(bound(x, target), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="resolved target"):
        bound(x, Target(None, x.shape[0]))
    with pytest.raises(TypeError, match="no option 'stepz'"):
        base.bind(Call(Forward(net)), batch_size=2, stepz=3)


def test_smoothgrad_statistics_without_noise_are_those_of_the_base_attribution():
    """σ = 0: every draw is the base attribution φ, so the mean is φ, the mean square φ², the variance 0."""
    net, x = gapnet(), inputs()
    phi = tribute.explain(net, x, "input_x_gradient", target=2)
    kw = {"sigma": 0.0, "samples": 3, "base": "input_x_gradient", "target": 2}
    torch.testing.assert_close(tribute.explain(net, x, "smoothgrad", **kw), phi)
    torch.testing.assert_close(tribute.explain(net, x, "smoothgrad_squared", **kw), phi * phi)
    vargrad = tribute.explain(net, x, "vargrad", **kw)
    torch.testing.assert_close(vargrad, torch.zeros_like(phi), rtol=0, atol=1e-12 * float((phi * phi).max()))


def test_smoothgrad_is_the_mean_of_its_bound_base_over_the_same_noise():
    """(1/K) Σ_k φ(x + σ ε_k), with the noise of the per-sample streams, by hand."""
    from tribute.core.randomness import SampleStreams

    net, x, k, sigma = gapnet(), inputs(2), 3, 0.2
    streams = SampleStreams(x, 5)
    sample = torch.arange(x.shape[0]).repeat_interleave(k)
    noise = streams.draw("normal", sample, tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    grads = tribute.explain(net, x[sample] + sigma * noise, "gradient", target=1)
    by_hand = grads.view(x.shape[0], k, *x.shape[1:]).mean(1)
    sg = tribute.explain(net, x, "smoothgrad", target=1, samples=k, sigma=sigma, seed=5, batch_size=k * 2)
    torch.testing.assert_close(sg, by_hand)


# -- no option accepted and ignored ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lrp_zplus", "lrp_gamma", "lrp_alpha_beta"])
def test_lrp_composites_without_a_stabiliser_refuse_epsilon(method):
    with pytest.raises(TypeError, match=r"epsilon= is not accepted here: .*uses no epsilon"):
        tribute.get_method(method)(gapnet(), epsilon=1e-3)
    with pytest.raises(TypeError, match=r"composite= is not accepted here"):
        tribute.explain(gapnet(), inputs(), method, composite="epsilon")
