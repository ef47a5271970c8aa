"""In-place ops in every spelling under rules (issue 13): ``inplace=True`` arguments (keyword and positional),
``out=``, trailing underscores and ``__i*__``; and registration of functions that dispatch to torch-function modes."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tribute
from tribute.lrp.composites import composites

DT = torch.float64


class EfficientBlock(nn.Module):
    """An EfficientNet-like block: conv, SiLU, squeeze-excitation (SiLU, sigmoid gate), pooled head."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.SiLU(inplace=inplace)
        self.squeeze, self.excite = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.se_act = nn.SiLU(inplace=inplace)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        gate = torch.sigmoid(self.excite(self.se_act(self.squeeze(h.mean((2, 3), keepdim=True)))))
        return self.head((h * gate).mean((2, 3)))


class MobileBlock(nn.Module):
    """A MobileNetV3-like block: ``nn.Hardswish`` (positional ``inplace``) and ``F.hardswish(inplace=...)``."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.inplace = inplace
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.Hardswish(inplace=inplace)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.conv1(x))
        h = F.hardswish(self.conv2(h), inplace=self.inplace)
        return self.head(h.mean((2, 3)))


def _quiet(*args, **kw):
    """``tribute.explain`` with ``strict=False``: these blocks have ops without a rule on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return tribute.explain(*args, strict=False, **kw)


def _pair(cls):
    torch.manual_seed(0)
    out_of_place, in_place = cls(False).to(DT).eval(), cls(True).to(DT).eval()
    in_place.load_state_dict(out_of_place.state_dict())
    return out_of_place, in_place


X = torch.randn(2, 3, 6, 6, dtype=DT, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method,kw", [("guided_backprop", {}), ("deconvnet", {}),
                                       ("guided_gradcam", {"layer": "conv"})])
def test_inplace_silu_without_a_rule_equals_the_out_of_place_model(method, kw):
    # SiLU has no guided-backprop rule: it runs out of place on a copy before the engine writes it back, so
    # SiLU's saved input is never overwritten (before: "modified by an inplace operation")
    a, b = _pair(EfficientBlock)
    expected = _quiet(a, X, method, target=1, **kw)
    got = _quiet(b, X, method, target=1, **kw)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("block", [MobileBlock, EfficientBlock])
@pytest.mark.parametrize("composite", composites())
def test_inplace_blocks_under_every_lrp_composite_equal_the_out_of_place_model(composite, block):
    # F.hardswish(x, inplace=True) and nn.Hardswish(inplace=True) (which passes the flag by position) write in
    # place through an argument: LRP must see the write (before: an error blaming .data)
    a, b = _pair(block)
    kw = {"composite": composite, "target": 2}
    if "box" in composite:
        kw.update(low=-4.0, high=4.0)
    expected = _quiet(a, X, "lrp", **kw)
    got = _quiet(b, X, "lrp", **kw)
    assert torch.isfinite(expected).all() and expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class Spellings(nn.Module):
    """ReLU then a sum, written in place as ``h.relu_()`` and ``h += g``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin1, self.lin2, self.head = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h, g = self.lin1(x), self.lin2(x)
        h.relu_()
        h += g
        return self.head(h)


class OutOfPlace(Spellings):
    def forward(self, x):
        return self.head(torch.relu(self.lin1(x)) + self.lin2(x))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "deeplift", "lrp_epsilon", "lrp_alpha_beta"])
def test_underscore_and_iadd_spellings_equal_the_out_of_place_model(method):
    x = torch.randn(5, 4, dtype=DT, generator=torch.Generator().manual_seed(2))
    got = tribute.explain(Spellings().to(DT).eval(), x, method, target=1)
    expected = tribute.explain(OutOfPlace().to(DT).eval(), x, method, target=1)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class OutArgument(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        h = self.lin(x)
        return torch.add(h, 1.0, out=torch.empty_like(h))


@pytest.mark.parametrize("method", ["guided_backprop", "lrp_epsilon", "deeplift"])
def test_an_out_argument_on_the_path_is_a_clear_error(method):
    # autograd cannot follow a write through out=: torch's own error names it, never a silent answer
    x = torch.randn(3, 4, dtype=DT)
    with pytest.raises(RuntimeError, match="out="):
        tribute.explain(OutArgument().to(DT).eval(), x, method, target=0)
