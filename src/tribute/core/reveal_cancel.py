"""DeepLIFT's RevealCancel rule (Shrikumar et al. 2017, §3.5.3): positive and negative parts apart.

Input and reference run as one batch of 2N rows.  Beside every tensor on the input's path the pass
carries the positive and negative parts of its difference from the reference, Δ = Δ⁺ + Δ⁻ (2N rows; the
reference rows hold zeros), built with autograd from Δx⁺ = max(x − x̄, 0) and Δx⁻ = min(x − x̄, 0):

- a linear layer: Δz⁺ = W⁺Δx⁺ + W⁻Δx⁻ and Δz⁻ = W⁻Δx⁺ + W⁺Δx⁻ (biases cancel in differences);
- an elementwise nonlinearity y = f(z) with reference z̄:
  Δy⁺ = ½[f(z̄ + Δz⁺) − f(z̄)] + ½[f(z̄ + Δz⁻ + Δz⁺) − f(z̄ + Δz⁻)], and Δy⁻ likewise with ⁺ and ⁻ swapped,
  whose multipliers are m⁺ = Δy⁺/Δz⁺ and m⁻ = Δy⁻/Δz⁻ (backward of :class:`_RevealCancel`);
- sums, means, average pooling, reshapes and indexing act on both parts; a scaling splits by the sign
  of its factor; max pooling passes the parts of the entry selected at the input.
Contributions are m⁺ ⊙ Δx⁺ + m⁻ ⊙ Δx⁻ and sum to S_c(x) − S_c(x̄) exactly.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from .nonlinearities import Nonlinearity
from .propagation import _INPLACE, _MOVES, parse_linear
from .rules import Rule, derivative

_ATTR = "_tribute_twins"
# linear with non-negative coefficients: both parts go through unchanged
_POSITIVE = {"sum", "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
             "adaptive_avg_pool3d", "interpolate", "upsample"}
_MAXPOOL = {"max_pool2d", "_max_pool2d", "max_pool2d_with_indices"}


def twins(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pair = getattr(t, _ATTR, None)
    if pair is None:
        raise RuntimeError("RevealCancel lost track of a tensor's differences (an op it does not handle?)")
    return pair


def _split(c, pos, neg):
    """c ⊙ (pos, neg) with the parts swapped where c < 0."""
    cp, cn = c.clamp(min=0), c.clamp(max=0)
    return cp * pos + cn * neg, cn * pos + cp * neg


class _RevealCancel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dp, dn, zbar, nl, params):
        f = lambda t: nl(t, **params)  # noqa: E731
        f0, fp, fn, fpn = f(zbar), f(zbar + dp), f(zbar + dn), f(zbar + dp + dn)
        yp = 0.5 * (fp - f0) + 0.5 * (fpn - fn)
        yn = 0.5 * (fn - f0) + 0.5 * (fpn - fp)
        ctx.save_for_backward(dp, dn, zbar, yp, yn)
        ctx.nl, ctx.params = nl, params
        return yp, yn

    @staticmethod
    def backward(ctx, gp, gn):
        dp, dn, zbar, yp, yn = ctx.saved_tensors
        tiny = 1e-12

        def d(t):
            return derivative(ctx.nl, t, ctx.params)

        # where a part vanishes, its multiplier is the limit of the ratio: the mean slope of the two halves
        mp = torch.where(dp.abs() > tiny, yp / torch.where(dp.abs() > tiny, dp, 1.0), 0.5 * (d(zbar) + d(zbar + dn)))
        mn = torch.where(dn.abs() > tiny, yn / torch.where(dn.abs() > tiny, dn, 1.0), 0.5 * (d(zbar) + d(zbar + dp)))
        return gp * mp, gn * mn, None, None, None


class RevealCancelRule(Rule):
    """At a nonlinearity: the plain forward, and the RevealCancel parts of its difference beside it."""

    name = "reveal_cancel"
    saves_input = False  # the parts are saved by _RevealCancel; z itself is not

    def apply(self, nl: Nonlinearity, z, params, phase):
        y = nl(z, **params)
        dp, dn = twins(z)
        n = z.shape[0] // 2
        zbar = torch.cat([z[n:], z[n:]]).detach()
        y._tribute_twins = _RevealCancel.apply(dp, dn, zbar, nl, params)
        return y


class RevealCancelOps:
    """The op handler of the RevealCancel rule set (see the module doc)."""

    name = "reveal_cancel"

    def key(self) -> tuple:
        return ("reveal_cancel",)

    def start(self) -> _Pass:
        return _Pass()


class _Pass:
    unruled: list[str]

    def __init__(self):
        self.unruled = []

    def track_modules(self, model):
        return contextlib.nullcontext()

    def count_consumers(self, args, kwargs, tagged) -> None:
        pass

    def before_write(self, t, writer=None) -> None:  # keeps nothing by reference
        pass

    def handle(self, func, args, kwargs, tagged, name):
        out = func(*args, **kwargs)
        if not isinstance(out, (torch.Tensor, list, tuple)) or (
            isinstance(out, (list, tuple)) and not all(isinstance(o, torch.Tensor) for o in out)
        ):
            return out  # metadata (x.shape, x.dim()) carries no differences
        parts = self._parts(func, args, kwargs, tagged, name, out)
        if isinstance(out, torch.Tensor):
            out._tribute_twins = parts
        else:
            for o, p, q in zip(out, *parts, strict=True):
                o._tribute_twins = (p, q)
        return out

    def _parts(self, func, args, kwargs, tagged, name, out) -> Any:
        parsed = parse_linear(func, args, kwargs)
        if parsed is not None:
            _, x, w, _, op = parsed
            if not tagged(x) or tagged(w):
                raise ValueError(f"RevealCancel: {name} with weights computed from the input is not supported")
            dp, dn = twins(x)
            w = w.detach()
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            return op(dp, wp, None) + op(dn, wn, None), op(dp, wn, None) + op(dn, wp, None)
        suffix = name.rsplit(".", 1)[-1]
        base = _INPLACE.get(suffix, suffix)
        on_path = [a for a in args if tagged(a)] + [v for v in kwargs.values() if tagged(v)]
        if base in ("add", "__add__", "__radd__"):
            if kwargs.get("alpha", 1) != 1:
                raise ValueError("RevealCancel: add with alpha is not supported")
            pairs = [twins(a) for a in on_path]
            return sum(p for p, _ in pairs), sum(q for _, q in pairs)
        if base in ("sub", "__sub__", "__rsub__"):
            first, second = (args[0], args[1]) if base != "__rsub__" else (args[1], args[0])
            zero = (0, 0)
            (ap, an), (bp, bn) = (twins(first) if tagged(first) else zero), (twins(second) if tagged(second) else zero)
            return ap - bn, an - bp
        if base in ("neg", "__neg__"):
            p, q = twins(args[0])
            return -q, -p
        if base in ("mul", "__mul__", "__rmul__", "div", "__truediv__"):
            if len(on_path) != 1:
                raise ValueError("RevealCancel: a product of two tensors on the input's path has no rule")
            t = on_path[0]
            other = next(a for a in args if a is not t)
            c = torch.as_tensor(other, dtype=t.dtype, device=t.device).detach()
            return _split(1 / c if base in ("div", "__truediv__") else c, *twins(t))
        if suffix == "batch_norm":
            p_ = dict(zip(("input", "running_mean", "running_var", "weight", "bias", "training"), args, strict=False))
            p_.update(kwargs)
            scale = torch.rsqrt(p_["running_var"].detach() + p_.get("eps", kwargs.get("eps", 1e-5)))
            if p_.get("weight") is not None:
                scale = scale * p_["weight"].detach()
            return _split(scale.view(1, -1, *([1] * (out.dim() - 2))), *twins(p_["input"]))
        if suffix in _MAXPOOL:
            x = args[0]
            kw = dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), args[1:], strict=False))
            kw.update({k: v for k, v in kwargs.items() if k != "return_indices"})
            _, idx = F.max_pool2d(x.detach(), return_indices=True, **kw)
            n = x.shape[0] // 2
            idx = torch.cat([idx[:n], idx[:n]])  # the entries selected at the input, for both halves
            return tuple(t.flatten(2).gather(2, idx.flatten(2)).view_as(idx) for t in twins(x))
        if base in _POSITIVE or suffix in _MOVES:
            return tuple(self._substitute(func, args, kwargs, tagged, k) for k in (0, 1))
        raise ValueError(f"RevealCancel has no rule for {name} on the input's path")

    def _substitute(self, func, args, kwargs, tagged, k):
        def sub(a):
            if isinstance(a, (list, tuple)):
                return type(a)(sub(b) for b in a)
            return twins(a)[k] if tagged(a) else a

        return func(*(sub(a) for a in args), **{key: sub(v) for key, v in kwargs.items()})
