"""LRP's fast paths give exactly the relevance of the plain definitions.

Each mechanism of the relevance form is checked against the computation it short-cuts:

1. the derived-weight cache (``LRP(...).weights``) against ``cache_weights=False`` and a fresh explainer, after
   every way a model's parameters can change;
2. γ's one-transposed-layer shortcut (``LayerCall.relu_only``) against the same pass with it switched off, where
   it must be taken and where it must not;
3. batch norm's output kept by reference (``LayerCall.out_kept``) against the rule's matrix definition and
   against keeping copies;
4. non-negative inputs known from a ReLU's output (``LayerCall.nonnegative_input``) against the matrix definition
   when that output was made negative in place;
5. the Norm rule of an addition without a graph (``_NormFunction``'s ``additive``) against the autograd path and
   a model worked by hand.

The last section holds the cases that once failed (a weight shared by a convolution and its transpose, a weight
computed from the input, batch norm after a grouped transposed convolution, einsum's operands in a list).  A write
through ``.data`` inside ``forward()`` is invisible to the engine as it is to autograd: its strict xfail pins that.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_bn
from test_lrp import Residual, _residual, matrix_rule, stab
from torch import nn

import tribute
import tribute.lrp.rules as linear_rules
from tribute.lrp import AlphaBeta, Composite, Epsilon, Flat, Gamma, WSquare, ZPlus
from tribute.lrp.kept import Kept
from tribute.lrp.layer_call import LayerCall
from tribute.lrp.propagation import Propagation
from tribute.lrp.weight_cache import _PER_LAYER, _SMALL, sampled_positions

DT = torch.float64


def assert_same(got, expected, msg=""):
    """Equal up to rounding: rtol 1e-10, atol 1e-13 of the largest relevance."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13 * scale + 1e-300, msg=msg)


def differs(a, b):
    return (a - b).abs().max().item() > 1e-6 * b.abs().max().item()


def keep_copies(self, t, unneeded=None, rectify=False):
    """``Propagation.keep`` that copies at once instead of keeping a reference."""
    return Kept(t.clone())


def nonnegative_by_values(x, layer):
    """``_nonnegative`` deciding by the values only (no knowledge from ReLU marks)."""
    return not bool(x.min() < 0)


