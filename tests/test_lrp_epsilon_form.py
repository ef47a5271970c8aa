"""ε composites in the gradient form (tribute.lrp.epsilon_form) equal the relevance form exactly.

With R_v = v ⊙ t_v at every tensor, the ε rule, the Norm rule and ReLU's pass rule become a modified gradient:
the plain backward pass, scaled by v / stab(v) at every linear-layer and Norm-op output, times x.  ``lrp`` takes
that path for composites with ε on every layer; the relevance form (``tribute.lrp.propagation``) is forced here by a
Composite subclass, which the gradient form does not take.
"""

from __future__ import annotations

import pytest
import torch
from conftest import residual_cnns
from torch import nn

import tribute
import tribute.lrp.epsilon_form as epsilon_form
from tribute.lrp import Composite, Epsilon, Gamma


class RelevanceForm(Composite):
    """The same rules; being a subclass it is computed in the relevance form."""


def relevance_form(net, x, target, eps, **kw):
    comp = RelevanceForm(conv=Epsilon(eps), dense=Epsilon(eps), name="epsilon")
    return tribute.explain(net, x, "lrp", target=target, composite=comp, **kw)


@pytest.mark.parametrize("eps", [1e-6, 0.25])
@pytest.mark.parametrize("style", ["modules", "inplace_reused", "functional", "method"])
def test_gradient_form_equals_relevance_form_on_a_residual_cnn(style, eps, fallbacks):
    net = residual_cnns()[style]
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fast = tribute.explain(net, x, "lrp", target=torch.tensor([0, 2, 4]), composite="epsilon", epsilon=eps)
    assert fallbacks == []
    slow = relevance_form(net, x, torch.tensor([0, 2, 4]), eps)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-13 * slow.abs().max().item())


def test_gradient_form_with_a_callable_target_and_batch_norm_after_a_shared_output(fallbacks):
    """A contrast target (R = value × gradient at the output); then a model whose conv output is read by its
    batch norm and by another op: the form gives up (batch norm cannot be merged) and the result is the same."""
    net = residual_cnns()["inplace_reused"]
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def contrast(out):
        return out[:, 1] - out[:, 3]

    fast = tribute.explain(net, x, "lrp", target=contrast, composite="epsilon")
    assert fallbacks == []
    torch.testing.assert_close(fast, relevance_form(net, x, contrast, 1e-6), rtol=1e-10, atol=1e-14)

    class SharedConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 64, 3)

        def forward(self, x):
            z = self.conv(x)
            return self.fc((self.bn(z).relu() + z).flatten(1))

    shared = SharedConv().double().eval()
    a = tribute.explain(shared, x, "lrp", target=0, composite="epsilon")
    assert any("batch norm" in reason for reason in fallbacks)
    torch.testing.assert_close(a, relevance_form(shared, x, 0, 1e-6), rtol=1e-12, atol=1e-15)


def test_models_outside_the_gradient_form_fall_back_to_the_same_relevance(fallbacks):
    """tanh is not positively homogeneous (its pass rule is no gradient): the relevance form runs instead."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    a = tribute.explain(net, x, "lrp", target=2, composite="epsilon")
    assert any("tanh" in reason for reason in fallbacks)
    torch.testing.assert_close(a, relevance_form(net, x, 2, 1e-6), rtol=0, atol=0)


def test_an_explainer_tries_the_gradient_form_once_on_a_model_it_does_not_cover(fallbacks):
    """The second call goes straight to the relevance form (no second attempt, no second fallback) and gives the same
    values; a new explainer tries again."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    lrp = tribute.LRP(net, composite="epsilon")
    first = lrp(x, target=2)
    assert len(fallbacks) == 1
    second = lrp(x, target=1)
    assert len(fallbacks) == 1
    torch.testing.assert_close(second, relevance_form(net, x, 1, 1e-6), rtol=0, atol=0)
    torch.testing.assert_close(first, relevance_form(net, x, 2, 1e-6), rtol=0, atol=0)
    tribute.LRP(net, composite="epsilon")(x, target=2)
    assert len(fallbacks) == 2


def test_only_pure_epsilon_composites_take_the_gradient_form():
    assert epsilon_form.covers(Composite(conv=Epsilon(0.1), dense=Epsilon(1e-6), by_name={"fc": Epsilon(2.0)}))
    assert not epsilon_form.covers(Composite(conv=Gamma(0.25), dense=Epsilon(1e-6)))
    assert not epsilon_form.covers(RelevanceForm(conv=Epsilon(), dense=Epsilon()))
