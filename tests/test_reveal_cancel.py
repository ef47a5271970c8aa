"""DeepLIFT RevealCancel (Shrikumar et al. 2017 §3.5.3): hand-worked values, summation-to-delta, equivalences."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import mlp, residual_cnns
from torch import nn

import tribute


class Min(nn.Module):
    """min(i₁, i₂) = i₁ − ReLU(i₁ − i₂), the paper's example of cancelling evidence."""

    def forward(self, x):
        return x[:, 0:1] - torch.relu(x[:, 0:1] - x[:, 1:2])


def test_min_example_by_hand():
    # at (3, 1) from 0: Δz = 3 − 1 splits into Δz⁺ = 3, Δz⁻ = −1 at the ReLU;
    # Δy⁺ = ½(3 − 0) + ½(2 − 0) = 2.5, Δy⁻ = ½(0 − 0) + ½(2 − 3) = −0.5, so m⁺ = 5/6 and m⁻ = 1/2;
    # i₁: 3 − 3·5/6 = 0.5 and i₂: −(−1)·1/2 = 0.5.  Rescale gives (0, 1).
    x = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    rc = tribute.explain(Min(), x, "deeplift_reveal_cancel", target=0)
    torch.testing.assert_close(rc, torch.tensor([[0.5, 0.5]], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(tribute.explain(Min(), x, "deeplift", target=0),
                               torch.tensor([[0.0, 1.0]], dtype=torch.float64))


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU])
def test_summation_to_delta_is_exact(act):
    net = mlp(act, sizes=(6, 10, 10, 3))
    g = torch.Generator().manual_seed(4)
    x, base = (torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    a = tribute.explain(net, x, "deeplift_reveal_cancel", target=1, baseline=base)
    with torch.no_grad():
        delta = net(x)[:, 1] - net(base)[:, 1]
    torch.testing.assert_close(a.sum(1), delta, rtol=0, atol=1e-12)
    assert (a - tribute.explain(net, x, "deeplift", target=1, baseline=base)).abs().max() > 1e-4


def test_summation_to_delta_on_a_residual_cnn_with_batch_norm(images):
    for net in residual_cnns().values():
        a = tribute.explain(net, images, "deeplift_reveal_cancel", target=3)
        with torch.no_grad():
            delta = net(images)[:, 3] - net(torch.zeros_like(images))[:, 3]
        torch.testing.assert_close(a.flatten(1).sum(1), delta, rtol=0, atol=1e-12)


def test_equals_rescale_when_no_evidence_cancels():
    # non-negative weights and x ≥ x̄: every difference is positive, Δz⁻ = 0, and m⁺ is Rescale's ratio
    torch.manual_seed(0)
    net = mlp(nn.Tanh, sizes=(5, 7, 7, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    x = torch.rand(4, 5, dtype=torch.float64) + 0.1
    torch.testing.assert_close(tribute.explain(net, x, "deeplift_reveal_cancel", target=0),
                               tribute.explain(net, x, "deeplift", target=0), rtol=1e-10, atol=1e-13)


def test_a_quotient_of_two_tensors_on_the_path_is_an_error():
    class Quotient(nn.Module):
        def forward(self, x):
            return (x[:, :1] / x[:, 1:]).sum(1, keepdim=True)

    with pytest.raises(ValueError, match="quotient of two tensors"):
        tribute.explain(Quotient(), torch.randn(2, 2), "deeplift_reveal_cancel", target=0)


@pytest.mark.parametrize("divide", [lambda c, x: c / x, lambda c, x: torch.div(c, x)])
def test_a_constant_divided_by_the_input_is_an_error(divide):
    # c / x is a reciprocal (a nonlinearity), not the scaling x / c
    c = torch.full((1, 2), 3.0)
    with pytest.raises(ValueError, match="divisor on the input's path"):
        tribute.explain(lambda x: divide(c, x), torch.rand(2, 2) + 1, "deeplift_reveal_cancel", target=0)


class GatedProduct(nn.Module):
    """ReLU((x₁ − x₂)·(x₂ + x₃) − 4): a product of two tensors on the input's path, then a nonlinearity."""

    def forward(self, x):
        a, b = x[:, 0:1] - x[:, 1:2], x[:, 1:2] + x[:, 2:3]
        return torch.relu(a * b - 4)


def test_a_product_of_two_tensors_by_hand():
    # at (3, 1, 2) from 0: a = x₁ − x₂ has Δa⁺ = 3, Δa⁻ = −1 (a = 2), b = x₂ + x₃ has Δb⁺ = 3, Δb⁻ = 0 (b = 3);
    # the midpoints are (a + ā)/2 = 1, (b + b̄)/2 = 3/2, so Δy⁺ = 3·3/2 + 3·1 = 15/2 and Δy⁻ = −1·3/2 + 0 = −3/2
    # (Σ = 6 = ab − āb̄).  At the ReLU, z̄ = −4, z = 2: Δ⁺ = ½[ReLU(3.5) − 0] + ½[ReLU(2) − ReLU(−5.5)] = 11/4,
    # Δ⁻ = ½[ReLU(−5.5) − 0] + ½[ReLU(2) − ReLU(3.5)] = −3/4, so m⁺ = 11/30, m⁻ = 1/2.  Back through the product:
    # m(Δa⁺) = 3/2·11/30 = 11/20, m(Δa⁻) = 3/2·1/2 = 3/4, m(Δb⁺) = 1·11/30.  x₁ (in Δa⁺): 3·11/20 = 33/20;
    # x₂ (in Δa⁻ with sign −1, and in Δb⁺): 1·(−3/4 + 11/30) = −23/60; x₃ (in Δb⁺): 2·11/30 = 11/15; Σ = 2.
    x = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)
    rc = tribute.explain(GatedProduct(), x, "deeplift_reveal_cancel", target=0)
    torch.testing.assert_close(rc, torch.tensor([[33 / 20, -23 / 60, 11 / 15]], dtype=torch.float64),
                               rtol=0, atol=1e-15)


class SqueezeExcite(nn.Module):
    """conv - ReLU - a squeeze-and-excitation gate (features × sigmoid of pooled features, broadcast over the
    image) - an in-place product with the input's own square - linear."""

    def __init__(self):
        super().__init__()
        self.conv, self.squeeze, self.excite = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4, 2), nn.Linear(2, 4)
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(h.mean((2, 3))))))
        h = h * gate[:, :, None, None]
        h.mul_(h)
        return self.head(h.flatten(1))


