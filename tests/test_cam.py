"""The CAM family: Captum references, closed forms, hand-worked values, identities and errors (float64).

Captum is a test-only reference, called and never copied.  Its ``LayerGradCam`` returns the layer-resolution
map, upsampled here with its ``LayerAttribution.interpolate`` (bilinear, like tribute); its
``GuidedGradCam`` upsamples by nearest neighbour by default, matched with ``interpolation="nearest"``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import RELU_STYLES, residual_cnns
from test_layers import mini_resnet, plain_cnn
from test_model_invariance import assert_same, snapshot
from torch import nn

import tribute
from tribute.core.layer_names import LayerError

DT = torch.float64
CAPTUM_WARNINGS = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients:UserWarning",
    "ignore:Setting forward, backward hooks:UserWarning",
    "ignore:Setting backward hooks on ReLU:UserWarning",
)


@pytest.fixture
def x():
    return torch.rand(3, 3, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(4))


def close(actual, expected, rel=1e-12):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().item()
    assert scale > 0, "vacuous comparison: the reference is zero"
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3e} > {rel:g} × {scale:.3e}"


# ---------------------------------------------------------------------------------------------------
# References


@CAPTUM_WARNINGS
@pytest.mark.parametrize("layer", ["2", "3", "5"])
def test_gradcam_matches_captum(layer, x):
    captum_attr = pytest.importorskip("captum.attr")
    net = plain_cnn()
    target = torch.tensor([0, 1, 2])
    for relu in (True, False):
        ours = tribute.explain(net, x, "gradcam", target=target, layer=layer, relu=relu)
        raw = captum_attr.LayerGradCam(net, net[int(layer)]).attribute(x, target=target, relu_attributions=relu)
        ref = captum_attr.LayerAttribution.interpolate(raw, (8, 8), interpolate_mode="bilinear")
        close(ours, ref)
        close(tribute.explain(net, x, "gradcam", target=target, layer=layer, relu=relu, upsample=False), raw)


@CAPTUM_WARNINGS
def test_guided_gradcam_matches_captum(x):
    captum_attr = pytest.importorskip("captum.attr")
    net = plain_cnn()
    target = torch.tensor([2, 0, 1])
    ours = tribute.explain(net, x, "guided_gradcam", target=target, layer="3", interpolation="nearest")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = captum_attr.GuidedGradCam(net, net[3]).attribute(x, target=target)
    close(ours, ref)
    # and it is guided backprop times the upsampled Grad-CAM, reducible to a map
    gb = tribute.explain(net, x, "guided_backprop", target=target)
    cam = tribute.explain(net, x, "gradcam", target=target, layer="3")
    close(tribute.explain(net, x, "guided_gradcam", target=target, layer="3"), gb * cam)
    close(tribute.explain(net, x, "guided_gradcam", target=target, layer="3", reduce="abs_sum"),
          (gb * cam).abs().sum(1, keepdim=True))


# ---------------------------------------------------------------------------------------------------
# CAM on a global-average-pooling + linear head


def test_cam_is_the_class_weighted_sum_of_the_feature_maps(x):
    net = mini_resnet()
    target = torch.tensor([4, 0, 2])
    with torch.no_grad():
        a = net.layer4(net.layer1(net.relu(net.bn1(net.conv1(x)))))  # (3, 6, 4, 4)
        explicit = (net.fc.weight[target][:, :, None, None] * a).sum(1, keepdim=True)  # Σ_k w_k^c A_k
    cam = tribute.explain(net, x, "cam", target=target, relu=False, upsample=False)
    close(cam, explicit)
    # = hw × Grad-CAM's map before its ReLU
    grad_cam = tribute.explain(net, x, "gradcam", target=target, relu=False, upsample=False)
    close(cam, 16 * grad_cam)
    # the defaults rectify and upsample like the rest of the family
    close(tribute.explain(net, x, "cam", target=target),
          F.interpolate(explicit.clamp(min=0), size=(8, 8), mode="bilinear", align_corners=False))


def test_cam_refuses_a_head_that_is_not_global_pooling_and_linear(x):
    # no global pooling: the ResidualCNN pools 8×8 to 2×2 and flattens
    net = residual_cnns()["modules"]
    before = snapshot(net)
    with pytest.raises(ValueError, match="global average pooling followed by a linear layer.*not constant"):
        tribute.explain(net, x, "cam", target=0, layer="relu_c")
    assert_same(before, snapshot(net))

    # global pooling, then a nonlinear head
    class MLPHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))

        def forward(self, x):
            return self.head(self.features(x).mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = MLPHead().to(DT).eval()
    with pytest.raises(ValueError, match=r"not affine in the activation of layer 'features'.*not linear"):
        tribute.explain(net, x, "cam", target=1)


# ---------------------------------------------------------------------------------------------------
# Hand-worked examples


class SquareHead(nn.Module):
    """A = feat(x) (identity); class 0 scores S = ½ Σ A_0² − Σ A_1, class 1 scores −S."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Identity()

    def forward(self, x):
        a = self.feat(x)
        s = 0.5 * (a[:, 0] ** 2).sum(dim=(1, 2)) - a[:, 1].sum(dim=(1, 2))
        return torch.stack([s, -s], 1)


