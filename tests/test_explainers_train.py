"""Training the aligned explainer (tribute.explainers.train_aligned; Zeng et al. 2021, Eq 5) on the 8×8 digits.

A small CNN is the classifier and a PGD-L2 trained copy its robust twin, whose SmoothGrad maps of the labels are the
targets.  The tests show: a step lowers the alignment loss; a killed and resumed run equals an uninterrupted one
bit for bit; targets from a store equal targets computed on the fly; the head learns its target on held-out
images (closer than the upsampled channel mean of h and than an untrained head, by stated margins); its maps
change when the classifier's last block is re-initialised (joint mode); bad input is refused.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN
from torch import nn

import tribute
from tribute.data import load_digits
from tribute.explainers import AlignedExplainer, alignment_loss, alignment_map, targets_from_method, train_aligned

SG = {"samples": 8, "seed": 0}  # the twin's SmoothGrad in these tests (noise_level 0.15: the default)


@functools.cache
def data():
    split = load_digits()
    return split.train, split.test


@functools.cache
def trained(kind: str) -> nn.Module:
    """The classifier ("standard", seed 0) or its robust twin ("robust": PGD-L2, ε = 0.5 on [0, 1] images)."""
    (x, y), _ = data()
    torch.manual_seed(0 if kind == "standard" else 1)
    model = SmallCNN()
    if kind == "standard":
        tribute.training.fit(model, (x, y), epochs=4, lr=0.05, seed=0, progress=False)
    else:
        tribute.robust.adversarial_train(model, (x, y), norm="l2", eps=0.5, steps=3, bounds=(0, 1), epochs=4,
                                         lr=0.05, seed=1, progress=False)
    return model.eval()


def explainer(seed: int = 0, classifier: nn.Module | None = None) -> AlignedExplainer:
    """A fresh wrapper around a copy of the trained classifier, its head initialised from ``seed``."""
    classifier = copy.deepcopy(classifier or trained("standard"))  # first: training it the first time seeds the RNG
    torch.manual_seed(seed)
    return AlignedExplainer(classifier, (1, 8, 8))


@functools.cache
def held_out_targets() -> torch.Tensor:
    _, (xt, yt) = data()
    return targets_from_method(trained("robust"), xt, yt, **SG)


def held_out_loss(model: AlignedExplainer) -> float:
    _, (xt, _) = data()
    with torch.no_grad():
        return float(alignment_loss(model.eval()(xt)["attribution"], held_out_targets()).mean())


# -- a step, resumption, the store ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["joint", "head"])
def test_a_training_step_lowers_the_alignment_loss_on_a_fixed_batch(mode):
    (x, y), _ = data()
    xb, yb = x[:64], y[:64]
    g = targets_from_method(trained("robust"), xb, yb, **SG)
    model = explainer()

    def loss_in_train_mode(m):  # the loss the step minimises: batch statistics, on a copy (running stats untouched)
        c = copy.deepcopy(m).train()
        if mode == "head":
            c.classifier.eval()
        with torch.no_grad():
            return float(alignment_loss(c(xb)["attribution"], g).mean())

    before = loss_in_train_mode(model)
    train_aligned(model, (xb, yb), epochs=1, lr=0.01, mode=mode, twin=trained("robust"), target_options=SG,
                  batch_size=64)
    after = loss_in_train_mode(model)
    print(f"{mode}: alignment loss on the batch {before:.4f} → {after:.4f}")
    assert after < before


@pytest.mark.parametrize("mode", ["joint", "head"])
def test_a_killed_and_resumed_training_equals_an_uninterrupted_one(mode, tmp_path):
    (x, y), _ = data()
    sub = (x[:256], y[:256])
    kw = {"epochs": 3, "lr": 0.02, "mode": mode, "twin": trained("robust"), "target_options": SG, "seed": 5}
    whole = explainer(seed=3)
    train_aligned(whole, sub, checkpoint=tmp_path / "whole.pt", **kw)

    class Killed(Exception):
        pass

    def kill_after_first(record):
        if record["epoch"] == 1:
            raise Killed

    run = explainer(seed=3)
    with pytest.raises(Killed):
        train_aligned(run, sub, checkpoint=tmp_path / "run.pt", log=kill_after_first, **kw)
    resumed = explainer(seed=11)  # a new process: another head initialisation, restored from the checkpoint
    history = train_aligned(resumed, sub, checkpoint=tmp_path / "run.pt", **kw)
    assert len(history) == 3
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    if mode == "head":  # the frozen classifier is the trained one, untouched
        for a, b in zip(resumed.classifier.state_dict().values(), trained("standard").state_dict().values(),
                        strict=True):
            assert torch.equal(a, b)


def test_targets_from_a_store_equal_targets_computed_on_the_fly(tmp_path):
    (x, y), _ = data()
    sub = (x[:96], y[:96])
    store = tribute.store.compute_store(tmp_path / "sg", trained("robust"), sub, "smoothgrad", target="label",
                                        chunk_size=40, noise_level=0.15, **SG)
    from_store = tribute.explainers.targets_from_store(store, *sub, model=trained("robust"))
    on_the_fly = targets_from_method(trained("robust"), *sub, **SG)
    torch.testing.assert_close(from_store, on_the_fly, rtol=1e-5, atol=1e-6)
    a, b = explainer(), explainer()
    train_aligned(a, sub, epochs=1, lr=0.02, targets=tmp_path / "sg")
    train_aligned(b, sub, epochs=1, lr=0.02, twin=trained("robust"), target_options=SG)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=k)


# -- what the head learns --------------------------------------------------------------------------------------

@functools.cache
def head_trained() -> AlignedExplainer:
    (x, y), _ = data()
    model = explainer(seed=0)
    train_aligned(model, (x, y), epochs=6, lr=0.02, mode="head", twin=trained("robust"), target_options=SG,
                  optimizer="adam")
    return model.eval()


def test_the_head_learns_the_robust_twin_s_maps_on_held_out_images():
    """Mean squared error to the twin's normalised SmoothGrad maps of 450 held-out digits: the trained head against
    the channel mean of h upsampled bilinearly (a CAM without weights) and an untrained head (seed 0)."""
    _, (xt, _) = data()
    learned = held_out_loss(head_trained())
    untrained = held_out_loss(explainer(seed=0))
    with torch.no_grad():
        _, h = head_trained().features(xt)
    channel_mean = alignment_map(F.interpolate(h.mean(1, keepdim=True), size=(8, 8), mode="bilinear",
                                               align_corners=False))
    by_mean = float(alignment_loss(channel_mean, held_out_targets()).mean())
    flat = float(alignment_loss(torch.ones_like(held_out_targets()), held_out_targets()).mean())
    print(f"held-out MSE: learned {learned:.3f}, channel mean {by_mean:.3f}, untrained {untrained:.3f}, "
          f"flat map {flat:.3f}")
    assert learned < 0.75 * by_mean  # margins: measured 0.31 against 0.69 and 1.69
    assert learned < 0.5 * untrained
    assert learned < 0.75 * flat
    # the classifier itself is unchanged by training its head
    for a, b in zip(head_trained().classifier.state_dict().values(), trained("standard").state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_the_maps_change_when_the_last_block_is_reinitialised():
    """Joint training (Eq 5); then the classifier's last block is re-initialised (Adebayo et al. 2018's sanity check,
    the paper's Fig 5): the head reads h from that block, so its maps must change."""
    (x, y), (xt, yt) = data()
    model = explainer(seed=0)
    history = train_aligned(model, (x, y), epochs=4, lr=0.05, mode="joint", twin=trained("robust"),
                            target_options=SG, eval_data=(xt, yt), metrics={"held_out": held_out_loss})
    assert history.last["accuracy"] > 0.8  # joint training keeps a working classifier
    assert history.last["held_out"] == held_out_loss(model)  # a metric is given the explainer itself
    assert held_out_loss(model) < 0.75 * held_out_loss(explainer(seed=0))
    changed = copy.deepcopy(model)
    torch.manual_seed(7)
    for m in changed.classifier.last.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.reset_parameters()
    before = tribute.explain(model, xt, "aligned")
    after = tribute.explain(changed, xt, "aligned", target=before.new_zeros(len(xt), dtype=torch.long) +
                            model(xt)["logits"].argmax(1), accept_any_target=True)
    rank = torch.stack([torch.corrcoef(torch.stack([a.flatten().argsort().argsort().double(),
                                                     b.flatten().argsort().argsort().double()]))[0, 1]
                        for a, b in zip(before, after, strict=True)])
    relative = float((after - before).flatten(1).norm(dim=1).mean() / before.flatten(1).norm(dim=1).mean())
    print(f"after re-initialising the last block: mean Spearman {float(rank.mean()):.3f}, relative change "
          f"{relative:.3f}")
    assert float(rank.mean()) < 0.8 and relative > 0.3


