"""Third-party models as the zoo uses them, shared by the tests and the benchmark scripts (which run in other
environments: torchvision's, LXT's), so it imports torch alone: the realistic state, the wrappers that turn a
Hugging Face classifier into a function returning its logits, and Grad-CAM computed by hand."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# parameters that hold tokens or position codes (ViT's, Swin's, BERT's): drawn at scale 0.5
TOKENS = ("cls_token", "class_token", "position_embeddings", "pos_embedding", "relative_position_bias_table")


def realistic_state(model: nn.Module, seed: int = 0, dtype: torch.dtype = torch.float64,
                    images: tuple | None = None, bias_free: bool = False) -> nn.Module:
    """``model`` in ``dtype`` and eval mode with weights of variance 1/fan-in, random biases (zero with
    ``bias_free``), norm weights in [0.5, 1.5], ConvNeXt's layer scales in [0.5, 1.5], random tokens and, given an
    image shape ``images``, batch-norm running statistics measured on random images of that shape.  The state is
    drawn in float64 and then cast, so float32 and float64 copies hold the same values.

    At initialisation Hugging Face zeroes every linear bias and makes every normalisation the identity, and a
    bias-free ReLU net is positively homogeneous: completeness checks would pass for almost any implementation."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.float64
    model = model.to(wide)
    with torch.no_grad():
        for module in model.modules():
            is_norm = "norm" in type(module).__name__.lower()
            for name, p in module.named_parameters(recurse=False):
                if name in TOKENS:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=wide) * 0.5)
                elif name.endswith("bias"):
                    p.copy_(torch.rand(p.shape, generator=g, dtype=wide) - 0.5)
                    if bias_free:  # drawn all the same, so the other parameters match the state with biases
                        p.zero_()
                elif name.endswith("weight") and p.dim() >= 2:  # HF's std 0.02 leaves tiny logits on tiny widths
                    p.copy_(torch.randn(p.shape, generator=g, dtype=wide) * p[0].numel() ** -0.5)
                elif (name == "weight" and is_norm) or "layer_scale" in name:  # layer scales start at 1e-6
                    p.copy_(torch.rand(p.shape, generator=g, dtype=wide) + 0.5)
        batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batch_norms and images is None:
            raise ValueError("the model has batch norm: give the image shape to measure its statistics on")
        for module in batch_norms:
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the passes below
        model.train()
        for _ in range(3 if batch_norms else 0):
            model(torch.randn(8, *images, generator=g, dtype=wide) * 1.5 + 0.2)
    return model.to(dtype).eval()


class Logits(nn.Module):
    """A Hugging Face image classifier as a function of its pixels returning the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


class OnEmbeddings(nn.Module):
    """A Hugging Face text model as a function of its input embeddings (N, T, C) and attention mask (a forward
    argument, else the ``mask`` given here, else every token): the float input rule methods attribute to; position
    and token-type embeddings are then constants added on the path."""

    def __init__(self, model: nn.Module, mask: torch.Tensor | None = None):
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, embeddings: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.mask if attention_mask is None else attention_mask
        return self.model(inputs_embeds=embeddings, attention_mask=mask).logits

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.get_input_embeddings()(ids)


def gradcam_by_hand(model: nn.Module, x: torch.Tensor, layer: str, target: int, tokens: bool,
                    logits: Callable = lambda out: out) -> torch.Tensor:
    """Selvaraju et al. (2017): ReLU(Σ_k w_k A_k) with w_k the spatial mean of ∂S_c/∂A_k, at ``layer``'s output A
    (for tokens: the leading class tokens dropped, the rest laid out on the square grid); ``logits`` reads the
    scores from the model's output."""
    seen = {}

    def keep_first(module, args, out):  # returns None: the output stays as it is
        seen.setdefault("a", out)

    hook = model.get_submodule(layer).register_forward_hook(keep_first)
    try:
        score = logits(model(x))[:, target].sum()
    finally:
        hook.remove()
    (grad,) = torch.autograd.grad(score, seen["a"])
    maps = []
    for t in (seen["a"].detach(), grad):
        if tokens:
            side = int(t.shape[1] ** 0.5)
            t = t[:, t.shape[1] - side * side:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
        maps.append(t)
    a, g = maps
    return F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
