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

from robustkit.bounds.floaterr import FloatErrors, outward
from robustkit.network import Activation, LinearLayer, Network, ReLU

log = logging.getLogger(__name__)

__all__ = ["DenseMaps", "SymbolicBounds", "dense_maps", "symbolic_bounds", "concretize"]

# the most entries of one dense weight matrix the forward pass builds (a convolution is expanded
# to its matrix): past it the caller keeps its backward (CROWN) bounds
MAX_DENSE = 16_000_000


@dataclass(frozen=True)
class DenseMaps:
    """Per linear layer position: ``W^T`` ``(d_in, d_out)`` float64, ``|W|^T``, and ``b``
    ``(d_out,)`` (from :meth:`LinearLayer.matrix` / ``bias_tensor``)."""

    weights: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def dense_maps(net: Network) -> DenseMaps | None:
    """The dense maps of ``net``'s linear layers, or None when the forward pass does not apply
    (a layer other than linear or ReLU, or a matrix past :data:`MAX_DENSE` entries)."""
    weights = {}
    for i, layer in enumerate(net.layers):
        if isinstance(layer, LinearLayer):
            if layer.in_dim * layer.out_dim > MAX_DENSE:
                log.debug("symbolic bounds: layer %d (%s) too large to expand", i, layer.describe())
                return None
            wt = torch.from_numpy(layer.matrix().toarray().T.copy())
            weights[i] = (wt, wt.abs(), layer.bias_tensor(torch.float64).reshape(-1))
        elif not isinstance(layer, ReLU):
            return None
    return DenseMaps(weights)


@dataclass
class SymbolicBounds:
    """Bounds of a batch of ``B`` boxes: ``lower[i]``/``upper[i]`` ``(B, d_i)`` concrete bounds
    of layer ``i``'s output; ``pre[r]``: the ReLU at ``r``'s pre-activation bounds; ``mid`` and
    ``rad`` ``(B or 1, n + 1, out)``: the output's symbolic middle and half-width (last row: the
    constant); ``unstable`` ``(B,)``: unstable ReLUs per box."""

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]]
    mid: torch.Tensor
    rad: torch.Tensor
    unstable: torch.Tensor


