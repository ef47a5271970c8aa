"""Layers by name, activation capture, the default layer, layer attribution and the shared reduce=.

Layer attributions are checked against autograd on the network split by hand at the layer, against the
input-level methods (an ``nn.Identity`` at the input is a layer whose activation is the input), against
Captum's ``LayerIntegratedGradients``, and against summation-to-delta.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_bn, residual_cnns
from test_model_invariance import assert_same, snapshot
from torch import nn

import tribute
from tribute.core.engine import Forward
from tribute.core.layer_names import LayerError, OpSite, resolve_layer
from tribute.core.layers import capture, find_default_layer
from tribute.core.quadrature import quadrature

DT = torch.float64


# ---------------------------------------------------------------------------------------------------
# Models


class Block(nn.Module):
    """torchvision's BasicBlock: one ``nn.ReLU(inplace=True)`` called twice, ``out += identity`` in place."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class MiniResNet(nn.Module):
    """A torchvision-style ResNet: stem, layer1, layer4, global average pooling, linear head."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Block(4, 4))
        self.layer4 = nn.Sequential(Block(4, 6, stride=2), Block(6, 6))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)
        self.unused = nn.Linear(3, 3)  # registered, never called

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mini_resnet(seed: int = 0) -> MiniResNet:
    torch.manual_seed(seed)
    return randomise_bn(MiniResNet(), seed).to(DT).eval()


class InputLayer(nn.Module):
    """``net`` behind an ``nn.Identity`` named ``inp``: the layer whose activation is the input itself."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.inp = nn.Identity()
        self.net = net

    def forward(self, x):
        return self.net(self.inp(x))