@contextmanager
def fast_paths_off():
    """γ's shortcut off, every kept tensor copied at once, signs checked by value (pass cache_weights=False)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LayerCall, "relu_only", property(lambda layer: False))
        mp.setattr(Propagation, "keep", keep_copies)
        mp.setattr(linear_rules, "_nonnegative", nonnegative_by_values)
        yield


# -- models ----------------------------------------------------------------------------------------------
class CNN(nn.Module):
    """conv-BN-ReLU(inplace) twice, then dense-ReLU-dense; ``fc1`` holds more than ``_SMALL`` weights (sampled)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc1, self.fc2 = nn.Linear(64, 80), nn.Linear(80, 3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        return self.fc2(self.relu(self.fc1(h.flatten(1))))


def cnn(seed=0):
    torch.manual_seed(seed)
    return randomise_bn(CNN(), seed).to(DT).eval()


def cnn_input(seed=0):
    return torch.rand(3, 2, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(seed))


# ===== 1. the derived-weight cache ========================================================================
CACHED = {
    "gamma": {"composite": "gamma"},
    "alpha_beta": {"composite": "alpha_beta"},
    "zplus": {"composite": "zplus"},
    "epsilon_gamma_box": {"composite": "epsilon_gamma_box", "low": 0.0, "high": 1.0},
}


@pytest.mark.parametrize("config", CACHED)
def test_second_call_reuses_derived_weights_and_gives_identical_relevance(config):
    net, x = cnn(), cnn_input()
    ex = tribute.LRP(net, **CACHED[config])
    first = ex(x, target=1)  # runs batch norm and plans to merge it (core.merge_plan)
    assert ex.weights.misses > 0
    ex(x, target=1)  # derives the merged weights, and what the rules derive from them
    first = ex(x, target=1)  # derives the rotated weights of stride-1 convolutions (kept weights only)
    hits, misses = ex.weights.hits, ex.weights.misses
    second = ex(x, target=1)
    assert ex.weights.hits > hits and ex.weights.misses == misses
    assert torch.equal(second, first)
    # chunks of one row: every chunk after the first reuses them too
    chunked = ex(x, target=1, batch_size=1)
    assert ex.weights.misses == misses
    assert_same(chunked, first)
    plain = tribute.LRP(net, cache_weights=False, **CACHED[config])
    assert_same(first, plain(x, target=1))
    assert plain.weights.hits == plain.weights.misses == 0 and not plain.weights._entries


def _sgd_step(net, x):
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net(x).square().sum().backward()
    opt.step()


def _scale_in_place(net, x):
    with torch.no_grad():
        net.conv1.weight.mul_(1.1)


def _assign_data(net, x):
    net.fc1.weight.data = torch.randn_like(net.fc1.weight) * 0.1


def _normal_through_data(net, x):
    assert net.fc1.weight.numel() > _SMALL >= net.conv1.weight.numel()
    versions = net.fc1.weight._version, net.conv1.weight._version
    net.fc1.weight.data.normal_(0, 0.1)  # > _SMALL entries: seen through its sampled entries
    net.conv1.weight.data.normal_(0, 0.3)  # compared whole
    assert (net.fc1.weight._version, net.conv1.weight._version) == versions  # the version counter did not move


def _assign_data_same_samples(net, x):
    # equal at every sampled entry, at another address: only the storage check can see it
    w = net.fc1.weight
    n = w.numel()
    sampled = set(sampled_positions(n))
    new = w.detach().clone()
    new.view(-1)[[i for i in range(n) if i not in sampled]] *= -1.0
    w.data = new


def _replace_parameter(net, x):
    net.conv2.weight = nn.Parameter(torch.randn_like(net.conv2.weight) * 0.3)


def _batch_norm_statistics(net, x):
    net.bn1.running_mean.add_(0.3)
    net.bn2.running_var.data.mul_(2.0)  # through .data: no version change, compared whole


def _batch_norm_affine_through_data(net, x):
    net.bn2.weight.data.mul_(0.5)


def _load_state_dict(net, x):
    net.load_state_dict(cnn(seed=1).state_dict())


CHANGES = {
    "optimiser_step": _sgd_step, "mul_under_no_grad": _scale_in_place, "assign_data": _assign_data,
    "normal_through_data": _normal_through_data, "assign_data_same_samples": _assign_data_same_samples,
    "replace_parameter": _replace_parameter, "batch_norm_statistics": _batch_norm_statistics,
    "batch_norm_affine_through_data": _batch_norm_affine_through_data, "load_state_dict": _load_state_dict,
}


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("config", ["gamma", "alpha_beta"])
def test_cached_weights_follow_every_change_of_the_model(change, config):
    net, x = cnn(), cnn_input()
    ex = tribute.LRP(net, **CACHED[config])
    before = ex(x, target=1)
    ex(x, target=1)  # cached now
    misses = ex.weights.misses
    CHANGES[change](net, x)
    after = ex(x, target=1)
    assert ex.weights.misses > misses  # rederived
    assert_same(after, tribute.LRP(net, cache_weights=False, **CACHED[config])(x, target=1))
    assert_same(after, tribute.LRP(net, **CACHED[config])(x, target=1))
    assert differs(after, before)


def test_clear_covers_a_write_through_data_between_the_sampled_entries():
    net, x = cnn(), cnn_input()
    ex = tribute.LRP(net, composite="gamma")
    ex(x, target=1)
    n = net.fc1.weight.numel()
    sampled = set(sampled_positions(n))
    index = next(i for i in range(n) if i not in sampled)
    net.fc1.weight.data.view(-1)[index] += 3.0
    ex.weights.clear()
    after = ex(x, target=1)
    assert_same(after, tribute.LRP(net, composite="gamma", cache_weights=False)(x, target=1))


def test_the_cache_keeps_no_model_alive_and_prunes_dead_entries():
    net, x = cnn(), cnn_input()
    ex = tribute.LRP(net, composite="gamma")
    ex(x, target=1)
    cache = ex.weights
    assert cache._entries
    # nothing derived shares memory with the model's parameters or buffers (no view of them is kept)
    owned = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    for entry in cache._entries.values():
        for value in entry.derived.values():
            for t in value:
                assert t is None or t.untyped_storage().data_ptr() not in owned
    probes = [weakref.ref(p) for p in net.parameters()]
    del ex, net
    gc.collect()
    assert all(p() is None for p in probes)  # the cache held no parameter alive
    assert all(r() is None for e in cache._entries.values() for r in e.refs if r is not None)
    # the next entry made (here by another model's call) prunes the dead ones
    other = cnn(seed=1)
    ex2 = tribute.LRP(other, composite="gamma")
    ex2.weights = cache
    a = ex2(x, target=1)
    assert cache._entries and all(r is None or r() is not None for e in cache._entries.values() for r in e.refs)
    layers = {id(m.weight) for m in other.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {k[0] for k in cache._entries} == layers
    assert_same(a, tribute.LRP(other, composite="gamma", cache_weights=False)(x, target=1))


def test_a_varying_gamma_keeps_at_most_eight_derived_tensors_per_layer():
    net, x = cnn(), cnn_input()
    ex = tribute.LRP(net, composite="gamma")
    gammas = [0.05 * k for k in range(12)]
    for g in gammas:
        a = ex(x, target=2, gamma=g)
        assert_same(a, tribute.LRP(net, composite="gamma", gamma=g, cache_weights=False)(x, target=2), msg=str(g))
    sizes = [len(e.derived) for e in ex.weights._entries.values()]
    assert len(sizes) == 4 + 2 and max(sizes) == _PER_LAYER == 8  # four layers; batch norm merged into two
    # a γ whose weights were evicted is derived again, correctly
    misses = ex.weights.misses
    a = ex(x, target=2, gamma=gammas[0])
    assert ex.weights.misses > misses
    assert_same(a, tribute.LRP(net, composite="gamma", gamma=gammas[0], cache_weights=False)(x, target=2))


class TiedAutoencoder(nn.Module):
    """An encoder convolution and a decoder transposed convolution sharing one weight, no biases."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(4, 2, 3, 3))  # conv: 2 → 4 channels; transposed: 4 → 2
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        h = F.relu(F.conv2d(x, self.w))
        return self.fc(F.relu(F.conv_transpose2d(h, self.w)).flatten(1))


@pytest.mark.parametrize("composite", ["zplus", "gamma"])
def test_tied_weights_of_a_convolution_and_its_transpose(composite):
    net = TiedAutoencoder().to(DT).eval()
    x = torch.rand(2, 2, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(0))
    expected = tribute.LRP(net, composite=composite, cache_weights=False)(x, target=0)
    assert_same(tribute.LRP(net, composite=composite)(x, target=0), expected)


# ===== 2. γ's one-transposed-layer shortcut ===============================================================
_RELU_ONLY = LayerCall.relu_only


def shortcut_taken(run):
    """``run()`` and the positions (``LayerCall.index``) of the layers whose γ rule took the shortcut."""
    taken, asked = [], set()

    def counting(layer):
        value = _RELU_ONLY.fget(layer)
        if value and id(layer) not in asked:  # a layer may be asked more than once
            asked.add(id(layer))
            taken.append(layer.index)
        return value

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LayerCall, "relu_only", property(counting))
        return run(), taken


def with_relu_only(run, decide):
    """``run()`` with ``LayerCall.relu_only`` replaced by ``decide(layer)``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LayerCall, "relu_only", property(decide))
        return run()


def check_shortcut(run, taken_expected=None):
    """The relevance with the shortcut equals the one without; returns it and the layers that took it."""
    got, taken = shortcut_taken(run)
    assert_same(got, with_relu_only(run, lambda layer: False))
    if taken_expected is not None:
        assert sorted(taken) == sorted(taken_expected)
    return got, taken


GAMMA_CONFIGS = {
    "gamma": {"composite": "gamma", "gamma": 0.3},
    "epsilon_gamma_box": {"composite": "epsilon_gamma_box", "low": 0.0, "high": 1.0},
}


@pytest.mark.parametrize("config", GAMMA_CONFIGS)
@pytest.mark.parametrize("add", ["plus", "torch.add", "module", "inplace"])
@pytest.mark.parametrize("relu", ["reused", "functional"])
def test_gamma_shortcut_on_the_residual_model(config, add, relu):
    net, x = _residual(add, relu), torch.rand(3, 3, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(1))
    # conv1 (0, merged with bn1) and conv2 (1) feed a ReLU alone; conv3 (2) feeds the addition, fc (3) the
    # output; under zᴮ conv1 has the box rule
    expected = [0, 1] if config == "gamma" else [1]
    check_shortcut(lambda: tribute.explain(net, x, "lrp", target=1, **GAMMA_CONFIGS[config]), expected)


@pytest.mark.parametrize("config", GAMMA_CONFIGS)
def test_gamma_shortcut_on_a_conv_bn_relu_inplace_cnn(config):
    net, x = cnn(), cnn_input()
    # conv1, conv2, fc1 (0, 1, 2) feed a ReLU alone; under zᴮ conv1 is the box's and the dense layers are ε
    expected = [0, 1, 2] if config == "gamma" else [1]
    for cache in (True, False):
        check_shortcut(lambda c=cache: tribute.LRP(net, cache_weights=c, **GAMMA_CONFIGS[config])(x, target=1),
                       expected)


class Chain(nn.Module):
    """conv1 [→ BN] → ReLU → [variant] → conv2 → ReLU → mean → fc; the variant decides whether conv1 may take
    γ's shortcut (R = 0 wherever its (merged) output is ≤ 0)."""

    def __init__(self, variant="control", bn=False):
        super().__init__()
        torch.manual_seed(2)
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3) if bn else None
        self.fc = nn.Linear(3, 3)
        self.variant = variant

    def forward(self, x):
        h = self.conv1(x)
        if self.bn1 is not None:
            h = self.bn1(h)
        v = self.variant
        if v == "inplace":
            a = F.relu(h, inplace=True)
        elif v == "read_then_inplace":  # read by another op, then overwritten by an in-place ReLU
            g = h * 0.5
            a = F.relu(h, inplace=True) + g
        else:
            a = F.relu(h)
        if v == "sigmoid":
            a = torch.sigmoid(a)
        elif v == "tanh":
            a = torch.tanh(a)
        elif v == "square":  # bilinear: AttnLRP's uniform rule
            a = a * a
        elif v == "sin":
            a = torch.sin(a)
        elif v == "power":  # no rule either; 2**0 = 1 carries relevance where the ReLU gave 0
            a = 2.0 ** a
        elif v == "also_read":  # the ReLU's input is read by another op too
            a = a + h
        return self.fc(F.relu(self.conv2(a)).mean((2, 3)))


