"""The plumbing every method shares (Method in tribute.core.method): the target resolved once, per-call state in
the call (threads), wrappers binding a base method, and no option accepted and ignored."""

from __future__ import annotations

import threading
from contextlib import nullcontext

import pytest
import torch
from conftest import concurrently
from torch import nn

import tribute
from tribute.core.engine import Forward
from tribute.core.method import Call
from tribute.core.targets import Target
from tribute.core.tensors import per_channel, per_sample
from tribute.lrp import RULE_PARAMETERS, Composite, Epsilon, composite_parameters


class GapNet(nn.Module):
    """conv-ReLU-conv-ReLU, global average pooling, linear head: every method (CAM included) applies."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, stride=2)  # maps at half the input's resolution
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x, gain: float = 1.0):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x * gain))))  # gain: a forward argument to try
        return self.fc(h.mean(dim=(2, 3)))


def gapnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return GapNet().double().eval()


def inputs(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


NORMALIZE = tribute.Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])


def example(method: str, x: torch.Tensor) -> dict:
    """The method's cheap example options, with the reference inputs that expected gradients and prediction
    difference need."""
    cls = tribute.get_method(method)
    o = dict(cls.example_options)
    if "references" in cls.schema():
        o["references"] = inputs(5, seed=9)
    return o


def test_per_sample_broadcasts_one_value_per_row():
    x = torch.ones(3, 2, 4)
    v = torch.tensor([1.0, 2.0, 3.0])
    assert per_sample(v, x).shape == (3, 1, 1)
    assert torch.equal((per_sample(v, x) * x)[:, 1, 3], v)
    with pytest.raises(ValueError, match="one value per row"):
        per_sample(torch.ones(3, 1), x)


def test_per_channel_broadcasts_one_value_per_channel():
    x = torch.ones(2, 3, 4, 5)
    v = torch.tensor([1.0, 2.0, 3.0])
    assert per_channel(v, x).shape == (1, 3, 1, 1)
    assert torch.equal((per_channel(v, x) * x)[1, :, 2, 4], v)
    with pytest.raises(ValueError, match="one value per channel"):
        per_channel(v[None], x)


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
    results = concurrently(lambda i: explainer.attribute(batches[i], target=1), 15)
    for i in (0, 1):
        assert all(torch.equal(r, alone[i]) for r in results[i])


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


def test_defaults_are_the_constructor_s_options_validated_and_read_only():
    explainer = tribute.get_method("integrated_gradients")(gapnet(), steps=3, baseline=0)
    assert dict(explainer.defaults) == {"steps": 3, "baseline": 0}
    with pytest.raises(TypeError):
        explainer.defaults["steps"] = 5
    assert explainer.defaults["steps"] == 3
    assert dict(tribute.LRP(gapnet(), epsilon=0.1).defaults) == {"epsilon": 0.1}  # validated: a float
    assert isinstance(tribute.LRP(gapnet(), epsilon=1).defaults["epsilon"], float)


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


GUIDED = tribute.GuidedBackprop.rules

#: option → (options of the reference run, options changed from it) to try, in order; entries naming an option the
#: method does not have are skipped.  An option passes when one entry changes the attribution, or when the changed
#: run is refused with an error naming the option (never accepted and ignored).
TRIES: dict[str, list[tuple[dict, dict]]] = {
    "input_transform": [({}, {"input_transform": NORMALIZE})],
    "softplus_beta": [({}, {"softplus_beta": 1.0})],
    "baseline": [({}, {"baseline": 0.5})],
    "baseline_options": [({"baseline": "gaussian"}, {"baseline_options": {"sigma": 0.5}})],
    "baselines": [({}, {"baselines": inputs(5, seed=10)})],
    "seed": [({}, {"seed": 1}), ({"baseline": "uniform"}, {"seed": 1}),
             ({"max_channels": 2, "channel_selection": "random"}, {"seed": 1})],
    "steps": [({}, {"steps": 3})],
    "samples": [({}, {"samples": 2})],
    "quadrature": [({}, {"quadrature": "riemann_left"})],
    "tolerance": [({}, {"tolerance": 1e-2}), ({}, {"tolerance": 1e-4})],  # the sampled methods: below their se
    "base": [({}, {"base": "input_x_gradient"})],
    "base_options": [({}, {"base_options": {"softplus_beta": 1.0}})],
    "sigma": [({}, {"sigma": 0.5})],
    "noise_level": [({}, {"noise_level": 0.5})],
    "noise_key": [({}, {"noise_key": inputs(4, seed=3)})],
    "layer": [({}, {"layer": "conv1"})],
    "rules": [({}, {"rules": GUIDED}), ({"layer": "conv1"}, {"rules": GUIDED})],
    "relu": [({}, {"relu": False}), ({"layer": "conv1"}, {"relu": False})],  # Grad-CAM++'s map is ≥ 0 after a ReLU
    "upsample": [({}, {"upsample": False})],
    "normalize": [({}, {"normalize": True})],
    "contrast": [({}, {"contrast": 0}), ({}, {"contrast": 2})],
    "softmax": [({}, {"softmax": False}), ({}, {"softmax": True})],  # extremal perturbation scores logits by default
    "max_channels": [({}, {"max_channels": 2})],
    "channel_selection": [({"max_channels": 2}, {"channel_selection": "random"})],
    "interpolation": [({}, {"interpolation": "nearest"})],
    # a rearrangement of a CNN's map (mirrored) moves the map; prefix_tokens= without reshape='tokens' is refused
    "reshape": [({}, {"reshape": lambda a: a.flip(-1)})],
    "prefix_tokens": [({}, {"prefix_tokens": 1})],
    "reduce": [({}, {"reduce": "sum"})],
    "rescale": [({}, {"rescale": "channel"})],
    "composite": [({}, {"composite": "epsilon"})],
    "epsilon": [({}, {"epsilon": 0.5})],
    # the parameters of LRP's rules act with the composites that read them and are refused by the others (the default
    # composite reads epsilon only); test_lrp_takes_a_rule_parameter_only_with_a_composite_that_reads_it checks each
    "gamma": [({}, {"gamma": 1.0}), ({"composite": "gamma"}, {"gamma": 1.0})],
    "alpha": [({}, {"alpha": 3.0, "beta": 2.0}), ({"composite": "alpha_beta"}, {"alpha": 3.0, "beta": 2.0}),
              ({}, {"alpha": 0.0})],  # LIME's ridge penalty
    "beta": [({}, {"alpha": 3.0, "beta": 2.0}), ({"composite": "alpha_beta"}, {"alpha": 3.0, "beta": 2.0})],
    "low": [({}, {"low": -1.0}), ({"composite": "epsilon_gamma_box", "low": 0.0, "high": 1.0}, {"low": -1.0})],
    "high": [({}, {"high": 2.0}), ({"composite": "epsilon_gamma_box", "low": 0.0, "high": 1.0}, {"high": 2.0})],
    # LIME's kernel and solver; KernelSHAP sampled on four grid cells instead of enumerated
    "kernel_width": [({}, {"kernel_width": 1.0})],
    "solver": [({}, {"solver": "lasso"})],
    "exact": [({"segments": "grid", "segment_options": {"cell": 3}}, {"exact": False})],
    # issue 12's input contract
    "forward_args": [({}, {"forward_args": (2.0,)})],
    "forward_kwargs": [({}, {"forward_kwargs": {"gain": 2.0}})],
    # another class scored (maps normalised per sample change too), and a softmax that is not the same (contrastive)
    "output": [({}, {"output": lambda out: out[:, [2, 0, 1]] * torch.tensor([1.0, 2.0, 3.0], dtype=out.dtype)})],
    "input_index": [({}, {"input_index": 1})],  # one input: only index 0, the default's meaning, is accepted
    "baseline_token": [({}, {"baseline_token": 3})],  # token baselines need token ids
    "keep_tokens": [({}, {"keep_tokens": (1,)})],
    "tokenizer": [({}, {"tokenizer": object()})],
    # issue 14's groups: two halves of the image instead of each feature alone; a coarser grid
    "feature_mask": [({}, {"feature_mask": (torch.arange(6) >= 3).long().view(1, 1, 1, 6)})],
    # on these 6 × 6 images SLIC (the default of lime, kernel_shap, shapley_sampling) gives the grid's one-pixel cells
    "segments": [({}, {"segments": "grid"}), ({}, {"segments": "features"})],
    "segment_options": [({"segments": "grid"}, {"segment_options": {"cell": 3}})],
    # the mask games (meaningful and extremal perturbation): their optimisation's settings
    "cell": [({}, {"cell": 3}), ({}, {"cell": 2})],  # mask games; RISE
    "lr": [({}, {"lr": 0.05})],
    "l1_weight": [({}, {"l1_weight": 0.1})],
    "tv_weight": [({}, {"tv_weight": 0.5})],
    "tv_beta": [({}, {"tv_beta": 1.5})],
    "jitter": [({}, {"jitter": 1, "seed": 0})],
    "area": [({}, {"area": 0.6})],
    "game": [({}, {"game": "delete"})],
    "momentum": [({}, {"momentum": 0.5})],
    "area_weight": [({}, {"area_weight": 30.0})],
    "area_growth": [({}, {"area_growth": 1.1})],
    "smoothness": [({}, {"smoothness": 4.0})],
    "temperature": [({}, {"temperature": 0.5})],
    "levels": [({}, {"levels": 2})],
    "flip": [({}, {"flip": True})],
    # RISE: more masks, cells kept more often, coarser cells; prediction difference: other references, a smaller
    # window, a longer stride, the Laplace correction; logits read as probabilities and conditional sampling are
    # refused, naming the option
    "masks": [({}, {"masks": 16})],
    "p": [({}, {"p": 0.8})],
    "references": [({}, {"references": inputs(5, seed=10)})],
    "window": [({}, {"window": (3, 2, 2)}), ({}, {"window": (3,)})],  # also occlusion
    "stride": [({}, {"stride": 2})],
    "training_size": [({}, {"training_size": 100})],
    "probabilities": [({}, {"probabilities": "outputs"})],
    "sampling": [({}, {"sampling": "conditional"})],
    # occlusion: Captum's cut last window instead of one flush with the edge
    "border": [({"window": (4,), "stride": 3}, {"border": "truncate"})],
}

#: options that by design leave the values as they are, why, and what is asserted instead
NO_OPS: dict[str, tuple[str, dict]] = {
    "batch_size": ("how many rows go through the model at once: memory, not values", {"batch_size": 1}),
    "progress": ("shows a progress bar", {"progress": "rows"}),
    "differentiable": ("keeps the same values on the autograd graph (or is refused)", {"differentiable": True}),
    "strict": ("raises where an op has no rule instead of changing values", {"strict": True}),
    "cache_weights": ("keeps derived weights between calls: time, not values", {"cache_weights": False}),
    "max_steps": ("bounds tolerance='s refinement: the same values, or an error past it",
                  {"tolerance": 1e-2, "max_steps": 10_000}),
    "max_samples": ("bounds tolerance='s sampling: the same values, or an error past it",
                    {"tolerance": 1e-2, "max_samples": 50_000}),
    "max_masks": ("bounds RISE's rounds of masks under tolerance=: the same values, or an error past it",
                  {"tolerance": 1e-2, "max_masks": 90_000}),
    # its effect, where f(0) ≠ 0, is tested in tests/test_lrp_elementwise.py
    "unbounded": ("lets lrp_epsilon compute its ratio at nonlinearities with f(0) ≠ 0, refused otherwise: this net "
                  "has ReLUs only, so the same values", {"unbounded": True}),
    # its effect is tested in tests/test_lrp_transformers.py (CP-LRP against AttnLRP, worked by hand)
    "attention": ("how LRP treats attention's softmax: this net has none, so the same values",
                  {"attention": "attnlrp"}),
    "absorbed": ("also counts the relevance constant leaves take, in explainer.absorbed: the same values",
                 {"absorbed": True}),
}


def run(method: str, options: dict) -> torch.Tensor:
    x = inputs()
    return tribute.get_method(method)(gapnet(), **{**example(method, x), **options}).attribute(x, target=1)


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape != b.shape or not torch.allclose(a, b, rtol=1e-6, atol=1e-9 * float(b.abs().max()))


def applicable(method: str, *option_sets: dict) -> bool:
    schema = tribute.get_method(method).schema()
    return all(k in schema for opts in option_sets for k in opts)


def tries(method: str, name: str) -> list[tuple[dict, dict]]:
    """TRIES of ``name``, and for a layer method each also at the first layer (above the default layer GapNet is
    linear: the gradient there is constant, a path integral exact at any steps)."""
    found = TRIES.get(name, [])
    if "layer" in tribute.get_method(method).schema():
        found = found + [({"layer": "conv1", **reference}, changed) for reference, changed in found]
    return found


def effect(method: str, name: str) -> str:
    """"changes", "refused" or "ignored": what giving ``name`` a value other than its default does."""
    for reference, changed in tries(method, name):
        if not applicable(method, reference, changed):
            continue
        try:
            before = run(method, reference)
        except (TypeError, ValueError):
            continue  # this reference run is not one the method takes (e.g. its composite is fixed)
        try:
            after = run(method, {**reference, **changed})
        except (TypeError, ValueError) as e:
            if any(k in str(e) for k in changed):
                return "refused"
            raise
        if differs(after, before):
            return "changes"
    return "ignored"


@pytest.mark.parametrize("method", tribute.methods())
def test_every_option_changes_the_attribution_or_is_a_documented_no_op(method):
    torch.use_deterministic_algorithms(False)
    for name in tribute.get_method(method).schema():
        if name in NO_OPS:
            _, options = NO_OPS[name]
            try:
                same = run(method, options)
            except (TypeError, ValueError) as e:
                assert name in str(e), (name, e)  # refused, naming the option
                continue
            reference = {k: v for k, v in options.items() if k != name}
            torch.testing.assert_close(same.detach(), run(method, reference), msg=f"{method}: {name}")
            continue
        assert effect(method, name) != "ignored", (
            f"{method}: no value of {name}= tried changes the attribution; fix the option, or document it in NO_OPS "
            "with the reason"
        )


#: a value of each rule parameter of lrp other than its default (alpha and beta move together: α − β = 1)
RULE_VALUES: dict[str, dict] = {"epsilon": {"epsilon": 0.5}, "gamma": {"gamma": 1.0},
                                "alpha": {"alpha": 3.0, "beta": 2.0}, "beta": {"alpha": 1.5, "beta": 0.5},
                                "low": {"low": -1.0}, "high": {"high": 2.0}}
BOX = {"low": 0.0, "high": 1.0}


@pytest.mark.parametrize("composite", tribute.composites())
@pytest.mark.parametrize("name", RULE_PARAMETERS)
def test_lrp_takes_a_rule_parameter_only_with_a_composite_that_reads_it(composite, name):
    reads = composite_parameters(composite)
    reference = {"composite": composite, **(BOX if "low" in reads else {})}
    if name in reads:  # read: changes the attribution, given to the constructor or to the call
        before = run("lrp", reference)
        assert differs(run("lrp", {**reference, **RULE_VALUES[name]}), before), (composite, name)
        x = inputs()
        by_call = tribute.LRP(gapnet(), **reference).attribute(x, target=1, **RULE_VALUES[name])
        torch.testing.assert_close(by_call, run("lrp", {**reference, **RULE_VALUES[name]}), rtol=0, atol=0)
        return
    changed = {name: RULE_VALUES[name][name]}  # alone, so that the error can only be about this option
    pattern = rf"{name}= is not read by composite '{composite}'"
    with pytest.raises(TypeError, match=pattern):
        run("lrp", {**reference, **changed})  # given to the constructor
    with pytest.raises(TypeError, match=pattern):
        tribute.LRP(gapnet(), **reference).attribute(inputs(), target=1, **changed)


def test_lrp_checks_the_composite_and_its_parameters_together_at_the_call():
    x = inputs()
    # γ given to the constructor, the composite that reads it to the call: taken, the same as given together
    together = tribute.LRP(gapnet(), composite="gamma", gamma=1.0)(x, target=1)
    torch.testing.assert_close(tribute.LRP(gapnet(), gamma=1.0)(x, target=1, composite="gamma"), together,
                               rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"gamma= is not read by composite 'epsilon_plus'.*read gamma: gamma"):
        tribute.LRP(gapnet(), gamma=1.0)(x, target=1)  # the default composite reads epsilon only
    # the defaults of the parameters are never "given": every composite runs without them
    for composite in tribute.composites():
        tribute.LRP(gapnet(), composite=composite, **(BOX if "low" in composite_parameters(composite) else {}))(
            x, target=1)


@pytest.mark.parametrize("name", RULE_PARAMETERS)
def test_a_composite_given_as_is_reads_no_rule_parameter(name):
    composite = Composite(conv=Epsilon(0.5), dense=Epsilon(0.5))
    with pytest.raises(TypeError, match=rf"{name}= is not read by the Composite given as composite="):
        tribute.LRP(gapnet(), composite=composite, **{name: RULE_VALUES[name][name]})(inputs(), target=1)


@pytest.mark.parametrize("method, composite", [("lrp_zplus", "zplus"), ("lrp_gamma", "gamma"),
                                               ("lrp_alpha_beta", "alpha_beta")])
def test_lrp_with_a_fixed_composite_refuses_what_its_composite_does_not_read(method, composite):
    schema = tribute.get_method(method).schema()
    reads = composite_parameters(composite)
    for name in RULE_PARAMETERS:  # one declaration: the registration's
        refused = name not in reads
        with pytest.raises(TypeError, match=f"{name}= is not accepted here") if refused else nullcontext():
            schema[name].check(name, RULE_VALUES[name][name])


def test_max_steps_bounds_the_refinement():
    with pytest.raises(RuntimeError, match="max_steps=10"):
        run("integrated_gradients", {"tolerance": 1e-9, "max_steps": 10})
