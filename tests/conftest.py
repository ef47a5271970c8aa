"""Small models shared by the tests: the same architecture written in several ways."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_support import OnEmbeddings, realistic_state  # noqa: F401 (the tests import them from here)

import tribute

# The test models are tiny: one intra-op thread avoids oversubscribing the cores (pytest-xdist runs a
# worker per core), which otherwise makes each pass hundreds of times slower.
torch.set_num_threads(1)

RELU_STYLES = ("modules", "inplace_reused", "functional", "method")


class ResidualCNN(nn.Module):
    """conv-BN-ReLU, a residual block, max-free pooling, linear head; the ReLU written as ``style``.

    ``style``: separate ``nn.ReLU`` modules, one reused ``nn.ReLU(inplace=True)`` (torchvision's
    ResNet blocks), ``F.relu`` or ``Tensor.relu``.  All four compute the same function.
    """

    def __init__(self, style: str = "modules", classes: int = 5, channels: int = 6, bias: bool = True):
        super().__init__()
        self.style = style
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.fc = nn.Linear(channels * 4, classes, bias=bias)
        self.relu_a, self.relu_b, self.relu_c = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.relu = nn.ReLU(inplace=True)

    def act(self, x: torch.Tensor, which: str) -> torch.Tensor:
        if self.style == "modules":
            return getattr(self, "relu_" + which)(x)
        if self.style == "inplace_reused":
            return self.relu(x)
        if self.style == "functional":
            return F.relu(x)
        return x.relu()

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)), "a")
        r = h
        h = self.act(self.conv2(h), "b")
        h = self.act(self.conv3(h) + r, "c")
        h = F.avg_pool2d(h, 4)
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch-norm layers non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def residual_cnns(dtype=torch.float64, seed: int = 0, **kw) -> dict[str, nn.Module]:
    """The four ways of writing the same network, with identical weights, in eval mode."""
    torch.manual_seed(seed)
    ref = randomise_bn(ResidualCNN("modules", **kw), seed)
    nets = {}
    for style in RELU_STYLES:
        net = ResidualCNN(style, **kw)
        net.load_state_dict(ref.state_dict())
        nets[style] = net.to(dtype).eval()
    return nets


class MLP(nn.Module):
    """A small fully connected network with a chosen nonlinearity (as a module)."""

    def __init__(self, sizes=(6, 8, 8, 3), act: type[nn.Module] = nn.ReLU, bias: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(sizes) - 2:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def mlp(act=nn.ReLU, bias=True, seed=0, sizes=(6, 8, 8, 3), dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(sizes, act, bias).to(dtype).eval()


@pytest.fixture
def cnns():
    return residual_cnns()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)


def fixture_module(folder: str, name: str = "model"):
    """Import ``tests/fixtures/<folder>/<name>.py`` under a name of its own (several fixtures have a model.py)."""
    path = Path(__file__).parent / "fixtures" / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tribute_fixture_{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fashion_fixture(n: int | None = None, dtype: torch.dtype = torch.float32):
    """The committed Fashion-MNIST CNN (tests/fixtures/fashion, eval mode) in ``dtype``, and the first ``n`` of its
    stored held-out images (in [0, 1]) and their labels."""
    module = fixture_module("fashion")
    images, labels = module.samples()
    return module.load().to(dtype), images[:n].to(dtype), labels[:n]


# -- models with several inputs (issue 12) ---------------------------------------------------------------------------
class ImageAndTable(nn.Module):
    """A convolutional branch for an image (N, 2, 6, 6) and a dense branch for a table (N, 4), merged by a linear
    head; ``act`` is the nonlinearity of both branches."""

    def __init__(self, act=F.relu, classes: int = 3):
        super().__init__()
        self.act = act
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.dense = nn.Linear(4, 5)
        self.head = nn.Linear(3 * 4 + 5, classes)

    def forward(self, image, table):
        h = F.adaptive_avg_pool2d(self.act(self.conv(image)), 2).flatten(1)
        return self.head(torch.cat([h, self.act(self.dense(table))], 1))


def image_and_table(act=F.relu, seed: int = 0, dtype=torch.float64) -> ImageAndTable:
    """An :class:`ImageAndTable` with parameters drawn from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return ImageAndTable(act).to(dtype).eval()


def image_and_table_inputs(n: int = 4, seed: int = 1, image=torch.randn, dtype=torch.float64, generator=None):
    """(image, table) for :class:`ImageAndTable`: the image drawn by ``image`` (``torch.rand`` for pixels in
    [0, 1)), the table normal, both from ``generator`` (default: a new one seeded ``seed``)."""
    g = torch.Generator().manual_seed(seed) if generator is None else generator
    return image(n, 2, 6, 6, generator=g, dtype=dtype), torch.randn(n, 4, generator=g, dtype=dtype)


