"""The torchvision zoo (issue 13): every rule method on torchvision's models in a realistic state, as a table.

torchvision does not import beside the torch of the test environment (and must never be installed there), so
this is a script for a separate environment with torch 2.14.1 and torchvision 0.29.1::

    python -m venv /work/venvs/tv
    /work/venvs/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy tqdm matplotlib captum
    PYTHONPATH=src /work/venvs/tv/bin/python benchmarks/zoo_torchvision.py            # every model, ~minutes
    PYTHONPATH=src /work/venvs/tv/bin/python benchmarks/zoo_torchvision.py --models resnet18 vit --methods deeplift

The models carry random weights in a *realistic state* (as tests/test_zoo.py does for Hugging Face's): float64,
eval mode, weights of variance 1/fan-in, random biases, random normalisation affines in [0.5, 1.5], ConvNeXt layer
scales in [0.5, 1.5] (torchvision initialises them at 1e-6, which makes every block the identity), random class
tokens and position embeddings, and batch-norm running statistics measured on random images (train-mode passes
with a cumulative average, then eval).  At initialisation a bias-free ReLU net is positively homogeneous, so every
completeness check would pass for any implementation; in this state the zero image does not score zero.

For each model × method the table gives the status, ``ok``, ``refused`` (tribute's :class:`UncoveredModelError`,
with the ops it names: the contract for ops without a rule), or ``error`` (the exception's type and the head of
its message), the method's own identity, and the seconds the call took:

- gradient: max |φ − autograd| / max |autograd| (the same graph, so 0 is expected);
- integrated_gradients: completeness, max over samples of |Σφ − (S(x) − S(0))| / |S(x) − S(0)| (64 Gauss–Legendre
  nodes; on ReLU nets the kinks leave a quadrature error that is not the implementation's: tribute's refined
  midpoint rule with tolerance=1e-2 reaches 5e-3 on ResNet-18 but takes minutes, measured), and max |φ − Captum's| /
  max |Captum's| at the same nodes where Captum imports (its nodes are float32: agreement to ~1e-6);
- deeplift, deeplift_reveal_cancel: summation-to-delta, the same relative error (exact up to rounding where the
  rules cover the model);
- lrp[epsilon]+absorbed (ε = 1e-12): conservation counting the relevance constant leaves take (``absorbed=True``);
- lrp_epsilon (Ancona's form) and lrp with every composite of ``tribute.composites()``: the conservation ratio
  Σφ / S(x), min..max over samples (biases absorb relevance, so it is not 1 on a net with biases; it must be
  finite and of order 1, not 1e13);
- guided_backprop: max |φ − gradient| / max |gradient| (0 would be the gradient under another name);
- gradcam: max |φ − Grad-CAM by hand| / max |by hand| at the layer tribute chose (Selvaraju et al. 2017:
  ReLU(Σ_k mean(∂S/∂A_k) A_k)), with the layer's name.

ViT and Swin are built smaller than their ImageNet sizes (torchvision's constructors allow it) so that each model
takes seconds: see ``MODELS``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import tribute_source  # noqa: E402
from zoo_support import gradcam_by_hand, realistic_state  # noqa: E402

import tribute  # noqa: E402
from tribute.core import UncoveredModelError  # noqa: E402
from tribute.lrp.composites import composite_parameters  # noqa: E402

DT = torch.float64
N, TARGET = 2, 1
IG_STEPS = 64
TRACE = False  # --trace: print the traceback of every error


# --------------------------------------------------------------------------------------------------
# models

def torchvision_models() -> dict[str, tuple[Callable[[], torch.nn.Module], int, dict]]:
    """name → (builder, image side, Grad-CAM options); torchvision imported here so ``--help`` works without it."""
    from torchvision import models as tv
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    vit_layer = "encoder.layers.encoder_layer_1.ln_1"  # before the last block's attention (see tribute's cam docs)
    return {
        "resnet18": (lambda: tv.resnet18(), 64, {}),
        "resnet50": (lambda: tv.resnet50(), 64, {}),
        "vgg11": (lambda: tv.vgg11(), 64, {}),
        "densenet121": (lambda: tv.densenet121(), 64, {}),
        "squeezenet1_1": (lambda: tv.squeezenet1_1(), 64, {}),
        "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(), 64, {}),
        "efficientnet_b0": (lambda: tv.efficientnet_b0(), 64, {}),
        "regnet_y_400mf": (lambda: tv.regnet_y_400mf(), 64, {}),
        "convnext_tiny": (lambda: tv.convnext_tiny(), 64, {}),
        # Swin-T's stages at 4 heads of width 8: torchvision's SwinTransformer with a smaller embedding
        "swin_t(small)": (lambda: SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2, 2, 2],
                                                  num_heads=[1, 2, 4, 8], window_size=[4, 4]), 64, {}),
        # vit_b_16's layout at 32×32 with 8×8 patches, 2 blocks of width 32
        "vit(small)": (lambda: VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64), 32,
                       {"layer": vit_layer, "reshape": "tokens"}),
    }


def realistic(model: torch.nn.Module, side: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.nn.Module:
    """``model`` in the zoo's realistic state (tests/zoo_support.py), batch norm measured on side × side images."""
    return realistic_state(model, seed, dtype, images=(3, side, side))