# -- Eq 5's unsquared L2 on raw scales -------------------------------------------------------------------------

def test_the_l2_term_s_gradient_has_norm_lambda_whatever_the_target_s_scale():
    """d/dE of mean_i λ‖E_i − g_i‖₂ is λ (E_i − g_i)/(N‖E_i − g_i‖): norm λ/√N over the batch, for targets of any
    scale; the MSE's gradient scales with the distance.  The sizes on the digits are printed (target.py's doc)."""
    (x, y), _ = data()
    xb, yb, lam = x[:64], y[:64], 0.35
    raw = tribute.explain(trained("robust"), xb, "smoothgrad", target=yb, **SG).abs().sum(1, keepdim=True)
    model = explainer().train()
    out = model(xb)
    maps = out["attribution"]
    for scale in (1.0, 1e-3, 1e3):
        (grad,) = torch.autograd.grad(lam * alignment_loss(maps, raw * scale, "l2").mean(), maps, retain_graph=True)
        torch.testing.assert_close(grad.norm(), torch.tensor(lam / 64**0.5), rtol=1e-4, atol=0)
    ce = F.cross_entropy(out["logits"], yb)
    head, trunk = list(model.head.parameters()), list(model.classifier.parameters())

    def norms(term):
        grads = torch.autograd.grad(term, head + trunk, retain_graph=True, allow_unused=True)
        part = [torch.cat([g.flatten() for g in gs if g is not None] or [torch.zeros(1)]).norm()
                for gs in (grads[:len(head)], grads[len(head):])]
        return float(term.detach()), float(part[0]), float(part[1])

    rows = {"CE": norms(ce), "λ·L2 raw": norms(lam * alignment_loss(maps, raw, "l2").mean()),
            "λ·MSE normalised": norms(lam * alignment_loss(maps, alignment_map(raw), "mse").mean())}
    for name, (value, on_head, on_trunk) in rows.items():
        print(f"{name:18s} value {value:.4f}, gradient norm on the head {on_head:.3e}, on the trunk {on_trunk:.3e}")
    standard = tribute.explain(trained("standard"), xb, "smoothgrad", target=yb, **SG).abs().sum(1)
    print(f"raw |SmoothGrad| per pixel: robust twin {float(raw.mean()):.3f}, standard {float(standard.mean()):.3f}")
    assert float(raw.mean()) < float(standard.mean())  # the raw scale is the model's, not the explanation's
    assert rows["CE"][1] == 0.0 and rows["CE"][2] > 0  # CE does not reach the head: only the alignment trains it
    assert rows["λ·L2 raw"][1] > 0 and rows["λ·MSE normalised"][1] > 0