def chain(variant="control", bn=False):
    return randomise_bn(Chain(variant, bn), seed=2).to(DT).eval()


def chain_input():
    return torch.rand(3, 2, 5, 5, dtype=DT, generator=torch.Generator().manual_seed(3))


def force_on(index):
    """``relu_only`` forced true on one layer (where the input is ≥ 0): what a wrong shortcut would give."""
    return lambda layer: layer.index == index or _RELU_ONLY.fget(layer)


@pytest.mark.parametrize("variant", ["control", "inplace"])
@pytest.mark.parametrize("bn", [False, True])
def test_gamma_shortcut_control_chain(variant, bn):
    net, x = chain(variant, bn), chain_input()
    check_shortcut(lambda: tribute.explain(net, x, "lrp", target=0, composite="gamma"), [0, 1])  # conv1, conv2


@pytest.mark.parametrize("variant", ["sigmoid", "tanh", "square", "sin", "power"])
def test_gamma_shortcut_not_taken_past_an_op_whose_relevance_is_not_proportional(variant):
    net, x = chain(variant), chain_input()

    def run():  # sin and 2**a have no LRP rule: their plain gradient, accepted with a warning (a·a is a product
        # under AttnLRP's uniform rule, tribute.lrp.gates)
        with pytest.warns(UserWarning, match="no lrp.gamma. rule") if variant in ("sin", "power") \
                else contextlib.nullcontext():
            return tribute.explain(net, x, "lrp", target=0, composite="gamma", strict=False)

    # a·a under the uniform rule gives R = a² R_y / stab(a²), 0 where the ReLU gave 0: the shortcut holds there
    got, _ = check_shortcut(run, [0, 1] if variant == "square" else [])
    # with 2**a (no rule, f(0) ≠ 0) the relevance at conv1's output is not 0 where that output is ≤ 0, and the
    # shortcut would be wrong; sigmoid's rule counts f(0) as absorbed (R = 0 where its input is 0), and tanh, a²,
    # sin have f(0) = 0, but they are refused as well, for want of a rule saying so
    if variant == "power":
        assert differs(with_relu_only(run, force_on(0)), got)


