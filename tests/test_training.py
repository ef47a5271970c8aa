"""The library's one trainer (tribute.training.fit, accuracy): what it computes, reproducibility, checkpoints.

- One epoch of one full batch with plain SGD is the hand-written step θ − lr ∇ mean L; Adam likewise equals
  torch's Adam driven by hand.
- A run interrupted in the middle of an epoch and resumed from its checkpoint ends with bitwise the weights and
  the history of an uninterrupted run (dropout in the model, Adam's state, a seeded perturbation per batch).
- The caller's global RNG state is left as it was; the model is left in eval mode with no ``.grad``; the
  history holds one record per epoch; checkpoints are written after every epoch, atomically, and refuse to
  resume a run with other settings.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tribute.training import History, accuracy, fit


def data(n=96, d=10, classes=3, seed=0):
    """Gaussian blobs: class c centred at 2·e_c, so a linear model can separate them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, d, generator=g) * 0.7
    x[torch.arange(n), y] += 2.0
    return x, y


class DropNet(nn.Module):
    """Linear-ReLU-dropout-linear: dropout draws from the global RNG in train mode."""

    def __init__(self, d=10, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, classes))

    def forward(self, x):
        return self.net(x)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_time(history: History) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.records]


# ------------------------------------------------------------------------------------------------ the step


def test_one_sgd_step_is_the_hand_written_step():
    x, y = data()
    torch.manual_seed(1)
    model = nn.Linear(10, 3)
    expected = copy.deepcopy(model)
    loss = F.cross_entropy(expected(x), y)  # mean over the batch
    grads = torch.autograd.grad(loss, list(expected.parameters()))
    with torch.no_grad():
        for p, g in zip(expected.parameters(), grads, strict=True):
            p -= 0.1 * g
    history = fit(model, (x, y), epochs=1, lr=0.1, momentum=0.0, batch_size=len(x), progress=False)
    for p, q in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert history["loss"] == [pytest.approx(float(loss.detach()), rel=1e-6)]


def test_adam_steps_equal_torch_adam_driven_by_hand():
    """Two epochs of two batches: the trainer's batches are the seeded permutation it documents."""
    x, y = data(n=40)
    torch.manual_seed(2)
    model = nn.Linear(10, 3)
    reference = copy.deepcopy(model)
    opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    from tribute.training import _derive
    for epoch in range(2):
        order = torch.randperm(40, generator=torch.Generator().manual_seed(_derive(0, "shuffle", epoch)))
        for rows in order.split(20):
            opt.zero_grad()
            F.cross_entropy(reference(x[rows]), y[rows]).backward()
            opt.step()
    fit(model, (x, y), epochs=2, lr=0.01, optimizer="adam", batch_size=20, seed=0, progress=False)
    assert same_state(model, reference)


def test_training_learns_and_the_history_is_recorded():
    x, y = data(n=150)
    xe, ye = data(n=60, seed=1)
    model = DropNet()
    seen = []
    history = fit(model, (x, y), epochs=5, lr=lambda e: 0.2 * 0.5**e, batch_size=32, eval_data=(xe, ye),
                  metrics={"mean_logit": lambda m: float(m(xe).detach().mean())}, progress=False, log=seen.append)
    assert len(history) == 5 and history["epoch"] == [1, 2, 3, 4, 5]
    assert history["lr"] == [0.2, 0.1, 0.05, 0.025, 0.0125]
    assert set(history.keys()) == {"epoch", "lr", "loss", "train_accuracy", "accuracy", "mean_logit", "seconds"}
    assert seen == history.records
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history.last["accuracy"] == accuracy(model, (xe, ye)) > 0.9
    with torch.no_grad():
        assert history.last["mean_logit"] == pytest.approx(float(model(xe).mean()))
    assert not model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(KeyError, match="robust_accuracy"):
        history["robust_accuracy"]


def test_accuracy_by_hand_and_under_a_perturbation():
    """A fixed linear model predicts argmax(x); 3 of 4 labels agree.  A perturbation that swaps the two
    features flips every prediction."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 0, 0])
    assert accuracy(model, (x, y), batch_size=3) == 0.75
    assert accuracy(model, [(x[:2], y[:2]), (x[2:], y[2:])]) == 0.75
    assert accuracy(model, (x, y), perturb=lambda m, xx, yy: xx.flip(1)) == 0.25


# ------------------------------------------------------------------------------------- reproducibility, resume


class Interrupt(Exception):
    pass


def noisy_perturb(model, x, y, seed):
    """A seeded per-batch perturbation (its own generator), as adversarial training's random start."""
    g = torch.Generator().manual_seed(seed)
    return x + 0.1 * torch.randn(x.shape, generator=g)


def interrupting(after_calls: int):
    calls = {"n": 0}

    def perturb(model, x, y, seed):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise Interrupt("power cut")
        return noisy_perturb(model, x, y, seed)
    return perturb


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    x, y = data(n=100)
    xe, ye = data(n=30, seed=3)
    kw = {"epochs": 4, "lr": 0.01, "optimizer": "adam", "batch_size": 16, "seed": 5, "eval_data": (xe, ye),
          "progress": False}
    straight = DropNet(seed=0)
    h_straight = fit(straight, (x, y), perturb=noisy_perturb, **kw)

    path = tmp_path / "run.pt"
    interrupted = DropNet(seed=0)
    with pytest.raises(Interrupt):  # 7 batches per epoch: stops in the middle of the third epoch
        fit(interrupted, (x, y), perturb=interrupting(17), checkpoint=path, **kw)
    state = torch.load(path, weights_only=True)
    assert state["epochs_done"] == 2 and len(state["history"]) == 2

    resumed = DropNet(seed=123)  # another initialisation: the checkpoint's weights replace it
    h_resumed = fit(resumed, (x, y), perturb=noisy_perturb, checkpoint=path, **kw)
    assert same_state(resumed, straight)
    assert without_time(h_resumed) == without_time(h_straight)
    assert torch.load(path, weights_only=True)["epochs_done"] == 4

    # the same call again finds all epochs done: it loads the final weights and trains nothing
    again = DropNet(seed=7)
    h_again = fit(again, (x, y), perturb=noisy_perturb, checkpoint=path, **kw)
    assert same_state(again, straight) and without_time(h_again) == without_time(h_straight)


