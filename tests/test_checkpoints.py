"""Checkpoints that can be trusted (tribute.checkpoint, written by tribute.training.fit and so by every trainer).

- A checkpoint that is empty, truncated, random bytes, or has one flipped exponent bit in a stored weight is
  refused with an error that names the file and says what to do, never torch's advice to load unsafely; the
  model handed to the trainer is left as it was.
- A writer killed in the middle of a save leaves the previous checkpoint intact and a temporary that the next
  run removes; resuming from the intact checkpoint ends bit for bit where an uninterrupted run ends.
- The digest covers every byte of every tensor and every value, in order.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import tribute
from tribute import checkpoint
from tribute.checkpoint import CheckpointError
from tribute.robust import adversarial_train
from tribute.training import fit

KW = {"lr": 0.1, "batch_size": 8, "seed": 3, "progress": False}


def data(n=32):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    return torch.randn(n, 6, generator=g) + nn.functional.one_hot(y, 6).float() * 2, y


def model():
    torch.manual_seed(0)
    return nn.Linear(6, 3)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def flip_exponent_bit(path) -> None:
    """Flip the top exponent bit of the first element of the stored weight, in the file itself."""
    weight = torch.load(path, weights_only=True)["model"]["weight"]
    raw = bytearray(open(path, "rb").read())
    at = bytes(raw).find(weight.numpy().tobytes())
    assert at >= 0 and bytes(raw).count(weight.numpy().tobytes()) == 1
    raw[at + 3] ^= 0x40  # little-endian float32: byte 3 bit 6 is bit 30, the exponent's highest
    open(path, "wb").write(bytes(raw))
    changed = torch.load(path, weights_only=True)["model"]["weight"]  # torch alone would resume from this
    assert changed.flatten()[0] != weight.flatten()[0] and torch.equal(changed.flatten()[1:], weight.flatten()[1:])


DAMAGE = {
    "empty": lambda path: open(path, "wb").close(),
    "truncated": lambda path: open(path, "r+b").truncate(os.path.getsize(path) // 2),
    "random bytes": lambda path: open(path, "wb").write(os.urandom(4096)),
    "flipped exponent bit": flip_exponent_bit,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_naming_the_file(damage, tmp_path):
    path = tmp_path / "run.pt"
    fit(model(), data(), epochs=2, checkpoint=path, **KW)
    DAMAGE[damage](path)
    victim = model()
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as caught:
        fit(victim, data(), epochs=3, checkpoint=path, **KW)
    message = str(caught.value)
    assert "start over" in message and "earlier checkpoint" in message and "weights_only" not in message
    assert all(torch.equal(before[k], v) for k, v in victim.state_dict().items())  # not half-loaded
    # the advice works: resume=False starts afresh over the damaged file
    assert len(fit(model(), data(), epochs=1, checkpoint=path, resume=False, **KW)) == 1
    assert checkpoint.load(path)["epochs_done"] == 1


def test_adversarial_training_shares_the_format_and_its_checks(tmp_path):
    path = tmp_path / "adv.pt"
    kw = {"norm": "linf", "eps": 0.1, "steps": 1, "epochs": 1, "lr": 0.1, "batch_size": 16, "progress": False}
    adversarial_train(model(), data(), checkpoint=path, **kw)
    assert checkpoint.load(path)["epochs_done"] == 1
    flip_exponent_bit(path)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is damaged: its content does not match"):
        adversarial_train(model(), data(), checkpoint=path, **{**kw, "epochs": 2})


def test_another_models_checkpoint_is_refused_before_anything_is_loaded(tmp_path):
    path = tmp_path / "run.pt"
    fit(model(), data(), epochs=1, checkpoint=path, **KW)
    torch.manual_seed(1)
    other = nn.Sequential(nn.Linear(6, 3))  # same shapes, other parameter names
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} holds the weights of another model"):
        fit(other, data(), epochs=2, checkpoint=path, **KW)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


KILLED_WRITER = """
import os, signal, sys, torch
from torch import nn
sys.path.insert(0, {src!r})
from tribute.training import fit
saves = []
real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    saves.append(1)
    if len(saves) < 3:
        return real_save(obj, f, *args, **kwargs)
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the third epoch's save

torch.save = save_then_die
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
y = torch.arange(32) % 3
x = torch.randn(32, 6, generator=g) + nn.functional.one_hot(y, 6).float() * 2
fit(nn.Linear(6, 3), (x, y), epochs=4, checkpoint={path!r}, lr=0.1, batch_size=8, seed=3, progress=False)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_writer_killed_mid_save_leaves_the_last_checkpoint_and_a_temporary_the_next_run_removes(tmp_path):
    path = tmp_path / "run.pt"
    src = os.path.dirname(os.path.dirname(tribute.__file__))
    script = textwrap.dedent(KILLED_WRITER).format(src=src, path=str(path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    stale = checkpoint.temporaries(path)
    assert len(stale) == 1 and os.path.basename(stale[0]).startswith(".run.pt.")
    assert checkpoint.load(path)["epochs_done"] == 2  # the last complete save; loading removes the stale file
    assert checkpoint.temporaries(path) == []

    open(stale[0], "wb").write(b"left by another kill")  # the trainer's resumption removes one too
    resumed = model()
    h_resumed = fit(resumed, data(), epochs=4, checkpoint=path, **KW)
    assert checkpoint.temporaries(path) == [] and os.listdir(tmp_path) == ["run.pt"]
    straight = model()
    h_straight = fit(straight, data(), epochs=4, **KW)
    assert states_equal(resumed, straight)
    assert [r["loss"] for r in h_resumed.records] == [r["loss"] for r in h_straight.records]


def test_the_digest_sees_every_byte_and_the_structure(tmp_path):
    content = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "h": [{"loss": 0.5}], "n": 3,
               "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}
    d = checkpoint.digest(content)
    assert checkpoint.digest({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in content.items()}) == d
    changed = content["w"].clone()
    changed.view(torch.int32)[1, 2] ^= 1  # the lowest mantissa bit of one element
    assert checkpoint.digest({**content, "w": changed}) != d
    assert checkpoint.digest({**content, "w": content["w"].view(3, 2)}) != d  # same bytes, other shape
    assert checkpoint.digest({**content, "h": [{"loss": 0.5000000000000001}]}) != d
    assert checkpoint.digest({**content, "n": 3.0}) != d
    path = tmp_path / "c.pt"
    checkpoint.save(path, content)
    back = checkpoint.load(path)
    assert back.keys() == content.keys() and checkpoint.digest(back) == d
    assert torch.equal(back["b"], content["b"]) and back["b"].dtype == torch.bfloat16
    torch.save({"format": 2, "model": {}}, path)  # no digest: not one of ours
    with pytest.raises(CheckpointError, match="is not a tribute checkpoint .*no digest"):
        checkpoint.load(path)