@pytest.mark.parametrize("variant", ["also_read", "read_then_inplace"])
@pytest.mark.parametrize("bn", [False, True])
def test_gamma_shortcut_not_taken_when_the_relus_input_is_also_read(variant, bn):
    net, x = chain(variant, bn), chain_input()

    def run():
        return tribute.explain(net, x, "lrp", target=0, composite="gamma")

    got, taken = check_shortcut(run)
    assert 0 not in taken  # conv1
    assert differs(with_relu_only(run, force_on(0)), got)
    with fast_paths_off():
        assert_same(got, tribute.explain(net, x, "lrp", target=0, composite="gamma", cache_weights=False))


@pytest.mark.parametrize("rule", ["flat", "wsquare"])
def test_gamma_shortcut_not_taken_with_a_non_proportional_rule_downstream(rule):
    net, x = chain(), chain_input()
    other = Flat() if rule == "flat" else WSquare()
    comp = Composite(conv=Gamma(0.25), dense=Gamma(0.25), by_name={"conv2": other})

    def run():
        return tribute.explain(net, x, "lrp", target=0, composite=comp)

    got, _ = check_shortcut(run, [])
    assert differs(with_relu_only(run, force_on(0)), got)
    # on the first layer such a rule changes nothing downstream: the shortcut is taken at conv2
    first = Composite(conv=Gamma(0.25), dense=Gamma(0.25), by_name={"conv1": other})
    check_shortcut(lambda: tribute.explain(net, x, "lrp", target=0, composite=first), [1])


class ReluOut(nn.Module):
    """Dense-ReLU-dense-ReLU whose output is the last ReLU's; unit 1 is always 0, unit 0 always positive."""

    def __init__(self, last_relu=True):
        super().__init__()
        torch.manual_seed(4)
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 2)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([5.0, -5.0]))
        self.last_relu = last_relu

    def forward(self, x):
        out = self.fc2(F.relu(self.fc1(x)))
        return F.relu(out) if self.last_relu else out


def test_gamma_shortcut_not_taken_when_the_output_is_a_relus_and_the_target_a_callable():
    x = torch.rand(4, 4, dtype=DT, generator=torch.Generator().manual_seed(5))
    net = ReluOut().to(DT).eval()

    def contrast():  # R = f(out) ∂f/∂out: nonzero at unit 1, where fc2's output is < 0
        return tribute.explain(net, x, "lrp", target=lambda out: out[:, 0] - out[:, 1], composite="gamma")

    got, _ = check_shortcut(contrast, [])
    assert differs(with_relu_only(contrast, force_on(1)), got)
    # the same network without the last ReLU: fc1 feeds a ReLU alone, and takes the shortcut
    plain = ReluOut(last_relu=False).to(DT).eval()
    check_shortcut(lambda: tribute.explain(plain, x, "lrp", target=lambda out: out[:, 0] - out[:, 1],
                                           composite="gamma"), [0])