def test_gradcam_plus_plus_by_hand():
    """A_0 = [1, 2], A_1 = [1, 3] (1 × 2 maps).  g_0 = A_0 = [1, 2], g_1 = [−1, −1].
    α_0 = g²/(2g² + g³ ΣA_0) = [1/(2 + 3), 4/(8 + 24)] = [1/5, 1/8];  w_0 = 1/5·1 + 1/8·2 = 0.45.
    α_1 = 1/(2 − 4) = −1/2 but ReLU(g_1) = 0, so w_1 = 0.  L = 0.45 · A_0 = [0.45, 0.9]."""
    x = torch.tensor([[[[1.0, 2.0]], [[1.0, 3.0]]]], dtype=DT)
    got = tribute.explain(SquareHead(), x, "gradcam_plus_plus", target=0, layer="feat", upsample=False)
    torch.testing.assert_close(got, torch.tensor([[[[0.45, 0.9]]]], dtype=DT), rtol=1e-15, atol=0)
    # Grad-CAM on the same: α = mean g = (1.5, −1) → ReLU(1.5 A_0 − A_1) = [0.5, 0]
    got = tribute.explain(SquareHead(), x, "gradcam", target=0, layer="feat", upsample=False)
    torch.testing.assert_close(got, torch.tensor([[[[0.5, 0.0]]]], dtype=DT), rtol=1e-15, atol=0)


class MaskedSum(nn.Module):
    """A = (x, P) with a fixed pattern channel P; class 0 scores Σ A_0 = Σ x, class 1 scores 0."""

    def __init__(self):
        super().__init__()
        self.feat = Pattern()

    def forward(self, x):
        s = self.feat(x)[:, 0].sum(dim=(1, 2))
        return torch.stack([s, torch.zeros_like(s)], 1)


class Pattern(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("p", torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=DT))

    def forward(self, x):
        return torch.cat([x, self.p.expand(x.shape[0], 1, 2, 2)], 1)


def test_scorecam_by_hand():
    """x = [[1, 2], [3, 4]].  Channel 0 is x: mask (x − 1)/3, masked sum 0 + 2/3 + 2 + 4 = 20/3,
    weight σ(20/3) (the softmax of (20/3, 0)); channel 1 is P = [[1, 0], [0, 0]]: mask P, masked sum 1,
    weight σ(1).  L = σ(20/3)·x + σ(1)·P.  With the zero baseline every weight drops by σ(0) = 1/2."""
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=DT)
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=DT)
    sig = torch.sigmoid(torch.tensor([20 / 3, 1.0], dtype=DT))
    net = MaskedSum()
    got = tribute.explain(net, x, "scorecam", target=0, layer="feat", upsample=False)
    torch.testing.assert_close(got[0, 0], sig[0] * x[0, 0] + sig[1] * p, rtol=1e-15, atol=0)
    got = tribute.explain(net, x, "scorecam", target=0, layer="feat", upsample=False, baseline="zero", relu=False)
    torch.testing.assert_close(got[0, 0], (sig[0] - 0.5) * x[0, 0] + (sig[1] - 0.5) * p, rtol=1e-15, atol=0)
    got = tribute.explain(net, x, "scorecam", target=0, layer="feat", upsample=False, softmax=False)
    torch.testing.assert_close(got[0, 0], 20 / 3 * x[0, 0] + p, rtol=1e-15, atol=0)
    # a constant feature map has no mask and weight 0; the pattern's mask keeps x = 2 at one pixel: σ(2)
    flat = torch.full_like(x, 2.0)
    got = tribute.explain(net, flat, "scorecam", target=0, layer="feat", upsample=False)
    torch.testing.assert_close(got[0, 0], torch.sigmoid(torch.tensor(2.0, dtype=DT)) * p, rtol=1e-15, atol=0)