def two_inputs(n: int = 5, seed: int = 0):
    """A softplus :class:`ImageAndTable` (seed ``seed``), images in [0, 1), a table and class labels (seed + 1)."""
    model = image_and_table(F.softplus, seed)
    g = torch.Generator().manual_seed(seed + 1)
    img, tab = image_and_table_inputs(n, image=torch.rand, generator=g)
    return model, img, tab, torch.randint(0, 3, (n,), generator=g)


# -- threads ---------------------------------------------------------------------------------------------------------
def concurrently(call, rounds: int) -> dict[int, list]:
    """``call(i)`` ``rounds`` times in each of two threads i = 0, 1 started together; their results by thread.
    An exception in a thread is raised here (a thread cannot raise into the test)."""
    import threading

    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(i):
        try:
            start.wait()
            for _ in range(rounds):
                results[i].append(call(i))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert all(len(results[i]) == rounds for i in (0, 1))
    return results


# -- LRP's ε gradient form -------------------------------------------------------------------------------------------
@pytest.fixture
def fallbacks(monkeypatch):
    """The reasons LRP's ε gradient form gave up during the test (it then falls back to the relevance form)."""
    from tribute.lrp import epsilon_form

    seen: list[str] = []
    original = epsilon_form.Unsupported.__init__

    def record(self, *args):
        seen.append(args[0] if args else "")
        original(self, *args)

    monkeypatch.setattr(epsilon_form.Unsupported, "__init__", record)
    return seen


@pytest.fixture
def tiny_stabilisers(monkeypatch):
    """LRP's fixed stabiliser (1e-6: the pass rule's, z⁺'s, and the Norm rule's unless a composite sets its own) set
    to 1e-12 for the test, so that what it absorbs is negligible beside a conservation check's tolerance (the rules'
    own ε is an option; the ε composites' Norm rule takes min(ε, this))."""
    from tribute.lrp import rules

    monkeypatch.setattr(rules, "STABILIZER", 1e-12)


# -- a model with a per-sample forward argument (issue 12) -----------------------------------------------------------
class MaskedSequence(nn.Module):
    """Features of a sequence (N, T, F), a per-sample mask over positions (N, T), masked mean pooling; ``scale`` a
    non-tensor forward argument."""

    def __init__(self, features: int = 3, classes: int = 4):
        super().__init__()
        self.inner = nn.Linear(features, 6)
        self.head = nn.Linear(6, classes)

    def forward(self, x, mask, scale: float = 1.0):
        h = F.softplus(self.inner(x)) * mask.unsqueeze(-1)
        return self.head(h.sum(1) / mask.sum(1, keepdim=True)) * scale


def masked_sequences(n: int = 5, seed: int = 0):
    """A :class:`MaskedSequence` (seed ``seed``), sequences (n, 7, 3), masks of lengths 7, 3, 5, 1, 6 and labels."""
    torch.manual_seed(seed)
    model = MaskedSequence().to(torch.float64).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 7, 3, generator=g, dtype=torch.float64)
    mask = (torch.arange(7) < torch.tensor([7, 3, 5, 1, 6])[:n, None]).to(torch.float64)
    return model, x, mask, torch.randint(0, 4, (n,), generator=g)


# -- third-party models in a realistic state (issue 13's zoo) ---------------------------------------------------------
TEXT_VOCAB = 40  # ids 0-4: [PAD] [UNK] [CLS] [SEP] [MASK]