class Mixed(nn.Module):
    """Bias-free conv-BN, transposed conv-BN (merged along the weight's dim 1), bias-free conv, all into ReLUs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(12)
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4)
        self.up, self.bn2 = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(3)
        self.conv3, self.fc = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.Linear(3, 2)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = F.relu(self.bn2(self.up(h)), inplace=True)
        return self.fc(F.relu(self.conv3(h)).mean((2, 3)))


MIXED_CONFIGS = {**GAMMA_CONFIGS, "alpha_beta": {"composite": "alpha_beta"}, "zplus": {"composite": "zplus"}}


@pytest.mark.parametrize("config", MIXED_CONFIGS)
@pytest.mark.parametrize("signed", [False, True])
def test_all_fast_paths_together_equal_the_plain_pass_on_transposed_and_bias_free_layers(config, signed):
    net = randomise_bn(Mixed(), seed=12).to(DT).eval()
    g = torch.Generator().manual_seed(14)
    x = torch.rand(2, 2, 6, 6, dtype=DT, generator=g)
    options = dict(MIXED_CONFIGS[config])
    if signed:
        x = 2 * x - 1
        options.update({"low": -1.0} if "low" in options else {})

    def run(cache=True):
        return tribute.explain(net, x, "lrp", target=1, cache_weights=cache, **options)

    got, taken = shortcut_taken(run)
    if config == "gamma":  # every layer but the last feeds a ReLU alone (conv1 with signed x too: two layers back)
        assert sorted(taken) == [0, 1, 2]
    with fast_paths_off():
        assert_same(got, run(cache=False))


# ===== 3. batch norm's output kept by reference ===========================================================
class BNWritten(nn.Module):
    """conv-BN whose output is overwritten in place by ``write`` before a ReLU reads it, conv-ReLU, dense."""

    def __init__(self, write="none", relu_inplace=False):
        super().__init__()
        torch.manual_seed(6)
        self.conv1, self.bn1 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.fc = nn.Conv2d(3, 2, 3, padding=1), nn.Linear(2 * 4 * 4, 3)
        self.write, self.relu_inplace = write, relu_inplace

    def forward(self, x):
        h = self.bn1(self.conv1(x))
        if self.write == "mul_":
            h.mul_(2.0)
        elif self.write == "add_":
            h.add_(0.5)
        elif self.write == "iadd":
            h += 0.5
        elif self.write == "mul":
            h = h * 2.0
        elif self.write == "add":
            h = h + 0.5
        a = F.relu(h, inplace=self.relu_inplace)
        return self.fc(F.relu(self.conv2(a)).flatten(1))


def bn_written(write, relu_inplace=False):
    net = randomise_bn(BNWritten(write, relu_inplace), seed=6).to(DT)
    with torch.no_grad():
        net.bn1.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    return net.eval()


def by_hand(net, x, target, rule, param):
    """The relevance of :class:`BNWritten` layer by layer: the rules' matrix definitions at the linear layers
    (batch norm merged into conv1), the Norm rule at the in-place op, ReLUs passing relevance."""
    op1 = lambda xx, w, b: F.conv2d(xx, w, b, padding=1)  # noqa: E731
    with torch.no_grad():
        scale = net.bn1.weight / torch.sqrt(net.bn1.running_var + net.bn1.eps)
        w1 = net.conv1.weight * scale.view(-1, 1, 1, 1)
        b1 = (net.conv1.bias - net.bn1.running_mean) * scale + net.bn1.bias
        rows = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            h = op1(xi, w1, b1)
            written = {"mul_": h * 2.0, "mul": h * 2.0, "add_": h + 0.5, "iadd": h + 0.5, "add": h + 0.5}.get(
                net.write, h)
            a = F.relu(written)
            z2 = op1(a, net.conv2.weight, net.conv2.bias)
            f = F.relu(z2).flatten(1)
            out = F.linear(f, net.fc.weight, net.fc.bias)
            r_out = torch.zeros_like(out)
            r_out[0, target] = out[0, target]
            r_f = matrix_rule(rule, f, net.fc.weight, net.fc.bias, r_out, F.linear, param).view(z2.shape)
            r_a = matrix_rule(rule, a, net.conv2.weight, net.conv2.bias, r_f, op1, param).view(a.shape)
            if net.write == "none":
                r_h = r_a
            else:  # the Norm rule of h·2 or h + 0.5
                r_h = h * r_a / stab(written) * (2.0 if net.write in ("mul_", "mul") else 1.0)
            rows.append(matrix_rule(rule, xi, w1, b1, r_h, op1, param).view(xi.shape))
    return torch.cat(rows)


RULES_BY_HAND = {
    "gamma": ("gamma", 0.25, {"composite": "gamma", "gamma": 0.25}),
    "alpha_beta": ("alpha_beta", (2.0, 1.0), {"composite": "alpha_beta"}),
    "zplus": ("zplus", None, {"composite": "zplus"}),
}


@pytest.mark.parametrize("rule", RULES_BY_HAND)
@pytest.mark.parametrize("write", ["none", "mul_", "add_", "iadd", "mul", "add"])
@pytest.mark.parametrize("relu_inplace", [False, True])
def test_batch_norm_output_overwritten_in_place_gives_the_matrix_definition(rule, write, relu_inplace):
    net = bn_written(write, relu_inplace)
    x = torch.randn(2, 2, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(7))
    name, param, options = RULES_BY_HAND[rule]

    def run():
        return tribute.explain(net, x, "lrp", target=2, **options)

    got = run()
    assert_same(got, by_hand(net, x, 2, name, param))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Propagation, "keep", keep_copies)
        assert_same(got, run())


@pytest.mark.parametrize("composite", ["gamma", "alpha_beta"])
def test_in_place_and_out_of_place_residuals_give_the_same_relevance_as_copies(composite):
    x = torch.rand(2, 3, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(8))
    results = {}
    for add in ("plus", "torch.add", "inplace"):
        net = _residual(add, "reused")  # bn1's output written by an in-place ReLU, conv3's by ``+=``
        results[add] = tribute.explain(net, x, "lrp", target=0, composite=composite)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Propagation, "keep", keep_copies)
            assert_same(results[add], tribute.explain(net, x, "lrp", target=0, composite=composite), msg=add)
    for add, value in results.items():
        assert_same(value, results["plus"], msg=add)


# ===== 4. non-negative inputs known from ReLU outputs ====================================================
class ReluThenConv(nn.Module):
    """x → ReLU → [written in place] → conv; the conv's output is the model's."""

    def __init__(self, write="sub_"):
        super().__init__()
        torch.manual_seed(9)
        self.conv = nn.Conv2d(2, 3, 3)
        self.write = write

    def forward(self, x):
        h = F.relu(x)
        if self.write == "sub_":
            h.sub_(1.0)
        elif self.write == "view_sub_":  # through a view: the same version counter
            h[:, :1].sub_(1.0)
        elif self.write == "data":  # invisible to autograd's version counter
            h.data.sub_(1.0)
        return self.conv(h).flatten(1)


def relu_then_conv_by_hand(net, x, target, rule, param):
    """The conv's rule by its matrix definition on the written input, the Norm rule at ``sub_``, ReLU passing."""
    rows = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            h = F.relu(x[i:i + 1])
            written = h.clone()
            if net.write == "view_sub_":
                written[:, :1] -= 1.0
            elif net.write != "none":
                written -= 1.0
            z = net.conv(written)
            r = torch.zeros_like(z).flatten(1)
            r[0, target] = z.flatten(1)[0, target]
            r_w = matrix_rule(rule, written, net.conv.weight, net.conv.bias, r.view(z.shape), F.conv2d, param)
            r_w = r_w.view(h.shape)
            if net.write in ("none", "data"):  # no op between the ReLU and the conv that the engine sees
                rows.append(r_w)
            else:
                r_h = h * r_w / stab(written)  # Norm rule of h − 1 (on the channels written)
                if net.write == "view_sub_":
                    r_h[:, 1:] = r_w[:, 1:]
                rows.append(r_h)
    return torch.cat(rows)


