"""Sanity checks, class sensitivity, alignment and ROAR take any input a model takes (issue 12).

- One input of a two-input model, named by ``input_index=``, gives what the same check gives with the other
  input held as a forward argument; without ``input_index`` a sample's maps of both inputs are compared as one
  vector (each input's map flattened, end to end), checked against autograd by hand.
- Forward arguments follow the rows: a batch with per-sample masks equals one sample at a time, also where the
  batch is repeated once per class (class sensitivity) or expanded by the method (integrated gradients).
- Structured outputs and arguments that are the same for every sample reach the retrained models of label
  randomisation and ROAR: the results equal the plain model's exactly.
- Functions as models, plain-callable methods that cannot take forward arguments, bad input: clear errors.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ResidualCNN, randomise_bn, two_inputs
from conftest import masked_sequences as masked
from torch import nn

import tribute
from tribute.core.train_guard import TrainModeError
from tribute.metrics import (
    alignment,
    class_sensitivity,
    cosine_alignment,
    label_randomisation,
    parameter_randomisation,
    roar,
)
from tribute.metrics.reinitialise import parameter_owners, reinitialise_owners
from tribute.metrics.similarity import spearman

DT = torch.float64







def same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-12) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=atol, equal_nan=True)


def gradients(model, inputs, target):
    """Autograd's gradient of the target score with respect to each input."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    model(*leaves).gather(1, target[:, None]).sum().backward()
    return [leaf.grad for leaf in leaves]


# -- parameter randomisation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_one_input_of_two_equals_the_check_with_the_other_held_as_a_forward_argument(mode):
    model, img, tab, y = two_inputs(n=4)
    a = parameter_randomisation(model, (img, tab), "gradient", y, mode=mode, input_index=0)
    b = parameter_randomisation(model, img, "gradient", y, mode=mode, forward_args=(tab,))
    assert a.steps == b.steps == ("head", "dense", "conv")
    same(a.scores, b.scores)
    # the table's own maps, named by a negative index, are another comparison
    c = parameter_randomisation(model, (img, tab), "gradient", y, mode=mode, input_index=-1)
    assert not torch.allclose(c.scores, a.scores, equal_nan=True)


def test_a_samples_maps_of_both_inputs_are_compared_as_one_vector():
    model, img, tab, y = two_inputs(n=4)
    seen = []

    def record(p, q):
        seen.append((p, q))
        return spearman(p, q)

    result = parameter_randomisation(model, (img, tab), "gradient", y, similarities={"rho": record},
                                     layers=["head"])
    g_img, g_tab = gradients(model, (img, tab), y)
    packed = torch.cat([g_img.sum(1).flatten(1), g_tab], 1)  # reduce="sum" over the image's channels
    same(seen[0][0], packed, atol=1e-14)
    randomised = tribute.metrics.randomised_copy(model, ["head"], seed=0)
    r_img, r_tab = gradients(randomised, (img, tab), y)
    same(seen[0][1], torch.cat([r_img.sum(1).flatten(1), r_tab], 1), atol=1e-14)
    same(result["rho"][0], spearman(packed, seen[0][1]).to(DT))


def test_forward_arguments_follow_the_rows_of_a_parameter_randomisation():
    model, x, mask, y = masked()
    kw = {"reduce": None, "method_options": {"steps": 4, "batch_size": 3}}
    batched = parameter_randomisation(model, x, "integrated_gradients", y, forward_kwargs={"mask": mask}, **kw)
    for i in range(x.shape[0]):
        alone = parameter_randomisation(model, x[i:i + 1], "integrated_gradients", y[i:i + 1],
                                        forward_kwargs={"mask": mask[i:i + 1]}, **kw)
        same(batched.scores[..., i:i + 1], alone.scores)
    # the target=None prediction is made with each sample's own mask
    predicted = model(x, mask).argmax(1)
    same(parameter_randomisation(model, x, "gradient", forward_args=(mask,), reduce=None).scores,
         parameter_randomisation(model, x, "gradient", predicted, forward_args=(mask,), reduce=None).scores, atol=0)


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.l1, self.l2 = nn.Linear(5, 7), nn.Linear(7, 3)

    def scores(self, x, factor=2.0):
        return self.l2(torch.tanh(self.l1(x))) * factor

    def forward(self, x):
        return self.scores(x)


class DictWithFactor(Base):
    def forward(self, x, factor):
        return {"logits": self.scores(x, factor), "hidden": x}