def test_seeds_make_runs_reproducible_and_leave_the_global_rng_alone():
    x, y = data()
    state = torch.get_rng_state()
    a, b, c = DropNet(), DropNet(), DropNet()
    torch.set_rng_state(state)
    fit(a, (x, y), epochs=2, lr=0.05, batch_size=16, seed=1, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # dropout drew from a forked generator
    fit(b, (x, y), epochs=2, lr=0.05, batch_size=16, seed=1, progress=False)
    fit(c, (x, y), epochs=2, lr=0.05, batch_size=16, seed=2, progress=False)
    assert same_state(a, b) and not same_state(a, c)


def test_perturb_gets_a_seed_per_batch_and_epoch():
    x, y = data(n=20)
    seeds = []

    def record(model, xx, yy, seed):
        seeds.append(seed)
        return xx
    fit(nn.Linear(10, 3), (x, y), epochs=2, lr=0.1, batch_size=10, perturb=record, seed=0, progress=False)
    assert len(seeds) == 4 and len(set(seeds)) == 4
    first = list(seeds)
    seeds.clear()
    fit(nn.Linear(10, 3), (x, y), epochs=2, lr=0.1, batch_size=10, perturb=record, seed=0, progress=False)
    assert seeds == first
    calls = []
    fit(nn.Linear(10, 3), (x, y), epochs=1, lr=0.1, batch_size=10, progress=False,
        perturb=lambda model, xx, yy: calls.append(model.training) or xx)  # no seed keyword: called without
    assert calls == [True, True]  # perturb sees the model in train mode (tribute's attacks switch to eval)


def test_checkpoints_are_written_after_every_epoch_atomically(tmp_path):
    x, y = data(n=40)
    path = tmp_path / "sub" / "ckpt.pt"
    done = []

    def check(record):
        state = torch.load(path, weights_only=True)
        done.append(state["epochs_done"])
        assert state["history"][-1]["loss"] == record["loss"]
        assert set(state) == {"format", "epochs_done", "settings", "model", "optimizer", "history", "digest"}
    model = nn.Linear(10, 3)
    fit(model, (x, y), epochs=3, lr=0.1, batch_size=8, checkpoint=path, log=check, progress=False)
    assert done == [1, 2, 3]
    assert os.listdir(path.parent) == ["ckpt.pt"]  # no temporary file left behind
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())

    with pytest.raises(ValueError, match="seed: checkpoint 0, now 1"):
        fit(nn.Linear(10, 3), (x, y), epochs=4, lr=0.1, batch_size=8, seed=1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="3 epochs done, more than epochs=2"):
        fit(nn.Linear(10, 3), (x, y), epochs=2, lr=0.1, batch_size=8, checkpoint=path, progress=False)
    fresh = nn.Linear(10, 3)
    h = fit(fresh, (x, y), epochs=1, lr=0.1, batch_size=8, seed=1, checkpoint=path, resume=False, progress=False)
    assert len(h) == 1 and torch.load(path, weights_only=True)["epochs_done"] == 1


def test_iterables_of_batches_and_the_progress_bar(capsys):
    x, y = data(n=48)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    a, b = nn.Linear(10, 3), nn.Linear(10, 3)
    b.load_state_dict(a.state_dict())
    fit(a, batches, epochs=2, lr=0.1, progress=True)
    err = capsys.readouterr().err
    assert "training" in err and "6/6" in err
    fit(b, batches, epochs=2, lr=0.1, progress=False)
    assert capsys.readouterr().err == ""
    assert same_state(a, b)
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit(nn.Linear(10, 3), iter(batches), epochs=1, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="batch_size applies to an"):
        fit(nn.Linear(10, 3), batches, epochs=1, lr=0.1, batch_size=8, progress=False)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
    ({"lr": 0.0}, ValueError, "lr must be a finite number > 0"),
    ({"lr": lambda e: -1.0}, ValueError, r"lr\(0\) must be"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer must be one of 'sgd', 'adam'"),
    ({"optimizer": "adam", "momentum": 0.9}, ValueError, "momentum applies to optimizer='sgd' only"),
    ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
    ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
    ({"perturb": 3}, TypeError, "perturb must be callable"),
    ({"metrics": {"loss": lambda m: 0.0}}, ValueError, "metric name 'loss' is taken"),
])
def test_bad_options_raise_clear_errors(kwargs, error, match):
    x, y = data(n=8)
    options = {"epochs": 1, "lr": 0.1, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        fit(nn.Linear(10, 3), (x, y), **options)


def test_bad_data_raise_clear_errors():
    x, y = data(n=8)
    with pytest.raises(ValueError, match="same number of samples"):
        fit(nn.Linear(10, 3), (x, y[:5]), epochs=1, lr=0.1, progress=False)
    with pytest.raises(TypeError, match="pair of tensors or an iterable"):
        fit(nn.Linear(10, 3), x, epochs=1, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="one loss per sample"):
        fit(nn.Linear(10, 3), (x, y), epochs=1, lr=0.1, progress=False, loss=lambda out, t: out.sum())
    frozen = nn.Linear(10, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        fit(frozen, (x, y), epochs=1, lr=0.1, progress=False)