def record_layers(options):
    """A composite that records the LayerCalls it assigns rules to."""
    seen = []

    class Recording(Composite):
        def rule(self, layer):
            seen.append(layer)
            return super().rule(layer)

    rule = {"gamma": Gamma(0.25), "alpha_beta": AlphaBeta(2.0, 1.0), "zplus": ZPlus()}[options["composite"]]
    return Recording(conv=rule, dense=rule), seen


def relu_then_conv_case(write, rule):
    """LRP of ``ReluThenConv(write)`` under ``rule``: (net, x, composite, result, the conv's non-negative mark),
    after checking the result against the rule written out by hand."""
    net = ReluThenConv(write).to(DT).eval()
    x = torch.randn(2, 2, 5, 5, dtype=DT, generator=torch.Generator().manual_seed(10))
    name, param, options = RULES_BY_HAND[rule]
    comp, seen = record_layers(options)
    got = tribute.explain(net, x, "lrp", target=4, composite=comp)
    assert_same(got, relu_then_conv_by_hand(net, x, 4, name, param))
    return net, x, comp, got, [layer.nonnegative_input for layer in seen]


@pytest.mark.parametrize("rule", RULES_BY_HAND)
@pytest.mark.parametrize("write", ["sub_", "view_sub_"])
def test_relu_output_made_negative_in_place_takes_the_signed_path(rule, write):
    *_, marks = relu_then_conv_case(write, rule)
    assert marks == [False]


@pytest.mark.parametrize("rule", RULES_BY_HAND)
def test_relu_output_left_alone_is_known_non_negative(rule):
    net, x, comp, got, marks = relu_then_conv_case("none", rule)
    assert marks == [True]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(linear_rules, "_nonnegative", nonnegative_by_values)
        assert_same(got, tribute.explain(net, x, "lrp", target=4, composite=comp))