# --------------------------------------------------------------------------------------------------
# methods and their identities

def _score(model, x):
    with torch.no_grad():
        return model(x)[:, TARGET]


def _relative_gap(phi, model, x):
    delta = _score(model, x) - _score(model, torch.zeros_like(x))
    gap = (phi.flatten(1).sum(1) - delta).abs() / delta.abs()
    return f"|Σφ−Δ|/|Δ| {gap.max().item():.1e}"


def _ig_identity(phi, model, x):
    """Completeness, and agreement with Captum's IntegratedGradients at the same Gauss–Legendre nodes (where Captum
    imports): on ReLU nets the completeness gap is the quadrature's, which Captum shares."""
    text = _relative_gap(phi, model, x)
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        return text
    theirs = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=TARGET, n_steps=IG_STEPS,
                                                  method="gausslegendre")
    return text + f"; vs Captum {((phi - theirs).abs().max() / theirs.abs().max()).item():.1e}"


def _gradient(model, x):
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(leaf)[:, TARGET].sum(), leaf)
    return g


def _vs_gradient(phi, model, x):
    g = _gradient(model, x)
    return f"|φ−∇|/|∇| {((phi - g).abs().max() / g.abs().max()).item():.1e}"


def _conservation(phi, model, x):
    ratio = phi.flatten(1).sum(1) / _score(model, x)
    lo, hi = ratio.min().item(), ratio.max().item()
    return f"Σφ/S {lo:.3g}..{hi:.3g}"


def _conservation_with_leaves(phi, model, x, explainer, options):
    """LRP with ``absorbed=True``: Σφ plus the relevance constant leaves took (biases, β, class token, position
    embeddings) against the score S(x): conservation, up to what the ε stabilisers absorb."""
    total = phi.flatten(1).sum(1) + explainer.absorbed
    gap = ((total - _score(model, x)).abs() / _score(model, x).abs()).max().item()
    return f"|Σφ+absorbed−S|/|S| {gap:.1e}"


@dataclass(frozen=True)
class Column:
    label: str
    method: str
    options: dict
    identity: Callable


def columns() -> list[Column]:
    cols = [Column("gradient", "gradient", {}, lambda phi, m, x, e, o: _vs_gradient(phi, m, x)),
            Column("integrated_gradients", "integrated_gradients", {"steps": IG_STEPS},
                   lambda phi, m, x, e, o: _ig_identity(phi, m, x)),
            Column("deeplift", "deeplift", {}, lambda phi, m, x, e, o: _relative_gap(phi, m, x)),
            Column("deeplift_reveal_cancel", "deeplift_reveal_cancel", {},
                   lambda phi, m, x, e, o: _relative_gap(phi, m, x)),
            Column("lrp_epsilon", "lrp_epsilon", {}, lambda phi, m, x, e, o: _conservation(phi, m, x)),
            Column("lrp[epsilon]+absorbed", "lrp", {"composite": "epsilon", "epsilon": 1e-12, "absorbed": True},
                   _conservation_with_leaves)]
    cols += [Column(f"lrp[{c}]", "lrp", {"composite": c}, lambda phi, m, x, e, o: _conservation(phi, m, x))
             for c in tribute.composites()]
    cols += [Column("guided_backprop", "guided_backprop", {}, lambda phi, m, x, e, o: _vs_gradient(phi, m, x)),
             Column("gradcam", "gradcam", {"upsample": False}, _gradcam_identity)]
    return cols


