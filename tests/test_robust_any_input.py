"""Attacks on models and on explanations take any input a model takes (issue 12).

- Several inputs are attacked jointly, each in its own ball: with the table's ε = 0 the attack on (image, table)
  is, exactly, the attack on the image with the table held as a forward argument (same seed, random start on);
  a joint attack stays inside each input's ball and bounds, exactly; FGSM's step is the sign of each input's
  part of the joint gradient, L2 PGD's step each input's normalised part.
- Forward arguments follow the rows: a batch with per-sample masks, in chunks, equals one sample at a time.
- Structured outputs: the logits picked from a dict or a Hugging Face ModelOutput give the plain model's attack.
- A model in train mode hidden in a lambda is refused before any of its buffers change.
- Bad input raises errors that name the problem.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ResidualCNN, randomise_bn, two_inputs
from conftest import masked_sequences as masked
from torch import nn

import tribute
from tribute.core.train_guard import TrainModeError
from tribute.robust import adversarial_train, fgsm, pgd, topk_attack
from tribute.robust import explanation_attacks as ea

DT = torch.float64


def linf(d):
    return d.flatten(1).abs().amax(1)


def l2(d):
    return d.flatten(1).norm(dim=1)


# -- several inputs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_a_zero_budget_input_is_the_attack_with_it_held_as_a_forward_argument(norm, eps):
    model, img, tab, y = two_inputs()
    kw = {"norm": norm, "step_size": eps / 3, "steps": 4, "seed": 7}
    adv_img, adv_tab = pgd(model, (img, tab), y, eps=(eps, 0.0), bounds=((0, 1), None), **kw)
    alone = pgd(model, img, y, eps=eps, bounds=(0, 1), forward_args=(tab,), **kw)
    assert torch.equal(adv_tab, tab)
    torch.testing.assert_close(adv_img, alone, rtol=0, atol=0)
    assert float(linf(adv_img - img).min()) > 0  # every sample moved: the equality is not that of nothing


def test_fgsm_on_a_table_held_first_equals_a_lambda_that_reorders_the_arguments():
    model, img, tab, y = two_inputs()
    fixed_img, moved_tab = fgsm(model, (img, tab), y, eps=(0.0, 0.1))
    reordered = fgsm(lambda t, i: model(i, t), tab, y, eps=0.1, forward_args=(img,))
    assert torch.equal(fixed_img, img)
    torch.testing.assert_close(moved_tab, reordered, rtol=0, atol=0)


def test_fgsm_steps_each_input_by_the_sign_of_its_part_of_the_joint_gradient():
    model, img, tab, y = two_inputs()
    leaves = [img.clone().requires_grad_(), tab.clone().requires_grad_()]
    F.cross_entropy(model(*leaves), y, reduction="sum").backward()
    adv_img, adv_tab = fgsm(model, (img, tab), y, eps=(0.03, 0.2), bounds=((0, 1), (-10, 10)))
    torch.testing.assert_close(adv_img, (img + 0.03 * leaves[0].grad.sign()).clamp(0, 1), rtol=0, atol=1e-15)
    torch.testing.assert_close(adv_tab, tab + 0.2 * leaves[1].grad.sign(), rtol=0, atol=1e-15)
    # one eps for both: the L∞ ball of the packed vector
    both = fgsm(model, (img, tab), y, eps=0.03)
    torch.testing.assert_close(both[1], tab + 0.03 * leaves[1].grad.sign(), rtol=0, atol=1e-15)


def test_l2_pgd_normalises_each_inputs_part_of_the_gradient():
    model, img, tab, y = two_inputs()
    leaves = [img.clone().requires_grad_(), tab.clone().requires_grad_()]
    F.cross_entropy(model(*leaves), y, reduction="sum").backward()
    adv = pgd(model, (img, tab), y, norm="l2", eps=(10.0, 10.0), step_size=(0.1, 0.5), steps=1, random_start=False)
    for a, x, leaf, alpha in zip(adv, (img, tab), leaves, (0.1, 0.5), strict=True):
        g = leaf.grad
        step = alpha * g / l2(g).view(-1, *([1] * (g.dim() - 1)))
        torch.testing.assert_close(a - x, step, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(l2(a - x), torch.full((x.shape[0],), alpha, dtype=DT), rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm,eps", [("linf", (0.1, 0.4)), ("l2", (0.6, 0.8))])
def test_a_joint_attack_stays_inside_each_inputs_ball_and_bounds(norm, eps):
    model, img, tab, y = two_inputs(n=8)
    img = img.pow(3)  # many pixels near 0, so the bound binds
    tab = tab.clamp(-1, 1)
    adv_img, adv_tab = pgd(model, (img, tab), y, norm=norm, eps=eps, step_size=(eps[0] / 2, eps[1] / 2), steps=6,
                           bounds=((0, 1), (-1, 1)), seed=0)
    size = linf if norm == "linf" else l2
    assert bool((size(adv_img - img) <= eps[0]).all()) and bool((size(adv_tab - tab) <= eps[1]).all())
    assert bool((adv_img >= 0).all() and (adv_img <= 1).all() and (adv_tab >= -1).all() and (adv_tab <= 1).all())
    # the constraints are active: most samples reach their ball's boundary, and the bounds clip some values
    assert (size(adv_img - img) > 0.9 * eps[0]).float().mean() > 0.5
    assert (size(adv_tab - tab) > 0.9 * eps[1]).float().mean() > 0.5
    assert bool(((adv_img == 0) & (img > 0)).any())
    # the attack does its job: the loss went up
    with torch.no_grad():
        assert float(F.cross_entropy(model(adv_img, adv_tab), y)) > float(F.cross_entropy(model(img, tab), y))


def test_a_joint_attack_of_one_sample_does_not_depend_on_its_batch_mates():
    model, img, tab, y = two_inputs(n=6)
    kw = {"norm": "l2", "eps": (0.5, 0.5), "step_size": 0.2, "steps": 3, "seed": 4}
    full = pgd(model, (img, tab), y, batch_size=4, **kw)
    for i in range(6):
        alone = pgd(model, (img[i:i + 1], tab[i:i + 1]), y[i:i + 1], **kw)
        for a, b in zip(alone, full, strict=True):
            torch.testing.assert_close(a, b[i:i + 1], rtol=0, atol=1e-12)


def test_two_equal_inputs_start_from_independent_random_points():
    torch.manual_seed(0)
    lin = nn.Linear(8, 2).to(DT).eval()
    x = torch.rand(3, 4, dtype=DT)
    a, b = pgd(lambda p, q: lin(torch.cat([p, q], 1)), (x, x.clone()), torch.zeros(3, dtype=torch.long),
               eps=0.1, step_size=1e-9, steps=1, seed=2)
    assert not torch.allclose(a - x, b - x)


# -- forward arguments and outputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_forward_arguments_follow_the_rows_of_an_attack(norm):
    model, x, mask, y = masked()
    kw = {"norm": norm, "eps": 0.3, "step_size": 0.1, "steps": 3, "seed": 1}
    batched = pgd(model, x, y, batch_size=2, forward_kwargs={"mask": mask}, **kw)
    for i in range(x.shape[0]):
        alone = pgd(model, x[i:i + 1], y[i:i + 1], forward_kwargs={"mask": mask[i:i + 1]}, **kw)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=0, atol=1e-12)
    # masked positions have no gradient: from the clean input they never move
    moved = (pgd(model, x, y, random_start=False, forward_kwargs={"mask": mask}, **kw) - x).abs().sum(-1)
    assert bool((moved[mask == 0] == 0).all()) and bool((moved[mask == 1] > 0).any())


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(6, 4).to(DT)

    def forward(self, x):
        return self.lin(x)


class ReturnsDict(Base):
    def forward(self, x):
        s = self.lin(x)
        return {"loss": s.sum(), "logits": s, "hidden": x}


class ReturnsScores(Base):
    def forward(self, x):
        s = self.lin(x)
        return {"scores": s, "hidden": x}


def test_the_loss_reads_the_selected_output():
    x = torch.rand(4, 6, dtype=DT)
    y = torch.tensor([0, 1, 2, 3])
    kw = {"eps": 0.1, "step_size": 0.03, "steps": 3, "seed": 0}
    plain = pgd(Base().eval(), x, y, **kw)
    torch.testing.assert_close(pgd(ReturnsDict().eval(), x, y, **kw), plain, rtol=0, atol=0)
    torch.testing.assert_close(pgd(ReturnsScores().eval(), x, y, output="scores", **kw), plain, rtol=0, atol=0)
    torch.testing.assert_close(pgd(ReturnsScores().eval(), x, y, output=lambda o: o["scores"], **kw), plain,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="say which holds the scores with output="):
        pgd(ReturnsScores().eval(), x, y, **kw)


def test_a_hugging_face_model_output_is_attacked_through_its_logits():
    outputs = pytest.importorskip("transformers.modeling_outputs")

    class HF(Base):
        def forward(self, x):
            s = self.lin(x)
            return outputs.SequenceClassifierOutput(loss=s.sum(), logits=s, hidden_states=(x,))

    x = torch.rand(4, 6, dtype=DT)
    y = torch.tensor([3, 2, 1, 0])
    torch.testing.assert_close(fgsm(HF().eval(), x, y, eps=0.05), fgsm(Base().eval(), x, y, eps=0.05), rtol=0, atol=0)


# -- functions as models ----------------------------------------------------------------------------------------
def test_a_train_mode_model_behind_a_lambda_is_refused_with_its_buffers_unchanged():
    net = randomise_bn(ResidualCNN()).to(DT).train()
    before = {k: v.clone() for k, v in net.named_buffers()}
    x = torch.rand(2, 3, 8, 8, dtype=DT)
    y = torch.tensor([0, 1])
    for attack in (lambda m: fgsm(m, x, y, eps=0.1), lambda m: pgd(m, x, y, eps=0.1, step_size=0.05, steps=2),
                   lambda m: topk_attack(m, x, k=3, eps=0.1, steps=1)):
        with pytest.raises(TrainModeError, match=r"BatchNorm2d in train mode.*nothing has changed"):
            attack(lambda t: net(t))  # noqa: PLW0108
        assert all(torch.equal(before[k], v) for k, v in net.named_buffers())
        assert net.training
    # the module itself is attacked in eval mode (the attacks' guarantee), and left in train mode
    net.eval()
    reference = fgsm(net, x, y, eps=0.1)
    net.train()
    torch.testing.assert_close(fgsm(net, x, y, eps=0.1), reference, rtol=0, atol=0)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.named_buffers())


# -- bad input ---------------------------------------------------------------------------------------------------
def test_bad_inputs_of_an_attack_raise_clear_errors():
    model, img, tab, y = two_inputs()
    with pytest.raises(ValueError, match=r"disagree in their number of samples.*inputs\[1\]: 4"):
        fgsm(model, (img, tab[:4]), y, eps=0.1)
    ids = torch.zeros(5, 4, dtype=torch.long)
    with pytest.raises(TypeError, match=r"different dtypes.*forward_args="):
        fgsm(lambda i, t: model(i, t.to(DT)), (img, ids), y, eps=0.1)
    with pytest.raises(TypeError, match=r"fgsm: inputs\[0\] are torch.int64.*forward_args="):
        fgsm(lambda a, b: model(img, (a + b).to(DT)), (ids, ids), y, eps=0.1)
    with pytest.raises(TypeError, match=r"pgd: inputs are torch.int64"):
        pgd(model, torch.zeros(5, 4, dtype=torch.long), y, eps=0.1, step_size=0.1, steps=1)
    with pytest.raises(ValueError, match=r"forward_args\[0\].*\(4, 4\).*N = 5.*tribute.constant"):
        fgsm(model, img, y, eps=0.1, forward_args=(tab[:4],))
    with pytest.raises(ValueError, match="eps has 3 entries but the model takes 2 inputs"):
        fgsm(model, (img, tab), y, eps=(0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="eps is 0 for every input"):
        fgsm(model, (img, tab), y, eps=(0.0, 0.0))
    with pytest.raises(ValueError, match=r"eps\[1\] must be >= 0"):
        fgsm(model, (img, tab), y, eps=(0.1, -0.1))
    with pytest.raises(ValueError, match=r"step_size\[0\] must be > 0 for input 0"):
        pgd(model, (img, tab), y, eps=(0.1, 0.1), step_size=(0.0, 0.1), steps=1)
    with pytest.raises(ValueError, match="bounds has 3 entries"):
        fgsm(model, (img, tab), y, eps=0.1, bounds=((0, 1), None, None))
    with pytest.raises(ValueError, match=r"fgsm: inputs\[1\]: inputs lie outside bounds"):
        fgsm(model, (img, tab), y, eps=0.1, bounds=((0, 1), (0, 1)))
    with pytest.raises(TypeError, match=r"input_transform\[1\] must be callable"):
        fgsm(model, (img, tab), y, eps=0.1, input_transform=(None, 3))


# -- attacks on explanations ------------------------------------------------------------------------------------
class MaskedImage(nn.Module):
    """A small ReLU CNN whose image is multiplied by a per-sample mask (N, 1, H, W) before the convolution."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x, mask, scale=1.0):
        return self.head(F.relu(self.conv(x * mask)).flatten(1)) * scale