def test_products_keep_summation_to_delta():
    torch.manual_seed(0)
    net = SqueezeExcite().double().eval()
    g = torch.Generator().manual_seed(1)
    x, base = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    a = tribute.explain(net, x, "deeplift_reveal_cancel", target=2, baseline=base)
    with torch.no_grad():
        delta = net(x)[:, 2] - net(base)[:, 2]
    torch.testing.assert_close(a.flatten(1).sum(1), delta, rtol=0, atol=1e-12)


class PlusConstant(nn.Module):
    """ReLU(x₁ − x₂) + ones_like(…) + zeros_like(…): constants made in the shape of a tensor on the input's path."""

    def forward(self, x):
        z = x[:, 0:1] - x[:, 1:2]
        return torch.relu(z) + torch.ones_like(z) + z.new_zeros(z.shape)


def test_a_constant_in_the_input_s_shape_carries_no_difference():
    # at (3, 1) from 0: Δz = 2 splits into Δz⁺ = 3, Δz⁻ = −1; the ReLU's multipliers are m⁺ = 5/6, m⁻ = 1/2 (as for
    # Min above), so x₁ gets 3·5/6 = 2.5 and x₂ gets −1·1/2 = −0.5; the constant adds nothing (Σ = ReLU(2) − 0 = 2)
    x = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    rc = tribute.explain(PlusConstant(), x, "deeplift_reveal_cancel", target=0)
    torch.testing.assert_close(rc, torch.tensor([[2.5, -0.5]], dtype=torch.float64), rtol=0, atol=1e-15)


class PoolNet(nn.Module):
    """conv (bias: the zero image's map is constant, so input and reference rows select alike) - ReLU - a max
    pooling of ``dims`` spatial dimensions - linear."""

    def __init__(self, dims: int, pool):
        super().__init__()
        self.conv = getattr(nn, f"Conv{dims}d")(2, 3, 3, padding=1)
        self.pool = pool
        self.head = nn.LazyLinear(2)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


POOLS = {
    "max_pool1d": (1, lambda h: F.max_pool1d(h, 2)),
    "max_pool3d": (3, lambda h: F.max_pool3d(h, 2)),
    "adaptive_max_pool2d": (2, lambda h: F.adaptive_max_pool2d(h, 2)),
    "MaxPool2d(return_indices=True)": (2, lambda h: nn.MaxPool2d(2, return_indices=True)(h)[0]),
}


