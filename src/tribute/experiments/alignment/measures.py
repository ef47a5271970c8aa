"""The measurements behind the tables and figures: ROAR per seed, the sanity check, the latency per image.

- ROAR (Hooker et al. 2019; :func:`tribute.metrics.roar.roar`): for every compared attribution, the top 20/40/60/80
  % of the pixels replaced by the training set's mean, a fresh ResNet-18 of the classifier's width retrained on the
  modified training set (Adam, 10⁻³, the scale's ROAR epochs) and tested on the modified test set; one call per
  seed, the seed giving the retrained models' initialisation and training order and the random baseline.
- The sanity check (Adebayo et al. 2018; :func:`tribute.metrics.sanity.parameter_randomisation`): the last
  residual block (``layer4.1``) of the model each attribution reads re-initialised, the Spearman rank correlation
  of each image's map before and after (mean and sd over the images).  Near 1: the map ignores the block.
- Latency: wall seconds of each method on the same batch of test images, after a warm-up on two images, per image.
"""

from __future__ import annotations

import time

import torch

from ...explainers import AlignedExplainer, resnet18_cifar
from ...metrics.roar import roar
from ...metrics.sanity import parameter_randomisation
from .methods import Spec, attribute, roar_callable
from .scales import FRACTIONS, Scale

LAST_BLOCK = "layer4.1"


def roar_seed(models: dict, split, labelled: dict[str, Spec], scale: Scale, seed: int,
              cache: dict | None = None, ties: str = "index") -> dict:
    """ROAR of every attribution in ``labelled`` with seed ``seed``: ``{"accuracy": {label: [4 values]},
    "reference": float, "original": float}``; ``cache`` keeps the attributions for the next seed; ``ties`` is
    ROAR's order of equal attributions."""
    channels = split.train[0].shape[1]
    result = roar(models["classifier"], split.train, split.test,
                  [(label, roar_callable(label, spec, models, cache)) for label, spec in labelled.items()],
                  fractions=FRACTIONS, seed=seed, ties=ties, progress=False, batch_size=scale.batch_size,
                  model_factory=lambda: resnet18_cifar(10, in_channels=channels, width=scale.width),
                  train_options={"epochs": scale.roar_epochs, "batch_size": scale.batch_size, "progress": False})
    return {"accuracy": {m: list(result["roar", m].tolist()) for m in result.methods},
            "reference": result.reference, "original": result.original}


def sanity(models: dict, x: torch.Tensor, labelled: dict[str, Spec], seed: int = 0) -> dict:
    """Spearman between each attribution's maps before and after the last block's re-initialisation:
    ``{label: {"mean": float, "sd": float}}``; targets are the predictions of the trained model."""
    out = {}
    for label, spec in labelled.items():
        model = models[spec.model]
        layer, options = LAST_BLOCK, dict(spec.options)
        if isinstance(model, AlignedExplainer):  # its map is the prediction's; the randomised copy keeps the class
            if not model.layer.startswith("layer4"):
                raise ValueError(f"the explainer {label!r} reads {model.layer}, which the last block {LAST_BLOCK} "
                                 "does not feed: re-initialising it could not change the maps (images too small "
                                 "for the ResNet's last stage to keep a spatial map?); use images of 16×16 or more")
            layer, options = f"classifier.{LAST_BLOCK}", {"accept_any_target": True}
        result = parameter_randomisation(model, x, spec.method, layers=[layer], similarities=("spearman",),
                                         seed=seed, method_options=options)
        scores = result["spearman"][0].double()
        out[label] = {"mean": float(scores.mean()), "sd": float(scores.std()) if len(scores) > 1 else 0.0}
    return out


def latency(models: dict, x: torch.Tensor, labelled: dict[str, Spec]) -> dict:
    """Milliseconds per image of each attribution on ``x`` (one batch), and of the classifier's forward pass."""
    target = models["classifier"](x).argmax(1).detach()
    runs = {"forward pass (classifier)": lambda xs, t: models["classifier"](xs).detach()}
    runs.update({label: (lambda xs, t, s=spec: attribute(s, models, xs, t)) for label, spec in labelled.items()})
    out = {}
    for label, run in runs.items():
        run(x[:2], target[:2])  # warm-up: the first call pays for allocations and dispatch caches
        t0 = time.perf_counter()
        run(x, target)
        out[label] = 1000 * (time.perf_counter() - t0) / len(x)
    return out
