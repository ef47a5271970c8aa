"""The class activation map (CAM) family (Abhishek & Kamath 2022, §2.1; Nielsen et al. 2022, §3.3).

Each method weighs the K feature maps A_k (h × w) of a convolutional layer and sums them,
L = ReLU(Σ_k w_k A_k); they differ in the weights:

================================  ===================================================================
``cam``                           w_k = the head's class weight (Zhou et al. 2016; needs GAP + linear)
``gradcam``                       w_k = mean_ij ∂S/∂A_kij (Selvaraju et al. 2017, Eq 1–2)
``gradcam_plus_plus``             w_k = Σ_ij α_kij ReLU(∂S/∂A_kij) (Chattopadhay et al. 2018, Eq 19)
``contrastive_gradcam``           Grad-CAM of J(P, Q) = cross-entropy with label Q (Prabhushankar et al. 2020)
``scorecam``                      w_k = softmax score of the input masked by A_k (Wang et al. 2020)
``guided_gradcam``                guided backprop ⊙ upsampled Grad-CAM (Selvaraju et al. 2017, §3.1)
``fullgrad``                      input- and bias-gradients of every layer (Srinivas & Fleuret 2019)
================================  ===================================================================

Conventions.  Inputs are images (N, C, H, W).  Maps are (N, 1, H, W): computed at the layer's
resolution (h, w), rectified (``relu=True``, the default), then upsampled bilinearly with
``align_corners=False`` to the input's size (``upsample=False`` returns the (N, 1, h, w) layer-resolution
map); ``normalize=True`` rescales each map to [0, 1] (min–max per sample).  Guided Grad-CAM has the
input's shape (``reduce=`` makes it a map), FullGrad's post-processing is its own (see the class).

The layer.  ``layer=`` names a module as in ``model.named_modules()`` (``"layer4"``; a module called more
than once needs its call named, ``"block.relu#1"``; see :mod:`tribute.core.layers`).  The default is the
last spatial feature map on the input's path before the spatial dimensions collapse, i.e. the input of the
global pooling: ``layer4``'s output in a torchvision ResNet (not ``layer4[-1].conv2``).  The layer used is
left in ``method.layer`` after each call.

Transformers.  A vision transformer's layers give tokens (N, T, C), not maps: ``reshape="tokens"`` drops the
leading class/register tokens (``prefix_tokens=``, inferred as 1 or 0 by default) and lays the others out on
the image's grid as (N, C, h, w), as Chefer et al. (2021) do for Grad-CAM on ViT (``reshape=`` also takes a
callable, checked to be a rearrangement; see :mod:`tribute.attribution.token_maps`).  Such a model has no
default layer: without ``layer=`` the error lists its token layers.  On a ViT take a layer before the last
block's attention (``"vit.layers.<last>.layernorm_before"``): after it the head reads the class token alone and
the map would be 0, which is refused.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from ..core import options as opt
from ..core.baselines import check_baseline, make_baseline
from ..core.engine import accumulate
from ..core.layer_names import LayerError, Site
from ..core.layers import LayerRows, layer_activations
from ..core.method import Method
from ..core.randomness import SampleStreams
from ..core.reduce import check_reduce, reduce
from ..core.registry import register
from ..core.targets import Target
from ..core.tensors import per_sample
from .fullgrad_bias import bias_gradient_rows
from .guided import GuidedBackprop
from .image_input import INPUT_INDEX_OPTION, ImageMethod, image_of, with_image
from .layer import LAYER_OPTION, LayerMethod
from .token_maps import TOKEN_MAP_OPTIONS, as_feature_map, feature_map_rows

CAM_OPTIONS = {
    **LAYER_OPTION,
    **INPUT_INDEX_OPTION,
    **TOKEN_MAP_OPTIONS,
    "relu": opt.Option(True, opt.boolean, "rectify the map, ReLU(Σ_k w_k A_k)"),
    "upsample": opt.Option(True, opt.boolean,
                           "upsample bilinearly (align_corners=False) to the input's size; False: the layer's size"),
    "normalize": opt.Option(False, opt.boolean, "rescale each map to [0, 1] (min–max per sample)"),
}


def minmax(m: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """(m − min) / (max − min) over ``dims`` (default: all but dim 0); constant slices become 0."""
    dims = tuple(range(1, m.dim())) if dims is None else dims
    lo = m.amin(dim=dims, keepdim=True)
    hi = m.amax(dim=dims, keepdim=True)
    span = hi - lo
    flat = span == 0
    return torch.where(flat, torch.zeros_like(m), (m - lo) / torch.where(flat, torch.ones_like(span), span))


def _check_images(method: str, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{method} makes 2-D class activation maps: inputs must be images of shape (N, C, H, W), got shape "
            f"{tuple(x.shape)}"
        )


def _no_rules(name: str, v: Any) -> None:
    if v is not None:
        raise TypeError(f"{name}: the CAM methods use the plain gradient; they take no rules")
    return None


class _CAM(ImageMethod, LayerMethod):
    """Σ_k w_k A_k at the layer's resolution, then ReLU, upsampling and normalisation."""

    returns: ClassVar[str] = "map"
    options = {**CAM_OPTIONS, "rules": opt.Option(None, _no_rules)}

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        _check_images(self.name, image_of(x, o))
        site = self._site(x, o)
        return self.finish(self._maps(x, target, o, site), image_of(x, o), o)

    def _maps(self, x: torch.Tensor, target: Target, o: SimpleNamespace, site: Site) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def finish(m: torch.Tensor, x: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
        if o.relu:
            m = m.clamp(min=0)
        if o.upsample:
            m = F.interpolate(m, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        if o.normalize:
            m = minmax(m)
        return m


class _GradientCAM(_CAM):
    """One forward and one backward pass per sample: weights from ∂S/∂A (and A)."""

    def _predicts_on_first_pass(self, x, o):
        return x.shape[0] <= o.batch_size  # one chunk: the engine takes the prediction from its forward pass

    def _maps(self, x, target, o, site):
        def contribution(sample, _):
            r = self._layer_rows(x[sample], target, sample, o, site)
            r = feature_map_rows(self.name, site, r, image_of(x[sample], o), o)
            w = self.weights(r, x[sample], target, sample, o, site)
            return (w * r.activation).sum(1, keepdim=True)

        return accumulate(x.shape[0], 1, contribution, batch_size=o.batch_size)

    def weights(self, r: LayerRows, rows: torch.Tensor, target: Target, sample: torch.Tensor, o: SimpleNamespace,
                site: Site) -> torch.Tensor:
        """w_k (N, K, 1, 1), or per-position weights (N, K, h, w)."""
        raise NotImplementedError


@register("gradcam")
class GradCAM(_GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017, Eq 1–2): α_k = (1/hw) Σ_ij ∂S_c/∂A_kij, L = ReLU(Σ_k α_k A_k).

    S_c is the score before the softmax (the logit), or any ``target``.  One forward and one backward pass.

    Options
    -------
    layer, reshape, prefix_tokens, relu, upsample, normalize : see the module doc.
    """

    def weights(self, r, rows, target, sample, o, site):
        return r.grad.mean(dim=(2, 3), keepdim=True)


@register("cam")
class CAM(_GradientCAM):
    """Class activation mapping (Zhou et al. 2016, Eq 1–2): M_c = Σ_k w_k^c A_k.

    Zhou's network ends in global average pooling and a linear layer, S_c = Σ_k w_k^c (1/hw) Σ_ij A_kij + b_c.
    The class weights are read off the gradient instead of the head's parameters (so any way of writing the
    head works): there ∂S_c/∂A_kij = w_k^c / (hw), constant over the positions, and
    w_k^c = hw · ∂S_c/∂A_k.  Hence CAM = hw × Grad-CAM's map before its ReLU on such a model.

    A head that is not global average pooling + linear is an error: the gradient must be spatially constant
    (global average pooling) and the score affine in A along the ray through A,
    S(2A) − S(A) = ⟨∂S/∂A, A⟩ (a linear layer after the pooling; one more forward pass checks it).

    Options
    -------
    layer, reshape, prefix_tokens, relu, upsample, normalize : see the module doc.  Zhou's maps are not
    rectified: pass relu=False for the signed map.
    """

    def weights(self, r, rows, target, sample, o, site):
        g, a = r.grad, r.activation
        tol = 1e3 * torch.finfo(g.dtype).eps
        scale = g.abs().flatten(1).amax(1).clamp(min=torch.finfo(g.dtype).tiny)
        spread = (g.amax(dim=(2, 3)) - g.amin(dim=(2, 3))).amax(1)
        bad = spread > tol * scale
        if bool(bad.any()):
            raise ValueError(
                f"cam needs a head that is global average pooling followed by a linear layer (Zhou et al. 2016), "
                f"but the gradient of the score with respect to {site.describe()} is not constant over the positions "
                f"(samples {sample[bad.cpu()].tolist()[:5]}): the head does not start with global average pooling "
                "of this layer. Use gradcam, which needs no particular head"
            )
        with torch.no_grad():
            doubled = self._doubled(a, rows, sample, o, site)
            _, out2 = layer_activations(o.call.forward, rows, site, rows.shape[0], replace=doubled, sample=sample)
            s2 = target.scores(out2, sample)
            s1 = r.scores.detach()
            lin = (g.detach() * a.detach()).flatten(1).sum(1)
            gap = (s2 - s1 - lin).abs()
            bound = tol * (s2.abs() + s1.abs() + lin.abs()) + torch.finfo(g.dtype).tiny
        if bool((gap > bound).any()):
            raise ValueError(
                f"cam needs a head that is global average pooling followed by a linear layer (Zhou et al. 2016), "
                f"but the score is not affine in the activation of {site.describe()} (S(2A) − S(A) ≠ ⟨∂S/∂A, A⟩): "
                "the head after the pooling is not linear. Use gradcam, which needs no particular head"
            )
        h, w = g.shape[-2:]
        return g.mean(dim=(2, 3), keepdim=True) * (h * w)

    def _doubled(self, a: torch.Tensor, rows: torch.Tensor, sample: torch.Tensor, o: SimpleNamespace,
                 site: Site) -> torch.Tensor:
        """The layer's output with the map A doubled (with ``reshape=``: the entries left out of the map unchanged)."""
        if o.reshape is None:
            return 2 * a.detach()
        full, _ = layer_activations(o.call.forward, rows, site, rows.shape[0], sample=sample)
        return as_feature_map(self.name, site, full, image_of(rows, o), o).back(2 * a.detach(), full)


@register("gradcam_plus_plus")
class GradCAMPlusPlus(_GradientCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018, Eq 19 with the exponential score Y_c = exp(S_c)).

    With g = ∂S_c/∂A, the higher derivatives of Y_c = exp(S_c) are exp(S_c)·g² and exp(S_c)·g³, and the
    closed form of the pixel weights becomes

        α_kij = g_kij² / (2 g_kij² + g_kij³ Σ_ab A_kab)     (α = 0 where the denominator is 0),
        w_k = Σ_ij α_kij ReLU(g_kij),    L = ReLU(Σ_k w_k A_k).

    The common factor exp(S_c) of ∂Y_c/∂A is left out (it scales every map of a sample alike).  One forward
    and one backward pass.

    Exact only where S_c is piecewise linear in A (a head of linear layers, ReLUs and pooling).  The exact
    derivatives are ∂²Y_c/∂A² = exp(S_c)(g² + ∂²S_c/∂A²) and ∂³Y_c/∂A³ = exp(S_c)(g³ + 3g ∂²S_c/∂A² +
    ∂³S_c/∂A³); like Chattopadhay et al., the closed form drops the terms in the second and third derivatives
    of S_c, which vanish only there.  Behind a smooth head (tanh, sigmoid, softmax inside the head) it is an
    approximation of Eq 19, and not a small one: the dropped ∂³S_c/∂A³ is of the same order as g³
    (tests/test_gradcam_plus_plus_eq19.py measures a 37–46 % relative difference of the maps on a tanh head).

    Options
    -------
    layer, reshape, prefix_tokens, relu, upsample, normalize : see the module doc.
    """

    def weights(self, r, rows, target, sample, o, site):
        g, a = r.grad, r.activation
        g2 = g * g
        denom = 2 * g2 + g2 * g * a.sum(dim=(2, 3), keepdim=True)
        zero = denom == 0
        alpha = torch.where(zero, torch.zeros_like(g2), g2 / torch.where(zero, torch.ones_like(denom), denom))
        return (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)


class _CrossEntropyTarget(Target):
    """J(P, Q) = −log softmax(y)_Q: the cross-entropy of the outputs with class Q as the label, row by row."""

    def __init__(self, contrast: torch.Tensor):
        super().__init__(contrast, len(contrast))

    def scores(self, outputs, sample):
        c = outputs.shape[1] if outputs.dim() == 2 else None
        if c is not None and bool((self.index >= c).any()):
            raise IndexError(f"contrast class {int(self.index.max())} is out of range for a model with {c} outputs")
        return -super().scores(outputs.log_softmax(dim=1), sample)

    def for_samples(self, sample):
        return _CrossEntropyTarget(self.index[sample.cpu()])


def _check_contrast(name: str, v: Any) -> Any:
    if v is None or isinstance(v, torch.Tensor) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise TypeError(f"{name} must be a class index, a 1-D tensor of class indices (one per sample) or None; "
                    f"got {type(v).__name__}")


@register("contrastive_gradcam")
class ContrastiveGradCAM(GradCAM):
    """Contrastive Grad-CAM (Prabhushankar et al. 2020, "Contrastive explanations in neural networks").

    Answers "why P, rather than Q?" for the target class P and the contrast class Q (``contrast=``).  The
    contrast is the gradient of J(P, Q), the cross-entropy between the network's output y and the label Q,

        J = −log softmax(y)_Q = −y_Q + log Σ_j exp(y_j),    α_k = (1/hw) Σ_ij ∂J/∂A_kij,
        L = ReLU(Σ_k α_k A_k),

    i.e. Grad-CAM with the score J.  Sign convention: as in the paper, J itself is differentiated (not −J),
    so positive regions are those whose activation *raises* the loss of the hypothesis Q, i.e. lowers Q's
    probability relative to the other classes: the evidence in the image against Q (for P, the network's
    decision).  P enters through the network's output; as in the paper J does not name P, which is checked
    to differ from Q (Q = P is an error).  ``contrast=None`` takes, for each sample, the most probable class
    other than P.

    Options
    -------
    contrast : int, 1-D tensor (one class per sample) or None (the runner-up class).
    layer, reshape, prefix_tokens, relu, upsample, normalize : see the module doc.
    """

    options = {"contrast": opt.Option(None, _check_contrast, "the contrast class Q: 'why P, rather than Q?'")}

    def _predicts_on_first_pass(self, x, o):
        return o.contrast is None  # the runner-up class comes from the outputs at the inputs

    def _maps(self, x, target, o, site):
        if target.fn is not None:
            raise ValueError("contrastive_gradcam explains why class P rather than Q: target must be a class (an int, "
                             "a tensor of classes or None), not a callable")
        if o.contrast is None:
            out = o.call.forward.outputs(x.detach(), o.batch_size)
            target.resolve(out)
        p = target.index
        if o.contrast is None:
            runner_up = out.detach().clone()
            runner_up[torch.arange(len(p)), p.to(out.device)] = -torch.inf
            q = runner_up.argmax(dim=1).cpu()
        else:
            q = Target(o.contrast, x.shape[0]).index
        same = q == p
        if bool(same.any()):
            rows = same.nonzero().flatten().tolist()
            raise ValueError(
                f"contrast class equals the target class for samples {rows[:10]} (class {int(p[rows[0]])}): "
                "contrastive_gradcam answers 'why P, rather than Q?' and needs Q ≠ P"
            )
        return super()._maps(x, _CrossEntropyTarget(q), o, site)


@register("scorecam")
class ScoreCAM(_CAM):
    """Score-CAM (Wang et al. 2020, Eq 3–5 and Algorithm 1).

    For each channel k the feature map A_k is upsampled (bilinear, align_corners=False) to the input's size
    and min–max normalised to [0, 1], H_k = s(Up(A_k)); the input is masked, X ∘ H_k (in pixel space, before
    any ``input_transform``); the weight is the target's softmax score on the masked input,

        w_k = softmax(f(X ∘ H_k))_c [ − softmax(f(X_b))_c with a baseline ],   L = ReLU(Σ_k w_k A_k).

    Baseline.  The paper defines the increase of confidence C(A_k) = f(X ∘ H_k) − f(X_b) against a baseline
    image X_b; its released implementation (and this default, ``baseline=None``) uses f(X ∘ H_k) itself,
    i.e. f(X_b) = 0.  With ``baseline=`` ("zero", "blur", a tensor, …; see :mod:`tribute.core.baselines`)
    the baseline's score is subtracted from every weight.  A constant feature map (max = min) has no
    normalised mask and weight 0.

    Cost: one forward pass per channel and sample, with no backward pass; masked inputs go through the model
    in chunks of ``batch_size``.  On wide layers ``max_channels=K`` keeps K channels per sample: those with
    the largest mean activation (``channel_selection="largest"``) or a uniform random subset
    (``"random"``, reproducible with ``seed=``); the others get weight 0.

    Options
    -------
    softmax : score the softmax output (default True, as the paper); False: the raw target score.  A callable
        target receives the softmax output.
    baseline, baseline_options : None (default) or a baseline image, see above.
    max_channels, channel_selection, seed : channel sampling on wide layers.
    layer, reshape, prefix_tokens, relu, upsample, normalize : see the module doc.
    """

    options = {
        "softmax": opt.Option(True, opt.boolean, "weights from the softmax output (else the raw score)"),
        "baseline": opt.Option(None, opt.optional(check_baseline), "subtract the score of this baseline image"),
        "baseline_options": opt.Option(None, opt.anything),
        "max_channels": opt.Option(None, opt.optional(opt.integer(1)), "keep at most this many channels"),
        "channel_selection": opt.Option("largest", opt.choice(("largest", "random")),
                                        "which channels max_channels keeps"),
        "seed": opt.Option(None, opt.optional(opt.integer(0)), "seed of random channels and baselines"),
    }

    def _predicts_on_first_pass(self, x, o):
        return True  # the feature maps at the inputs come with the outputs

    def _maps(self, x, target, o, site):
        if o.differentiable:
            raise ValueError("scorecam is computed from forward passes only; it does not support differentiable=True")
        acts, out = layer_activations(o.call.forward, x, site, o.batch_size)
        layout = as_feature_map(self.name, site, acts, image_of(x, o), o)
        acts = acts if layout is None else layout(acts)
        target.resolve(out)
        n = x.shape[0]
        channels = self._channels(acts, x, o)
        image = image_of(x, o).detach()
        size = tuple(image.shape[-2:])
        shift = None
        if o.baseline is not None:
            base = with_image(x, make_baseline(o.baseline, image, o.baseline_options, o.seed), o)
            shift = self._score(o.call.forward.outputs(base, o.batch_size), target, torch.arange(n), o)

        def contribution(sample, draw):
            a = acts[sample, channels[sample, draw]]  # (rows, h, w)
            up = F.interpolate(a.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
            lo = up.amin(dim=(2, 3), keepdim=True)
            span = up.amax(dim=(2, 3), keepdim=True) - lo
            flat = span == 0
            mask = (up - lo) / torch.where(flat, torch.ones_like(span), span)
            with torch.no_grad():
                s = self._score(o.call.forward(with_image(x[sample].detach(), image[sample] * mask, o), sample),
                                target, sample, o)
            if shift is not None:
                s = s - shift[sample]
            w = torch.where(flat.flatten(), torch.zeros_like(s), s)
            return per_sample(w.to(a.dtype), a) * a

        total = accumulate(n, channels.shape[1], contribution, batch_size=o.batch_size, progress=o.progress)
        return total.unsqueeze(1)

    @staticmethod
    def _score(out: torch.Tensor, target: Target, sample: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
        return target.scores(out.softmax(dim=1) if o.softmax else out, sample)

    @staticmethod
    def _channels(acts: torch.Tensor, x: torch.Tensor, o: SimpleNamespace) -> torch.Tensor:
        """(N, k) channel indices per sample, ascending."""
        n, c = acts.shape[:2]
        k = c if o.max_channels is None else min(c, o.max_channels)
        if k == c:
            return torch.arange(c).expand(n, c)
        if o.channel_selection == "largest":
            order = torch.sort(acts.mean(dim=(2, 3)).cpu(), dim=1, descending=True, stable=True).indices
        else:
            u = SampleStreams(x, o.seed).draw("uniform", torch.arange(n), (c,), dtype=torch.float64, device="cpu")
            order = u.argsort(dim=1)
        return order[:, :k].sort(dim=1).values.to(acts.device)


@register("guided_gradcam")
class GuidedGradCAM(ImageMethod, LayerMethod):
    """Guided Grad-CAM (Selvaraju et al. 2017, §3.1): guided backpropagation ⊙ upsampled Grad-CAM.

    φ(x) = ∂^guided S_c/∂x ⊙ Up(ReLU(Σ_k α_k A_k)), the Grad-CAM map upsampled to the input's size
    (``interpolation="bilinear"``, align_corners=False, by default; ``"nearest"`` as Captum) and broadcast
    over the input's channels, so φ has the input's shape; ``reduce=`` ("sum", "abs_sum", "max_abs", "l2")
    turns it into an (N, 1, H, W) map.  Two forward and backward passes (plain and guided) per sample.

    Options
    -------
    layer, reshape, prefix_tokens : the Grad-CAM layer (see the module doc).
    interpolation : "bilinear" (default) or "nearest".
    reduce : None (the input's shape) or a channel reduction.
    """

    returns: ClassVar[str] = "input"
    options = {
        **LAYER_OPTION,
        "rules": opt.Option(None, _no_rules),
        "interpolation": opt.Option("bilinear", opt.choice(("bilinear", "nearest")), "how Grad-CAM is upsampled"),
        **INPUT_INDEX_OPTION,
        **TOKEN_MAP_OPTIONS,
        "reduce": opt.Option(None, check_reduce, "reduce the channels to an (N, 1, H, W) map"),
    }

    def _attribute(self, x, target, o):
        _check_images(self.name, image_of(x, o))
        site = self._site(x, o)
        size = tuple(image_of(x, o).shape[-2:])
        align = False if o.interpolation == "bilinear" else None

        def contribution(sample, _):
            r = self._layer_rows(x[sample], target, sample, o, site)
            r = feature_map_rows(self.name, site, r, image_of(x[sample], o), o)
            cam = (r.grad.mean(dim=(2, 3), keepdim=True) * r.activation).sum(1, keepdim=True).clamp(min=0)
            cam = F.interpolate(cam, size=size, mode=o.interpolation, align_corners=align)
            guided = image_of(self._gradients(x[sample], target, sample, o, rules=GuidedBackprop.rules), o)
            return guided * cam

        a = accumulate(x.shape[0], 1, contribution, batch_size=o.batch_size)
        return a if o.reduce is None else reduce(a, o.reduce)

    @classmethod
    def _per_input_result(cls, o):
        return False  # the image's shape, whichever input the image is


# -- FullGrad ----------------------------------------------------------------------------------------


class FullGradient(NamedTuple):
    """The full-gradient decomposition S(x) = Σ input_term + Σ_l Σ bias_terms[l] (Srinivas & Fleuret, Eq 1)."""

    input_term: torch.Tensor
    """∇_x S ⊙ x, the input's shape"""
    bias_terms: list[torch.Tensor]
    """∂S/∂z_l ⊙ b_l for every layer l with a bias, each of its output's shape"""
    kinds: list[str]
    """"conv", "linear" or "batch_norm" for each bias term"""
    scores: torch.Tensor
    """S(x), one per sample"""


def _check_bias_rows(grads: list[torch.Tensor], kinds: list[str], n: int) -> None:
    """Refuse bias terms whose first dimension is not the rows': they cannot be told apart by sample."""
    for i, (g, kind) in enumerate(zip(grads, kinds, strict=True)):
        if g.dim() == 0 or g.shape[0] != n:
            raise LayerError(
                f"fullgrad: the bias term of {kind} layer #{i} (in the order of the forward pass) has shape "
                f"{tuple(g.shape)}, whose first dimension is not the {n} rows of the batch: the model moves other "
                "things into the batch dimension (Swin's window attention makes one row per window), so its terms "
                "cannot be assigned to samples. FullGrad needs layers that keep the batch dimension; use another "
                "method (gradcam with layer= and reshape='tokens', integrated_gradients, ...)"
            )


@register("fullgrad")
class FullGrad(ImageMethod, Method):
    """FullGrad (Srinivas & Fleuret 2019, Eq 1 and 2).

    The full-gradient representation of a ReLU network with biases b (piecewise linear and positively
    homogeneous in (x, b)) is exact,

        S(x) = Σ_i (∇_x S ⊙ x)_i + Σ_l Σ_j (∂S/∂z_l ⊙ b_l)_j,                          (Eq 1)

    where z_l is the output of layer l and b_l its bias broadcast to z_l's shape (the *bias-gradient*).
    The saliency map aggregates the parts that have spatial structure,

        S_f(x) = ψ(∇_x S ⊙ x) + Σ_{l conv} Σ_c ψ(∂S/∂z_l ⊙ b_l)_c,                      (Eq 2)

    with ψ = bilinear upsampling (align_corners=False) ∘ rescaling to [0, 1] ∘ |·|.  The input term is
    rescaled over all its channels and summed over them; a layer's term is rescaled over the whole layer
    (``rescale="layer"``, default, as the authors' reference implementation) or channel by channel
    (``rescale="channel"``, Eq 2 read literally) and summed over its channels.

    Which layers.  The layers are found by intercepting, with a torch-function mode, every call of
    ``F.conv1d/2d/3d``, ``F.conv_transpose1d/2d/3d``, ``F.linear`` and ``F.batch_norm`` whose input is
    computed from the model's input: whatever module (or functional code) makes the call.  Batch norm in
    eval mode is the affine map x·γ/√(σ²+ε) + (β − μγ/√(σ²+ε)); its effective bias is the second term.
    Linear layers' bias-gradients have no spatial structure: they are part of Eq 1 (``full_gradient``)
    but not of the map.  Other additive constants (a layer norm's β, an ``input_transform``'s offset,
    ``x + 1``) are not biases here, so Eq 1 holds exactly for networks of these layers, ReLUs (and other
    positively homogeneous piecewise-linear functions), max and average pooling; ReLU6's clip at 6, for
    one, is not homogeneous and leaves a gap.  One forward and one backward pass.

    Options
    -------
    rescale : "layer" (default) or "channel", see above.
    normalize : rescale each final map to [0, 1] (min–max per sample).
    """

    returns: ClassVar[str] = "map"
    options = {
        "rescale": opt.Option("layer", opt.choice(("layer", "channel")), "rescale bias-gradients per layer or channel"),
        **INPUT_INDEX_OPTION,
        "normalize": opt.Option(False, opt.boolean, "rescale each map to [0, 1] (min–max per sample)"),
    }

    def _decompose(self, x: torch.Tensor, target: Target, sample: torch.Tensor, o: SimpleNamespace, *,
                   every_input: bool = False) -> FullGradient:
        """Eq 1's terms for the rows ``x``: the input term of the image (``every_input``: of every input, in the
        user's structure) and the bias terms."""
        r = bias_gradient_rows(o.call.forward, x, target, sample, create_graph=o.differentiable)
        _check_bias_rows(r.grads, r.kinds, x.shape[0])
        term = r.input_grad * x
        if not o.differentiable:
            term = term.detach()
        term = o.call.layout.result(term) if every_input else image_of(term, o)
        d = FullGradient(term, [g * b for g, b in zip(r.grads, r.biases, strict=True)], r.kinds, r.scores)
        if o.differentiable:
            return d
        return FullGradient(d.input_term, [t.detach() for t in d.bias_terms], d.kinds, d.scores.detach())

    def full_gradient(self, inputs: torch.Tensor | tuple[torch.Tensor, ...], target=None,
                      **options: Any) -> FullGradient:
        """The full-gradient decomposition (Eq 1) of ``inputs`` in one pass: S(x) = Σ input_term + Σ bias_terms.

        ``inputs``, ``forward_args``, ``forward_kwargs`` and ``output`` as in :meth:`attribute`; for a tuple of inputs
        ``input_term`` is a tuple with each input's ∇S ⊙ x (Eq 1 sums over all of them)."""
        o, layout, x = self._prepare(inputs, options, check_layout=False)
        tgt = Target(target, x.shape[0])
        return self._decompose(x, tgt, torch.arange(x.shape[0]), o, every_input=True)

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return x.shape[0] <= o.batch_size  # one chunk: the engine takes the prediction from its forward pass

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        _check_images(self.name, image_of(x, o))
        size = tuple(image_of(x, o).shape[-2:])
        dims = (2, 3) if o.rescale == "channel" else (1, 2, 3)

        def contribution(sample, _):
            d = self._decompose(x[sample], target, sample, o)
            m = minmax(d.input_term.abs()).sum(1, keepdim=True)
            for term in d.bias_terms:
                if term.dim() != 4:
                    continue
                t = minmax(term.abs(), dims).sum(1, keepdim=True)
                m = m + F.interpolate(t, size=size, mode="bilinear", align_corners=False)
            return m

        m = accumulate(x.shape[0], 1, contribution, batch_size=o.batch_size)
        return minmax(m) if o.normalize else m