@pytest.mark.parametrize("pool", POOLS)
def test_every_max_pooling_passes_the_parts_of_the_entry_selected_at_the_input(pool):
    # the parts of a pooled entry are those of the entry the input selects; the maximum of each part on its own
    # (a move, as for LRP) mixes entries: after the ReLU an entry (Δ⁺, Δ⁻) = (5, −4) would pass its 5 beside
    # another's Δ⁻, and Σφ would miss S(x) − S(x̄) by O(1)
    dims, fn = POOLS[pool]
    torch.manual_seed(0)
    net = PoolNet(dims, fn)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, *(4,) * dims, generator=g)
    net(x)  # materialise the lazy head
    net = net.double()
    x = x.double()
    a = tribute.explain(net, x, "deeplift_reveal_cancel", target=1)
    with torch.no_grad():
        delta = net(x)[:, 1] - net(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(a.flatten(1).sum(1), delta, rtol=0, atol=1e-12)


@pytest.mark.parametrize("op", [lambda x: torch.sub(x, x.flip(1), alpha=2),
                                lambda x: torch.div(x, 3.0, rounding_mode="floor")])
def test_an_affine_op_spelled_with_an_unsupported_argument_is_an_error(op):
    with pytest.raises(ValueError, match="has no rule"):
        tribute.explain(op, torch.rand(2, 2) + 1, "deeplift_reveal_cancel", target=0)


def test_constant_padding_adds_no_difference():
    # F.pad(ReLU(x − 1), value=5) weighted (1, 2, −1, 3): the padded entries are 5 in input and reference alike;
    # from 0, ReLU(x − 1) goes 0 → (2, 0) and 0 → (1, 3), so φ = (2·2, −1·0) and (2·1, −1·3)
    def model(x):
        return (F.pad(torch.relu(x - 1), (1, 1), value=5.0) * torch.tensor([1.0, 2.0, -1.0, 3.0])).sum(1, keepdim=True)

    x = torch.tensor([[3.0, 0.5], [2.0, 4.0]], dtype=torch.float64)
    a = tribute.explain(model, x, "deeplift_reveal_cancel", target=0)
    delta = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(a.sum(1), delta, rtol=0, atol=1e-14)
    torch.testing.assert_close(a, torch.tensor([[4.0, 0.0], [2.0, -3.0]], dtype=torch.float64), rtol=0, atol=1e-14)


def test_a_max_pooling_that_selects_unlike_entries_with_nothing_after_it_warns():
    # max pooling passes the parts of the entry the input selects: x = (1, 3) selects x₂, the reference (2, 0)
    # selects x̄₁, so φ = (0, 3 − 0) sums to 3, not max(x) − max(x̄) = 1; no nonlinearity follows to restore it
    def model(x):
        return F.max_pool1d(x[:, None], 2)[:, 0]

    x, base = torch.tensor([[1.0, 3.0]], dtype=torch.float64), torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="sum to 3, not S"):
        a = tribute.explain(model, x, "deeplift_reveal_cancel", target=0, baseline=base)
    torch.testing.assert_close(a, torch.tensor([[0.0, 3.0]], dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a nonlinearity after the pooling restores the sum: no warning
        a = tribute.explain(lambda t: torch.relu(model(t) + 1), x, "deeplift_reveal_cancel", target=0, baseline=base)
    torch.testing.assert_close(a.sum(1), torch.tensor([1.0], dtype=torch.float64))


class _Compared(nn.Module):
    """A mask by comparison on the input's path (Swin's attention masks are built with ``ne``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.lin2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.lin1(x))
        keep = h.ne(0.25).logical_and(h.lt(2))  # booleans (all True here): no differences to carry
        return self.lin2(h.masked_fill(~keep, 0.0))


def test_comparisons_on_the_path_carry_no_differences():
    model = _Compared().to(torch.float64).eval()
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    phi = tribute.explain(model, x, "deeplift_reveal_cancel", target=1, baseline=torch.full_like(x, 0.05))
    with torch.no_grad():
        delta = model(x)[:, 1] - model(torch.full_like(x, 0.05))[:, 1]
    assert phi.shape == x.shape
    torch.testing.assert_close(phi.flatten(1).sum(1), delta, rtol=1e-10, atol=1e-12)