def plain_cnn(seed: int = 0) -> nn.Sequential:
    """Every ReLU its own module (as Captum's hook-based methods need)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3),
    ).to(DT).eval()


@pytest.fixture
def x():
    return torch.rand(3, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(4))


# ---------------------------------------------------------------------------------------------------
# Names


def test_unknown_layer_lists_the_nearest_names():
    net = mini_resnet()
    with pytest.raises(LayerError, match=r"no layer named 'layr4'.*nearest.*'layer4'"):
        resolve_layer(net, "layr4")
    with pytest.raises(LayerError, match=r"nearest.*'layer4\.1\.conv2'"):
        resolve_layer(net, "layer4.1.conv3")
    with pytest.raises(LayerError, match="top-level layers are 'conv1', 'bn1', 'relu', 'layer1', 'layer4'"):
        resolve_layer(net, "zzzzzz")
    with pytest.raises(LayerError, match="after '#' comes the call's index"):
        resolve_layer(net, "relu#one")
    with pytest.raises(LayerError, match="not a submodule"):
        resolve_layer(net, nn.ReLU())
    assert str(resolve_layer(net, net.layer4[1].conv2)) == "layer4.1.conv2"
    # at construction, before any input is seen
    with pytest.raises(LayerError, match="nearest.*'layer1'"):
        tribute.GradCAM(net, layer="layer11")


def test_a_layer_that_is_never_called_is_an_error(x):
    net = mini_resnet()
    before = snapshot(net)
    with pytest.raises(LayerError, match=r"'unused' \(Linear\) is never called"):
        tribute.explain(net, x, "layer_gradient", target=0, layer="unused")
    assert_same(before, snapshot(net))


def test_a_module_called_twice_needs_its_call_named(x):
    net = mini_resnet()
    before = snapshot(net)
    with pytest.raises(LayerError, match=r"'layer4\.0\.relu' is called 2 times.*'layer4\.0\.relu#0', '.*#1'"):
        tribute.explain(net, x, "gradcam", target=0, layer="layer4.0.relu")
    assert_same(before, snapshot(net))
    with pytest.raises(LayerError, match=r"names call #2, but 'layer4\.0\.relu' is called 2 time\(s\)"):
        tribute.explain(net, x, "gradcam", target=0, layer="layer4.0.relu#2")
    assert_same(before, snapshot(net))
    # the block's last ReLU call is the block's output
    a = tribute.explain(net, x, "layer_gradient_x_activation", target=1, layer="layer4.0.relu#1")
    b = tribute.explain(net, x, "layer_gradient_x_activation", target=1, layer="layer4.0")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_capture_records_the_output_before_downstream_in_place_ops(x):
    net = mini_resnet()
    site = resolve_layer(net, "layer4.0.bn2")  # followed by `out += identity` and an in-place ReLU
    with torch.no_grad():
        block = net.layer4[0]
        h = net.layer1(net.relu(net.bn1(net.conv1(x))))
        expected = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h)))))
        with capture(site, x, keep_input=True) as cap:
            out = net(x)
        torch.testing.assert_close(cap.value, expected, rtol=0, atol=0)
        torch.testing.assert_close(cap.input, block.conv2(block.relu(block.bn1(block.conv1(h)))), rtol=0, atol=0)
        assert (cap.value < 0).any()  # the ReLU after it did not overwrite it
        torch.testing.assert_close(out, net(x), rtol=0, atol=0)


def test_capture_records_an_in_place_layers_input_before_the_call(x):
    net = mini_resnet()
    block = net.layer4[0]
    with torch.no_grad():
        h = net.layer1(net.relu(net.bn1(net.conv1(x))))
        pre = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h))))) + block.downsample(h)
        with capture(resolve_layer(net, "layer4.0.relu#1"), x, keep_input=True) as cap:
            net(x)
    torch.testing.assert_close(cap.input, pre, rtol=0, atol=0)  # ReLU(inplace=True) overwrote it afterwards
    torch.testing.assert_close(cap.value, pre.clamp(min=0), rtol=0, atol=0)
    assert (cap.input < 0).any()


def test_capture_removes_its_hook_also_when_forward_fails(x):
    net = mini_resnet()
    before = snapshot(net)

    def boom(module, args, out):
        raise RuntimeError("boom")

    h = net.fc.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"), capture(resolve_layer(net, "layer4"), x):
        net(x)
    h.remove()
    assert_same(before, snapshot(net))


# ---------------------------------------------------------------------------------------------------
# The default layer


def test_default_layer_is_the_input_of_the_global_pooling(x):
    net = mini_resnet()
    site = find_default_layer(Forward(net), x)
    assert str(site) == "layer4"  # the outermost module returning it: not layer4.1, layer4.1.relu#1
    a = tribute.explain(net, x, "gradcam", target=2, relu=False)
    torch.testing.assert_close(a, tribute.explain(net, x, "gradcam", target=2, layer="layer4", relu=False),
                               rtol=0, atol=0)
    other = tribute.explain(net, x, "gradcam", target=2, layer="layer4.1.conv2", relu=False)
    assert (a - other).abs().max() > 1e-3 * a.abs().max()


def test_default_layer_ignores_spatial_pooling_in_side_branches(x):
    class SE(nn.Module):
        """A squeeze-and-excitation gate (spatial mean in a side branch) before the last stage."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.gate = nn.Linear(4, 4)
            self.body = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            h = self.stem(x)
            h = h * torch.sigmoid(self.gate(h.mean(dim=(2, 3))))[:, :, None, None]
            return self.fc(self.body(h).mean(dim=(2, 3)))

    assert str(find_default_layer(Forward(SE().to(DT)), x)) == "body"


class _ChannelsLastNorm(nn.Module):
    """torchvision ConvNeXt's LayerNorm2d: (N, C, H, W) → channels last → layer norm over C → back."""

    def __init__(self, channels: int, swap: str):
        super().__init__()
        self.norm, self.swap = nn.LayerNorm(channels), swap

    def forward(self, h):
        if self.swap == "permute":
            return self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.swap == "movedim":
            return torch.movedim(self.norm(torch.movedim(h, 1, -1)), -1, 1)
        return self.norm(h.transpose(1, 3)).transpose(1, 3)  # (N, W, H, C): another order, also not a map


