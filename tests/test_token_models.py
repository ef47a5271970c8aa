"""Token models (issue 12): Hugging Face BERT and GPT-2 (small random configs, nothing downloaded).

Token ids have no gradient: layer methods attribute at the embedding's output, with the attention mask as
a per-sample forward argument and a baseline made of token ids.  Checked: layer IG equals Captum's
``LayerIntegratedGradients`` with ``additional_forward_args``; completeness at the embedding; a padded batch
with a [MASK] baseline equals the same sequences run one at a time without padding; errors that point to
the layer route.
"""

from __future__ import annotations

import pytest
import torch

import tribute

transformers = pytest.importorskip("transformers")

DT = torch.float64
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(35)]]
PAD, UNK, CLS, SEP, MASK = range(5)


def _bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config).to(DT).eval()


def _gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=len(VOCAB), n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                     num_labels=3, pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP)
    return transformers.GPT2ForSequenceClassification(config).to(DT).eval()


def _tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return transformers.BertTokenizer(vocab_file=str(vocab))


def _sentences():
    """Three sentences of 9, 6 and 4 tokens ([CLS] … [SEP]), right-padded into one batch with its mask."""
    g = torch.Generator().manual_seed(4)
    lengths = (9, 6, 4)
    sentences = [torch.cat([torch.tensor([CLS]), torch.randint(5, len(VOCAB), (n - 2,), generator=g),
                            torch.tensor([SEP])]) for n in lengths]
    ids = torch.full((3, 9), PAD)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return sentences, ids, mask


EMBEDDINGS = {"bert": "bert.embeddings.word_embeddings", "gpt2": "transformer.wte"}
MODELS = {"bert": _bert, "gpt2": _gpt2}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_layer_integrated_gradients_at_the_embeddings_equals_captums(arch):
    captum = pytest.importorskip("captum.attr")
    model, (_, ids, mask) = MODELS[arch](), _sentences()
    reference = torch.full_like(ids, UNK)
    layer = model.get_submodule(EMBEDDINGS[arch])
    theirs = captum.LayerIntegratedGradients(lambda i, m: model(i, attention_mask=m).logits, layer).attribute(
        ids, baselines=reference, additional_forward_args=(mask,), target=1, n_steps=16, method="gausslegendre")
    ours = tribute.explain(model, ids, "layer_integrated_gradients", layer=EMBEDDINGS[arch], target=1, steps=16,
                           baseline=reference, forward_kwargs={"attention_mask": mask})
    # Captum's Gauss-Legendre nodes and weights are float32 (see test_reference_captum): agreement to their rounding
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_layer_integrated_gradients_is_complete_at_the_embeddings(arch):
    model, (_, ids, mask) = MODELS[arch](), _sentences()
    per_token = tribute.explain(model, ids, "layer_integrated_gradients", layer=EMBEDDINGS[arch], target=2, steps=64,
                                baseline_token=UNK, keep_tokens=(PAD,), forward_kwargs={"attention_mask": mask},
                                reduce="sum")
    assert per_token.shape == ids.shape
    # the baseline replaces every token but padding by [UNK]; padding stays, so GPT-2's classifier, which reads
    # the last token that is not padding off the ids, reads the same position at both ends of the path
    reference = torch.where(ids == PAD, ids, torch.full_like(ids, UNK))
    with torch.no_grad():
        gain = (model(ids, attention_mask=mask).logits[:, 2] - model(reference, attention_mask=mask).logits[:, 2])
    torch.testing.assert_close(per_token.sum(1), gain, rtol=1e-7, atol=1e-9)


def test_a_padded_batch_equals_each_sentence_alone_with_a_mask_token_baseline(tmp_path):
    model, tokenizer = _bert(), _tokenizer(tmp_path)
    sentences, ids, mask = _sentences()
    options = {"layer": EMBEDDINGS["bert"], "target": 0, "steps": 16, "baseline_token": "mask",
               "tokenizer": tokenizer, "reduce": "sum"}
    batch = tribute.explain(model, ids, "layer_integrated_gradients", forward_kwargs={"attention_mask": mask},
                            **options)
    for i, s in enumerate(sentences):
        alone = tribute.explain(model, s[None], "layer_integrated_gradients", **options)
        torch.testing.assert_close(batch[i, :len(s)], alone[0], rtol=1e-9, atol=1e-11)
        # padding stays padding in the baseline (a special token): nothing to attribute there
        assert float(batch[i, len(s):].abs().sum()) == 0.0
        # [CLS] and [SEP] are kept too
        assert float(batch[i, 0]) == 0.0 and float(batch[i, len(s) - 1]) == 0.0


def test_the_token_baseline_keeps_special_tokens_and_replaces_the_rest(tmp_path):
    from tribute.core.tokens import special_ids, token_baseline, token_id

    tokenizer = _tokenizer(tmp_path)
    ids = torch.tensor([[CLS, 9, 12, SEP, PAD]])
    kept = special_ids(tokenizer, None)
    assert set(kept) == {PAD, UNK, CLS, SEP, MASK}
    assert token_baseline(ids, token_id("mask", tokenizer), kept).tolist() == [[CLS, MASK, MASK, SEP, PAD]]
    assert token_baseline(ids, 7, ()).tolist() == [[7] * 5]
    with pytest.raises(ValueError, match="pass tokenizer="):
        token_id("mask", None)


def test_input_level_methods_on_token_ids_point_to_the_layer_route():
    model, (_, ids, mask) = _bert(), _sentences()
    with pytest.raises(TypeError, match="token ids cannot be attributed at the input.*layer_integrated_gradients"):
        tribute.explain(model, ids, "integrated_gradients", target=0, forward_kwargs={"attention_mask": mask})


def test_a_pixel_baseline_on_token_ids_is_refused():
    model, (_, ids, mask) = _bert(), _sentences()
    with pytest.raises(ValueError, match="baseline='blur'.*baseline_token="):
        tribute.explain(model, ids, "layer_integrated_gradients", layer=EMBEDDINGS["bert"], target=0,
                        baseline="blur", forward_kwargs={"attention_mask": mask})


def test_a_train_mode_hugging_face_model_is_refused():
    model = _bert().train()
    _, ids, mask = _sentences()
    with pytest.raises(ValueError, match="train mode"):
        tribute.explain(model, ids, "layer_gradient", layer=EMBEDDINGS["bert"], target=0,
                        forward_kwargs={"attention_mask": mask})


def test_the_readme_example_runs():
    # the five lines of the README's "Token models" section, on a random BERT
    model, (_, ids, mask) = _bert(), _sentences()
    scores = tribute.explain(model, ids, "layer_integrated_gradients", layer="bert.embeddings.word_embeddings",
                             forward_kwargs={"attention_mask": mask}, baseline_token=UNK, reduce="sum")
    assert scores.shape == ids.shape
    predicted = model(ids, attention_mask=mask).logits.argmax(1)
    again = tribute.explain(model, ids, "layer_integrated_gradients", layer="bert.embeddings.word_embeddings",
                            forward_kwargs={"attention_mask": mask}, baseline_token=UNK, reduce="sum",
                            target=predicted)
    torch.testing.assert_close(scores, again, rtol=0, atol=0)
