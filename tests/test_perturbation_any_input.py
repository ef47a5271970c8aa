"""Perturbation methods take every input the contract takes (issue 14): token ids with an attention mask (groups
of tokens replaced by a baseline token), several inputs with groups that span them, structured outputs, and the
metrics and ``evaluate()``.  Each result is compared with the definition evaluated by hand, pass by pass."""

from __future__ import annotations

import pytest
import torch
from conftest import text_batch, text_model, two_inputs

import tribute


def _drop(x: torch.Tensor, keep: torch.Tensor, baseline) -> torch.Tensor:
    return torch.where(keep, x, torch.as_tensor(baseline, dtype=x.dtype).expand_as(x))


def test_feature_ablation_on_bert_token_ids_replaces_each_token_by_the_baseline_token():
    model = text_model("bert")
    ids, mask = text_batch(3, 7)
    pad = 0
    e = tribute.FeatureAblation(model)
    a = e(ids, target=1, baseline=pad, forward_kwargs={"attention_mask": mask})
    assert a.shape == ids.shape and a.dtype == torch.float64  # token ids in, scores out
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits[:, 1]
        for t in range(ids.shape[1]):
            keep = torch.ones_like(ids, dtype=torch.bool)
            keep[:, t] = False
            dropped = model(input_ids=_drop(ids, keep, pad), attention_mask=mask).logits[:, 1]
            expected = torch.where(ids[:, t] == pad, 0.0, full - dropped)  # a pad token replaced by pad: no change
            torch.testing.assert_close(a[:, t], expected, rtol=1e-10, atol=1e-12)
    assert e.passes.forward_rows == 3 + 3 * 7 and e.passes.backward_rows == 0


def test_feature_ablation_with_token_groups_on_gpt2():
    model = text_model("gpt2")
    ids, mask = text_batch(2, 8)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])  # e.g. words of several tokens
    a = tribute.explain(model, ids, "feature_ablation", target=2, baseline=0, feature_mask=groups,
                        forward_kwargs={"attention_mask": mask})
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits[:, 2]
        for g in range(3):
            keep = (groups != g).expand_as(ids)
            dropped = model(input_ids=_drop(ids, keep, 0), attention_mask=mask).logits[:, 2]
            moved = (ids[:, groups == g] != 0).any(1)
            torch.testing.assert_close(a[:, groups == g], torch.where(moved, full - dropped, 0.0)[:, None]
                                       .expand(-1, int((groups == g).sum())), rtol=1e-10, atol=1e-12)


def test_a_group_spanning_two_inputs_is_removed_from_both_at_once():
    model, img, tab, _ = two_inputs(3)
    image_mask = torch.zeros(1, 2, 6, 6, dtype=torch.long)
    image_mask[..., 3:] = 1  # right half of the image: group 1
    table_mask = torch.tensor([[1, 1, 2, 3]])  # the first two columns join the image's group 1
    e = tribute.FeatureAblation(model)
    ai, at = e((img, tab), target=0, feature_mask=(image_mask, table_mask))
    with torch.no_grad():
        full = model(img, tab)[:, 0]
        keep_img = (image_mask != 1).expand_as(img)
        keep_tab = (table_mask != 1).expand_as(tab)
        joint = full - model(_drop(img, keep_img, 0.0), _drop(tab, keep_tab, 0.0))[:, 0]
        alone = full - model(img, _drop(tab, (table_mask != 3).expand_as(tab), 0.0))[:, 0]
    torch.testing.assert_close(ai[:, :, :, 4], joint[:, None, None].expand(-1, 2, 6))
    torch.testing.assert_close(at[:, 0], joint)
    torch.testing.assert_close(at[:, 3], alone)
    si, st = e.segments
    assert si.shape == img.shape and st.shape == tab.shape
    assert int(si[0, 0, 0, 5]) == int(st[0, 0]) and len(torch.unique(torch.cat([si.flatten(), st.flatten()]))) == 4


def test_an_input_without_a_mask_has_each_feature_alone_and_never_joins_a_masked_group():
    model, img, tab, _ = two_inputs(2)
    image_mask = torch.zeros(1, 1, 6, 6, dtype=torch.long)  # the whole image one group, label 0
    e = tribute.FeatureAblation(model)
    e((img, tab), target=1, feature_mask=(image_mask, None))
    si, st = e.segments
    assert torch.equal(torch.unique(si), torch.tensor([0])) and torch.equal(st[0], torch.tensor([1, 2, 3, 4]))


def test_several_inputs_need_a_mask_per_input():
    model, img, tab, _ = two_inputs(2)
    with pytest.raises(ValueError, match="tuple with one mask"):
        tribute.explain(model, (img, tab), "feature_ablation", target=0, feature_mask=torch.zeros(6, 6).long())


def test_structured_outputs_pick_the_scores():
    class DictNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 3)

        def forward(self, x):
            return {"aux": x.sum(1), "logits": self.lin(x)}

    torch.manual_seed(0)
    net = DictNet().double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    a = tribute.explain(net, x, "feature_ablation", target=2)
    torch.testing.assert_close(a, net.lin.weight[2] * x)  # linear: the lost score is w_i x_i
    b = tribute.explain(net, x, "feature_ablation", target=lambda out: out, output="aux")
    torch.testing.assert_close(b, x)


def test_evaluate_scores_a_perturbation_method_and_counts_its_forward_passes():
    model, img, tab, labels = two_inputs(4)
    table = tribute.evaluate(model, ((img, tab), labels), methods=["feature_ablation", "gradient"],
                             metrics=["deletion"], progress=False, batch_size=2)
    scores = table["feature_ablation", "deletion"]
    assert scores.shape == (4,) and bool(torch.isfinite(scores).all())
    # each sample: one clean pass, then one pass per feature (2 × 6 × 6 image features and 4 table columns)
    assert table.forward_rows["feature_ablation"] == 4 * (1 + 2 * 36 + 4)
    assert table.backward_rows["feature_ablation"] == 0


def test_a_number_as_baseline_keeps_float64_precision():
    net = torch.nn.Linear(3, 2).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    a = tribute.explain(net, x, "feature_ablation", target=0, baseline=0.4)
    torch.testing.assert_close(a, net.weight[0] * (x - 0.4), rtol=1e-13, atol=1e-15)  # 0.4 is not a float32