def text_model(arch: str, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """A tiny Hugging Face BERT or GPT-2 sequence classifier (3 labels) in a realistic state, nothing downloaded."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if arch == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=TEXT_VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32, num_labels=3))
    elif arch == "gpt2":
        model = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
            vocab_size=TEXT_VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32, num_labels=3, pad_token_id=0,
            bos_token_id=2, eos_token_id=3))
    else:
        raise ValueError(arch)
    return realistic_state(model, seed, dtype)


def text_batch(n: int = 3, length: int = 9, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (n, length) of sentences of decreasing length, right-padded with 0, and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TEXT_VOCAB, (n, length), generator=g)
    lengths = torch.linspace(length, max(2, length // 2), n).round().long()
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids[:, 0] = 2
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    return ids, mask


def pytest_collection_modifyitems(config, items):
    """The contract tests that run every registered method on plain models skip a method that explains only a model
    of its own kind (``requires_model``: 'aligned' reads an AlignedExplainer's head; its own tests cover it,
    tests/test_explainers*.py) and a method that does not read the model (``reads_model = False``: 'random')."""
    import tribute

    for item in items:
        method = getattr(getattr(item, "callspec", None), "params", {}).get("method")
        if not isinstance(method, str) or method not in tribute.methods() or item.path.name.startswith(
                "test_explainers"):
            continue
        klass = tribute.get_method(method)
        needs = getattr(klass, "requires_model", None)
        if needs is not None:
            reason = f"{method!r} explains only a model of its own kind, {needs.__name__} (tests/test_explainers*.py)"
            item.add_marker(pytest.mark.skip(reason=reason))
        elif not getattr(klass, "reads_model", True):
            # 'random' reads neither the model nor the target: the contracts of model, target and options do not
            # apply to it; tests/test_random_method.py checks what it promises
            item.add_marker(pytest.mark.skip(reason=f"{method!r} reads neither the model nor the target"))


# -- shared checks and small models of the perturbation, training and explainer tests ------------------------------
class ImageTable(nn.Module):
    """A tanh convolution over an image (N, 3, height, 6) and a table (N, table) whose branch is scaled by the image's
    mean (the two inputs interact), merged by a linear head with 3 outputs; parameters from seed 4."""

    def __init__(self, table: int = 4, height: int = 6):
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.table = nn.Linear(table, table + 1)
        self.head = nn.Linear(2 * height * 6 + table + 1, 3)

    def forward(self, image, table):
        h = torch.tanh(self.conv(image)).flatten(1)
        return self.head(torch.cat([h, torch.tanh(self.table(table) * image.mean((1, 2, 3))[:, None])], 1))


class SmallCNN(nn.Module):
    """conv-BN-ReLU (``stem``), the last block ``last`` (strided conv-BN-ReLU), global average pooling and a linear
    head: (1, H, W) images → 10 classes; ``forward(x, gain)`` scales the input (a forward argument)."""

    def __init__(self, stem: int = 16, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, padding=1), nn.BatchNorm2d(stem), nn.ReLU())
        self.last = nn.Sequential(nn.Conv2d(stem, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, 10)

    def forward(self, x, gain: float = 1.0):
        return self.fc(self.last(self.stem(x * gain)).mean((2, 3)))


def train_interrupted_and_resumed(train, make_model, tmp_path, **options):
    """``train(model, **options)`` run straight through, and run again stopped after its first epoch (a
    KeyboardInterrupt from its ``log``) then resumed from its checkpoint on a model initialised otherwise.  Asserts
    that both end with the same weights (buffers included) and histories (times aside); gives the checkpoint's path."""
    straight = make_model(0)
    first = train(straight, **options)
    path = tmp_path / "run.pt"

    def stop_after_first_epoch(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make_model(0), checkpoint=path, log=stop_after_first_epoch, **options)
    resumed = make_model(7)  # another initialisation: the checkpoint's weights replace it
    second = train(resumed, checkpoint=path, **options)
    assert all(torch.equal(p, q) for p, q in zip(straight.state_dict().values(), resumed.state_dict().values(),
                                                  strict=True))
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in h.records] for h in (first, second)]
    assert untimed[0] == untimed[1]
    return path


def assert_same_alone_and_in_any_batch(model, x, method, order=None, *, target=1, batch_sizes=(1, 7, 1000),
                                       tol=1e-12, **options):
    """A method gives a sample the same attribution alone as in a batch, with any ``batch_size`` and (``order``: a
    permutation of the samples) at another position; a seeded one draws otherwise with another seed.  ``target`` is
    a class or one per sample.  Returns the batched attribution."""
    def of(rows, **more):
        tgt = target[rows] if isinstance(target, torch.Tensor) else target
        return tribute.explain(model, x[rows], method, target=tgt, **{**options, **more})

    everyone = torch.arange(x.shape[0])
    batched = of(everyone)
    for i in range(x.shape[0]):
        torch.testing.assert_close(of(everyone[i:i + 1], batch_size=1), batched[i:i + 1], rtol=tol, atol=tol)
    for batch_size in batch_sizes:
        torch.testing.assert_close(of(everyone, batch_size=batch_size), batched, rtol=tol, atol=tol)
    if order is not None:
        torch.testing.assert_close(of(order), batched[order], rtol=tol, atol=tol)
    if "seed" in options:
        assert not torch.allclose(of(everyone, seed=options["seed"] + 1), batched)
    return batched
