"""The aligned explainer: a classifier and the explainer head on one of its feature maps, one forward pass for both.

``AlignedExplainer(classifier, input_shape, layer=None)`` reads the classifier's feature map h at ``layer`` (a
module name; default: the layer the CAM family uses, the last (N, C, h, w) map before the spatial dimensions
collapse, :func:`tribute.core.layers.find_default_layer`) and returns, from one pass of the classifier,
``{"logits": f(x), "attribution": E(h)}`` (Zeng et al. 2021, Fig 1): the logits first, so that every tribute
method and metric reads the wrapper as the classifier it wraps (a structured output's ``logits`` is its scores,
:mod:`tribute.core.outputs`), and the map (N, 1, H, W) under ``attribution``, which the registered method
``"aligned"`` returns (:mod:`tribute.explainers.method`).  A post-hoc method run on the wrapper gives what it gives
on the classifier, but pays for the head in each of its passes: run it on ``wrapper.classifier`` to save that.

The classifier is held, not copied, and never modified in place: h is read by a forward hook placed for the pass
and removed after it, also when the pass fails (:func:`tribute.core.layers.capture`; a default layer that only a
function computes is read by a torch-function mode instead).  Training (:func:`tribute.explainers.train_aligned`)
changes the classifier's weights in joint mode, as :func:`tribute.training.fit` does: train a copy to keep the
original.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..core.engine import Forward, model_dtype
from ..core.layer_names import LayerError, Site, resolve_layer
from ..core.layers import capture, find_default_layer
from .head import ExplainerHead


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, every submodule's mode restored after (a probe pass, or training the
    head on a frozen classifier, must not update its batch-norm statistics)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class AlignedExplainer(nn.Module):
    """A classifier with the explainer head E of Zeng et al. (2021) on its feature map h: ``{"logits", "attribution"}``.

    Parameters
    ----------
    classifier : nn.Module
        Any CNN classifier ``classifier(x) -> logits`` (N, K).
    input_shape : (C, H, W)
        One input's shape: the head maps h to (H, W) exactly (:mod:`tribute.explainers.head`).
    layer : str or nn.Module, optional
        The feature layer, named as in ``classifier.named_modules()`` (or the submodule); default: the CAM
        family's layer.  A layer that does not exist, or whose output is not (N, C, h, w), is a ``LayerError``.
    widths : sequence of int, optional
        The head's channels per transposed-convolution layer (default: narrowing, C/2, C/4, ..., capped at
        128, 64, 32, 16 so that its cost does not grow with C², see :func:`~tribute.explainers.head.default_widths`;
        ``tribute.explainers.PAPER_WIDTHS`` for the paper's 64, 128, 256, 512).
    """

    def __init__(self, classifier: nn.Module, input_shape: Sequence[int], layer: str | nn.Module | None = None, *,
                 widths: Sequence[int] | None = None):
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ValueError(f"input_shape must be one image's (C, H, W), three positive ints; got {input_shape!r}")
        self.classifier = classifier
        self.input_shape = shape
        probe = torch.zeros(1, *shape, dtype=model_dtype(classifier) or torch.float32,
                            device=next((p.device for p in classifier.parameters()), None))
        with eval_mode(classifier), torch.no_grad():
            site = find_default_layer(Forward(classifier), probe) if layer is None else resolve_layer(classifier, layer)
            h = self._capture(site, probe)[1]
        self.site: Site = site
        self.feature_shape = tuple(h.shape[1:])
        self.head = ExplainerHead(h.shape[1], h.shape[2:], shape[1:], widths).to(probe.dtype).to(probe.device)

    @property
    def layer(self) -> str:
        """The feature layer's name (or, for a default layer only a function computes, its description)."""
        return str(self.site)

    def _capture(self, site: Site, x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's logits for ``x`` and its activation at ``site``, from one pass (kept on the graph)."""
        with capture(site, x, grad=True) as cap:
            logits = self.classifier(x, *args, **kwargs)
        h = cap.value
        if h.dim() != 4:
            raise LayerError(f"{site.describe()} gives an activation of shape {tuple(h.shape)}, not a feature map "
                             "(N, C, h, w): the head upsamples a convolutional layer's maps; choose such a layer")
        return logits, h

    def features(self, x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the feature map h for ``x``, from one pass of the classifier (extra arguments go to it)."""
        self._check_input(x)
        logits, h = self._capture(self.site, x, *args, **kwargs)
        if tuple(h.shape[1:]) != self.feature_shape:
            raise ValueError(f"the layer {self.layer} gave features {tuple(h.shape[1:])} for inputs {tuple(x.shape)}, "
                             f"and the head was built for {self.feature_shape} (inputs {self.input_shape})")
        return logits, h

    def forward(self, x: torch.Tensor, *args, **kwargs) -> dict[str, torch.Tensor]:
        """``{"logits": f(x), "attribution": E(h)}`` from one pass of the classifier; the map is (N, 1, H, W)."""
        logits, h = self.features(x, *args, **kwargs)
        return {"logits": logits, "attribution": self.head(h)}

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"the aligned explainer takes images (N, {', '.join(map(str, self.input_shape))}), "
                             f"the input_shape its head was built for; got {got}")
