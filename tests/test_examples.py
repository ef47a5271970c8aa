"""The README's Python snippets and ``examples/quickstart.py``, run as written, each checked on its mathematics.

Every code line of a ``python`` block in README.md appears verbatim in this file or in the example (checked by the
last test), so a snippet that stops running, or is edited here without the README, fails.  The models are small and
random (the README's ``model``, ``images``, ``labels``, ``table``, ``tokenizer`` stand for the reader's own); the
quickstart runs the real pretrained EfficientNet-Lite0 of the demo extra.
"""

from __future__ import annotations

import copy
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import tribute

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART = ROOT / "examples" / "quickstart.py"


class Net(nn.Module):
    """conv-ReLU, strided conv-ReLU, global average pooling, linear: (3, 32, 32) images → 10 classes."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class TwoInputs(nn.Module):
    """An image and a table of 4 features per sample → {"logits": 10 scores}; the table may be one row for all."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.image = Net(2)
        self.table = nn.Sequential(nn.Linear(4, 10), nn.Tanh())

    def forward(self, images, table):
        return {"logits": self.image(images) * (1 + self.table(table))}


def data(n: int = 8):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return images, labels, torch.randn(n, 4, generator=g)


def gain(model, x, base, target) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[torch.arange(len(x)), target] - model(base)[torch.arange(len(x)), target]


# -- Ten lines: examples/quickstart.py -----------------------------------------------------------------------------

