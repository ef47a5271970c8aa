"""The registered method ``"aligned"``: the map an :class:`AlignedExplainer`'s head gives, from one forward pass.

``tribute.explain(wrapper, x, "aligned")`` returns the head's map E(h) (N, 1, H, W) (``returns = "map"``, as the
CAM family), read from the same forward pass that gives the logits: ``explainer.passes`` records N forward rows
and no backward.  So ``explain``, every metric, :func:`tribute.evaluate` and the figures take it.

Targets.  The head has one map per image, trained on the label's SmoothGrad map (:mod:`tribute.explainers.target`):
it explains the class the classifier predicts.  ``target=None`` is that class; a target equal to the prediction
(an int or a tensor, e.g. the one :func:`tribute.evaluate` fixes from the prediction) is accepted; a target that
differs from the prediction for any sample is an error naming those samples, since the map would be the
prediction's map under another class's name; a callable target is refused (it names no class).  A check that fixes
one class across several models (the parameter randomisation test: the trained model's prediction, explained on
its randomised copies) passes ``accept_any_target=True``: any class target is then accepted and gets the head's one
map, said so by the option's name.  A head with one map per class (K output maps) is not built.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from ..core import options as opt
from ..core.method import Method
from ..core.registry import register
from ..core.targets import Target
from .aligned import AlignedExplainer

_WAY_OUT = ("wrap the classifier in tribute.explainers.AlignedExplainer(classifier, input_shape) and train its head "
            "(tribute.explainers.train_aligned)")


@register("aligned")
class AlignedMap(Method):
    """The aligned explainer's own map E(h) (Zeng et al. 2021): one forward pass, no backward (module doc)."""

    returns = "map"
    options = {
        "accept_any_target": opt.Option(False, opt.boolean,
                                        "accept a class target other than the prediction and return the head's one "
                                        "map for it (checks that fix a class across models); default: an error"),
    }
    #: the model this method explains: the contract tests that run every method on plain models skip it
    requires_model = AlignedExplainer

    def __init__(self, model, **options):
        if not isinstance(model, AlignedExplainer):
            raise TypeError(f"'aligned' reads the map an AlignedExplainer's head outputs; got a "
                            f"{type(model).__name__}: {_WAY_OUT}")
        super().__init__(model, **options)

    def _predicts_on_first_pass(self, x: torch.Tensor, o: SimpleNamespace) -> bool:
        return True  # the pass that gives the map gives the logits: target=None costs nothing more

    def _attribute(self, x: torch.Tensor, target: Target, o: SimpleNamespace) -> torch.Tensor:
        if target.fn is not None:
            raise ValueError("'aligned' explains the predicted class, and a callable target names no class: pass "
                             "target=None (the prediction) or the predicted classes")
        if o.output is not None:
            raise ValueError(f"output={o.output!r}: the aligned explainer's output is fixed ('logits' and "
                             "'attribution'); leave output= unset")
        seen = {}

        def pick(raw):
            seen["map"] = raw["attribution"]
            return raw["logits"]

        forward = copy.copy(o.call.forward)
        forward.output = pick
        maps, logits = [], []
        with torch.set_grad_enabled(o.differentiable and torch.is_grad_enabled()):
            for rows in torch.arange(x.shape[0]).split(o.batch_size):
                logits.append(forward(x[rows], rows))
                maps.append(seen.pop("map"))
        predicted = torch.cat(logits).detach().argmax(1).cpu()
        target.resolve(torch.cat(logits))
        wrong = (target.index != predicted).nonzero().flatten().tolist()
        if wrong and not o.accept_any_target:
            raise ValueError(
                f"'aligned' gives the map of the class the model predicts; the target differs from the prediction "
                f"for samples {wrong[:10]}{'…' if len(wrong) > 10 else ''} (targets {target.index[wrong[:5]].tolist()},"
                f" predicted {predicted[wrong[:5]].tolist()}): pass target=None, or explain other classes with a "
                "post-hoc method (e.g. 'gradcam'); accept_any_target=True takes the head's one map for any class")
        return torch.cat(maps)
