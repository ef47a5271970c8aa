"""Never a silent wrong answer: rule methods refuse ops on the input's float path that their rules do not cover."""

import threading
import warnings

import pytest
import torch
from torch import nn

import tribute
from tribute.core.strictness import UncoveredModelError

DT = torch.float64

# every method whose rules are not the plain gradient, with options making it run on a small dense network
RULE_METHODS = [
    ("guided_backprop", {}), ("deconvnet", {}), ("deeplift", {}), ("deeplift_reveal_cancel", {}),
    ("lrp_epsilon", {}), ("lrp", {}), ("lrp_alpha_beta", {}), ("lrp_gamma", {}), ("lrp_zplus", {}),
    ("layer_deeplift", {"layer": "lin1"}), ("gradient", {"softplus_beta": 2.0}),
]


class Net(nn.Module):
    """lin1 → ReLU → lin2 → ``middle`` → lin3: a rectifier every rule set modifies, then ``middle``."""

    def __init__(self, middle):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.lin2, self.lin3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)
        self.middle = middle

    def forward(self, x):
        return self.lin3(self.middle(self.lin2(torch.relu(self.lin1(x)))))


def hand_gelu(h):  # GELU's tanh form written out: pow, tanh and a product of two tensors on the path
    return 0.5 * h * (1 + torch.tanh(0.7978845608 * (h + 0.044715 * h.pow(3))))


def _net(middle):
    return Net(middle).to(DT).eval()


X = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method,options", RULE_METHODS, ids=[m for m, _ in RULE_METHODS])
def test_each_rule_method_refuses_an_unruled_nonlinearity_naming_op_method_and_ways_on(method, options):
    net = _net(torch.erf)
    if method == "gradient":  # β-smoothing only replaces forward functions: erf's plain gradient is exact
        tribute.explain(net, X, method, target=0, **options)
        return
    if method == "deeplift_reveal_cancel":  # its differences cannot take the plain gradient at all
        with pytest.raises(ValueError, match=r"deeplift_reveal_cancel.*torch.erf.*register_rule"):
            tribute.explain(net, X, method, target=0, strict=False)
        return
    with pytest.raises(UncoveredModelError) as e:
        tribute.explain(net, X, method, target=0, **options)
    msg = str(e.value)
    assert "torch.erf" in msg and f"{method}:" in msg
    assert "register_nonlinearity" in msg and "register_rule" in msg and "strict=False" in msg


def test_guided_backprop_keeps_the_derivative_of_a_hand_written_gelu_as_of_f_gelu():
    # Springenberg et al. modify rectifiers alone: GELU keeps f' however it is written (pow, tanh, a product)
    hand = tribute.explain(_net(hand_gelu), X, "guided_backprop", target=0)
    fused = tribute.explain(_net(lambda h: torch.nn.functional.gelu(h, approximate="tanh")), X, "guided_backprop",
                            target=0)
    torch.testing.assert_close(hand, fused, rtol=1e-8, atol=1e-10)


# A hand-written GELU (pow, tanh, products) is no longer refused: DeepLIFT has rules at its products and powers
# (test_deeplift_modern), lrp_epsilon at its products; guided backprop keeps its derivative (above).