class DeepReluWritten(nn.Module):
    """conv-ReLU, its output lowered in place, conv-ReLU, dense: the second conv's input is signed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.conv1, self.conv2, self.fc = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3), nn.Linear(3 * 3 * 3, 2)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h.sub_(0.2)
        return self.fc(F.relu(self.conv2(h)).flatten(1))


@pytest.mark.parametrize("composite", ["zplus", "alpha_beta", "gamma"])
def test_relu_output_written_in_a_deeper_model_equals_the_sign_check_by_values(composite):
    net = DeepReluWritten().to(DT).eval()
    x = torch.rand(3, 2, 5, 5, dtype=DT, generator=torch.Generator().manual_seed(12))
    got = tribute.explain(net, x, "lrp", target=1, composite=composite)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(linear_rules, "_nonnegative", nonnegative_by_values)
        assert_same(got, tribute.explain(net, x, "lrp", target=1, composite=composite))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "known limitation: a write through .data moves no version counter, so the engine cannot see it (autograd "
    "cannot either); a ReLU's output written so keeps its non-negative mark and the x ≥ 0 formulas run"))
@pytest.mark.parametrize("rule", RULES_BY_HAND)
def test_relu_output_written_through_data(rule):
    net = ReluThenConv("data").to(DT).eval()
    x = torch.randn(2, 2, 5, 5, dtype=DT, generator=torch.Generator().manual_seed(10))
    name, param, options = RULES_BY_HAND[rule]
    got = tribute.explain(net, x, "lrp", target=4, **options)
    assert_same(got, relu_then_conv_by_hand(net, x, 4, name, param))


# ===== 5. additions' Norm rule without a graph ============================================================
class TwoBranches(nn.Module):
    """a = 3·x₁ + 1, b = −2·x₂ + 0.5 (two 1×1 dense layers), added as ``style``."""

    def __init__(self, style="plus"):
        super().__init__()
        self.l1, self.l2 = nn.Linear(1, 1), nn.Linear(1, 1)
        with torch.no_grad():
            self.l1.weight.fill_(3.0)
            self.l1.bias.fill_(1.0)
            self.l2.weight.fill_(-2.0)
            self.l2.bias.fill_(0.5)
        self.style = style

    def forward(self, x):
        a, b = self.l1(x[:, :1]), self.l2(x[:, 1:])
        if self.style == "plus":
            return a + b
        if self.style == "method":
            return a.add(b)
        if self.style == "inplace":
            a += b
            return a
        if self.style == "alpha":  # keyword arguments: the autograd path
            return torch.add(a, b, alpha=1.0)
        if self.style == "broadcast":  # shapes differ ((1, 1) and (1,)): the autograd path
            return a + b.view(-1)
        raise AssertionError(self.style)


class EpsilonEverywhere(Composite):
    """The ε rule everywhere, in the relevance form (a Composite subclass is not computed as a gradient)."""


@pytest.mark.parametrize("style", ["plus", "method", "inplace", "alpha", "broadcast"])
def test_addition_splits_by_hand(style):
    x = torch.tensor([[2.0, 1.5]], dtype=DT)
    eps = Epsilon(1e-6)
    got = tribute.explain(TwoBranches(style).to(DT).eval(), x, "lrp", target=0,
                          composite=EpsilonEverywhere(conv=eps, dense=eps))
    # a = 7, b = −2.5, S = 4.5; R_a = a·S/stab(S), R_b = b·S/stab(S); the ε rule at each 1×1 layer gives its
    # input x·w·R/stab(x·w + bias): 6·R_a/stab(7), −3·R_b/stab(−2.5)
    e = 1e-6
    s = 4.5 / (4.5 + e)
    r_a, r_b = 7.0 * s, -2.5 * s
    expected = torch.tensor([[6.0 * r_a / (7.0 + e), -3.0 * r_b / (-2.5 - e)]], dtype=DT)
    assert_same(got, expected)
    # the biases absorb the rest: 6 − 3 + 1 + 0.5 = 4.5
    torch.testing.assert_close(got.sum(), torch.tensor(3.0, dtype=DT), rtol=1e-6, atol=0)


class ResidualAlpha(Residual):
    """test_lrp's Residual with its addition written ``torch.add(y, h, alpha=1.0)`` (Norm rule by autograd)."""

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        y = self.conv3(self.act(self.conv2(h)))
        return self.fc(self.act(torch.add(y, h, alpha=1.0)).mean((2, 3)))


@pytest.mark.parametrize("composite", ["gamma", "alpha_beta", "epsilon_plus"])
def test_additive_norm_rule_equals_the_autograd_path(composite):
    x = torch.rand(2, 3, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(13))
    reference = _residual("plus", "functional")
    alpha = ResidualAlpha("plus", "functional").to(DT)
    alpha.load_state_dict(reference.state_dict())
    alpha.eval()
    expected = tribute.explain(alpha, x, "lrp", target=2, composite=composite)
    for add in ("plus", "torch.add", "module", "inplace"):
        got = tribute.explain(_residual(add, "functional"), x, "lrp", target=2, composite=composite)
        assert_same(got, expected, msg=add)