def test_scorecam_masks_are_the_upsampled_min_max_normalised_maps(x):
    """On the plain CNN: each weight is softmax(f(x ∘ s(Up(A_k))))_c, recomputed here channel by channel."""
    net = plain_cnn()
    with torch.no_grad():
        a = net[:6](x)  # layer "5": (3, 5, 4, 4), upsampled to 8 × 8 for the masks
        up = F.interpolate(a, size=(8, 8), mode="bilinear", align_corners=False)
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        masks = (up - lo) / (hi - lo)
        w = torch.stack([net(x * masks[:, k:k + 1]).softmax(1)[torch.arange(3), 1] for k in range(5)], 1)
        ref = (w[:, :, None, None] * a).sum(1, keepdim=True)
    close(tribute.explain(net, x, "scorecam", target=1, layer="5", upsample=False, relu=False), ref)


def test_scorecam_batching_changes_nothing(x):
    net = plain_cnn()
    ref = tribute.explain(net, x, "scorecam", target=2, layer="3", batch_size=1000)
    for bs in (1, 5):
        torch.testing.assert_close(tribute.explain(net, x, "scorecam", target=2, layer="3", batch_size=bs), ref,
                                   rtol=1e-13, atol=1e-15)


def test_scorecam_channel_cap(x):
    net = plain_cnn()
    full = tribute.explain(net, x, "scorecam", target=0, layer="3", relu=False)
    torch.testing.assert_close(tribute.explain(net, x, "scorecam", target=0, layer="3", relu=False, max_channels=6),
                               full, rtol=0, atol=0)
    with torch.no_grad():
        a = net[:4](x)
    # "largest": the channels with the largest mean activation; the rest weigh 0
    capped = tribute.explain(net, x, "scorecam", target=0, layer="3", relu=False, max_channels=2, upsample=False)
    top = a.mean(dim=(2, 3)).argsort(dim=1, descending=True)[:, :2]
    keep = torch.zeros(3, 6, dtype=torch.bool).scatter_(1, top, True)
    full_raw = tribute.explain(net, x, "scorecam", target=0, layer="3", relu=False, upsample=False,
                               max_channels=None)
    weights = _scorecam_weights(net, x, a, target=0)
    close(capped, (weights * keep)[:, :, None, None].mul(a).sum(1, keepdim=True))
    close(full_raw, weights[:, :, None, None].mul(a).sum(1, keepdim=True))
    # "random": reproducible with a seed, and per sample (the same alone as in the batch)
    r1 = tribute.explain(net, x, "scorecam", target=0, layer="3", max_channels=3, channel_selection="random", seed=5)
    r2 = tribute.explain(net, x, "scorecam", target=0, layer="3", max_channels=3, channel_selection="random", seed=5)
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    alone = tribute.explain(net, x[1:2], "scorecam", target=0, layer="3", max_channels=3, channel_selection="random",
                            seed=5)
    torch.testing.assert_close(alone, r1[1:2], rtol=1e-13, atol=1e-15)


def _scorecam_weights(net, x, a, target):
    """softmax(f(x ∘ s(Up(A_k))))_target per sample and channel; 0 for a constant map (a dead channel)."""
    with torch.no_grad():
        up = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        masks = torch.nan_to_num((up - lo) / (hi - lo))
        w = torch.stack([net(x * masks[:, k:k + 1]).softmax(1)[:, target] for k in range(a.shape[1])], 1)
        return torch.where((hi == lo).flatten(1), 0.0, w)


# ---------------------------------------------------------------------------------------------------
# FullGrad