def test_the_quickstart_explains_the_cat_and_writes_its_figure(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("matplotlib")
    out = tmp_path / "docs" / "figures" / "quickstart.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, str(QUICKSTART)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=1800)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("tiger cat: integrated_gradients, gradcam, smoothgrad")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_committed_quickstart_figure_is_a_small_png():
    png = ROOT / "docs" / "figures" / "quickstart.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 200_000


# -- Explain an image classifier ------------------------------------------------------------------------------------

def test_explain_an_image_classifier():
    model, (images, _, _) = Net().eval(), data()
    ig = tribute.explain(model, images, "integrated_gradients", target=3, tolerance=0.01)   # (N, 3, H, W)
    cam = tribute.explain(model, images, "gradcam")                     # (N, 1, H, W); target: the predicted class
    lrp = tribute.explain(model, images, "lrp", composite="epsilon_plus")
    why_3_not_5 = tribute.explain(model, images, "gradient", target=lambda out: out[:, 3] - out[:, 5])
    smoothgrad = tribute.SmoothGrad(model, samples=50, noise_level=0.15, seed=0)   # options once, many batches
    maps = torch.cat([smoothgrad.attribute(batch) for batch in images.split(4)])

    # tolerance=0.01: every sample's completeness gap within 1 % of its gain S(x) − S(0)
    delta = gain(model, images, torch.zeros_like(images), torch.full((8,), 3))
    assert ((ig.flatten(1).sum(1) - delta).abs() <= 0.01 * delta.abs()).all()
    predicted = model(images).argmax(1)
    assert cam.shape == (8, 1, 32, 32)
    torch.testing.assert_close(cam, tribute.explain(model, images, "gradcam", target=predicted))
    assert lrp.shape == images.shape and torch.isfinite(lrp).all()
    # the gradient is linear in the score: ∂(S_3 − S_5)/∂x = ∂S_3/∂x − ∂S_5/∂x
    torch.testing.assert_close(why_3_not_5, tribute.explain(model, images, "gradient", target=3)
                               - tribute.explain(model, images, "gradient", target=5), rtol=1e-5, atol=1e-6)
    # per-sample noise streams: the batches of 4 give the attributions of the whole batch
    torch.testing.assert_close(maps, smoothgrad.attribute(images), rtol=1e-5, atol=1e-7)


def test_expected_gradients_takes_references_and_refuses_the_old_spelling():
    model, (images, _, _) = Net().eval(), data()
    eg = tribute.explain(model, images, "expected_gradients", target=1, references=images.flip(0), samples=8, seed=0)
    assert eg.shape == images.shape
    with pytest.raises(TypeError, match=r"references="):
        tribute.explain(model, images, "expected_gradients", target=1, baselines=images.flip(0), samples=8, seed=0)


# -- Explain a text classifier ----------------------------------------------------------------------------------------

def test_explain_a_text_classifier(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tribute.viz import token_text

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "gripping", ",", "moving", "film", "dull"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)

    batch = tokenizer(["a gripping, moving film", "dull"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    per_token = tribute.explain(model.eval(), ids, "layer_integrated_gradients",
                                layer="bert.embeddings.word_embeddings", forward_kwargs={"attention_mask": mask},
                                baseline_token="mask", tokenizer=tokenizer, reduce="sum")          # (N, T)
    print(token_text(tokenizer.convert_ids_to_tokens(ids[0]), per_token[0]))   # coloured in a terminal

    assert per_token.shape == ids.shape == (2, 7)
    # the short sentence alone, unpadded, gets the values it gets in the padded batch; padding and [CLS]/[SEP] get 0
    alone = tribute.explain(model, ids[1:, :3], "layer_integrated_gradients", layer="bert.embeddings.word_embeddings",
                            baseline_token="mask", tokenizer=tokenizer, reduce="sum")
    torch.testing.assert_close(per_token[1, :3], alone[0], rtol=1e-4, atol=1e-6)
    assert float(per_token[1, 3:].abs().sum()) == 0.0 and float(per_token[:, 0].abs().sum()) == 0.0


# -- Explain a model with several inputs -----------------------------------------------------------------------------

def test_explain_a_model_with_several_inputs():
    model, (images, _, table) = TwoInputs().eval(), data()
    a_img, a_tab = tribute.explain(model, (images, table), "integrated_gradients", target=3,
                                   baseline=("blur", "zero"))                 # one entry per input, or one for all
    a = tribute.explain(model, images, "deeplift", forward_kwargs={"table": table})   # held, one row per sample
    # completeness over the two inputs jointly: Σ φ_img + Σ φ_tab = S(x, t) − S(blur(x), 0)
    from tribute.core.baselines import make_baseline

    with torch.no_grad():
        delta = (model(images, table)["logits"][:, 3]
                 - model(make_baseline("blur", images), torch.zeros_like(table))["logits"][:, 3])
    torch.testing.assert_close(a_img.flatten(1).sum(1) + a_tab.sum(1), delta, rtol=2e-3, atol=2e-4)
    # a per-sample forward argument: sample i meets its own row of the table, in a batch as alone
    for i in (0, 5):
        alone = tribute.explain(model, images[i:i + 1], "deeplift", forward_kwargs={"table": table[i:i + 1]})
        torch.testing.assert_close(a[i:i + 1], alone, rtol=1e-5, atol=1e-7)

    a = tribute.explain(model, images, "gradient", forward_args=(tribute.constant(table[0]),))  # same for all
    torch.testing.assert_close(a, tribute.explain(lambda x: model(x, table[:1].expand(len(x), -1)), images, "gradient"))
    a = tribute.explain(model, (images, table), "saliency", output=lambda out: out["logits"])
    # without output=, the scores are the "logits" field
    for mine, default in zip(a, tribute.explain(model, (images, table), "saliency"), strict=True):
        torch.testing.assert_close(mine, default, rtol=0, atol=0)


# -- Evaluate explanations ------------------------------------------------------------------------------------------

def test_evaluate_explanations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, (images, labels, _) = Net().eval(), data()
    table = tribute.evaluate(model, (images, labels), methods=["gradient", "integrated_gradients", "random"],
                             metrics=["aopc_morf", "deletion", "infidelity", "max_sensitivity"], seed=0)
    print(table)
    table.to_csv("scores.csv")

    assert table.better == {"aopc_morf": "higher", "deletion": "lower", "infidelity": "lower",
                            "max_sensitivity": "lower"}
    assert len((tmp_path / "scores.csv").read_text().strip().splitlines()) == 1 + 3
    # a sample's score never depends on its batch-mates: the first three alone score as in the whole set
    first = tribute.evaluate(model, (images[:3], labels[:3]), methods=["gradient", "integrated_gradients", "random"],
                             metrics=["aopc_morf", "deletion", "infidelity", "max_sensitivity"], seed=0,
                             progress=False)
    for key, scores in first.scores.items():
        torch.testing.assert_close(torch.as_tensor(scores), torch.as_tensor(table.scores[key])[:3])


# -- Attack and harden ----------------------------------------------------------------------------------------------

def test_attack_and_harden():
    from tribute.robust import adversarial_train, pgd, topk_attack

    model, (images, labels, _) = Net().eval(), data()
    x_adv = pgd(model, images, labels, norm="linf", eps=8 / 255, step_size=2 / 255, steps=10, bounds=(0, 1))
    assert (x_adv - images).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():  # the attack raises the loss it ascends
        ce = nn.functional.cross_entropy
        assert ce(model(x_adv), labels) > ce(model(images), labels)

    x_fool = topk_attack(model, images, k=20, eps=8 / 255, steps=20, bounds=(0, 1))  # same label, other map
    assert (x_fool - images).abs().max() <= 8 / 255 + 1e-6
    assert torch.equal(model(x_fool).argmax(1), model(images).argmax(1))

    before = copy.deepcopy(model)
    history = adversarial_train(model, (images, labels), norm="l2", eps=0.5, steps=3, bounds=(0, 1), epochs=2,
                                lr=0.05)                                      # Madry et al. 2018, in place
    assert len(history) == 2 and not model.training
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters(), strict=True))


# -- A model that explains itself -----------------------------------------------------------------------------------

def test_a_model_that_explains_itself():
    from tribute.explainers import AlignedExplainer, train_aligned

    model, robust_twin, (images, labels, _) = Net(0).eval(), Net(1).eval(), data()
    frozen = copy.deepcopy(model.state_dict())
    wrapper = AlignedExplainer(model, input_shape=(3, 32, 32))
    train_aligned(wrapper, (images, labels), epochs=1, lr=0.01, mode="head", twin=robust_twin)  # classifier frozen
    maps = tribute.explain(wrapper.eval(), images, "aligned")                # one forward pass

    for name, value in model.state_dict().items():  # mode="head": only the head learns
        assert torch.equal(value, frozen[name]), name
    with torch.no_grad():
        torch.testing.assert_close(maps, wrapper(images)["attribution"])
    assert maps.shape[0] == 8 and maps.shape[-2:] == (32, 32)


# -- Scale out ---------------------------------------------------------------------------------------------------------

def test_scale_out(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    from tribute.store import compute_store, open_store

    monkeypatch.chdir(tmp_path)
    model, (images, labels, _) = Net().eval(), data()
    store = compute_store("runs/ig", model, (images, labels), "integrated_gradients", chunk_size=256, batch_size=64,
                          steps=32)
    store = open_store("runs/ig")  # a shard is checked against its SHA-256 when read
    first, block, classes = store[0], store.attributions(0, 8), store.targets()

    direct = tribute.explain(model, images, "integrated_gradients", steps=32)
    torch.testing.assert_close(block, direct, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(first, direct[0], rtol=1e-6, atol=1e-7)
    assert torch.equal(classes, model(images).argmax(1))


# -- Plotting and the report ----------------------------------------------------------------------------------------

def test_plotting(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from tribute.viz import method_grid

    monkeypatch.chdir(tmp_path)
    model, (images, _, _) = Net().eval(), data(2)
    ig = tribute.explain(model, images, "integrated_gradients", steps=16)
    cam = tribute.explain(model, images, "gradcam")
    method_grid(images, {"integrated_gradients": ig, "gradcam": cam}, None, "figure.png")   # one row per image
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_of_a_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    pytest.importorskip("jinja2")
    from tribute.store import compute_store

    monkeypatch.chdir(tmp_path)
    model, (images, labels, _) = Net().eval(), data()
    compute_store("runs/ig", model, (images, labels), "integrated_gradients", chunk_size=256, batch_size=64, steps=32)
    tribute.report("runs/ig")  # runs/ig/report.html: a store's directory is a run directory too
    page = (tmp_path / "runs" / "ig" / "report.html").read_text()
    assert "<html" in page.lower() and "integrated_gradients" in page


# -- The README's snippets are the ones run here ---------------------------------------------------------------------

def code_lines(block: str) -> list[str]:
    """The code of a snippet, line by line: stripped, without trailing comments and blank lines."""
    out = []
    for line in block.splitlines():
        code = re.sub(r"\s{2,}#.*$", "", line).strip()  # a trailing comment: two spaces, then #
        if code and not code.startswith("#"):
            out.append(code)
    return out


def test_every_line_of_the_readmes_python_snippets_is_run_here_or_in_the_quickstart():
    run_here = {line for text in (pathlib.Path(__file__).read_text(), QUICKSTART.read_text())
                for line in code_lines(text)}
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 9
    missing = [line for block in blocks for line in code_lines(block) if line not in run_here]
    assert not missing, f"README lines not run by tests/test_examples.py or examples/quickstart.py: {missing}"