class HFLike(Base):
    def forward(self, x):
        from transformers.modeling_outputs import SequenceClassifierOutput
        s = self.scores(x)
        return SequenceClassifierOutput(loss=s.sum(), logits=s, hidden_states=(x,))


def small_data(n=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def test_structured_outputs_through_a_parameter_randomisation():
    pytest.importorskip("transformers")
    x, y = small_data()
    plain = parameter_randomisation(Base().to(DT).eval(), x, "gradient", y)
    hf = parameter_randomisation(HFLike().to(DT).eval(), x, "gradient", y)
    picked = parameter_randomisation(DictWithFactor().to(DT).eval(), x, "gradient", y, output="logits",
                                     forward_args=(tribute.constant(torch.tensor(2.0, dtype=DT)),))
    assert plain.steps == hf.steps == picked.steps == ("l2", "l1")
    same(hf.scores, plain.scores, atol=0)
    same(picked.scores, plain.scores, atol=0)


# -- label randomisation -----------------------------------------------------------------------------------------
TRAINING = {"epochs": 2, "lr": 0.05, "batch_size": 4}


def test_label_randomisation_trains_through_constant_arguments_and_output():
    x, y = small_data()
    train = small_data(24, seed=9)
    plain = label_randomisation(Base().to(DT).eval(), x, "gradient", y, train_data=train, train_options=TRAINING,
                                control=True)
    fixed = label_randomisation(DictWithFactor().to(DT).eval(), x, "gradient", y, train_data=train,
                                train_options=TRAINING, control=True, output="logits",
                                forward_kwargs={"factor": tribute.constant(torch.tensor(2.0, dtype=DT))})
    same(fixed.scores, plain.scores, atol=0)
    assert fixed.info == plain.info
    with pytest.raises(ValueError, match=r"forward_args\[0\] is a tensor.*one set of samples.*tribute.constant"):
        label_randomisation(DictWithFactor().to(DT).eval(), x, "gradient", y, train_data=train,
                            train_options=TRAINING, forward_args=(torch.full((12,), 2.0, dtype=DT),))


def test_label_randomisation_of_a_two_input_model_with_a_train_fn():
    model, img, tab, y = two_inputs(n=4)
    _, train_img, train_tab, train_y = two_inputs(n=10, seed=5)
    seen = []

    def train_fn(m, inputs, labels):  # trains nothing: the model stays re-initialised
        seen.append(inputs)
        return m

    result = label_randomisation(model, (img, tab), "gradient", y, train_data=((train_img, train_tab), train_y),
                                 train_fn=train_fn, seed=3)
    assert len(seen) == 1 and seen[0][0] is train_img and seen[0][1] is train_tab
    start = copy.deepcopy(model)
    reinitialise_owners(start, parameter_owners(start, ""), 3, None)
    permuted = train_y[torch.randperm(10, generator=torch.Generator().manual_seed(3))]
    expected = (start(train_img, train_tab).argmax(1) == permuted).double().mean().item()
    assert result.info["training accuracy, permuted labels"] == round(expected, 4)
    g_img, g_tab = gradients(start, (img, tab), y)
    o_img, o_tab = gradients(model, (img, tab), y)
    by_hand = spearman(torch.cat([o_img.sum(1).flatten(1), o_tab], 1), torch.cat([g_img.sum(1).flatten(1), g_tab], 1))
    same(result["spearman"][0], by_hand.to(DT))
    with pytest.raises(TypeError, match="default trainer.*one input tensor.*train_fn="):
        label_randomisation(model, (img, tab), "gradient", y, train_data=((train_img, train_tab), train_y),
                            train_options=TRAINING)


# -- class sensitivity ---------------------------------------------------------------------------------------------
def test_forward_arguments_follow_the_rows_of_class_sensitivity():
    model, x, mask, y = masked()
    kw = {"reduce": None, "aggregate": None, "method_options": {"steps": 3, "batch_size": 4}}
    batched = class_sensitivity(model, x, "integrated_gradients", y, forward_args=(mask,), **kw)
    assert batched.shape == (5, 3)
    for i in range(x.shape[0]):
        alone = class_sensitivity(model, x[i:i + 1], "integrated_gradients", y[i:i + 1], forward_args=(mask[i:i + 1],),
                                  **kw)
        same(batched[i:i + 1], alone)
    for i in range(x.shape[0]):  # a closure over one sample's mask is the same model
        closure = class_sensitivity(lambda t, m=mask[i:i + 1]: model(t, m), x[i:i + 1], "integrated_gradients",
                                    y[i:i + 1], **kw)
        same(batched[i:i + 1], closure)


def test_class_sensitivity_of_two_inputs(n=4):
    model, img, tab, y = two_inputs(n=4)
    a = class_sensitivity(model, (img, tab), "gradient", y, input_index=0, aggregate=None)
    b = class_sensitivity(model, img, "gradient", y, forward_kwargs={"table": tab}, aggregate=None)
    same(a, b)
    packed = class_sensitivity(model, (img, tab), "gradient", y, others=[1])
    own = torch.cat([t.flatten(1) for t in _maps(model, img, tab, y)], 1)
    other = torch.cat([t.flatten(1) for t in _maps(model, img, tab, torch.ones_like(y))], 1)
    expected = spearman(own, other).to(DT)
    expected[y == 1] = float("nan")  # the sample's own class is no comparison
    same(packed, expected)


def _maps(model, img, tab, target):
    g_img, g_tab = gradients(model, (img, tab), target)
    return g_img.sum(1), g_tab


def test_class_sensitivity_reads_the_selected_output():
    pytest.importorskip("transformers")
    x, y = small_data()
    same(class_sensitivity(HFLike().to(DT).eval(), x, "gradient", y, aggregate=None),
         class_sensitivity(Base().to(DT).eval(), x, "gradient", y, aggregate=None), atol=0)


# -- alignment -------------------------------------------------------------------------------------------------
def test_alignment_of_two_inputs_by_hand():
    model, img, tab, y = two_inputs(n=4)
    g_img, g_tab = gradients(model, (img, tab), y)
    x = torch.cat([img.flatten(1), tab], 1)
    g = torch.cat([g_img.flatten(1), g_tab], 1)
    same(alignment(model, (img, tab), y), (x * g).sum(1).abs() / g.norm(dim=1))
    same(cosine_alignment(model, (img, tab), y), (x * g).sum(1).abs() / (g.norm(dim=1) * x.norm(dim=1)))
    same(alignment(model, (img, tab), y, input_index=1), (tab * g_tab).sum(1).abs() / g_tab.norm(dim=1))
    same(alignment(model, (img, tab), y, input_index=0), alignment(model, img, y, forward_args=(tab,)), atol=0)


# -- ROAR ----------------------------------------------------------------------------------------------------------
def test_roar_with_a_constant_argument_and_a_structured_output_equals_the_plain_model():
    x, y = small_data(30, seed=1)
    train, test = (x[:20], y[:20]), (x[20:], y[20:])
    kw = {"fractions": (0.4,), "train_options": TRAINING, "progress": False, "mode": "both"}
    plain = roar(Base().to(DT).eval(), train, test, ["gradient"], **kw)
    fixed = roar(DictWithFactor().to(DT).eval(), train, test, ["gradient"], output="logits",
                 forward_args=(tribute.constant(torch.tensor(2.0, dtype=DT)),), **kw)
    assert fixed.accuracy == plain.accuracy and fixed.original == plain.original
    assert fixed.reference == plain.reference
    with pytest.raises(ValueError, match=r"roar: forward_args\[0\] is a tensor.*tribute.constant"):
        roar(DictWithFactor().to(DT).eval(), train, test, ["gradient"], forward_args=(torch.ones(20, dtype=DT),),
             **kw)
    with pytest.raises(TypeError, match="train_data: the inputs are a tuple of 2.*not supported"):
        roar(Base().to(DT).eval(), ((x[:20], x[:20]), y[:20]), test, ["gradient"], **kw)


# -- functions as models, plain callables, bad input ------------------------------------------------------------
def test_a_train_mode_model_behind_a_lambda_is_refused_unchanged():
    net = randomise_bn(ResidualCNN()).to(DT).train()
    before = {k: v.clone() for k, v in net.named_buffers()}
    x = torch.rand(2, 3, 8, 8, dtype=DT)
    for check in (lambda m: class_sensitivity(m, x, "gradient"), lambda m: alignment(m, x),
                  lambda m: class_sensitivity(m, x, "gradient", target=1)):
        with pytest.raises(TrainModeError, match="nothing has changed"):
            check(lambda t: net(t))  # noqa: PLW0108
        assert all(torch.equal(before[k], v) for k, v in net.named_buffers())
    with pytest.raises(TypeError, match="must be an nn.Module; a function"):
        parameter_randomisation(lambda t: net(t), x, "gradient")  # noqa: PLW0108
    assert all(torch.equal(before[k], v) for k, v in net.named_buffers())


def test_a_plain_callable_method_cannot_take_forward_arguments():
    model, x, mask, y = masked()

    def method(m, inputs, target):
        return tribute.explain(m, inputs, "gradient", target=target)

    for run in (lambda: parameter_randomisation(model, x, method, y, forward_args=(mask,)),
                lambda: class_sensitivity(model, x, method, y, forward_args=(mask,)),
                lambda: alignment(model, x, y, method=method, forward_args=(mask,))):
        with pytest.raises(TypeError, match=r"plain callable.*forward_args.*bind them in the callable"):
            run()
    # bound in the callable, it works, and equals the tribute method given the argument
    given = class_sensitivity(model, x, "gradient", y, forward_args=(mask,))
    for i in range(x.shape[0]):  # the batch is repeated once per class: the closure's mask is repeated too
        m = mask[i:i + 1]
        bound = class_sensitivity(lambda t, m=m: model(t, m.expand(t.shape[0], -1)), x[i:i + 1],
                                  lambda net, inputs, t: tribute.explain(net, inputs, "gradient", target=t), y[i:i + 1])
        same(bound, given[i:i + 1])


def test_bad_inputs_raise_clear_errors():
    model, img, tab, y = two_inputs(n=4)
    with pytest.raises(ValueError, match="disagree in their number of samples"):
        parameter_randomisation(model, (img, tab[:3]), "gradient", y)
    with pytest.raises(ValueError, match="disagree in their number of samples"):
        class_sensitivity(model, (img, tab[:3]), "gradient", y)
    with pytest.raises(ValueError, match="disagree in their number of samples"):
        alignment(model, (img, tab[:3]), y)
    with pytest.raises(ValueError, match=r"forward_args\[0\].*\(3, 4\).*N = 4.*tribute.constant"):
        class_sensitivity(model, img, "gradient", y, forward_args=(tab[:3],))
    with pytest.raises(ValueError, match=r"forward_kwargs\['table'\].*N = 4"):
        parameter_randomisation(model, img, "gradient", y, forward_kwargs={"table": tab[:3]})
    with pytest.raises(ValueError, match=r"input_index must be an integer in \[0, 2\)"):
        class_sensitivity(model, (img, tab), "gradient", y, input_index=2)
    with pytest.raises(ValueError, match=r"input_index must be an integer in \[0, 2\)"):
        alignment(model, (img, tab), y, input_index=5)
    with pytest.raises(ValueError, match="inputs is empty"):
        class_sensitivity(model, (img[:0], tab[:0]), "gradient")


# -- token ids -----------------------------------------------------------------------------------------------------
class TokenModel(nn.Module):
    """Embeddings, masked mean pooling, a linear head: a tiny sequence classifier over token ids."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.emb = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids, attention_mask):
        h = torch.tanh(self.emb(ids)) * attention_mask.unsqueeze(-1)
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))


def test_token_ids_through_a_layer_method_follow_their_masks():
    model = TokenModel().to(DT).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 11, (4, 6), generator=g)
    mask = (torch.arange(6) < torch.tensor([6, 2, 4, 5])[:, None]).to(DT)
    ids = torch.where(mask > 0, ids, torch.zeros_like(ids))
    y = torch.tensor([0, 1, 2, 0])
    options = {"layer": "emb", "steps": 4, "reduce": "sum", "baseline_token": 0}
    kw = {"method_options": options, "aggregate": None}
    batched = class_sensitivity(model, ids, "layer_integrated_gradients", y, forward_kwargs={"attention_mask": mask},
                                **kw)
    sanity = parameter_randomisation(model, ids, "layer_integrated_gradients", y, method_options=options,
                                     forward_kwargs={"attention_mask": mask})
    assert sanity.steps == ("head", "emb")
    for i in range(4):
        one = {"forward_kwargs": {"attention_mask": mask[i:i + 1]}}
        same(batched[i:i + 1], class_sensitivity(model, ids[i:i + 1], "layer_integrated_gradients", y[i:i + 1],
                                                 **one, **kw))
        same(sanity.scores[..., i:i + 1], parameter_randomisation(model, ids[i:i + 1], "layer_integrated_gradients",
                                                                   y[i:i + 1], method_options=options, **one).scores)
    with pytest.raises(TypeError, match="token ids cannot be attributed at the input.*layer method"):
        class_sensitivity(model, ids, "integrated_gradients", y, forward_kwargs={"attention_mask": mask})