def concretize(f: torch.Tensor, center: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over the box (``center``, ``radius``: ``(B, n)``) of the affine functions ``f``
    ``(B or 1, n + 1, d)``: ``(B, d)`` each."""
    n = center.shape[1]
    coef = f[:, :n]
    at_center = f[:, n] + torch.matmul(center.unsqueeze(1), coef).squeeze(1)
    spread = torch.matmul(radius.unsqueeze(1), coef.abs()).squeeze(1)
    return at_center - spread, at_center + spread


def _relu_step(layer: ReLU, mid: torch.Tensor, rad: torch.Tensor, l: torch.Tensor, u: torch.Tensor,
               min_u: torch.Tensor, max_l: torch.Tensor, lower_slope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The middle and half-width after the ReLU (module docstring); ``l``/``u``: concrete
    pre-activation bounds, ``min_u``/``max_l``: valid bounds on ``min U`` (below it) and ``max L``
    (any value: it only chooses the slope), all ``(B, d)``."""
    active, _, unstable = layer.phases(l, u)
    lo_f, up_f = mid - rad, mid + rad
    p = torch.maximum(l, min_u)
    keep_u = unstable & (p >= 0)  # U >= 0 on the box: relu(z) <= U itself
    chord = unstable & ~keep_u
    width = torch.where(chord, u - p, torch.ones_like(u))
    lam_u = torch.where(chord, u / width, (active | keep_u).to(u.dtype))
    mu_u = torch.where(chord, -lam_u * p, torch.zeros_like(p))
    if lower_slope == "parallel":
        span = torch.where(unstable & (max_l > 0), max_l - l, torch.ones_like(l))
        alpha = torch.where(max_l > 0, (max_l / span).clamp(0.0, 1.0), torch.zeros_like(l))
    elif lower_slope == "crown":
        alpha = (u >= -l).to(l.dtype)
    else:
        alpha = ((max_l > 0) & (max_l >= -l)).to(l.dtype)
    lam_l = torch.where(unstable, alpha, active.to(l.dtype))
    new_lo = lo_f * lam_l.unsqueeze(1)
    new_up = up_f * lam_u.unsqueeze(1)
    new_up[:, -1] = new_up[:, -1] + mu_u
    return (new_up + new_lo) / 2, (new_up - new_lo) / 2


def _window_bounds(net: Network, maps: DenseMaps, k: int, rows: torch.Tensor, stop: int,
                   funcs: dict[int, tuple[torch.Tensor, torch.Tensor]],
                   pre: dict[int, tuple[torch.Tensor, torch.Tensor]], errs: FloatErrors,
                   center: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds ``(B, |rows|)`` of neurons ``rows`` of linear layer ``k``'s output
    by a backward pass (CROWN's relaxations at ``pre``) down to the output of layer ``stop``,
    whose forward functions ``funcs[stop]`` (middle, half-width) end it: ``A h >= A M - |A| R``.
    Without the float64 slack (the caller adds it)."""
    wt, _, b = maps.weights[k]
    B = center.shape[0]
    A = torch.cat([wt[:, rows].T, -wt[:, rows].T]).unsqueeze(0).expand(B, -1, -1)  # (B, 2r, d_in)
    c = torch.cat([b[rows], -b[rows]]).unsqueeze(0) - errs.rounding[k][:, rows].repeat(1, 2)
    for i in range(k - 1, stop, -1):
        layer = net.layers[i]
        if isinstance(layer, LinearLayer):
            c = c + A @ layer.bias_tensor(A.dtype) - (A.abs() @ errs.rounding[i].unsqueeze(-1)).squeeze(-1)
            A = layer.backward(A)
        else:
            l, u = pre[i]
            lam_l, lam_u, mu_u = layer.relaxation(l.unsqueeze(1), u.unsqueeze(1))  # type: ignore[attr-defined]
            neg = A.clamp(max=0)
            c = c + (neg * mu_u).sum(-1)
            A = A.clamp(min=0) * lam_l + neg * lam_u
    mid, rad = funcs[stop]
    f = torch.matmul(mid, A.transpose(1, 2)) - torch.matmul(rad, A.abs().transpose(1, 2))  # (B, n + 1, 2r)
    f[:, -1] = f[:, -1] + c
    low = concretize(f, center, radius)[0]
    r = rows.numel()
    return low[:, :r], -low[:, r:]


def symbolic_bounds(net: Network, maps: DenseMaps, lo: torch.Tensor, hi: torch.Tensor, errs: FloatErrors,
                    known: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                    lower_slope: str = "adaptive", window: int = 0) -> SymbolicBounds:
    """Forward symbolic bounds of every layer over each box ``[lo[b], hi[b]]`` (``(B, n)``
    float64), valid for the float32 network under ``errs`` (an error model over these boxes or
    a larger region). ``known[i]``: valid bounds ``(B, d_i)`` of layer ``i``'s output over these
    boxes (e.g. their parents', which contain them), intersected in. ``lower_slope``: ``adaptive`` or ``parallel``
    (module docstring)."""
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
    for i, layer in enumerate(net.layers):
        if isinstance(layer, LinearLayer):
            wt, wt_abs, b = maps.weights[i]
            il, iu = layer.interval(cl, cu)
            mid = torch.matmul(mid, wt)
            mid[:, -1] = mid[:, -1] + b
            rad = torch.matmul(rad, wt_abs)
            if rad.shape[0] < errs.rounding[i].shape[0]:  # an error model per box
                mid, rad = mid.expand(B, -1, -1).clone(), rad.expand(B, -1, -1).clone()
            rad[:, -1] = rad[:, -1] + errs.rounding[i]
            slack = errs.slack[i]
            lo_f, up_f = mid - rad, mid + rad
            min_l, max_l = concretize(lo_f, center, radius)
            min_u, max_u = concretize(up_f, center, radius)
            cl, cu = outward(min_l, max_u, slack)
            min_u, max_l = min_u - slack, max_l + slack
            il, iu = outward(il, iu, errs.rounding[i] + slack)
            cl, cu = torch.fmax(cl, il), torch.fmin(cu, iu)
            if known is not None and i in known:
                cl, cu = torch.fmax(cl, known[i][0]), torch.fmin(cu, known[i][1])
            funcs[i] = (mid, rad)
            relus_before = [r for r in pre if r < i]
            if window and len(relus_before) and i + 1 < len(net.layers):
                stop = relus_before[-window] - 1 if len(relus_before) >= window else -1
                rows = torch.nonzero(((cl < 0) & (cu > 0)).any(dim=0)).flatten()
                if rows.numel():
                    wl, wu = _window_bounds(net, maps, i, rows, stop, funcs, pre, errs, center, radius)
                    wl, wu = outward(wl, wu, slack[:, rows])
                    cl, cu = cl.clone(), cu.clone()
                    cl[:, rows] = torch.fmax(cl[:, rows], wl)
                    cu[:, rows] = torch.minimum(cu[:, rows], wu)
        else:
            assert isinstance(layer, ReLU)
            pre[i] = (cl, cu)
            unstable = unstable + layer.phases(cl, cu)[2].sum(dim=1)
            if mid.shape[0] != B:
                mid, rad = mid.expand(B, -1, -1), rad.expand(B, -1, -1)
            mid, rad = _relu_step(layer, mid, rad, cl, cu, min_u, max_l, lower_slope)
            cl, cu = layer.interval(cl, cu)
            if known is not None and i in known:
                cl, cu = torch.fmax(cl, known[i][0]), torch.fmin(cu, known[i][1])
        lower.append(cl)
        upper.append(cu)
    return SymbolicBounds(lower, upper, pre, mid, rad, unstable)