def masked_images(n=4):
    g = torch.Generator().manual_seed(8)
    x = torch.rand(n, 1, 4, 4, generator=g, dtype=DT)
    mask = (torch.rand(n, 1, 4, 4, generator=g, dtype=DT) > 0.3).to(DT)
    return MaskedImage().to(DT).eval(), x, mask


def test_explanation_attacks_meet_each_samples_forward_arguments():
    model, x, mask = masked_images()
    kw = {"k": 4, "eps": 0.05, "steps": 3, "bounds": (0, 1), "reduce": None}
    batched = topk_attack(model, x, batch_size=3, forward_args=(mask,), forward_kwargs={"scale": 2.0}, **kw)
    for i in range(x.shape[0]):
        alone = topk_attack(model, x[i:i + 1], forward_args=(mask[i:i + 1],), forward_kwargs={"scale": 2.0}, **kw)
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=0, atol=1e-12)
    assert bool((linf(batched - x) <= 0.05).all()) and float(linf(batched - x).max()) > 0
    # the same as a closure over one sample's mask
    for i in range(x.shape[0]):
        closure = topk_attack(lambda t, m=mask[i:i + 1]: model(t, m, 2.0), x[i:i + 1], **kw)
        torch.testing.assert_close(batched[i:i + 1], closure, rtol=0, atol=1e-12)


