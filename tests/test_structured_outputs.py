"""Models that return more than a tensor (issue 12): tuples, dicts, dataclasses, Hugging Face ``ModelOutput``.

``output=`` names the tensor of scores; without it a tensor is itself, else ``logits``, else the only tensor,
else an error that lists the fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import tribute

DT = torch.float64


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3).to(DT)

    def scores(self, x):
        return torch.tanh(self.lin(x))


class ReturnsDict(Base):
    def __init__(self, keys):
        super().__init__()
        self.keys = keys

    def forward(self, x):
        s = self.scores(x)
        values = {"logits": s, "scores": s, "hidden": x * 2, "loss": s.sum(), "note": "text"}
        return {k: values[k] for k in self.keys}


@dataclass
class Result:
    hidden: torch.Tensor
    scores: torch.Tensor


class ReturnsDataclass(Base):
    def forward(self, x):
        return Result(hidden=x, scores=self.scores(x))


class ReturnsTuple(Base):
    def forward(self, x):
        return x.sum(1), self.scores(x)


def _x():
    return torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(1))


def _reference(x, target=1):
    return tribute.explain(lambda t: Base().scores(t), x, "integrated_gradients", target=target, steps=8)


@pytest.mark.parametrize("keys", [("logits",), ("loss", "logits"), ("logits", "hidden"), ("scores", "note")])
def test_the_default_picks_logits_or_the_only_tensor(keys):
    x = _x()
    a = tribute.explain(ReturnsDict(keys), x, "integrated_gradients", target=1, steps=8)
    torch.testing.assert_close(a, _reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("model, output", [
    (ReturnsDict(("hidden", "scores")), "scores"),
    (ReturnsDataclass(), "scores"),
    (ReturnsTuple(), 1),
    (ReturnsTuple(), lambda out: out[1]),
])
def test_output_names_the_scores(model, output):
    x = _x()
    a = tribute.explain(model, x, "integrated_gradients", target=1, steps=8, output=output)
    torch.testing.assert_close(a, _reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("model, fields", [
    (ReturnsDict(("hidden", "scores")), r"'hidden': tensor \(3, 4\), 'scores': tensor \(3, 3\)"),
    (ReturnsDataclass(), r"'hidden': tensor \(3, 4\), 'scores': tensor \(3, 3\)"),
    (ReturnsTuple(), r"0: tensor \(3,\), 1: tensor \(3, 3\)"),
])
def test_an_ambiguous_output_is_an_error_listing_its_fields(model, fields):
    with pytest.raises(ValueError, match=fields + ".*output="):
        tribute.explain(model, _x(), "gradient", target=0)


def test_an_output_key_that_does_not_exist_lists_the_fields():
    with pytest.raises(KeyError, match=r"output='probs' is not in .*'hidden'.*'scores'"):
        tribute.explain(ReturnsDict(("hidden", "scores")), _x(), "gradient", target=0, output="probs")


def test_an_output_that_is_not_a_tensor_is_refused():
    with pytest.raises(TypeError, match="output='note' is str"):
        tribute.explain(ReturnsDict(("scores", "note")), _x(), "gradient", target=0, output="note")


def test_a_callable_target_reads_the_selected_scores():
    x = _x()
    contrast = tribute.explain(ReturnsDict(("loss", "logits")), x, "gradient", target=lambda s: s[:, 0] - s[:, 2])
    reference = tribute.explain(lambda t: Base().scores(t), x, "gradient", target=lambda s: s[:, 0] - s[:, 2])
    torch.testing.assert_close(contrast, reference, rtol=0, atol=0)


def test_a_hugging_face_model_output_defaults_to_its_logits():
    outputs = pytest.importorskip("transformers.modeling_outputs")

    class HF(Base):
        def forward(self, x):
            s = self.scores(x)
            return outputs.SequenceClassifierOutput(loss=s.sum(), logits=s, hidden_states=(x,))

    x = _x()
    for method, options in (("integrated_gradients", {"steps": 8}), ("deeplift", {}), ("lrp_epsilon", {})):
        a = tribute.explain(HF(), x, method, target=2, **options)
        b = tribute.explain(lambda t: Base().scores(t), x, method, target=2, **options)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