class _ConvNeXtStyle(nn.Module):
    """A ConvNeXt block (depthwise convolution, then LayerNorm and an MLP on channels-last tensors) and
    ConvNeXt's head: global pooling, then a channels-last LayerNorm on the (N, C, 1, 1) pooled map."""

    def __init__(self, swap: str):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.mlp = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))
        self.pool, self.head_norm = nn.AdaptiveAvgPool2d(1), _ChannelsLastNorm(6, swap)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.mlp(self.dw(h).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(self.head_norm(self.pool(h)).flatten(1))


@pytest.mark.parametrize("swap", ["permute", "movedim", "transpose"])
def test_default_layer_is_not_a_channels_last_tensor(swap, x):
    # the last 4-D tensors before the output are the head's (N, 1, 1, C) layer norm and the block's (N, H, W, C)
    # MLP: channels last, not maps; the map is the residual sum in (N, C, H, W), which no module returns
    net = _ConvNeXtStyle(swap).to(DT)
    site = find_default_layer(Forward(net), x)
    assert isinstance(site, OpSite) and "add" in str(site), str(site)
    with torch.no_grad(), capture(site, x) as cap:
        net(x)
    assert cap.value.shape == (x.shape[0], 6, *x.shape[2:])
    h = net.stem(x)
    torch.testing.assert_close(cap.value, h + net.mlp(net.dw(h).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    cam = tribute.explain(net, x, "gradcam", target=1, upsample=False)
    assert cam.shape == (x.shape[0], 1, *x.shape[2:])


class _Permute(nn.Module):
    """A permute as a module, as torchvision's Swin ends its channels-last trunk with one."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, h):
        return h.permute(*self.dims)


def _pooled_classifier(width: int, **stages: nn.Module) -> nn.Sequential:
    """The named ``stages`` (ending in ``width`` channels), then global average pooling and a linear layer to 2."""
    return nn.Sequential(OrderedDict(**stages, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     fc=nn.Linear(width, 2))).to(DT)


def test_default_layer_of_a_channels_last_trunk_is_where_it_turns_back(x):
    swin_style = _pooled_classifier(
        6, embed=nn.Conv2d(3, 6, 2, stride=2), to_channels_last=_Permute(0, 2, 3, 1),
        blocks=nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6), nn.GELU(), nn.LayerNorm(6)),
        permute=_Permute(0, 3, 1, 2))
    assert str(find_default_layer(Forward(swin_style), x)) == "permute"


def test_default_layer_of_a_model_taking_channels_last_images(x):
    # layouts come from the convolutions, not from the input: (N, H, W, C) images permuted by the model itself
    takes_nhwc = _pooled_classifier(4, to_channels_first=_Permute(0, 3, 1, 2),
                                    features=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    assert str(find_default_layer(Forward(takes_nhwc), x.permute(0, 2, 3, 1))) == "features"


def test_default_layer_of_a_functional_model_is_a_function_call(x):
    for style, net in residual_cnns().items():
        site = find_default_layer(Forward(net), x)
        assert isinstance(site, OpSite) and "adaptive_avg_pool2d" in str(site), style
    # the call is found again, and captured, in later passes: the (N, 6, 2, 2) pooled map
    net = residual_cnns()["functional"]
    site = find_default_layer(Forward(net), x)
    with torch.no_grad(), capture(site, x) as cap:
        net(x)
        h = F.relu(net.bn1(net.conv1(x)))
        h = F.relu(net.conv3(F.relu(net.conv2(h))) + h)
        torch.testing.assert_close(cap.value, F.adaptive_avg_pool2d(F.avg_pool2d(h, 4), 2), rtol=0, atol=0)


def test_no_spatial_map_is_an_error():
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).to(DT)
    with pytest.raises(LayerError, match="no spatial feature map"):
        find_default_layer(Forward(mlp), torch.rand(2, 4, dtype=DT))
    gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).to(DT)
    with pytest.raises(LayerError, match="is the input itself"):
        find_default_layer(Forward(gap), torch.rand(2, 3, 4, 4, dtype=DT))


# ---------------------------------------------------------------------------------------------------
# Layer attribution


def test_layer_gradient_is_the_gradient_of_the_network_above_the_layer(x):
    net = plain_cnn()
    below, above = net[:4], net[4:]
    with torch.enable_grad():
        a = below(x).detach().requires_grad_()
        s = above(a)[:, 1]
        (g,) = torch.autograd.grad(s.sum(), a)
    torch.testing.assert_close(tribute.explain(net, x, "layer_gradient", target=1, layer="3"), g, rtol=1e-13, atol=0)
    torch.testing.assert_close(tribute.explain(net, x, "layer_gradient_x_activation", target=1, layer="3"),
                               a.detach() * g, rtol=1e-13, atol=0)


@pytest.mark.parametrize("method, options", [
    ("gradient", {}), ("input_x_gradient", {}), ("integrated_gradients", {"steps": 8}), ("deeplift", {}),
    ("guided_backprop", {}), ("deconvnet", {}), ("lrp_epsilon", {"epsilon": 1e-6}),
    ("expected_gradients", {"samples": 6, "seed": 2,
                            "references": torch.rand(4, 3, 8, 8, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(5))}),
])
def test_at_a_layer_that_is_the_input_the_layer_method_is_the_method(method, options, x):
    """An nn.Identity at the input has the input as its activation: the layer version must agree exactly,
    rules above the layer included (and, for expected gradients, the same draws)."""
    net = InputLayer(residual_cnns()["inplace_reused"])
    layer = tribute.LayerAttribution(method, net, layer="inp", **options).attribute(x, target=2)
    plain = tribute.explain(net, x, method, target=2, **options)
    torch.testing.assert_close(layer, plain, rtol=1e-12, atol=1e-15)


def test_layer_attribution_of_an_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="no layer version of method 'integrated_gradient'.*'integrated_gradients'"):
        tribute.LayerAttribution("integrated_gradient", plain_cnn(), layer="3")


def test_layer_integrated_gradients_against_captum(x):
    captum_attr = pytest.importorskip("captum.attr")
    net = plain_cnn()
    base = torch.rand(*x.shape, dtype=DT, generator=torch.Generator().manual_seed(7)) * 0.3
    target = torch.tensor([0, 2, 1])
    ours = tribute.explain(net, x, "layer_integrated_gradients", target=target, layer="3", baseline=base, steps=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = captum_attr.LayerIntegratedGradients(net, net[3]).attribute(
            x, baselines=base, target=target, n_steps=16, method="gausslegendre")
    # Captum multiplies by float32 quadrature weights: relative differences of order 2^-24
    assert (ours - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert ref.abs().max() > 0


def test_layer_integrated_gradients_follows_the_straight_path_in_activation_space(x):
    """With the layer inside a residual block (not a cut), the network above the layer also sees the
    sample's own input through the skip connection: φ = Δ ⊙ Σ_k w_k ∇F_x(Ā + α_k Δ), F_x written by hand."""
    net = mini_resnet()
    block = net.layer4[1]
    steps = 6
    ours = tribute.explain(net, x, "layer_integrated_gradients", target=3, layer="layer4.1.bn1", steps=steps)
    alphas, weights = quadrature("gauss_legendre", steps)
    with torch.no_grad():
        h = net.layer4[0](net.layer1(net.relu(net.bn1(net.conv1(x)))))  # the block's input
        h0 = net.layer4[0](net.layer1(net.relu(net.bn1(net.conv1(torch.zeros_like(x))))))
        a, a0 = block.bn1(block.conv1(h)), block.bn1(block.conv1(h0))

    def above(act):  # the network above layer4.1.bn1, for the samples' own skip input h
        out = F.relu(block.bn2(block.conv2(F.relu(act))) + h)
        return net.fc(out.mean(dim=(2, 3)))[:, 3]

    total = torch.zeros_like(a)
    for alpha, w in zip(alphas.tolist(), weights.tolist(), strict=True):
        p = (a0 + alpha * (a - a0)).requires_grad_()
        (g,) = torch.autograd.grad(above(p).sum(), p)
        total += w * g
    torch.testing.assert_close(ours, (a - a0) * total, rtol=1e-12, atol=1e-14)


def test_layer_deeplift_sums_to_delta_at_a_cut(x):
    net = plain_cnn()
    phi = tribute.explain(net, x, "layer_deeplift", target=0, layer="1", baseline="blur")
    base = tribute.core.baselines.make_baseline("blur", x)
    with torch.no_grad():
        delta = net(x)[:, 0] - net(base)[:, 0]
    torch.testing.assert_close(phi.flatten(1).sum(1), delta, rtol=1e-10, atol=1e-12)
    assert phi.shape == (3, 4, 8, 8)


def test_layer_integrated_gradients_is_complete_at_a_cut_up_to_quadrature(x):
    net = plain_cnn()
    phi = tribute.explain(net, x, "layer_integrated_gradients", target=1, layer="5", steps=128)
    with torch.no_grad():
        delta = net(x)[:, 1] - net(torch.zeros_like(x))[:, 1]
    assert (phi.flatten(1).sum(1) - delta).abs().max() <= 1e-3 * delta.abs().max()


def test_layer_methods_leave_the_model_untouched(x):
    net = mini_resnet()
    before = snapshot(net)
    for m in ("layer_gradient", "layer_gradient_x_activation", "layer_integrated_gradients", "layer_deeplift"):
        tribute.explain(net, x, m, target=1, layer="layer4.1.conv1")
        tribute.explain(net, x, m, target=1)
        assert_same(before, snapshot(net))


def test_layer_results_have_the_layer_shape_and_name_the_layer(x):
    net = mini_resnet()
    method = tribute.LayerGradient(net)
    assert method.attribute(x, target=0).shape == (3, 6, 4, 4)
    assert str(method.layer) == "layer4"


# ---------------------------------------------------------------------------------------------------
# reduce=


def test_reduce_turns_channels_into_one_map():
    a = torch.tensor([[1.0, 3.0], [-2.0, 0.5]], dtype=DT).view(1, 2, 1, 2)  # channels (1, 3) and (-2, 0.5)
    expect = {
        "sum": [[-1.0, 3.5]],
        "abs_sum": [[3.0, 3.5]],
        "max_abs": [[2.0, 3.0]],
        "l2": [[5 ** 0.5, (9 + 0.25) ** 0.5]],
    }
    for how, want in expect.items():
        got = tribute.reduce(a, how)
        assert got.shape == (1, 1, 1, 2)
        torch.testing.assert_close(got, torch.tensor(want, dtype=DT).view(1, 1, 1, 2), rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match=r"reduce must be one of 'sum', 'abs_sum', 'max_abs', 'l2'; got 'mean'"):
        tribute.reduce(a, "mean")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*got shape \(2, 3\)"):
        tribute.reduce(torch.zeros(2, 3), "sum")


def test_smoothgrad_composes_with_layer_methods_and_cams():
    # noise in input space, the base method at the layer: σ = 0 gives the base itself, and a noisy average
    # over identical copies of a sample is the same for each copy (per-sample streams)
    from conftest import fixture_module

    fashion = fixture_module("fashion")
    net = fashion.load()
    x, y = fashion.samples()
    x, y = x[:3], y[:3]
    # after `features` the head is global average pooling and a linear layer: the layer gradient is W_c / 49
    # whatever the input, so its SmoothGrad is exactly that too
    sg = tribute.explain(net, x, "smoothgrad", base="layer_gradient", base_options={"layer": "features"}, samples=3,
                         sigma=0.2, seed=1, target=y)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.testing.assert_close(sg, (head.weight[y] / 49).view(3, -1, 1, 1).expand_as(sg), rtol=1e-5, atol=1e-8)
    for base, options in (("layer_gradient_x_activation", {"layer": "features"}), ("gradcam", {"layer": "features"})):
        exact = tribute.explain(net, x, base, target=y, **options)
        still = tribute.explain(net, x, "smoothgrad", base=base, base_options=options, samples=2, sigma=0.0,
                                target=y)
        torch.testing.assert_close(still, exact, rtol=1e-5, atol=1e-7)
        noisy = tribute.explain(net, x, "smoothgrad", base=base, base_options=options, samples=4, sigma=0.1,
                                seed=3, target=y)
        assert noisy.shape == exact.shape and (noisy - exact).abs().max() > 1e-6
        twice = tribute.explain(net, x[[0, 0]], "smoothgrad", base=base, base_options=options, samples=4,
                                sigma=0.1, seed=3, target=y[[0, 0]])
        torch.testing.assert_close(twice[0], noisy[0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(twice[1], noisy[0], rtol=1e-5, atol=1e-7)
