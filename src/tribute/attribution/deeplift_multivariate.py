"""DeepLIFT at multivariate ops: softmax, log-softmax, the normalisations (LayerNorm, GroupNorm, RMSNorm, instance
norm, ``F.normalize``): multipliers M with M Δx = Δy exactly, per independent group of entries.

Such an op maps each *group* of entries (one softmax vector, one normalised group) to a group of outputs, so
DeepLIFT's Rescale ratio Δy/Δx (Shrikumar et al. 2017, Eq 2–3) has no meaning there: a multiplier is a matrix
per group, and summation-to-delta asks M Δx = Δy (the chain rule for multipliers, Shrikumar et al. 2017, §3.3).
:class:`AveragedJacobian` takes

    J̄ = ∫₀¹ J(x̄ + α Δx) dα   (the op's Jacobian averaged along the segment from the reference x̄ to x),
    M = J̄ + (Δy − J̄ Δx) Δxᵀ / ‖Δx‖²   per group.

*Why J̄.*  It is the multiplier integrated gradients assigns to the op (Ancona et al. 2018, §3: DeepLIFT with
Rescale and IG coincide along a straight path when every op is elementwise), so it generalises Rescale:
on a group of one entry J̄ = Δy/Δx, Rescale's secant.  With the integral exact, J̄ Δx = Δy by the fundamental
theorem of calculus on the segment, and M = J̄.
*Why the correction.*  The integral is computed by Gauss–Legendre quadrature with ``nodes`` points
(:func:`tribute.core.quadrature.quadrature`); the rank-one term, the update of least Frobenius norm that makes
M Δx = Δy (Broyden 1965), removes what the quadrature leaves, so summation-to-delta holds to rounding whatever
the number of nodes.  On a group of one entry M is Rescale's ratio exactly, for any number of nodes.
LayerNorm, GroupNorm and RMSNorm need no nodes: their J̄ has a closed form (:mod:`.deeplift_norms`), exact
also where the segment passes near zero variance and 1/σ peaks sharply (there 8 nodes left ‖Δy − J̄Δx‖ up to
14% of ‖Δy‖ on the zoo's ConvNeXt and Swin).
*How many nodes* (softmax, log-softmax, softmin, instance norm, ``F.normalize``).  The ops are analytic along
the segment, so Gauss–Legendre converges geometrically; 8 nodes (exact for polynomials of degree 15) leave
‖Δy − J̄Δx‖/‖Δy‖ at most 3e-8 over every attention softmax of the zoo's ViT, Swin, BERT and GPT-2, and on
random scores (N(0, 1)·2) φ within 4e-7 of the integral's; a softmax that sharpens along the segment (scores
twice as spread) needs more: 1.6e-3 at 8 nodes, 4e-7 at 16 (measured; tests/test_deeplift_modern.py).  Each
node costs one softmax and its VJP written out (s ⊙ (g − ⟨g, s⟩)) on N rows; on a ViT at 224×224 (192 wide, 4
layers, batch 4, float32) DeepLIFT took 2.4–2.6× a forward and backward pass with 8 nodes, 2.3–2.5× with 4,
where its 2N rows cost 2× (3.9× with 8 when the nodes ran as one autograd batch: measured).  ``nodes`` is the
rule's option (``register_rule("deeplift", "softmax", AveragedJacobian(nodes=16), replace=True)``).
*Fewer where they suffice* (softmax and softmin, the attribution's own pass).  A group first takes
:data:`FIRST_NODES` = 4 nodes, and keeps them where they leave ‖Δy − J̄Δx‖ within the rounding Δy itself carries
(:data:`ROUNDING`·ε·(‖y‖ + ‖ȳ‖): more nodes cannot tell a better integral there; J̄Δx = J̄ᵀΔx costs one more
column at the same nodes, the Jacobian being symmetric); the other groups are computed again with the rule's
``nodes``, exactly as the fixed rule computes them.  On the float32 ViT-S/16 at 224×224, 4 nodes sufficed in all
but at most 0.6 % of the attention rows of the first 10 layers, 9 % and 62 % of the last two; a sharpening
softmax (above) takes the rule's nodes and its accuracy (tests/test_deeplift_modern.py).  The check probes J̄
along Δx only, a heuristic rather than a bound: the quadrature's error in other directions shares its geometric
rate (the same softmax along the segment, analytic in α), and on random softmaxes φ kept within 1.2× of the fixed rule's
distance from the integral (float32; float64 both at rounding).
*Where Δx = 0 in a group* (entries that do not move, or move by less than rounding:
‖Δx‖ ≤ ε·(1 + ‖x‖) with ε the dtype's resolution) the group's output does not move either and M = J̄ = J(x),
the op's gradient, as Rescale takes f' where Δz = 0: the correction's quotient is skipped there.
*Masked attention scores* hold −∞ at the masked keys in input and reference alike: Δx = −∞ − (−∞) is NaN,
so equal entries (infinities included) count as no difference; the segment then stays at −∞ there, the
softmax gives 0 and its Jacobian's row and column vanish.

In the backward pass J̄ is never formed: with v = J̄ᵀ g (one VJP at each node, weighted),
Mᵀ g = v + Δx·(⟨Δy, g⟩ − ⟨Δx, v⟩)/‖Δx‖² per group.  Passes after the attribution's (derivatives of the
attribution) get the op's true Jacobian J(x)ᵀ g.  The op's parameters (a norm's weight and bias) are constants;
an op with one of them on the input's path is left unruled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from ..core.quadrature import quadrature
from ..core.rule_registry import OpRule
from .deeplift_norms import norm_averaged_vjps, norm_params
from .deeplift_ops import call_arg, check_pairs, halves, in_attribution_pass


class Groups:
    """How an op groups the entries of its input x: ``sums(t)`` gives each entry its group's sum of ``t``
    (broadcastable to x); ``dims`` the dimensions a group spans, where it spans whole dimensions."""

    def __init__(self, sums: Callable[[torch.Tensor], torch.Tensor], dims: tuple[int, ...] = ()):
        self.sums, self.dims = sums, dims


def _along(dims: tuple[int, ...]) -> Groups:
    return Groups(lambda t: t.sum(dims, keepdim=True), dims)


def _in_groups(groups: int) -> Groups:
    def sums(t):
        n = t.shape[0]
        s = t.reshape(n, groups, -1).sum(-1, keepdim=True)
        return s.expand(n, groups, t[0].numel() // groups).reshape(t.shape)

    return Groups(sums)


def _dim(d: int, ndim: int) -> int | None:
    """A dimension as a non-negative index, or None for the batch dimension (groups would mix samples)."""
    d = d + ndim if d < 0 else d
    return None if d == 0 else d


def _softmax_groups(x: torch.Tensor, args: tuple, kwargs: dict) -> Groups | None:
    dim = call_arg(args, kwargs, 1, "dim")
    if dim is None:  # F.softmax's implicit dimension (deprecated in torch)
        dim = 0 if x.dim() in (0, 1, 3) else 1
    d = _dim(dim, x.dim())
    return None if d is None else _along((d,))


def _trailing_groups(x: torch.Tensor, args: tuple, kwargs: dict) -> Groups | None:
    shape = call_arg(args, kwargs, 1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    return None if k >= x.dim() else _along(tuple(range(x.dim() - k, x.dim())))


def _group_norm_groups(x: torch.Tensor, args: tuple, kwargs: dict) -> Groups | None:
    return _in_groups(int(call_arg(args, kwargs, 1, "num_groups")))


def _instance_groups(x: torch.Tensor, args: tuple, kwargs: dict) -> Groups | None:
    return None if x.dim() < 3 else _along(tuple(range(2, x.dim())))


def _normalize_groups(x: torch.Tensor, args: tuple, kwargs: dict) -> Groups | None:
    if call_arg(args, kwargs, 4, "out") is not None:
        return None
    d = _dim(call_arg(args, kwargs, 2, "dim", 1), x.dim())
    return None if d is None else _along((d,))


#: op → how it groups its input's entries (None: a grouping the rule does not take, e.g. over the batch)
GROUPINGS: dict[str, Callable[[torch.Tensor, tuple, dict], Groups | None]] = {
    "softmax": _softmax_groups, "log_softmax": _softmax_groups, "softmin": _softmax_groups,
    "layer_norm": _trailing_groups, "rms_norm": _trailing_groups, "group_norm": _group_norm_groups,
    "instance_norm": _instance_groups, "normalize": _normalize_groups,
}


def difference(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """x − r with equal entries, equal infinities included (masked scores), counted as no difference."""
    d = x - r
    if bool(d.sum().isfinite()):  # no NaN from ∞ − ∞ (nor any other): equal finite entries already give 0
        return d
    return torch.where(x == r, torch.zeros((), dtype=x.dtype, device=x.device), d)


@functools.lru_cache(maxsize=16)
def node_count(nodes: int, least: int = 1) -> int:
    """A rule's ``nodes`` option checked: an integer of at least ``least``."""
    if not isinstance(nodes, int) or nodes < least:
        raise ValueError(f"nodes must be an integer >= {least}, got {nodes!r}")
    return nodes


