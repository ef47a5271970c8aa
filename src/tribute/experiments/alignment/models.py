"""The experiment's models: the classifier alone, the robust twin (and its store), the two aligned explainers.

All trained with seed 0 of the pipeline through checkpointed, resumable trainers (:func:`tribute.training.fit`
and what builds on it): a rerun loads a finished training instead of repeating it, and resumes an interrupted one.

- the *standard* classifier: a ``width`` ResNet-18 (:func:`tribute.explainers.resnet18_cifar`), SGD with momentum
  0.9 and weight decay 5·10⁻⁴, the model every post-hoc method explains and ROAR retrains;
- the *robust twin* f′ with the store of its SmoothGrad maps (:func:`tribute.explainers.robust_twin_targets`):
  preset ``"gray28"`` (PGD-L2, 7 steps, ε = 0.76); on the 8×8 digits ε = 1.5·√(64/3072) ≈ 0.22, the preset's own
  per-pixel rule applied to 64 pixels;
- the *aligned explainer* (robust alignment): a fresh classifier with the explainer head, trained jointly (Eq 5,
  λ = 0.35, the default loss) on the twin's store;
- the *standard alignment* of Table 2: the same, on a store of the standard classifier's SmoothGrad maps.
"""

from __future__ import annotations

import math

from torch import nn

from ...explainers import AlignedExplainer, resnet18_cifar, robust_twin_targets, train_aligned
from ...explainers.twin_store import twin_attributions
from ...training import accuracy, fit
from .scales import Scale
from .steps import Steps

#: CIFAR-10's ε = 1.5 (Zeng et al. 2021) over 3·32·32 values: the per-pixel L2 budget the twin keeps
PAPER_EPS, PAPER_VALUES = 1.5, 3 * 32 * 32


def twin_eps(image_shape) -> float:
    """ε of the twin's PGD-L2 for images of ``image_shape``: 1.5·√(values / 3072), rounded to 2 decimals."""
    return round(PAPER_EPS * math.sqrt(math.prod(image_shape) / PAPER_VALUES), 2)


def train_models(steps: Steps, split, scale: Scale) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """Train (or load) every model: ``(models, their clean test accuracies)``."""
    out, x, test = steps.out / "models", split.train[0], split.test
    out.mkdir(exist_ok=True)
    channels = x.shape[1]
    fresh = lambda seed: resnet18_cifar(10, in_channels=channels, width=scale.width, seed=seed)  # noqa: E731
    train = {"epochs": scale.epochs, "lr": scale.lr, "seed": 0, "batch_size": scale.batch_size, "progress": False}
    classifier = fresh(1)
    steps.resume("classifier", lambda: fit(classifier, split.train, momentum=0.9, weight_decay=5e-4,
                                           checkpoint=out / "classifier.pt", **train))
    classifier.eval()
    overrides = {} if tuple(x.shape[1:]) == (1, 28, 28) else {"eps": twin_eps(x.shape[1:])}
    targets = steps.resume("twin", lambda: robust_twin_targets(
        fresh(2), split.train, out / "twin", epochs=scale.twin_epochs, seed=0, samples=scale.smoothgrad_samples,
        batch_size=scale.batch_size, **overrides))
    twin = targets.twin.eval()
    standard_store = steps.resume("standard_store", lambda: twin_attributions(
        classifier, split.train, out / "standard_smoothgrad", samples=scale.smoothgrad_samples, seed=0,
        batch_size=scale.batch_size))
    aligned = {}
    for name, store, teacher in (("aligned", targets.store, twin), ("aligned_standard", standard_store, classifier)):
        explainer = AlignedExplainer(fresh(3), tuple(x.shape[1:]))
        steps.resume(name, lambda e=explainer, s=store, t=teacher, n=name: train_aligned(
            e, split.train, targets=s, twin=t, momentum=0.9, weight_decay=5e-4, checkpoint=out / f"{n}.pt", **train))
        aligned[name] = explainer.eval()
    models = {"classifier": classifier, "twin": twin, **aligned}
    accuracies = steps.run("accuracy", lambda: {
        name: accuracy(m.classifier if isinstance(m, AlignedExplainer) else m, test) for name, m in models.items()})
    return models, accuracies
