"""The seams every metric shares: one resolved-method type, one target validator, the metrics registry, the
train-mode check before the first forward pass, and input invariance of a stochastic method.

- A ``method`` given as a registry name, a Method class, a Method instance or a plain callable gives the same
  attributions; the caller's noise key reaches a method that draws noise (then its draws are those of the key,
  not of the input), and an option the user set is never overridden.
- Every refusal of :func:`tribute.core.targets.check_target` names the problem.
- Every public metric of the form ``fn(model, inputs, attributions or method, target)`` is registered, and
  :func:`tribute.evaluate`'s table is the registry.
- A model in train mode with batch norm is refused by every entry point before it runs, and its state (running
  statistics and ``num_batches_tracked`` included) is bit-identical afterwards.
- Kindermans et al. (2019)'s mean shift: SmoothGrad of the gradient is input invariant when x and x + m see the
  same noise (the metric keys the noise to the unshifted input), gradient × input is not.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import fashion_fixture
from torch import nn

import tribute
from tribute import metrics
from tribute.core.targets import check_target
from tribute.metrics.evaluate import metric_names as evaluate_metric_names
from tribute.metrics.evaluate import named_metrics
from tribute.metrics.methods import RANDOM, named_methods, random_attribution, resolve_method
from tribute.metrics.registry import ATTRIBUTIONS, BETTER, METHOD, metric_specs, register_metric
from tribute.robust import explanation_attacks as ea

DT = torch.float64


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(DT).eval()


# -- the resolved method ----------------------------------------------------------------------------------------
SMOOTH = {"samples": 6, "seed": 4}


@pytest.mark.parametrize("kind", ["name", "class", "instance", "callable"])
def test_each_kind_of_method_gives_the_same_attributions(kind):
    model = small_mlp()
    x = torch.randn(4, 5, dtype=DT, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 2, 1, 0])
    expected = tribute.SmoothGrad(model, **SMOOTH).attribute(x, t)
    method, options = {
        "name": ("smoothgrad", SMOOTH),
        "class": (tribute.SmoothGrad, SMOOTH),
        "instance": (tribute.SmoothGrad(small_mlp(1), **SMOOTH), None),  # rebound to the model given
        "callable": (lambda m, rows, target: tribute.SmoothGrad(m, **SMOOTH).attribute(rows, target), None),
    }[kind]
    resolved = resolve_method(method, options)
    assert torch.equal(resolved.bind(model)(x, t), expected)
    assert resolved.label == ("smoothgrad" if kind != "callable" else "<lambda>")


def test_the_noise_key_and_seed_reach_a_stochastic_method_unless_the_user_set_them():
    model = small_mlp()
    x = torch.randn(3, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    moved = x + 0.01
    t = torch.tensor([1, 0, 2])
    keyed = tribute.SmoothGrad(model, samples=6, seed=9, noise_key=x).attribute(moved, t)
    bound = resolve_method("smoothgrad", {"samples": 6}).bind(model, seed=9)
    assert torch.equal(bound(moved, t, noise_key=x), keyed)
    assert not torch.equal(bound(moved, t), keyed)  # without the key the draws follow the moved input
    # the user's own seed and key win over the caller's
    own = resolve_method("smoothgrad", {"samples": 6, "seed": 3, "noise_key": moved}).bind(model, seed=9)
    assert torch.equal(own(moved, t, noise_key=x), tribute.SmoothGrad(model, samples=6, seed=3).attribute(moved, t))
    preset = resolve_method(tribute.SmoothGrad(model, samples=6, seed=3)).bind(model, seed=9)
    assert torch.equal(preset(moved, t), tribute.SmoothGrad(model, samples=6, seed=3).attribute(moved, t))
    # a deterministic method takes no key: the gradient at the moved point, whatever the key
    grad = resolve_method("gradient").bind(model, seed=9)
    assert torch.equal(grad(moved, t, noise_key=x), tribute.Gradient(model).attribute(moved, t))


def test_random_attribution_is_seeded_by_the_caller_and_labelled_random():
    model = small_mlp()
    x = torch.randn(3, 5, dtype=DT, generator=torch.Generator().manual_seed(3))
    resolved = resolve_method(RANDOM)  # the registered method "random", whose draws are random_attribution's
    assert resolved.label == RANDOM and RANDOM in tribute.methods()
    assert torch.equal(resolved.bind(model, seed=5)(x, None), random_attribution(model, x, seed=5))
    assert torch.equal(resolve_method(random_attribution).bind(model, seed=5)(x, None),
                       random_attribution(model, x, seed=5))


def test_method_refusals_name_the_problem():
    with pytest.raises(TypeError, match="can only be given with a method name or Method class"):
        resolve_method(lambda m, x, t: x, {"samples": 3})
    with pytest.raises(ValueError, match="unknown method 'gradients'"):
        resolve_method("gradients")
    with pytest.raises(TypeError, match="a method must be a registered name"):
        resolve_method(3)
    with pytest.raises(TypeError, match="SmoothGrad has no option 'sample'"):
        resolve_method("smoothgrad", {"sample": 3}).bind(small_mlp())
    with pytest.raises(TypeError, match="plain callable; it takes no options"):
        resolve_method(lambda m, x, t: x).bind(small_mlp(), differentiable=True)
    with pytest.raises(ValueError, match="two methods are labelled 'gradient'"):
        named_methods(["gradient", tribute.Gradient])
    with pytest.raises(TypeError, match="a registered method name or a tribute Method class"):
        ea.topk_attack(small_mlp(), torch.randn(2, 5, dtype=DT), k=2, eps=0.1, steps=1,
                       method=lambda m, x, t: x)


# -- the target validator ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, options, error, message", [
    (True, {}, TypeError, "got a bool"),
    (-1, {}, IndexError, r"target classes must be >= 0, got -1"),
    (torch.tensor([0, -2]), {}, IndexError, r"target classes must be >= 0, got -2"),
    (torch.tensor([0.0, 1.0]), {}, TypeError, "a target tensor must hold integers, got dtype torch.float32"),
    (torch.zeros(2, 2, dtype=torch.long), {}, ValueError, r"one class per sample: expected shape \(N,\)"),
    (torch.tensor([0, 1, 2]), {"samples": 2}, ValueError, r"expected shape \(2,\), got \(3,\)"),
    ("label", {}, TypeError, "got the string 'label'"),
    ("labels", {"label": True}, TypeError, "'label' or None; got the string 'labels'"),
    (1.5, {}, TypeError, "got float"),
    (lambda out: out[:, 0], {"refuse": {"callable": "it needs classes"}}, ValueError,
     "a target callable is not accepted here: it needs classes"),
])
def test_each_target_refusal_names_the_problem(target, options, error, message):
    with pytest.raises(error, match=message):
        check_target(target, **options)


def test_target_kinds():
    assert check_target(None) == "none" and check_target(2) == "int" and check_target("label", label=True) == "label"
    assert check_target(torch.tensor([1, 0]), samples=2) == "tensor" and check_target(abs) == "callable"


def test_negative_targets_are_refused_everywhere_and_roar_says_why_it_refuses_a_tensor():
    model = small_mlp()
    x = torch.randn(6, 5, dtype=DT, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for call in (lambda: tribute.explain(model, x, "gradient", target=-1),
                 lambda: tribute.evaluate(model, x, ["gradient"], ["aopc_morf"], target=-1, progress=False),
                 lambda: tribute.evaluate(model, x, ["gradient"], ["aopc_morf"], target=-y, progress=False),
                 lambda: metrics.max_sensitivity(model, x, "gradient", target=-2),
                 lambda: metrics.roar(model, (x, y), (x, y), ["gradient"], target=-1, progress=False)):
        with pytest.raises(IndexError, match=">= 0"):
            call()
    with pytest.raises(ValueError, match="one tensor cannot serve both the training and the test set"):
        metrics.roar(model, (x, y), (x, y), ["gradient"], target=y, progress=False)


# -- the metrics registry ---------------------------------------------------------------------------------------
def _is_metric(fn) -> bool:
    """A public function ``fn(model, inputs, attributions or method, target, ...)``."""
    if not inspect.isfunction(fn):
        return False
    names = list(inspect.signature(fn).parameters)[:4]
    return names[:2] == ["model", "inputs"] and names[2:] in (["attributions", "target"], ["method", "target"])


def test_every_public_metric_is_registered_with_its_metadata():
    specs = metric_specs()
    public = {name: getattr(metrics, name) for name in metrics.__all__}
    # explanation_changes has the form but returns the raw draws of the three robustness metrics, not a score
    found = {name for name, fn in public.items() if _is_metric(fn)} - {"explanation_changes"}
    assert found == {"pixel_perturbation", "deletion", "insertion", "road", "infidelity", "completeness_gap",
                     "sensitivity_n", "max_sensitivity", "avg_sensitivity", "local_lipschitz", "class_sensitivity",
                     "parameter_randomisation", "label_randomisation"}
    registered = {spec.fn for spec in specs.values()}
    assert {public[name] for name in found} == registered
    for name, spec in specs.items():
        assert spec.better in BETTER and spec.per_sample == ("randomisation" not in name), name
        third = list(inspect.signature(spec.fn).parameters)[2]
        assert spec.kind == (ATTRIBUTIONS if third == "attributions" else METHOD), name
    assert specs["aopc_morf"].options == {"order": "morf"} and specs["aopc_lerf"].better == "lower"
    assert specs["completeness_gap"].absolute


def test_evaluates_table_is_the_registry():
    per_sample = {name: spec for name, spec in metric_specs().items() if spec.per_sample}
    assert named_metrics(list(per_sample)) == per_sample
    assert metrics.metric_names() == sorted(per_sample) == evaluate_metric_names()
    with pytest.raises(ValueError, match="unknown metric 'parameter_randomisation'"):
        named_metrics(["parameter_randomisation"])  # not per sample: evaluate cannot tabulate it


def test_a_metric_name_is_registered_once():
    with pytest.raises(ValueError, match="a metric named 'deletion' is already registered"):
        register_metric("deletion", takes=ATTRIBUTIONS, better="lower")(lambda model, inputs, attributions, t: 0)
    with pytest.raises(ValueError, match="better must be one of"):
        register_metric("new", takes=ATTRIBUTIONS, better="up")


# -- train mode refused before the first forward pass -----------------------------------------------------------
def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 8 * 8, 3)).train()


X = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
Y = torch.tensor([0, 1, 2, 0])
A = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(6))
ENTRY_POINTS = {
    "pixel_perturbation": lambda m: metrics.pixel_perturbation(m, X, A),
    "deletion": lambda m: metrics.deletion(m, X, A),
    "insertion": lambda m: metrics.insertion(m, X, A),
    "road": lambda m: metrics.road(m, X, A),
    "infidelity": lambda m: metrics.infidelity(m, X, A),
    "completeness_gap": lambda m: metrics.completeness_gap(m, X, A),
    "sensitivity_n": lambda m: metrics.sensitivity_n(m, X, A, samples=2),
    "input_invariance": lambda m: metrics.input_invariance(m, X, "gradient", 0.5),
    "implementation_invariance": lambda m: metrics.implementation_invariance(m, m, X, "gradient"),
    "absorb_shift": lambda m: metrics.absorb_shift(m, 0.5, X),
    "max_sensitivity": lambda m: metrics.max_sensitivity(m, X, "gradient", samples=2),
    "avg_sensitivity": lambda m: metrics.avg_sensitivity(m, X, "gradient", samples=2),
    "local_lipschitz": lambda m: metrics.local_lipschitz(m, X, "gradient", samples=2),
    "class_sensitivity": lambda m: metrics.class_sensitivity(m, X, "gradient"),
    "alignment": lambda m: metrics.alignment(m, X),
    "cosine_alignment": lambda m: metrics.cosine_alignment(m, X),
    "parameter_randomisation": lambda m: metrics.parameter_randomisation(m, X, "gradient"),
    "label_randomisation": lambda m: metrics.label_randomisation(m, X, "gradient", train_data=(X, Y),
                                                                 train_options={"epochs": 1, "lr": 0.1}),
    "roar": lambda m: metrics.roar(m, (X, Y), (X, Y), ["gradient"], progress=False),
    "evaluate": lambda m: metrics.evaluate(m, X, ["gradient"], ["aopc_morf"], progress=False),
    "topk_attack": lambda m: ea.topk_attack(m, X, k=3, eps=0.1, steps=1),
    "center_attack": lambda m: ea.center_attack(m, X, eps=0.1, steps=1),
    "manipulate_explanation": lambda m: ea.manipulate_explanation(m, X, A, eps=0.1, gamma=1.0, steps=1),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_model_in_train_mode_is_refused_before_it_is_changed(entry):
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"train mode.*call model.eval\(\)"):
        ENTRY_POINTS[entry](model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]) and v.dtype == after[k].dtype, k
    assert int(after["1.num_batches_tracked"]) == 0 and model.training


# -- input invariance of a stochastic method (Kindermans et al. 2019) -------------------------------------------
@pytest.fixture(scope="module")
def fashion64():
    return fashion_fixture(4, dtype=DT)


def test_smoothgrad_of_the_gradient_is_input_invariant_with_the_same_noise(fashion64):
    model, x, y = fashion64
    smooth = input_invariance_of(model, x, y, "smoothgrad", samples=8)
    assert float(smooth.max()) < 1e-6, smooth
    smooth_x_input = input_invariance_of(model, x, y, "smoothgrad", samples=8, base="input_x_gradient")
    assert float(smooth_x_input.min()) > 0.3, smooth_x_input

    def unkeyed(m, rows, target):  # the noise follows each input's own bytes: x and x + m draw differently
        return tribute.SmoothGrad(m, samples=8, seed=0).attribute(rows, target)
    assert float(input_invariance_of(model, x, y, unkeyed).min()) > 0.05


def input_invariance_of(model, x, y, method, **options):
    return metrics.input_invariance(model, x, method, -1.0, target=y, **options)


# -- the trainer hook (ROAR and label randomisation) ------------------------------------------------------------
def test_the_trainer_hook_passes_a_seed_to_a_train_fn_that_takes_one_and_checks_the_result():
    from tribute.training import trainer

    seen = []

    def with_seed(model, x, y, *, seed):
        seen.append(seed)

    def without_seed(model, x, y):
        seen.append("none")
        return model

    model, x, y = small_mlp(), torch.zeros(2, 5, dtype=DT), torch.tensor([0, 1])
    assert trainer(with_seed, owner="roar")(model, x, y, 7) is model  # None: trained in place
    assert trainer(without_seed, owner="roar")(model, x, y, 7) is model
    assert seen == [7, "none"]
    with pytest.raises(TypeError, match="train_fn must return the trained nn.Module or None, got int"):
        trainer(lambda m, x, y: 3, owner="roar")(model, x, y, 0)
    with pytest.raises(TypeError, match="a train_fn takes its own"):
        trainer(without_seed, {"epochs": 1}, owner="roar")
    with pytest.raises(TypeError, match="label_randomisation trains with tribute.training.fit.*epochs and lr"):
        trainer(None, {}, owner="label_randomisation", required=("epochs", "lr"))
    with pytest.raises(TypeError, match="the trainer's seed is roar's seed="):
        trainer(None, {"seed": 1}, owner="roar")
    # label randomisation hands its seed to a train_fn that takes one, as ROAR does
    seen.clear()
    metrics.label_randomisation(small_mlp(), torch.randn(3, 5, dtype=DT), "gradient", train_data=(x, y),
                                train_fn=with_seed, seed=5)
    assert seen == [5]
