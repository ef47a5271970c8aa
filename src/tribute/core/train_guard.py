"""Refuse a model in train mode *before* it changes, also when it is hidden in a plain function.

:func:`tribute.core.engine.check_model` reads the ``training`` flag of an ``nn.Module``'s submodules.  A
model given as a function (``lambda x: net(x, mask)``, a closure, a ``functools.partial``, a bound method)
hides its modules; inspecting closures would miss a lambda that names a module-level global.  What every
form has in common is the call that would change state or mix samples: ``F.batch_norm(…, training=True)``
updates the running statistics and normalises across the batch, ``F.dropout(…, training=True)`` samples
noise, ``F.instance_norm`` with running statistics and ``use_input_stats=True`` updates them.  While the
function runs, a ``TorchFunctionMode`` sees these calls and raises before the op runs, so no buffer has
changed when the error reaches the user.  Batch norm counts its batches (``num_batches_tracked += 1``) in
Python before it calls ``F.batch_norm``, so modules are checked before their forward runs too, by a global
module pre-hook that is registered only while some thread runs a guarded function and acts only on that
thread (:func:`refuse_train_mode`).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator

import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# Modules whose output depends on ``training``: attributing through them in train mode mixes samples
# (batch norm statistics) or adds noise (dropout), so train mode is refused rather than changed.
MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.AlphaDropout,
                  nn.FeatureAlphaDropout, nn.modules.instancenorm._InstanceNorm)

# function → (the argument that means "training", whether it matters only with running statistics given)
_TRAINING_ARGUMENT = {
    F.batch_norm: ("training", True),
    F.dropout: ("training", False),
    F.dropout1d: ("training", False),
    F.dropout2d: ("training", False),
    F.dropout3d: ("training", False),
    F.alpha_dropout: ("training", False),
    F.feature_alpha_dropout: ("training", False),
    F.instance_norm: ("use_input_stats", True),
}
_SIGNATURES = {f: inspect.signature(f) for f in _TRAINING_ARGUMENT}


class TrainModeError(ValueError):
    """The model runs an op in training mode (batch norm with batch statistics, dropout)."""


class TrainModeGuard(TorchFunctionMode):
    """Raise :class:`TrainModeError` at the first call that would run in training mode (see the module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spec = _TRAINING_ARGUMENT.get(func)
        if spec is not None:
            _refuse_training(func, spec, args, kwargs)
        return func(*args, **kwargs)


def _refuse_training(func, spec, args, kwargs) -> None:
    flag, needs_stats = spec
    try:
        bound = _SIGNATURES[func].bind(*args, **kwargs)
    except TypeError:
        return  # a call the function itself will reject
    bound.apply_defaults()
    if not bound.arguments.get(flag):
        return
    if needs_stats and bound.arguments.get("running_mean") is None:
        # no running statistics: nothing to update, and .eval() would not change the op (instance norm
        # normalises each sample by itself; batch norm without running statistics always uses the batch's)
        return
    raise TrainModeError(
        f"the model calls {func.__name__} with {flag}=True (train mode): it would update running statistics or "
        "sample noise, and mix or randomise the samples' outputs. Call .eval() on the modules the model uses "
        "(the function was stopped before the op ran; nothing has changed)"
    )


def _refuse_module(module: nn.Module, args) -> None:
    if getattr(_local, "depth", 0) and isinstance(module, MODE_DEPENDENT) and module.training:
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and not module.track_running_stats:
            return  # per-sample normalisation, no state: the same in either mode
        raise TrainModeError(
            f"the model runs {type(module).__name__} in train mode: it would update running statistics or sample "
            "noise, and mix or randomise the samples' outputs. Call .eval() on the modules the model uses (the "
            "module was stopped before its forward ran; nothing has changed)"
        )


_local = threading.local()
_lock = threading.Lock()
_hook: list = []  # the global pre-hook's handle while any thread is guarded, with the number of guarded calls


@contextlib.contextmanager
def refuse_train_mode() -> Iterator[None]:
    """Within this block, this thread's train-mode modules and ops raise :class:`TrainModeError` before they run."""
    with _lock:
        if not _hook:
            _hook.extend([nn.modules.module.register_module_forward_pre_hook(_refuse_module), 0])
        _hook[1] += 1
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        with TrainModeGuard():
            yield
    finally:
        _local.depth -= 1
        with _lock:
            _hook[1] -= 1
            if _hook[1] == 0:
                _hook[0].remove()
                _hook.clear()