@pytest.mark.parametrize("style", RELU_STYLES)
def test_full_gradient_completeness(style, x):
    """S(x) = Σ ∇_x S ⊙ x + Σ_l Σ ∂S/∂z_l ⊙ b_l exactly for a ReLU network with biases (Srinivas & Fleuret,
    Eq 1): conv biases, the eval batch norm's effective bias and the linear head's bias, however the
    network is written."""
    net = residual_cnns()[style]
    d = tribute.FullGrad(net).full_gradient(x, target=torch.tensor([1, 3, 0]))
    assert d.kinds == ["conv", "batch_norm", "conv", "conv", "linear"]
    total = d.input_term.flatten(1).sum(1) + sum(t.flatten(1).sum(1) for t in d.bias_terms)
    with torch.no_grad():
        s = net(x)[torch.arange(3), torch.tensor([1, 3, 0])]
    torch.testing.assert_close(d.scores.detach(), s, rtol=1e-13, atol=0)
    torch.testing.assert_close(total, s, rtol=1e-12, atol=1e-14)
    assert all(t.abs().sum() > 0 for t in d.bias_terms)


def test_full_gradient_completeness_with_max_pooling_and_in_place_relu():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(),
                        nn.Linear(8, 2)).to(DT).eval()
    x = torch.randn(4, 2, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
    d = tribute.FullGrad(net).full_gradient(x, target=1)
    total = d.input_term.flatten(1).sum(1) + sum(t.flatten(1).sum(1) for t in d.bias_terms)
    with torch.no_grad():
        torch.testing.assert_close(total, net(x)[:, 1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rescale", ["layer", "channel"])
def test_fullgrad_map_is_the_post_processed_decomposition(rescale, x):
    """S_f = ψ(∇_x S ⊙ x) + Σ_conv layers Σ_c ψ(bias-gradient)_c, ψ = upsample ∘ rescale to [0, 1] ∘ |·|."""
    net = residual_cnns()["modules"]
    d = tribute.FullGrad(net).full_gradient(x, target=2)

    def rescaled(t, dims):  # to [0, 1]; a constant slice (a dead channel) becomes 0
        t = t.abs()
        lo, hi = t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
        return torch.nan_to_num((t - lo) / (hi - lo))

    ref = rescaled(d.input_term, (1, 2, 3)).sum(1, keepdim=True)
    dims = (1, 2, 3) if rescale == "layer" else (2, 3)
    for t in d.bias_terms:
        if t.dim() == 4:
            ref = ref + F.interpolate(rescaled(t, dims).sum(1, keepdim=True), size=(8, 8), mode="bilinear",
                                      align_corners=False)
    close(tribute.explain(net, x, "fullgrad", target=2, rescale=rescale), ref)


# ---------------------------------------------------------------------------------------------------
# Contrastive Grad-CAM


def test_contrastive_gradcam_is_gradcam_of_the_cross_entropy_with_the_contrast_as_label(x):
    net = mini_resnet()
    p, q = torch.tensor([1, 2, 0]), torch.tensor([3, 0, 4])

    def cross_entropy(out):  # J(P, Q) = −log softmax(y)_Q, row by row
        return F.cross_entropy(out, q, reduction="none")

    for relu in (True, False):
        ours = tribute.explain(net, x, "contrastive_gradcam", target=p, contrast=q, relu=relu)
        close(ours, tribute.explain(net, x, "gradcam", target=cross_entropy, relu=relu))
    # the sign convention: positive weight where raising the activation raises J, i.e. lowers Q's probability
    raw = tribute.explain(net, x, "contrastive_gradcam", target=p, contrast=q, relu=False, upsample=False)
    with torch.no_grad():
        a = net.layer4(net.layer1(net.relu(net.bn1(net.conv1(x)))))
    eps = 1e-5

    def j(scale):  # J along the ray through A, the head being global average pooling + linear
        return F.cross_entropy(net.fc((a * scale).mean(dim=(2, 3))), q, reduction="none")

    with torch.no_grad():
        slope = (j(1 + eps) - j(1 - eps)) / (2 * eps)
    # with ∂J/∂A_kij = α_k on this head, Σ_ij L = Σ_k α_k Σ_ij A_kij = ⟨∂J/∂A, A⟩ = dJ(tA)/dt at t = 1
    torch.testing.assert_close(raw.flatten(1).sum(1), slope, rtol=1e-7, atol=1e-10)


def test_contrastive_gradcam_default_contrast_is_the_runner_up(x):
    net = mini_resnet()
    with torch.no_grad():
        out = net(x)
    top2 = out.topk(2, dim=1).indices
    a = tribute.explain(net, x, "contrastive_gradcam", relu=False)  # P = prediction, Q = runner-up
    b = tribute.explain(net, x, "contrastive_gradcam", target=top2[:, 0], contrast=top2[:, 1], relu=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_contrastive_gradcam_errors(x):
    net = mini_resnet()
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"contrast class equals the target class for samples \[1\]"):
        tribute.explain(net, x, "contrastive_gradcam", target=torch.tensor([0, 2, 1]), contrast=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="contrast class equals the target"):
        tribute.explain(net, x, "contrastive_gradcam", target=3, contrast=3)
    with pytest.raises(ValueError, match="target must be a class"):
        tribute.explain(net, x, "contrastive_gradcam", target=lambda out: out[:, 0], contrast=1)
    with pytest.raises(IndexError, match="contrast class 9 is out of range"):
        tribute.explain(net, x, "contrastive_gradcam", target=0, contrast=9)
    assert_same(before, snapshot(net))


# ---------------------------------------------------------------------------------------------------
# Conventions, errors and the user's model

CAMS = ["cam", "gradcam", "gradcam_plus_plus", "contrastive_gradcam", "scorecam", "guided_gradcam", "fullgrad"]


@pytest.mark.parametrize("method", CAMS)
def test_maps_and_the_model_left_as_it_was(method, x):
    net = mini_resnet()
    before = snapshot(net)
    a = tribute.explain(net, x, method, target=1)
    assert a.shape == ((3, 3, 8, 8) if method == "guided_gradcam" else (3, 1, 8, 8))
    assert torch.isfinite(a).all() and a.dtype == DT
    assert_same(before, snapshot(net))
    if method not in ("guided_gradcam", "fullgrad"):
        raw = tribute.explain(net, x, method, target=1, upsample=False, relu=False)
        assert raw.shape == (3, 1, 4, 4)
        n = tribute.explain(net, x, method, target=1, normalize=True)
        assert n.amin() >= 0 and n.amax() <= 1
        assert_same(before, snapshot(net))


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "fullgrad", "guided_gradcam"])
def test_model_left_as_it_was_after_an_error_inside_forward(method, x):
    net = mini_resnet()

    def explode(module, args, out):
        raise RuntimeError("boom")

    h = net.fc.register_forward_hook(explode)
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        tribute.explain(net, x, method, target=0)
    assert_same(before, snapshot(net))
    h.remove()
    assert torch.isfinite(tribute.explain(net, x, method, target=0)).all()


@pytest.mark.parametrize("method", CAMS)
def test_clear_errors(method, x):
    net = mini_resnet()
    before = snapshot(net)
    if method != "fullgrad":
        with pytest.raises(LayerError, match="no layer named 'layer5'.*nearest.*'layer4'"):
            tribute.explain(net, x, method, target=0, layer="layer5")
        with pytest.raises(LayerError, match="'unused' .* is never called"):
            tribute.explain(net, x, method, target=0, layer="unused")
        with pytest.raises(LayerError, match=r"needs a convolutional feature map .* layer 'fc' gives shape \(3, 5\)"):
            tribute.explain(net, x, method, target=0, layer="fc")
    with pytest.raises(ValueError, match=r"inputs must be images of shape \(N, C, H, W\), got shape \(3, 6\)"):
        tribute.explain(nn.Sequential(nn.Linear(6, 2)).to(DT), torch.rand(3, 6, dtype=DT), method, target=0)
    assert_same(before, snapshot(net))


def test_gradcam_differentiable_has_the_right_derivative():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1), nn.Softplus(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).to(DT).eval()
    x = torch.rand(2, 1, 4, 4, dtype=DT, requires_grad=True)

    def f(inp):
        return tribute.explain(net, inp, "gradcam", target=1, layer="3", relu=False, differentiable=True).sum()

    (g,) = torch.autograd.grad(f(x), x)
    h = 1e-6
    d = torch.zeros(2, 1, 4, 4, dtype=DT)
    d[1, 0, 2, 1] = 1
    with torch.no_grad():
        fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
    assert math.isclose(g[1, 0, 2, 1].item(), fd.item(), rel_tol=1e-6, abs_tol=1e-10)