# ===== cases that once failed ============================================================================
class DynamicWeight(nn.Module):
    """A ReLU layer's output used as another dense layer's *weight* (a hypernetwork in miniature)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(2, 3)
        self.register_buffer("c", torch.randn(1, 3))

    def forward(self, x):  # one sample: the weight is that sample's
        w = F.relu(self.fc1(x)).view(2, 3)
        return self.fc2(F.linear(self.c, w))


def test_gamma_shortcut_not_taken_past_a_layer_whose_weight_is_on_the_input_path():
    net = DynamicWeight().to(DT).eval()
    x = torch.tensor([[0.3, 1.2, 0.8, 0.5]], dtype=DT)  # ≥ 0: the shortcut is open to fc1
    with torch.no_grad():
        assert (net.fc1(x) < 0).any() and (net.fc1(x) > 0).any()
    with pytest.raises(ValueError, match="linear"):  # a weight computed from the input has no LRP rule
        tribute.explain(net, x, "lrp", target=0, composite="gamma")
    with pytest.warns(UserWarning, match="linear"):
        check_shortcut(lambda: tribute.explain(net, x, "lrp", target=0, composite="gamma", strict=False))


class GroupedUp(nn.Module):
    """Transposed convolution with ``groups`` → BN → ReLU → dense; ``folded``: BN folded into it by hand."""

    def __init__(self, groups, folded=False):
        super().__init__()
        torch.manual_seed(15)
        self.conv = nn.Conv2d(2, 4, 3)
        self.up = nn.ConvTranspose2d(4, 4, 3, groups=groups)
        self.bn = nn.Identity() if folded else nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.up(F.relu(self.conv(x))))).flatten(1))


def grouped_up(groups):
    net = randomise_bn(GroupedUp(groups), seed=15).to(DT).eval()
    folded = GroupedUp(groups, folded=True).to(DT).eval()
    with torch.no_grad():
        folded.conv.load_state_dict(net.conv.state_dict())
        folded.fc.load_state_dict(net.fc.state_dict())
        bn = net.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = net.up.weight  # (in, out / groups, k, k): output channel g·(out / groups) + j
        folded.up.weight.copy_((w.view(groups, -1, *w.shape[1:]) * scale.view(groups, 1, -1, 1, 1)).view_as(w))
        folded.up.bias.copy_((net.up.bias - bn.running_mean) * scale + bn.bias)
    return net, folded


def _grouped_case(composite, groups, strict=False):
    options = {"composite": composite, **({"strict": True} if strict else {})}
    return pytest.param(options, groups, id=f"{composite}{'-strict' if strict else ''}-groups{groups}")


@pytest.mark.parametrize(("options", "groups"), [
    _grouped_case("epsilon", 1), _grouped_case("epsilon", 2),  # the ε gradient form
    _grouped_case("epsilon", 1, strict=True), _grouped_case("gamma", 1), _grouped_case("zplus", 1),
    _grouped_case("epsilon", 2, strict=True), _grouped_case("gamma", 2),
    _grouped_case("zplus", 2),
])
def test_batch_norm_merged_into_a_grouped_transposed_convolution(options, groups):
    net, folded = grouped_up(groups)
    x = torch.rand(2, 2, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        torch.testing.assert_close(net(x), folded(x), rtol=1e-12, atol=1e-12)
    expected = tribute.explain(folded, x, "lrp", target=0, **options)
    assert_same(tribute.explain(net, x, "lrp", target=0, **options), expected)


class EinsumHead(nn.Module):
    """A ReLU layer, then a linear map written with einsum (operands listed or as a list), plus a skip layer."""

    def __init__(self, listed):
        super().__init__()
        torch.manual_seed(2)
        self.fc1, self.skip = nn.Linear(4, 5), nn.Linear(4, 3)
        self.w = nn.Parameter(torch.randn(5, 3))
        self.listed = listed

    def forward(self, x):
        h = F.relu(self.fc1(x))
        e = torch.einsum("bi,ij->bj", [h, self.w]) if self.listed else torch.einsum("bi,ij->bj", h, self.w)
        return e + self.skip(x)


@pytest.mark.parametrize("listed", [False, True])
@pytest.mark.parametrize("composite", ["epsilon_plus", "gamma"])
def test_einsum_with_its_operands_in_a_list(listed, composite):
    x = torch.rand(3, 4, dtype=DT, generator=torch.Generator().manual_seed(17))
    expected = tribute.explain(EinsumHead(False).to(DT).eval(), x, "lrp", target=0, composite=composite)
    assert_same(tribute.explain(EinsumHead(listed).to(DT).eval(), x, "lrp", target=0, composite=composite), expected)
