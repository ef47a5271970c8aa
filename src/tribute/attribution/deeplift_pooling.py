"""DeepLIFT at 2-d max pooling: per window, M Δx = Δy exactly, as at the other multivariate ops.

Max pooling takes each window's largest entry.  Passing the signal to the entry selected at the input (the
gradient, Shrikumar et al.'s (2017) choice for max pooling) gives Δx_{i*}, which is not Δy = max(x) − max(x̄)
where input and reference select different entries: on a VGG-11 in a realistic state, the sum then missed
S(x) − S(x̄) by 3.1 × |S(x) − S(x̄)| (measured, torchvision zoo).  Each window is a group as in
:mod:`.deeplift_multivariate`: J̄ is max's Jacobian averaged along the segment from x̄ to x (the fraction of the
segment over which each entry is the largest, by the Gauss–Legendre nodes of the rule), corrected per window,

    M_w = J̄_w + (Δy_w − J̄_w Δx) Δx_wᵀ / ‖Δx_w‖²,

so Mᵀg = J̄ᵀg + Δx ⊙ Σ_w [window w] g_w (Δy_w − J̄_wΔx)/‖Δx_w‖² also where windows overlap (3×3 stride 2).
A window where input and reference select the same entry keeps the gradient exactly (Δy = Δx there, whatever
the selection does in between), so the nodes are computed only when some window's selection differs.  Max's
Jacobian along the segment is a step function, which no number of nodes integrates exactly; by default
(``nodes=0``) J̄ is the mean of its two ends, the selections at the reference and at the input (the trapezoid
rule), which costs no further pooling pass (8 Gauss–Legendre nodes took torchvision's VGG-11 at 64×64 from
1.9× to 2.9× a forward and backward pass, measured), and the correction makes every window exact.
``MaxPoolRule(nodes=8)`` takes Gauss–Legendre nodes instead.

Every other switch (1-d/3-d and adaptive max pooling, a dilation or ``return_indices``, ``x.max(dim)``, ``amax``,
``topk``, …) keeps the gradient at the input's selection where that is exact, which :class:`SelectionCheck` verifies
on every call, and is refused (a warning with ``strict=False``) where it is not.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..core.rule_registry import OpRule
from .deeplift_multivariate import MultiplierNode, difference, node_count, quadrature_nodes
from .deeplift_ops import call_arg, check_pairs, halves


class _Pool:
    """One max-pooling call: its windows, max over them with indices, and the sum over them."""

    def __init__(self, kernel, stride, padding, ceil_mode, nodes):
        self.kw = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
        self.alphas, self.weights = quadrature_nodes(nodes) if nodes else ([], [])

    def max(self, t: torch.Tensor, indices: bool = False) -> Any:
        return F.max_pool2d(t, **self.kw, return_indices=indices)

    def f(self, t: torch.Tensor) -> torch.Tensor:
        return self.max(t)

    def window_sums(self, t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, **self.kw, count_include_pad=True, divisor_override=1)

    def spread(self, coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Σ_w [i ∈ window w] coef_w for every entry i: the VJP of the window sums (differentiable in grad mode)."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            leaf = torch.zeros_like(like).requires_grad_()
            (d,) = torch.autograd.grad(self.window_sums(leaf), leaf, coef, create_graph=create_graph)
        return d

    def multiplier(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Mᵀg for both halves; windows whose selection is the same at every node and at the input keep the
        gradient exactly (J̄ = J(x), Δy = J̄Δx with no rounding), as without this rule."""
        (xx, xr), (yx, yr), (gx, gr) = halves(x), halves(y), halves(g)
        dx, dy = difference(xx, xr), difference(yx, yr)
        gs = [gx, gr] if bool(gr.ne(0).any()) else [gx]
        at_input, at_reference = self.max(xx, indices=True)[1], self.max(xr, indices=True)[1]
        # where the reference selects the same entry, Δy = Δx there exactly, whatever the path does in between
        same = at_reference == at_input
        if bool(same.all()):
            return torch.cat([_route(g_, at_input, dx) for g_ in (gx, gr)])
        if self.alphas:
            picks, weights = [self.max(xr + a * dx, indices=True)[1] for a in self.alphas], self.weights
        else:  # the two ends (trapezoid rule): no further pooling pass
            picks, weights = [at_reference, at_input], [0.5, 0.5]
        jdx = torch.where(same, _at(dx, at_input), sum(w * _at(dx, p) for w, p in zip(weights, picks, strict=True)))
        n2 = self.window_sums(dx * dx)
        tiny = torch.finfo(x.dtype).eps ** 2 * (1 + self.window_sums(xx * xx))
        moved = (n2 > tiny) & ~same
        safe = torch.where(moved, n2, torch.ones_like(n2))
        ms = []
        for g_ in gs:
            v = _route(torch.where(same, g_, 0.0), at_input, dx)
            for w, p in zip(weights, picks, strict=True):
                v = v + w * _route(torch.where(same, 0.0, g_), p, dx)
            ms.append(v + dx * self.spread(torch.where(moved, g_ * (dy - jdx) / safe, 0.0), dx))
        return torch.cat([ms[0], ms[1] if len(ms) > 1 else torch.zeros_like(ms[0])])

    def true_vjp(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return _route(g, self.max(x, indices=True)[1], x)


def _at(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t at each window's selected entry (``idx`` from max pooling: flat positions per (N, C) plane)."""
    return t.flatten(2).gather(2, idx.flatten(2)).view_as(idx)


def _route(g: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Each window's g added at its selected entry: the VJP of max pooling at the selection ``idx``."""
    return torch.zeros_like(like).flatten(2).scatter_add(2, idx.flatten(2), g.flatten(2)).view_as(like)


class MaxPoolRule(OpRule):
    """DeepLIFT at ``max_pool2d``: the averaged, corrected Jacobian per window (module doc), exact where input
    and reference select different entries.  ``F.max_pool2d(x, kernel_size, stride, padding, dilation,
    ceil_mode, return_indices)``; with a dilation ≠ 1 or ``return_indices`` the :class:`SelectionCheck`."""

    name = "max_pool"

    def __init__(self, nodes: int = 0):
        self.nodes = node_count(nodes, least=0)  # 0: the two ends (see the module doc)

    def apply(self, handler, func, args, kwargs, tagged, name):
        x = args[0] if args else kwargs.get("input")
        kernel = call_arg(args, kwargs, 1, "kernel_size")
        stride = call_arg(args, kwargs, 2, "stride") or kernel
        dilation = call_arg(args, kwargs, 4, "dilation", 1)
        if not tagged(x) or x.dim() != 4 or call_arg(args, kwargs, 6, "return_indices", False) or dilation not in (
                1, (1, 1), [1, 1]):
            return SelectionCheck().apply(handler, func, args, kwargs, tagged, name)  # exact, or refused
        check_pairs(x, name)
        padding, ceil_mode = call_arg(args, kwargs, 3, "padding", 0), bool(call_arg(args, kwargs, 5, "ceil_mode"))
        pool = _Pool(kernel, stride, padding, ceil_mode, self.nodes)
        return MultiplierNode.apply(x, pool, getattr(handler, "phase", None))


# Switches other than 2-d max pooling: they pass the signal to the entries the *input* selects, which is DeepLIFT's
# exact multiplier only where the reference selects entries of the same values.
SELECTIONS = ("max_pool1d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
              "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
              "max", "min", "amax", "amin", "median", "nanmedian", "kthvalue", "topk", "sort", "cummax", "cummin")


def _values(out: Any) -> torch.Tensor:
    """The float values a switch returns (``torch.max(x, dim)`` and ``return_indices=True`` add indices)."""
    return out if isinstance(out, torch.Tensor) else next(o for o in out if o.is_floating_point())


def gradient_is_exact(func, args: tuple, kwargs: dict, out: Any) -> bool:
    """Whether the gradient at the input's selection is DeepLIFT's exact multiplier for this call of a switch:
    J(x)·Δx = Δy in every output (J(x) the switch's Jacobian at the input half, Δ the input half minus the
    reference half), checked to rounding with a forward-mode product."""
    x = args[0]
    xx, xr = halves(x)
    yx, yr = halves(_values(out))
    with torch.no_grad():
        _, jvp = torch.func.jvp(lambda t: _values(func(t, *args[1:], **kwargs)), (xx.detach(),),
                                (difference(xx, xr).detach(),))
        dy = difference(yx, yr)
        finite = torch.isfinite(yx) & torch.isfinite(yr)
        scale = torch.where(finite, yx.abs() + yr.abs(), 0.0)
        return bool(((jvp - dy).abs() <= 16 * torch.finfo(x.dtype).eps * scale).logical_or(~finite).all())


class SelectionCheck(OpRule):
    """DeepLIFT at a switch with no rule of its own (1-d/3-d and adaptive max pooling, ``return_indices`` or a
    dilation, ``x.max(dim)``, ``amax``, ``topk``, …): the gradient at the input's selection is exact where the
    reference selects entries of the same values (Δy = J(x)Δx, checked on every call); elsewhere the call is
    reported as having no rule, so the method refuses it (or warns with ``strict=False``) rather than return a
    sum that silently misses S(x) − S(x̄)."""

    name = "selection_check"

    def apply(self, handler, func, args, kwargs, tagged, name):
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and tagged(x) and x.dim() > 0 and x.shape[0] % 2 == 0
                and sum(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values())) == 1):
            return NotImplemented  # another call form (torch.max(a, b) is no switch): the engine decides
        out = func(*args, **kwargs)
        if gradient_is_exact(func, args, kwargs, out):
            return out
        handler.unruled.append(name)  # the engine runs it plainly and reports it without a rule
        return NotImplemented