def test_explanation_attacks_read_the_selected_output():
    class Plain(MaskedImage):
        def forward(self, x):
            return super().forward(x, 1.0)

    class Dict(MaskedImage):
        def forward(self, x):
            return {"scores": super().forward(x, 1.0), "x": x}

    _, x, _ = masked_images()
    kw = {"eps": 0.05, "steps": 2, "bounds": (0, 1), "reduce": None}
    plain = ea.center_attack(Plain().to(DT).eval(), x, **kw)
    torch.testing.assert_close(ea.center_attack(Dict().to(DT).eval(), x, output="scores", **kw), plain, rtol=0,
                               atol=0)
    goal = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    m_plain = ea.manipulate_explanation(Plain().to(DT).eval(), x, goal, gamma=1.0, keep="logits", **kw)
    m_dict = ea.manipulate_explanation(Dict().to(DT).eval(), x, goal, gamma=1.0, keep="logits", output="scores", **kw)
    torch.testing.assert_close(m_dict, m_plain, rtol=0, atol=0)
    with pytest.raises(TypeError, match="keep='probabilities' or keep='logits'"):
        ea.manipulate_explanation(Plain().to(DT).eval(), x, goal, gamma=1.0, output="probabilities", **kw)


def test_explanation_attacks_refuse_several_inputs_pointing_to_forward_args():
    model, img, tab, _ = two_inputs()
    with pytest.raises(TypeError, match=r"topk_attack: inputs is a tuple of 2.*forward_args="):
        topk_attack(model, (img, tab), k=3, eps=0.1)
    with pytest.raises(ValueError, match=r"forward_args\[0\].*N = 5"):
        topk_attack(model, img, k=3, eps=0.1, steps=1, forward_args=(tab[:2],))


def test_adversarial_training_refuses_several_inputs():
    model, img, tab, y = two_inputs()
    with pytest.raises(TypeError, match="train_data holds several inputs"):
        adversarial_train(model, ((img, tab), y), norm="linf", eps=0.1, steps=1, epochs=1, lr=0.1)


def test_tribute_constant_reaches_an_attack_unchanged():
    """A constant whose first dimension happens to equal N is passed whole to every row, not split."""
    x = torch.rand(3, 3, dtype=DT)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    model = lambda t, w: torch.stack([(t * w).sum(1), -(t * w).sum(1)], 1)  # noqa: E731
    adv = fgsm(model, x, torch.zeros(3, dtype=torch.long), eps=0.1, forward_args=(tribute.constant(w),))
    torch.testing.assert_close(adv, x - 0.1 * w.sign().expand_as(x), rtol=0, atol=1e-15)