# -- bad input -------------------------------------------------------------------------------------------------

def test_bad_training_input_is_refused(tmp_path):
    (x, y), _ = data()
    sub = (x[:40], y[:40])
    twin = trained("robust")
    with pytest.raises(ValueError, match=r"lam \(λ of Eq 5\) must be a finite number >= 0, got -0.1"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, lam=-0.1, twin=twin, target_options=SG)
    with pytest.raises(ValueError, match="leave lam unset"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, mode="head", lam=0.35, twin=twin, target_options=SG)
    with pytest.raises(ValueError, match="targets=.*twin="):
        train_aligned(explainer(), sub, epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="mode must be one of 'joint', 'head'"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, mode="both", twin=twin)
    with pytest.raises(ValueError, match="loss must be one of 'mse', 'l2'"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, loss="l1", twin=twin)
    with pytest.raises(TypeError, match="trains an AlignedExplainer"):
        train_aligned(trained("standard"), sub, epochs=1, lr=0.1, twin=twin)
    with pytest.raises(ValueError, match=r"takes images \(N, 1, 8, 8\).*inputs are \(40, 1, 4, 8\)"):
        train_aligned(explainer(), (x[:40, :, :4], y[:40]), epochs=1, lr=0.1, twin=twin, target_options=SG)
    with pytest.raises(ValueError, match=r"takes images \(N, 1, 8, 8\).*inputs are \(40, 2, 8, 8\)"):
        train_aligned(explainer(), (x[:40].expand(-1, 2, -1, -1), y[:40]), epochs=1, lr=0.1, twin=twin)
    with pytest.raises(ValueError, match=r"one label per image: 40 images and labels of shape \(39,\)"):
        train_aligned(explainer(), (x[:40], y[:39]), epochs=1, lr=0.1, twin=twin)
    with pytest.raises(TypeError, match="sets fit's perturb= itself"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, twin=twin, perturb=lambda m, x, y: x)
    # stores that do not fit: another data set, another method, the predicted class, another model
    store = tribute.store.compute_store(tmp_path / "s", twin, sub, "smoothgrad", target="label", **SG)
    other_data = (x[40:80], y[40:80])
    with pytest.raises(tribute.store.StoreMismatchError, match="another data set"):
        train_aligned(explainer(), other_data, epochs=1, lr=0.1, targets=store)
    grad_store = tribute.store.compute_store(tmp_path / "g", twin, sub, "gradient", target="label")
    with pytest.raises(tribute.store.StoreMismatchError, match="'gradient' attributions, not 'smoothgrad'"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, targets=grad_store)
    pred_store = tribute.store.compute_store(tmp_path / "p", twin, sub, "smoothgrad", **SG)
    with pytest.raises(tribute.store.StoreMismatchError, match="not the labels"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, targets=pred_store)
    with pytest.raises(ValueError, match="target_options apply to targets computed on the fly"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, targets=store, target_options=SG)
    with pytest.raises(tribute.store.StoreMismatchError, match="another model"):
        train_aligned(explainer(), sub, epochs=1, lr=0.1, targets=store, twin=trained("standard"))
    # a checkpoint of another λ is not resumed
    train_aligned(explainer(), sub, epochs=1, lr=0.1, targets=store, checkpoint=tmp_path / "c.pt")
    with pytest.raises(Exception, match="lambda"):
        train_aligned(explainer(), sub, epochs=2, lr=0.1, targets=store, lam=0.5, checkpoint=tmp_path / "c.pt")
    # nor a head trained on a frozen classifier resumed on another classifier (not in the checkpoint)
    train_aligned(explainer(), sub, epochs=1, lr=0.1, mode="head", targets=store, checkpoint=tmp_path / "h.pt")
    with pytest.raises(Exception, match="aligned.classifier"):
        train_aligned(explainer(classifier=twin), sub, epochs=2, lr=0.1, mode="head", targets=store,
                      checkpoint=tmp_path / "h.pt")


class Normalised(nn.Module):
    """(x − mean) / std, then the classifier: the transform written into the model."""

    def __init__(self, classifier: nn.Module, mean: float, std: float):
        super().__init__()
        self.classifier, self.mean, self.std = classifier, mean, std

    def forward(self, x):
        return self.classifier((x - self.mean) / self.std)


def test_an_input_transform_is_applied_to_the_images_and_not_to_their_target_maps():
    (x, y), _ = data()
    sub = (x[:128], y[:128])
    kw = {"epochs": 1, "lr": 0.02, "twin": trained("robust"), "target_options": SG, "seed": 2}
    given = explainer(seed=4)
    train_aligned(given, sub, input_transform=tribute.Normalize([0.3], [0.4]), **kw)
    built_in = explainer(seed=4, classifier=Normalised(copy.deepcopy(trained("standard")), 0.3, 0.4))
    train_aligned(built_in, sub, **kw)
    for (k, a), b in zip(given.state_dict().items(), built_in.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
