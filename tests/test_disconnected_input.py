"""A forward that cuts the input off the autograd graph gets tribute's own error from every gradient method.

``x.detach()`` in forward, layers under ``torch.no_grad()`` or a constant output leave the model's values as
they were but its gradient undefined; every method that reads a gradient raises
:class:`tribute.DisconnectedInputError` ("the score does not depend on the input ...") instead of autograd's
"appears to not have been used in the graph".  Methods that read only values (Score-CAM) are unaffected, and
a layer after the cut still has its gradient.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tribute
from tribute.robust.attacks import pgd

# read the model's outputs only: Score-CAM and the perturbation methods that need no gradient
GRADIENT_FREE = {"scorecam"} | {m for m in tribute.methods() if getattr(tribute.get_method(m), "forward_only", False)}


class Net(nn.Module):
    """conv-ReLU-pool-linear; ``cut`` says where forward leaves the graph (None: nowhere)."""

    def __init__(self, cut: str | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.cut = cut

    def forward(self, x):
        if self.cut == "input":
            x = x.detach()
        if self.cut == "no_grad":
            with torch.no_grad():
                h = self.conv(x)
        else:
            h = self.conv(x)
        h = self.conv2(F.relu(h))
        if self.cut == "head":
            h = h.detach()
        out = self.fc(F.adaptive_avg_pool2d(F.relu(h), 1).flatten(1))
        return torch.zeros_like(out).detach() + out.detach() if self.cut == "constant" else out


def options(method: str, x: torch.Tensor) -> dict:
    o = {"smoothgrad": {"samples": 2, "seed": 0}, "smoothgrad_squared": {"samples": 2, "seed": 0},
         "vargrad": {"samples": 2, "seed": 0}, "integrated_gradients": {"steps": 4}}.get(method, {})
    if method in ("expected_gradients", "layer_expected_gradients"):
        o = {"samples": 2, "seed": 0, "references": torch.zeros(2, *x.shape[1:])}
    if tribute.get_method(method).returns == "layer":
        o["layer"] = "conv2"
    return o


@pytest.fixture
def x():
    return torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", sorted(set(tribute.methods()) - GRADIENT_FREE))
def test_every_gradient_method_refuses_a_score_cut_off_before_its_head(method, x):
    # detached after conv2: neither the input nor any layer (conv2, CAM's default layer) reaches the score
    with pytest.raises(tribute.DisconnectedInputError, match="the score does not depend on .* through autograd"):
        tribute.explain(Net("head").eval(), x, method, target=1, **options(method, x))


CUTS = [(method, cut) for cut in ("input", "no_grad", "constant")
        for method in ("gradient", "saliency", "integrated_gradients", "smoothgrad", "deeplift", "guided_backprop",
                       "lrp_epsilon", "lrp", "fullgrad", "deeplift_reveal_cancel")]


@pytest.mark.parametrize("method,cut", CUTS)
def test_gradient_methods_refuse_a_forward_that_detaches_the_input(method, cut, x):
    with pytest.raises(tribute.DisconnectedInputError, match="the score does not depend on the input through"):
        tribute.explain(Net(cut).eval(), x, method, target=1, **options(method, x))


def test_a_layer_method_names_the_layer_the_score_does_not_reach(x):
    with pytest.raises(tribute.DisconnectedInputError, match="does not depend on layer 'conv2'"):
        tribute.explain(Net("head").eval(), x, "layer_gradient", target=0, layer="conv2")


def test_a_layer_after_the_cut_keeps_its_gradient_and_values_are_untouched(x):
    plain, cut = Net().eval(), Net("input").eval()
    for method in ("layer_gradient", "layer_integrated_gradients", "gradcam"):
        expected = tribute.explain(plain, x, method, target=2, layer="conv2")
        torch.testing.assert_close(tribute.explain(cut, x, method, target=2, layer="conv2"), expected)
    # Score-CAM reads outputs only: a detach anywhere changes nothing
    torch.testing.assert_close(tribute.explain(Net("head").eval(), x, "scorecam", target=2),
                               tribute.explain(plain, x, "scorecam", target=2))


def test_an_attack_on_a_detached_model_gets_the_same_error_type(x):
    with pytest.raises(tribute.DisconnectedInputError, match="pgd: the loss does not depend on the input"):
        pgd(Net("input").eval(), x, torch.tensor([0, 1]), norm="linf", eps=0.1, steps=2, step_size=0.05, seed=0)


class BiasOnly(nn.Module):
    """A constant output: the head's bias, whatever the input (on the autograd graph through the parameter)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc.bias.expand(x.shape[0], -1) * 1.0


def test_reveal_cancel_on_a_constant_output_gets_the_shared_error(x):
    # not "lost track of the differences": the output was never computed from the input
    for net in (BiasOnly(), Net("constant")):
        with pytest.raises(tribute.DisconnectedInputError, match="the score does not depend on the input through"):
            tribute.explain(net.eval(), x, "deeplift_reveal_cancel", target=1)