def _gradcam_identity(phi, model, x, explainer, options):
    layer = explainer.layer if isinstance(explainer.layer, str) else str(explainer.layer)
    reshape = options.get("reshape") is not None
    try:
        module = model.get_submodule(layer)
    except AttributeError:  # a call described in words ("the output of the 121st call of relu"): no module to hook
        return f"not checked: {layer[:60]}"
    if "#" in layer or sum(1 for m in model.modules() if m is module) > 1:  # the hook would see one call of several
        return f"not checked: {layer}"
    expected = gradcam_by_hand(model, x, layer, TARGET, reshape)
    err = ((phi - expected).abs().max() / expected.abs().max().clamp_min(1e-300)).item()
    return f"|φ−def|/|def| {err:.1e} at {layer} {tuple(phi.shape[-2:])}"


# --------------------------------------------------------------------------------------------------
# one cell

_NAMED_OPS = re.compile(r"plain gradient: (.*?)\. Register", re.S)


def _refusal(error: UncoveredModelError) -> str:
    text = str(error)
    found = _NAMED_OPS.search(text)
    if found:
        return "refused: " + found.group(1)
    if "changed nothing" in text:
        return "refused: its rules change nothing on this model"
    return "refused: " + text[:100]


def cell(model, x, col: Column, cam_options: dict) -> tuple[str, str, float]:
    """(status, identity, seconds) of one model × method."""
    options = dict(col.options)
    if col.method == "gradcam":
        options.update(cam_options)
    if col.method == "lrp" and "low" in composite_parameters(options["composite"]):
        options.update(low=float(x.min()), high=float(x.max()))  # the zᴮ rule's box: the images' range
    t0 = time.perf_counter()
    try:
        explainer = tribute.get_method(col.method)(model, **options)
        phi = explainer.attribute(x, TARGET)
    except UncoveredModelError as e:
        return _refusal(e), "", time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 (the table reports every failure)
        if TRACE:
            traceback.print_exc()
        head = str(e).splitlines()[0][:110] if str(e) else ""
        kind = "refused" if isinstance(e, ValueError) and " refuses " in head else "error"  # lrp_epsilon's f(0) ≠ 0
        return f"{kind}: {type(e).__name__}: {head}", "", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    if not torch.isfinite(phi).all():
        return "error: non-finite attribution", "", seconds
    expected_shape = x.shape if col.method != "gradcam" else None
    if expected_shape is not None and phi.shape != expected_shape:
        return f"error: shape {tuple(phi.shape)}", "", seconds
    try:
        identity = col.identity(phi, model, x, explainer, options)
    except Exception as e:  # noqa: BLE001
        identity = f"(identity failed: {type(e).__name__}: {str(e)[:60]})"
    return "ok", identity, seconds


def main() -> None:
    global TRACE, IG_STEPS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", help="a subset of the models (default all)")
    ap.add_argument("--methods", nargs="*", help="a subset of the columns, by label (default all)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--trace", action="store_true", help="print the traceback of every error")
    ap.add_argument("--ig-steps", type=int, default=IG_STEPS, help=f"IG's Gauss–Legendre nodes (default {IG_STEPS}; "
                    "IG and its Captum check take most of the run)")
    args = ap.parse_args()
    TRACE, IG_STEPS = args.trace, args.ig_steps
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchvision

    warnings.filterwarnings("ignore")
    zoo, cols = torchvision_models(), columns()
    names = args.models or list(zoo)
    if args.methods:
        cols = [c for c in cols if c.label in args.methods]
    print(f"tribute zoo over torchvision: python {platform.python_version()}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, tribute {tribute.__version__} {tribute_source()}; "
          f"float64, {N} random images per model, target {TARGET}, default strictness")
    t_all = time.perf_counter()
    for name in names:
        build, side, cam_options = zoo[name]
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = realistic(build(), side)
        x = torch.randn(N, 3, side, side, generator=torch.Generator().manual_seed(1), dtype=DT)
        s, s0 = _score(model, x), _score(model, torch.zeros_like(x))
        print(f"\n## {name}  ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, {side}×{side}; "
              f"S(x) = {', '.join(f'{v:.3g}' for v in s.tolist())}, S(0) = {s0[0].item():.3g}; "
              f"built in {time.perf_counter() - t0:.1f} s)")
        print(f"{'method':<28} {'time':>7}  {'status':<60} identity")
        for col in cols:
            status, identity, seconds = cell(model, x, col, cam_options)
            print(f"{col.label:<28} {seconds:>6.2f}s  {status:<60} {identity}", flush=True)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