def test_strict_false_warns_once_per_explainer_across_calls_and_threads():
    net = _net(torch.erf)
    explainer = tribute.DeepLift(net, strict=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # only the explainer may hold warnings back
        first = explainer.attribute(X, target=0)
        explainer.attribute(X, target=1)
        threads = [threading.Thread(target=explainer.attribute, args=(X,), kwargs={"target": 2}) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        mine = [w for w in caught if issubclass(w.category, UserWarning) and "torch.erf" in str(w.message)]
        assert len(mine) == 1 and "deeplift" in str(mine[0].message)
        tribute.DeepLift(net, strict=False).attribute(X, target=0)  # another explainer warns again
        assert len([w for w in caught if "torch.erf" in str(w.message)]) == 2
    # strict=False is today's answer: the plain gradient at erf, Rescale at the ReLU
    with torch.no_grad():
        h1 = net.lin1(X)
        zbar1 = net.lin1(torch.zeros_like(X))
        r1, rbar1 = torch.relu(h1), torch.relu(zbar1)
        m1 = (r1 - rbar1) / (h1 - zbar1)
        h2 = net.lin2(r1)
        d = 2 / torch.pi ** 0.5 * torch.exp(-h2 ** 2)  # erf'(h2) at the input (not at the reference)
        up = (d * net.lin3.weight[0]) @ net.lin2.weight
        expected = X * ((m1 * up) @ net.lin1.weight)
    torch.testing.assert_close(first, expected)


class Masked(nn.Module):
    """Integer and boolean ops on the input's path: a mask by comparison, argmax, round."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.lin2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.lin1(x))
        mask = (h > 0.1).to(h.dtype)  # a comparison, then a cast of the boolean
        top = h.argmax(1)  # an integer index
        bump = torch.round(h * 4) / 4  # piecewise constant: no gradient
        g = h * mask + bump + torch.zeros_like(h)
        return self.lin2(g) + top.unsqueeze(1).to(h.dtype) * 0.01 + float(int(h.sum() > 0))


@pytest.mark.parametrize("method", ["guided_backprop", "deeplift", "lrp_epsilon"])
def test_integer_boolean_and_shape_only_ops_do_not_count(method):
    net, x = Masked().to(DT).eval(), X
    m = tribute.get_method(method)(net)
    if method == "deeplift":
        # no op is refused, but the mask, round and argmax change S between x and x̄ where no rule sees them: the
        # sum misses S(x) − S(x̄), which DeepLIFT checks on every call (a warning with strict=False)
        with pytest.raises(UncoveredModelError, match=r"deeplift: the attributions of sample \d+ sum to"):
            m.attribute(x, target=0)
        with pytest.warns(UserWarning, match="not S"):
            a = m.attribute(x, target=0, strict=False)
    else:
        a = m.attribute(x, target=0)
    assert not m.coverage.unruled, str(m.coverage)
    assert not any("gt" in k or "argmax" in k or "round" in k for c in (m.coverage.linear, m.coverage.ruled)
                   for k in c)
    if method == "guided_backprop":  # the mask and round are constants: guided backprop of lin2 ∘ (mask ⊙ ReLU)
        with torch.no_grad():
            h = net.lin1(x)
            r = torch.relu(h)
            mask = (r > 0.1).to(DT)
            up = (net.lin2.weight[0] * mask).expand(3, 6)
            expected = (up.clamp(min=0) * (h > 0)) @ net.lin1.weight
        torch.testing.assert_close(a, expected)


def test_coverage_is_filled_on_every_call_of_a_rule_method_and_not_for_the_gradient():
    net = _net(torch.tanh)
    m = tribute.DeepLift(net)
    m.attribute(X, target=0)
    assert m.coverage.ruled == {"relu": 1, "tanh": 1} and m.coverage.passes == 1
    assert m.coverage.linear["torch.nn.functional.linear"] == 3
    g = tribute.Gradient(net)
    g.attribute(X, target=0)
    assert g.coverage is None  # the plain gradient runs without the function mode
    g.attribute(X, target=0, strict=True)
    assert g.coverage.plain == {"relu": 1, "tanh": 1}


def test_rules_that_change_nothing_are_refused_by_default_and_warned_with_strict_false():
    net = _net(torch.tanh)
    net.forward = lambda x: net.lin3(net.middle(net.lin2(net.lin1(x))))  # no rectifier left
    with pytest.raises(UncoveredModelError, match=r"guided_backprop rules changed nothing.*tanh.*strict=False"):
        tribute.explain(net, X, "guided_backprop", target=0)
    with pytest.warns(UserWarning, match="changed nothing"):
        a = tribute.explain(net, X, "guided_backprop", target=0, strict=False)
    torch.testing.assert_close(a, tribute.explain(net, X, "gradient", target=0))  # what it is: the gradient
    with pytest.raises(UncoveredModelError, match="softplus.*changed nothing"):
        tribute.explain(net, X, "gradient", target=0, softplus_beta=2.0)



class MaskBeforeNorm(nn.Module):
    """A comparison reads a layer's output that batch norm also reads: LRP must not merge the norm into the layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.bn, self.lin2 = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        h = self.lin1(x)
        mask = (h > 0).to(h.dtype)
        return self.lin2(torch.relu(self.bn(h)) * mask)


def test_a_valueless_read_still_counts_as_a_reader_for_lrp():
    net = MaskBeforeNorm().to(DT).eval()
    reused = tribute.LRP(net, composite="epsilon")
    fresh = [tribute.LRP(net, composite="epsilon", cache_weights=False).attribute(X, target=0) for _ in range(2)]
    for _ in range(3):  # later calls of one explainer run from its merge plan
        torch.testing.assert_close(reused.attribute(X, target=0), fresh[0])
    torch.testing.assert_close(fresh[1], fresh[0])
    # the relevance form (strict=True skips the gradient form) gives the same
    masked = tribute.LRP(net, composite="epsilon", cache_weights=False, strict=True)
    torch.testing.assert_close(masked.attribute(X, target=0), fresh[0])
    cov = masked.coverage  # the comparison and the cast of its boolean are off the path
    assert set(cov.ruled) == {"torch.nn.functional.linear", "torch.nn.functional.batch_norm", "relu",
                              "torch.Tensor.mul"}
    assert not cov.unruled and not cov.linear and not cov.plain


class ModeProbe(nn.Module):
    """Records whether a torch-function mode is active while it runs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(torch._C._is_torch_function_mode_enabled())
        return self.lin(torch.relu(x))


@pytest.mark.parametrize("method,options", [("gradient", {}), ("integrated_gradients", {"steps": 4}),
                                            ("smoothgrad", {"samples": 2, "seed": 0})])
def test_gradient_methods_run_without_the_function_mode(method, options):
    net = ModeProbe().to(DT).eval()
    tribute.explain(net, X, method, target=0, **options)
    assert net.seen and not any(net.seen)
    net.seen.clear()
    tribute.explain(net, X, "guided_backprop", target=0)  # a rule method does run it
    assert all(net.seen)
