"""Any callable is a model, and one in train mode is refused before any of its state changes (issue 12).

A plain function hides its modules from ``check_model``: a lambda naming a module-level global, a closure,
a ``functools.partial`` and a bound method.  The engine's guard sees the train-mode op itself
(``F.batch_norm(training=True)``, ``F.dropout(training=True)``) and raises before it runs, so the batch-norm
buffers are what they were.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import ResidualCNN, randomise_bn
from torch import nn

import tribute
from tribute.core.train_guard import TrainModeError

NET = randomise_bn(ResidualCNN())  # module level, in train mode: the lambda below names this global


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def _unchanged(model, before):
    after = dict(model.named_buffers())
    return all(torch.equal(before[k], after[k]) for k in before)


def _closure(net):
    def run(x):
        return net(x)
    return run


def _two_argument(x, scale, net):
    return net(x) * scale


FORMS = {
    "lambda naming a global": lambda: (lambda x: NET(x)),  # noqa: PLW0108
    "closure": lambda: _closure(NET),
    "partial": lambda: functools.partial(_two_argument, scale=2.0, net=NET),
    "bound method": lambda: NET.forward,
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("method", ["integrated_gradients", "gradient", "deeplift", "lrp"])
def test_a_train_mode_model_hidden_in_a_function_is_refused_unchanged(form, method):
    NET.train()
    before = _buffers(NET)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(TrainModeError, match=r"BatchNorm2d in train mode.*\.eval\(\).*nothing has changed"):
        tribute.explain(FORMS[form](), x, method, **tribute.get_method(method).example_options)
    assert _unchanged(NET, before)
    # target=None is resolved by a forward pass: that pass is refused before it changes anything too
    with pytest.raises(TrainModeError):
        tribute.explain(FORMS[form](), x, method, target=1, **tribute.get_method(method).example_options)
    assert _unchanged(NET, before)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_the_same_functions_run_in_eval_mode(form):
    NET.eval()
    try:
        x = torch.randn(2, 3, 8, 8)
        a = tribute.explain(FORMS[form](), x, "gradient", target=1)
        leaf = x.clone().requires_grad_()
        FORMS[form]()(leaf)[:, 1].sum().backward()
        torch.testing.assert_close(a, leaf.grad, rtol=0, atol=0)
    finally:
        NET.train()


def test_dropout_in_train_mode_behind_a_lambda_is_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))  # train mode by default
    with pytest.raises(TrainModeError, match="Dropout in train mode"):
        tribute.explain(lambda x: net(x), torch.randn(3, 4), "integrated_gradients", target=0, steps=4)


def test_functional_dropout_with_its_default_is_train_mode():
    # F.dropout's training argument defaults to True: a model calling it bare samples noise on every pass
    with pytest.raises(TrainModeError, match="dropout with training=True"):
        tribute.explain(lambda x: torch.nn.functional.dropout(x, 0.1).sum(1, keepdim=True), torch.randn(3, 4),
                        "gradient", target=0)


def test_instance_norm_without_running_statistics_is_not_train_mode():
    norm = nn.InstanceNorm1d(2)  # no running statistics: each sample normalised by itself, in any mode
    x = torch.randn(3, 2, 5)
    a = tribute.explain(lambda t: norm(t).flatten(1)[:, :1], x, "gradient", target=0)
    assert a.shape == x.shape


def test_the_guard_leaves_no_hook_and_does_not_touch_other_threads():
    import threading

    hooks = torch.nn.modules.module._global_forward_pre_hooks
    before = len(hooks)
    evaluated = randomise_bn(ResidualCNN()).eval()
    started, proceed, seen = threading.Event(), threading.Event(), {}

    def slow_model(x):
        started.set()
        proceed.wait(10)
        return evaluated(x)

    def other_thread():
        started.wait(10)
        bn = nn.BatchNorm1d(3)  # train mode, outside tribute: must run as usual while the call is guarded
        try:
            bn(torch.randn(4, 3))
            seen["ok"] = int(bn.num_batches_tracked)
        except Exception as e:  # noqa: BLE001
            seen["error"] = e
        proceed.set()

    t = threading.Thread(target=other_thread)
    t.start()
    tribute.explain(slow_model, torch.randn(2, 3, 8, 8), "gradient", target=0)
    t.join()
    assert seen == {"ok": 1}
    assert len(hooks) == before
    with pytest.raises(TrainModeError):
        tribute.explain(lambda x: NET.train()(x), torch.randn(2, 3, 8, 8), "gradient", target=0)
    assert len(hooks) == before
