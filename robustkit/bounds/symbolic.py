"""Forward symbolic bounds: every neuron's bounds as linear functions of the inputs, in one forward
pass, batched over many boxes (the symbolic intervals of ReluVal and Neurify, the forward linear
relaxations of VeriNet).

For a network with few inputs ``n`` this is the cheap way to bound every layer of many boxes: a
neuron's lower and upper bound are carried as affine functions ``L(x) <= z(x) <= U(x)`` of the
input, stored as ``(n + 1)`` coefficients (the last one the constant), so a layer of width ``d``
costs two products of a ``(B (n + 1), d_in)`` batch with the ``(d_in, d)`` weights, where a
backward (CROWN) pass per layer costs a pass through every layer before it for each of its
neurons. The pair is held as its middle ``M = (L + U) / 2`` and half-width ``R = (U - L) / 2``
(both affine functions): through ``h -> W h + b`` the images are ``W M + b`` and ``|W| R``, which
is ``W+ L + W- U + b`` and ``W+ U + W- L + b`` in two products instead of four.

Through a ReLU with concrete pre-activation bounds ``[l, u]`` (unstable: ``l < 0 < u``):

* upper: ``relu(z) <= relu(U(x))``, and ``U(x) >= p`` with ``p = max(l, min U)``; the chord of
  ``relu`` over ``[p, u]`` bounds it (``u (U - p) / (u - p)``; for ``U(x) > u`` the chord is
  above ``u >= relu(z)``), tighter than the chord over ``[l, u]`` where ``min U > l`` (Neurify's
  symbolic relaxation); ``p >= 0`` keeps ``U`` itself;
* lower: ``relu(z) >= relu(L(x)) >= alpha L(x)`` for any ``alpha`` in ``[0, 1]``: 0 where
  ``max L <= 0``, else CROWN's adaptive choice on ``L``'s range (1 if ``max L >= -min L``, else 0)
  or, with ``lower_slope="parallel"``, the chord's slope of that range (ReluVal/Neurify).

Concrete bounds of each layer come from the functions' extremes over the box (``c M_x - |c| ...``
at the box's center and radius), intersected with interval arithmetic on the previous layer's
concrete bounds and with bounds known for a larger box (a parent's): every one of them holds on
the box, so the intersection does.

Floating point (:mod:`robustkit.bounds.floaterr`, the same model as every bound method): the
float32 network's rounding ``e_i`` of each linear layer widens ``R`` by ``e_i`` (the perturbed
networks ``z_i = W_i a_{i-1} + b_i + delta_i``, ``|delta_i| <= e_i``), and every concrete value
computed from the functions (the bounds, ``min U``, ``max L``) is moved outward by the layer's
float64 slack ``slack_i``: each is, as a backward pass's, a sum of path products of weights,
slopes in ``[0, 1]``, intercepts of magnitude at most the layer's and box coordinates, summed in
another order, so the error model's bound of the absolute values of all terms and of the
roundings per term covers it. The error model is the caller's (:class:`FloatErrors` over the box
or a larger one, e.g. the root box of a search): nothing here restates a rounding constant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from robustkit.bounds.floaterr import ErrorTracker, FloatErrors, outward
from robustkit.network import LinearLayer, Network

log = logging.getLogger(__name__)

__all__ = ["DenseMaps", "SymbolicBounds", "dense_maps", "symbolic_bounds", "concretize", "relinearize"]

# the most entries of one dense weight matrix the forward pass builds (a convolution is expanded
# to its matrix): past it the caller keeps its backward (CROWN) bounds
MAX_DENSE = 16_000_000
# boxes per chunk of a window's backward pass: its coefficients ``(chunk, 2 r, d)`` stay in the
# cache (one window pass over 1,024 ACAS Xu boxes: 2.9-3.3 s in one piece, one thread)
WINDOW_CHUNK = 16


@dataclass(frozen=True)
class DenseMaps:
    """Per linear layer position: ``W^T`` ``(d_in, d_out)`` float64, ``|W|^T``, and ``b``
    ``(d_out,)`` (from :meth:`LinearLayer.matrix` / ``bias_tensor``)."""

    weights: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def dense_maps(net: Network) -> DenseMaps | None:
    """The dense maps of ``net``'s linear layers, or None when the forward pass does not apply (a
    matrix past :data:`MAX_DENSE` entries)."""
    weights = {}
    for i, layer in enumerate(net.layers):
        if not layer.nonlinear:
            assert isinstance(layer, LinearLayer)
            if layer.in_dim * layer.out_dim > MAX_DENSE:
                log.debug("symbolic bounds: layer %d (%s) too large to expand", i, layer.describe())
                return None
            wt = torch.from_numpy(layer.matrix().toarray().T.copy())
            weights[i] = (wt, wt.abs(), layer.bias_tensor(torch.float64).reshape(-1))
    return DenseMaps(weights)


@dataclass
class SymbolicBounds:
    """Bounds of a batch of ``B`` boxes: ``lower[i]``/``upper[i]`` ``(B, d_i)`` concrete bounds
    of layer ``i``'s output; ``pre[r]``: the ReLU at ``r``'s pre-activation bounds; ``mid`` and
    ``rad`` ``(B or 1, n + 1, out)``: the output's symbolic middle and half-width (last row: the
    constant); ``unstable`` ``(B,)``: unstable ReLUs per box; ``errs``: the float error model
    the bounds were computed under (per box with ``track``, else the caller's); ``lin[i]``
    (with ``linear``): affine lower and upper bounds ``(B, n + 1, d_i)`` of each hidden linear
    layer ``i``'s output valid on the box, and the float64 slack ``(B or 1, d_i)`` of evaluating
    them on it or on a sub-box (:func:`relinearize`)."""

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]]
    mid: torch.Tensor
    rad: torch.Tensor
    unstable: torch.Tensor
    errs: FloatErrors
    lin: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None


def concretize(f: torch.Tensor, center: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over the box (``center``, ``radius``: ``(B, n)``) of the affine functions ``f``
    ``(B or 1, n + 1, d)``: ``(B, d)`` each."""
    n = center.shape[1]
    coef = f[:, :n]
    at_center = f[:, n] + torch.matmul(center.unsqueeze(1), coef).squeeze(1)
    spread = torch.matmul(radius.unsqueeze(1), coef.abs()).squeeze(1)
    return at_center - spread, at_center + spread


def _window_bounds(net: Network, maps: DenseMaps, k: int, need: torch.Tensor, stop: int,
                   funcs: dict[int, tuple[torch.Tensor, torch.Tensor]],
                   pre: dict[int, tuple[torch.Tensor, torch.Tensor]], errs: FloatErrors,
                   center: torch.Tensor, radius: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower and upper bounds ``(B, d_k)`` of the neurons ``need`` (``(B, d_k)`` bool) of linear
    layer ``k``'s output by a backward pass (CROWN's relaxations at ``pre``) down to the output
    of layer ``stop``, whose forward functions ``funcs[stop]`` (middle, half-width) end it:
    ``A h >= A M - |A| R`` (``-inf``/``inf`` for the others); and the affine functions of the
    input they are the minimum and maximum of over the box (``(B, n + 1, d_k)`` each). Without
    the float64 slack (the caller adds it). The boxes go through in chunks of
    :data:`WINDOW_CHUNK`, each with the neurons some box of the chunk needs (its coefficients
    ``(chunk, 2 r, d)`` stay in the cache)."""
    B, n = center.shape
    d = need.shape[1]
    low = torch.full((B, d), -torch.inf, dtype=center.dtype)
    up = torch.full((B, d), torch.inf, dtype=center.dtype)
    f_low = torch.zeros(B, n + 1, d, dtype=center.dtype)
    f_up = torch.zeros(B, n + 1, d, dtype=center.dtype)
    wt, _, b = maps.weights[k]
    for s0 in range(0, B, WINDOW_CHUNK):
        sl = slice(s0, s0 + WINDOW_CHUNK)
        rows = torch.nonzero(need[sl].any(dim=0)).flatten()
        if rows.numel() == 0:
            continue

        def cut(t: torch.Tensor) -> torch.Tensor:
            return t if t.shape[0] == 1 else t[sl]

        m = center[sl].shape[0]
        A = torch.cat([wt[:, rows].T, -wt[:, rows].T]).unsqueeze(0).expand(m, -1, -1)  # (m, 2r, d_in)
        c = torch.cat([b[rows], -b[rows]]).unsqueeze(0) - cut(errs.rounding[k])[:, rows].repeat(1, 2)
        for i in range(k - 1, stop, -1):
            layer = net.layers[i]
            if layer.rounds:
                c = c - (A.abs() @ cut(errs.rounding[i]).unsqueeze(-1)).squeeze(-1)
            if layer.nonlinear:
                l, u = pre[i]
                A, c = layer.backward_step(A, c, cut(l).unsqueeze(1), cut(u).unsqueeze(1))  # type: ignore[call-arg]
            else:
                A, c = layer.backward_step(A, c)
        mid, rad = (cut(t) for t in funcs[stop])
        f = torch.matmul(mid, A.transpose(1, 2)) - torch.matmul(rad, A.abs().transpose(1, 2))  # (m, n + 1, 2r)
        f[:, -1] = f[:, -1] + c
        lo_c = concretize(f, center[sl], radius[sl])[0]
        r = rows.numel()
        low[sl, rows], up[sl, rows] = lo_c[:, :r], -lo_c[:, r:]
        f_low[sl, :, rows], f_up[sl, :, rows] = f[:, :, :r], -f[:, :, r:]
    return low, up, f_low, f_up


def symbolic_bounds(net: Network, maps: DenseMaps, lo: torch.Tensor, hi: torch.Tensor, errs: FloatErrors,
                    known: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                    lower_slope: str = "adaptive", window: int = 0, track: bool = False,
                    linear: bool = False) -> SymbolicBounds:
    """Forward symbolic bounds of every layer over each box ``[lo[b], hi[b]]`` (``(B, n)``
    float64), valid for the float32 network under ``errs`` (an error model over these boxes or
    a larger region). ``known[i]``: valid bounds ``(B, d_i)`` of layer ``i``'s output over these
    boxes (e.g. their parents', which contain them), intersected in. ``lower_slope``: ``adaptive`` or ``parallel``
    (module docstring). ``window``: the unstable neurons of each linear layer are bounded again
    by a backward pass through that many ReLU layers (0: none). ``track``: the error model is
    built per box as the pass learns each layer's input bounds (:class:`ErrorTracker`, each term
    the smaller of that and ``errs``'s, which holds over a larger region): a small box far from
    the root box's largest values is charged its own, smaller, rounding (returned in
    :attr:`SymbolicBounds.errs`). ``linear``: also return each hidden layer's affine bounds
    (:attr:`SymbolicBounds.lin`, the tighter on the box of the forward functions and the
    window's, per neuron)."""
    B, n = lo.shape
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    mid = torch.cat([torch.eye(n, dtype=torch.float64), torch.zeros(1, n, dtype=torch.float64)]).unsqueeze(0)
    rad = torch.zeros_like(mid)
    cl, cu = lo, hi  # concrete bounds of the current layer's output
    min_u, max_l = lo, hi  # of U and L (the input itself before the first layer)
    lower: list[torch.Tensor] = []
    upper: list[torch.Tensor] = []
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    unstable = torch.zeros(B, dtype=torch.long)
    funcs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {-1: (mid, rad)}
    lin: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = {} if linear else None
    tracker = ErrorTracker(lo, hi) if track else None
    own = errs if tracker is None else tracker.out  # the model charged (per box with ``track``)
    for i, layer in enumerate(net.layers):
        if tracker is not None:  # this layer's error model, from the bounds of its input
            tracker.add(layer, cl, cu)
            tracker.meet(errs)
        if not layer.nonlinear:
            wt, wt_abs, b = maps.weights[i]
            il, iu = layer.interval(cl, cu)
            mid = torch.matmul(mid, wt)
            mid[:, -1] = mid[:, -1] + b
            rad = torch.matmul(rad, wt_abs)
            if rad.shape[0] < own.rounding[i].shape[0]:  # an error model per box
                mid, rad = mid.expand(B, -1, -1).clone(), rad.expand(B, -1, -1).clone()
            rad[:, -1] = rad[:, -1] + own.rounding[i]
            slack = own.slack[i]
            lo_f, up_f = mid - rad, mid + rad
            min_l, max_l = concretize(lo_f, center, radius)
            min_u, max_u = concretize(up_f, center, radius)
            cl, cu = outward(min_l, max_u, slack)
            min_u, max_l = min_u - slack, max_l + slack
            il, iu = outward(il, iu, own.rounding[i] + slack)
            cl, cu = torch.fmax(cl, il), torch.fmin(cu, iu)
            if known is not None and i in known:
                cl, cu = torch.fmax(cl, known[i][0]), torch.fmin(cu, known[i][1])
            funcs[i] = (mid, rad)
            hidden = i + 1 < len(net.layers)
            if lin is not None and hidden:
                lin[i] = (lo_f.expand(B, -1, -1), up_f.expand(B, -1, -1), slack)
            relus_before = [r for r in pre if r < i]
            if window and len(relus_before) and hidden:
                stop = relus_before[-window] - 1 if len(relus_before) >= window else -1
                need = (cl < 0) & (cu > 0)
                if bool(need.any()):
                    wl, wu, fl, fu = _window_bounds(net, maps, i, need, stop, funcs, pre, own, center, radius)
                    if lin is not None:  # per neuron, the functions with the tighter bound on the box
                        fl_all, fu_all, _ = lin[i]
                        lin[i] = (torch.where((wl > min_l).unsqueeze(1), fl, fl_all),
                                  torch.where((wu < max_u).unsqueeze(1), fu, fu_all), slack)
                    wl, wu = outward(wl, wu, slack)
                    cl, cu = torch.fmax(cl, wl), torch.fmin(cu, wu)
        else:
            pre[i] = (cl, cu)
            unstable = unstable + layer.unstable(cl, cu).sum(dim=1)  # type: ignore[attr-defined]
            if mid.shape[0] != B:
                mid, rad = mid.expand(B, -1, -1), rad.expand(B, -1, -1)
            mid, rad = layer.symbolic_step(mid, rad, cl, cu, min_u, max_l, lower_slope)  # type: ignore[attr-defined]
            cl, cu = layer.interval(cl, cu)
            if layer.rounds:  # an operator that rounds (LeakyReLU): its own error widens both
                rad = rad.clone()
                rad[:, -1] = rad[:, -1] + own.rounding[i]
                cl, cu = outward(cl, cu, own.rounding[i] + own.slack[i])
            if known is not None and i in known:
                cl, cu = torch.fmax(cl, known[i][0]), torch.fmin(cu, known[i][1])
        lower.append(cl)
        upper.append(cu)
    return SymbolicBounds(lower, upper, pre, mid, rad, unstable, own, lin)


def relinearize(lin: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], lo: torch.Tensor, hi: torch.Tensor,
                known: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Bounds ``(B, d_i)`` of each layer ``i`` of ``lin`` (:attr:`SymbolicBounds.lin` of boxes
    containing the boxes ``[lo, hi]``, row by row) over the smaller boxes: the affine bounds hold
    on every point of the larger box, so their minimum and maximum over a part of it (moved
    outward by their float64 slack) bound the layer there; intersected with ``known``."""
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, (fl, fu, slack) in lin.items():
        l, u = outward(concretize(fl, center, radius)[0], concretize(fu, center, radius)[1], slack)
        if known is not None and i in known:
            l, u = torch.fmax(l, known[i][0]), torch.fmin(u, known[i][1])
        out[i] = (l, u)
    return out
