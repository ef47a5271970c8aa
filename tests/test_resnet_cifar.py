"""The CIFAR-style ResNet-18 of tribute.explainers: shapes, parameter counts worked by hand, the CAM layer."""

from __future__ import annotations

import pytest
import torch

import tribute
from tribute.core.engine import Forward
from tribute.core.layers import find_default_layer
from tribute.explainers import ResNetCIFAR, resnet18_cifar


def hand_count(c: int, w: int, k: int) -> int:
    """Parameters of a CIFAR ResNet-18 of width w, c input channels, k classes, summed block by block.

    Stem: a 3×3 conv c → w and a batch norm (2 per channel).  Stage 1 (w channels): two blocks of two 3×3 convs
    and two batch norms.  Stage i ≥ 2 (c' = 2·c_{i-1}): the first block's convs c_{i-1} → c' and c' → c', its
    1×1 projection shortcut with its batch norm, then a plain block.  Head: 8w·k weights and k biases.
    """
    plain = lambda ch: 2 * 9 * ch * ch + 2 * 2 * ch  # noqa: E731
    total = 9 * c * w + 2 * w + 2 * plain(w)
    for i in (1, 2, 3):
        cin, cout = w * 2 ** (i - 1), w * 2**i
        total += 9 * cin * cout + 9 * cout * cout + 2 * 2 * cout + cin * cout + 2 * cout + plain(cout)
    return total + 8 * w * k + k


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_width_64_is_the_standard_cifar_resnet18():
    model = resnet18_cifar(10)
    assert n_params(model) == 11_173_962 == hand_count(3, 64, 10)  # the well-known 11.17 M
    assert not model.training


@pytest.mark.parametrize("c,w,k", [(1, 8, 10), (1, 16, 10), (3, 8, 7), (2, 4, 3)])
def test_parameter_count_of_other_widths_channels_and_classes(c, w, k):
    assert n_params(resnet18_cifar(k, in_channels=c, width=w)) == hand_count(c, w, k)


@pytest.mark.parametrize("c,size,final", [(1, 28, 4), (3, 32, 4), (1, 20, 3), (3, 9, 2)])
def test_shapes_through_the_stages(c, size, final):
    model = resnet18_cifar(10, in_channels=c, width=8, seed=0)
    x = torch.rand(2, c, size, size)
    seen = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o.shape))
             for n in ("conv1", "layer1", "layer2", "layer3", "layer4")]
    out = model(x)
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10)
    half = lambda s: (s - 1) // 2 + 1  # noqa: E731  a 3×3 stride-2 conv with padding 1
    s2 = half(size)
    s3 = half(s2)
    assert seen["conv1"] == (2, 8, size, size)  # no max pooling after the stem: CIFAR style
    assert seen["layer1"] == (2, 8, size, size)
    assert seen["layer2"] == (2, 16, s2, s2)
    assert seen["layer3"] == (2, 32, s3, s3)
    assert seen["layer4"] == (2, 64, final, final) and half(s3) == final


def test_the_default_cam_layer_is_the_last_stage():
    model = resnet18_cifar(10, in_channels=1, width=8, seed=0)
    x = torch.rand(2, 1, 28, 28)
    assert str(find_default_layer(Forward(model), x)) == "layer4"
    a = tribute.explain(model, x, "gradcam", target=3)
    b = tribute.explain(model, x, "gradcam", target=3, layer="layer4")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_seed_gives_the_same_weights_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = resnet18_cifar(10, in_channels=1, width=8, seed=4), resnet18_cifar(10, in_channels=1, width=8, seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    c = resnet18_cifar(10, in_channels=1, width=8, seed=5)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_batch_equals_one_sample_at_a_time_in_eval_mode():
    model = resnet18_cifar(10, in_channels=1, width=8, seed=1).double()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    rows = torch.cat([model(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(model(x), rows, rtol=1e-10, atol=1e-12)


def test_bad_arguments_and_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        resnet18_cifar(10, width=0)
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1"):
        resnet18_cifar(10, in_channels=2.5)
    with pytest.raises(ValueError, match="layers must be four integers"):
        ResNetCIFAR((2, 2, 2), 10)
    with pytest.raises(ValueError, match="seed must be an integer"):
        resnet18_cifar(10, seed=-1)
    model = resnet18_cifar(10, in_channels=1, width=4)
    with pytest.raises(ValueError, match=r"takes images \(N, 1, H, W\), got \(2, 3, 28, 28\)"):
        model(torch.rand(2, 3, 28, 28))