@functools.lru_cache(maxsize=16)
def quadrature_nodes(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``n`` Gauss–Legendre nodes and weights on [0, 1] as Python floats, remembered: numpy's ``leggauss``
    (an eigenvalue problem) cost about 0.2 ms per call, paid at every softmax of every pass before."""
    alphas, weights = quadrature("gauss_legendre", n)
    return tuple(alphas.tolist()), tuple(weights.tolist())


#: how many entries the softmax family's nodes may take at once (:meth:`GroupedOp.softmax_vjps`): about 4 MB in
#: float32 per temporary, so that a large attention matrix runs a node or two at a time, a small one all at once
NODE_BATCH = 1 << 20


#: the nodes a softmax or softmin tries first (:meth:`GroupedOp.adaptive_vjps`), before the rule's own
FIRST_NODES = 4
#: how many ε (the dtype's resolution) of ‖y‖ + ‖ȳ‖ the first nodes may leave of ‖Δy − J̄Δx‖ in a group: the rounding
#: Δy itself carries, within which more nodes cannot tell a better integral (float32 ViT-S/16: 4 nodes meet it in all
#: but at most 0.6 % of the attention rows of its first 10 layers, 9 % and 62 % of its last two; measured)
ROUNDING = 8


def softmax_sums(kind: str, r: torch.Tensor, dx: torch.Tensor, gs: list[torch.Tensor], alphas: tuple[float, ...],
                 weights: tuple[float, ...], d: int) -> list[torch.Tensor]:
    """Σ_k w_k J(r + α_k Δx)ᵀ g with J's VJP written out and summed over the nodes in closed form: with
    s_k = softmax(r + α_k Δx), S̄ = Σ_k w_k s_k and c_k = ⟨g, s_k⟩ per group, softmax gives g ⊙ S̄ − Σ_k w_k c_k s_k,
    log-softmax g·Σ_k w_k − S̄·Σg, softmin (s_k = softmax(−r − α_k Δx)) the softmax form negated.  Without
    autograd's K-fold batch (the attention matrices of a real ViT made that the method's largest cost) and with
    three reads of each node's softmax instead of six ops on it; the nodes are stacked beside the group's dimension
    as far as :data:`NODE_BATCH` entries go (on small models per-op overhead dominates: one op for all nodes), and
    the weighted terms added node after node, as one node at a time would add them."""
    rows = [t.movedim(d, -1).unsqueeze(-2) for t in (r, dx, *gs)]  # (…, 1, L): the nodes stack along −2
    r_, dx_, gs_ = rows[0], rows[1], rows[2:]
    log = kind == "log_softmax"
    sbar = torch.zeros_like(r_)
    terms = [torch.zeros_like(r_) for _ in gs_]
    step = max(1, NODE_BATCH // max(1, r.numel()))
    for lo in range(0, len(alphas), step):
        a = torch.tensor(alphas[lo:lo + step], dtype=r.dtype, device=r.device).view(-1, 1)
        z = torch.addcmul(r_, a, dx_)
        s = torch.softmax(z.neg_() if kind == "softmin" else z, -1)  # (…, K, L)
        cs = [] if log else [(s * g).sum(-1, keepdim=True) for g in gs_]
        for k, w in enumerate(weights[lo:lo + step]):
            sk = s.narrow(-2, k, 1)
            sbar.add_(sk, alpha=w)
            for t, c in zip(terms, cs, strict=False):
                t.addcmul_(sk, c.narrow(-2, k, 1), value=w)
    if log:
        total = sum(weights)
        out = [g * total - sbar * g.sum(-1, keepdim=True) for g in gs_]
    else:
        out = [g * sbar - t for g, t in zip(gs_, terms, strict=True)]
        if kind == "softmin":
            out = [v.neg_() for v in out]
    return [v.squeeze(-2).movedim(-1, d) for v in out]


class GroupedOp:
    """The op as a function of its input on the path, its grouping and the quadrature nodes."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], groups: Groups, nodes: int, norm: Any = None,
                 softmax: str | None = None):
        self.f, self.groups, self.norm, self.softmax = f, groups, norm, softmax
        self.alphas, self.weights = quadrature_nodes(nodes)

    def averaged_vjps(self, r: torch.Tensor, dx: torch.Tensor, gs: list[torch.Tensor]) -> list[torch.Tensor]:
        """J̄ᵀ g for each g of ``gs`` (N rows each): weighted VJPs at the nodes r + α_k Δx, one batch of K·N rows;
        for LayerNorm, GroupNorm and RMSNorm the closed form of :mod:`.deeplift_norms`, for the softmax family
        its VJP written out, node by node."""
        if self.norm is not None:
            return norm_averaged_vjps(self.groups.sums, self.norm, r, dx, gs)
        if self.softmax is not None:
            return self.softmax_vjps(r, dx, gs)
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            points = torch.cat([r + a * dx for a in self.alphas])
            if not create_graph:
                points = points.detach().requires_grad_()
            elif not points.requires_grad:
                points.requires_grad_()
            y = self.f(points)
            out = []
            for i, g in enumerate(gs):
                weighted = torch.cat([w * g for w in self.weights])
                (v,) = torch.autograd.grad(y, points, weighted, create_graph=create_graph,
                                           retain_graph=create_graph or i + 1 < len(gs))
                out.append(sum(v.chunk(len(self.alphas))))
        return out

    def softmax_vjps(self, r: torch.Tensor, dx: torch.Tensor, gs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Σ_k w_k J(r + α_k Δx)ᵀ g for each g of ``gs`` at the rule's nodes (:func:`softmax_sums`)."""
        return softmax_sums(self.softmax, r, dx, gs, self.alphas, self.weights, self.groups.dims[0])

    def adaptive_vjps(self, r: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, ys: tuple[torch.Tensor, ...],
                      gs: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`softmax_vjps` with :data:`FIRST_NODES` nodes in the groups where they integrate the segment to the
        rounding of y (‖Δy − J̄Δx‖ ≤ :data:`ROUNDING`·ε·(‖y‖ + ‖ȳ‖), J̄Δx = J̄ᵀΔx as softmax's J is symmetric, computed
        with the same nodes), with the rule's nodes in the others: a softmax that sharpens along the segment gets
        them all, one that barely moves (most attention rows of the zoo's transformers) half."""
        d = self.groups.dims[0]
        width = r.shape[d]
        flat = [t.movedim(d, -1).reshape(-1, width) for t in (r, dx, dy, *ys, *gs)]
        r2, dx2, dy2, y2, yr2, gs2 = flat[0], flat[1], flat[2], flat[3], flat[4], flat[5:]
        alphas, weights = quadrature_nodes(FIRST_NODES)
        *vs, jdx = softmax_sums(self.softmax, r2, dx2, [*gs2, dx2], alphas, weights, -1)
        residual = torch.linalg.vector_norm(dy2 - jdx, dim=-1)
        rounding = ROUNDING * torch.finfo(r.dtype).eps * (torch.linalg.vector_norm(y2, dim=-1)
                                                          + torch.linalg.vector_norm(yr2, dim=-1))
        again = (residual <= rounding).logical_not_()  # NaN too
        if bool(again.any()):
            rows = again.nonzero()[:, 0]
            full = softmax_sums(self.softmax, r2[rows], dx2[rows], [g[rows] for g in gs2], self.alphas,
                                self.weights, -1)
            for v, f in zip(vs, full, strict=True):
                v.index_copy_(0, rows, f)
        shape = r.movedim(d, -1).shape
        return [v.view(shape).movedim(-1, d) for v in vs]

    def multiplier(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Mᵀ g for both halves of the batch (the references' rows take the same M as their inputs')."""
        (xx, xr), (yx, yr) = halves(x), halves(y)
        dx, dy = difference(xx, xr), difference(yx, yr)
        gx, gr = halves(g)
        low, high = torch.aminmax(gr)  # one read (NaN: not zero)
        gs = [gx] if float(low) == 0 and float(high) == 0 else [gx, gr]
        if self.softmax in ("softmax", "softmin") and len(self.alphas) > FIRST_NODES and not torch.is_grad_enabled():
            vs = self.adaptive_vjps(xr, dx, dy, (yx, yr), gs)
        else:  # (with create_graph, the attribution differentiated: the rule's nodes throughout)
            vs = self.averaged_vjps(xr, dx, gs)
        ms = [self.corrected(dx, dy, g_, v, xx) for g_, v in zip(gs, vs, strict=True)]
        return torch.cat([ms[0], ms[1] if len(ms) > 1 else torch.zeros_like(ms[0])])

    def corrected(self, dx: torch.Tensor, dy: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
        """Mᵀ g = v + Δx·(⟨Δy, g⟩ − ⟨Δx, v⟩)/‖Δx‖² per group, for v = J̄ᵀ g (Broyden's rank-one correction of J̄,
        so that M Δx = Δy); v alone in a group where ‖Δx‖ is within rounding of 0 beside ‖scale‖."""
        sums = self.groups.sums
        n2 = sums(dx * dx)
        size = sums(scale * scale)
        if not bool(size.sum().isfinite()):  # masked scores: −∞ counts as 0 here
            finite = torch.nan_to_num(scale, nan=0.0, posinf=0.0, neginf=0.0)
            size = sums(finite * finite)
        tiny = torch.finfo(dx.dtype).eps ** 2 * (1 + size)
        moved = n2 > tiny
        safe = torch.where(moved, n2, torch.ones((), dtype=n2.dtype, device=n2.device))
        c = torch.where(moved, (sums(dy * g).to(v.dtype) - sums(dx * v)) / safe, 0.0)
        return v + dx * c

    def true_vjp(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """J(x)ᵀ g, differentiable when grad mode is on."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            leaf = x if (create_graph and x.requires_grad) else x.detach().requires_grad_()
            (d,) = torch.autograd.grad(self.f(leaf), leaf, g, create_graph=create_graph)
        return d


class MultiplierNode(torch.autograd.Function):
    """y = op.f(x) forward; Mᵀ g (``op.multiplier``) in the attribution's backward pass, J(x)ᵀ g (``op.true_vjp``)
    in any later one."""

    @staticmethod
    def forward(ctx, x, op, phase):
        ctx.op, ctx.phase = op, phase
        y = op.f(x)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        if in_attribution_pass(ctx.phase):
            return ctx.op.multiplier(x, y, g), None, None
        return ctx.op.true_vjp(x, g), None, None


class OnGroups:
    """Part of a rule at a multivariate op computed per group (:func:`grouped_op`) with ``nodes`` Gauss–Legendre
    nodes for its averaged Jacobians: DeepLIFT's and RevealCancel's rules at softmax and the normalisations."""

    def __init__(self, nodes: int = 8):
        self.nodes = node_count(nodes)

    def grouped(self, func, args: tuple, kwargs: dict, tagged: Callable[[Any], bool], name: str):
        """(the op's path input, the op per group), or None where it groups over the batch or a parameter is on
        the path (the caller says what that means for its method)."""
        return grouped_op(func, args, kwargs, tagged, name, self.nodes)


class AveragedJacobian(OnGroups, OpRule):
    """DeepLIFT at a multivariate op: M = J̄ + (Δy − J̄Δx)Δxᵀ/‖Δx‖² per group, J̄ the Jacobian averaged from the
    reference to the input by ``nodes``-point Gauss–Legendre quadrature (module doc; Shrikumar et al. 2017,
    §3.3; Ancona et al. 2018, §3), so that M Δx = Δy exactly."""

    name = "averaged_jacobian"

    def apply(self, handler, func, args, kwargs, tagged, name):
        found = self.grouped(func, args, kwargs, tagged, name)
        if found is None:
            handler.unruled.append(name)  # a grouping over the batch, or a parameter on the path
            return NotImplemented
        x, op = found
        check_pairs(x, name)
        return MultiplierNode.apply(x, op, getattr(handler, "phase", None))


def grouped_op(func, args: tuple, kwargs: dict, tagged: Callable[[Any], bool], name: str,
               nodes: int) -> tuple[torch.Tensor, GroupedOp] | None:
    """(x, the op as a function of x) for a call of one of :data:`GROUPINGS` with its input x on the path, or None
    where the rules do not take it (a grouping over the batch, a parameter on the path)."""
    kwargs = dict(kwargs)
    x = args[0] if args else kwargs.pop("input", None)
    rest = args[1:] if args else ()
    others = (*rest, *kwargs.values())
    grouping = GROUPINGS.get(name.rsplit(".", 1)[-1])
    groups = grouping(x, (x, *rest), kwargs) if (grouping is not None and tagged(x)) else None
    if groups is None or any(map(tagged, others)) or any(
            isinstance(a, (list, tuple)) and any(map(tagged, a)) for a in others):
        return None
    key = name.rsplit(".", 1)[-1]
    norm = norm_params(key, x, (x, *rest), kwargs)
    dtype = kwargs.get("dtype", rest[1] if len(rest) > 1 and isinstance(rest[1], torch.dtype) else None)
    softmax = key if key in ("softmax", "log_softmax", "softmin") and dtype is None else None
    return x, GroupedOp(lambda t: func(t, *rest, **kwargs), groups, nodes, norm, softmax)
