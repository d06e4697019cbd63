"""CROWN: backward linear bound propagation (Zhang et al. 2018, "Efficient Neural Network
Robustness Certification with General Activation Functions", Sec. 3; the backward mode of
auto_LiRPA, Xu et al. 2020).

A linear function ``A h_t`` of the output of layer ``t`` is pulled back to the input:
through an affine layer ``h = W g + b`` it becomes ``(A W) g + A b``; through a ReLU with
pre-activation bounds ``l <= z <= u`` each neuron is replaced by a linear lower and upper
bound (Zhang et al. 2018, Eq. 4-5, the "adaptive" choice of Sec. 3.3):

* stable active (``l >= 0``): ``relu(z) = z``; stable inactive (``u <= 0``): ``relu(z) = 0``;
* unstable (``l < 0 < u``): upper ``relu(z) <= u (z - l) / (u - l)``, lower
  ``relu(z) >= alpha z`` with ``alpha = 1 if u >= -l else 0`` (any ``alpha`` in [0, 1] is
  valid; alpha-CROWN optimises it, see :mod:`robustkit.bounds.alpha_crown`).

A lower bound of ``A h_t`` uses the lower relaxation where the coefficient is positive and the
upper one where it is negative; at the input, ``min_{x in box} A x = A c - |A| r``. Upper
bounds are lower bounds of ``-A h_t``, so every pass bounds the rows ``[A; -A]`` from below.

Every linear layer that feeds a ReLU gets its bounds from a full backward pass (the identity
specification, batched over samples, rows chunked to a memory budget), intersected with
interval arithmetic on the already tightened previous layer. All bounds hold for the float32
network: each backward pass charges ``|A| e_i`` for the rounding of every linear layer it
crosses, and every result is moved outward by the float64 slack (:mod:`robustkit.bounds.floaterr`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping

import torch

from robustkit.bounds.floaterr import ErrorTracker, FloatErrors, outward
from robustkit.bounds.types import NetBounds
from robustkit.network import Layer, LinearLayer, Network

logger = logging.getLogger(__name__)

PreBounds = Mapping[int, tuple[torch.Tensor, torch.Tensor]]
Alphas = Mapping[int, torch.Tensor]


@dataclass(frozen=True)
class CrownConfig:
    """``memory_mb``: budget for one chunk of backward coefficient matrices (rows are chunked to
    fit). ``refine_stable``: also run CROWN for neurons that interval arithmetic (on the tightened
    previous layer) already proves stable. Off by default, as auto_LiRPA's sparse intermediate
    bounds: the relaxation of a stable neuron is exact whatever its bounds, so this only changes
    the bound values of stable neurons (and the widths reported for them), at a large cost on
    nets trained for stability (25x on robustkit's small MNIST net). ``intersect_interval``: keep,
    per neuron, the tighter of CROWN and interval arithmetic on the tightened previous layer
    (off: plain CROWN, as auto_LiRPA computes it; only for comparisons)."""

    memory_mb: float = 256.0
    refine_stable: bool = False
    intersect_interval: bool = True

    def __post_init__(self) -> None:
        if not self.memory_mb > 0:
            raise ValueError(f"memory_mb must be positive, got {self.memory_mb}")


@dataclass
class SpecBounds:
    """Bounds on the specification ``C y`` (``C``: ``(B, k, out_dim)``): ``lower``/``upper``
    have shape ``(B, k)``; ``method`` names what produced them."""

    lower: torch.Tensor
    upper: torch.Tensor
    method: str

    def select(self, index: int) -> "SpecBounds":
        sl = slice(index, index + 1)
        return SpecBounds(self.lower[sl], self.upper[sl], self.method)


def as_box(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten an input box to float64 ``(B, n)`` and check it is non-empty."""
    lo = lower.reshape(lower.shape[0], -1).double()
    hi = upper.reshape(upper.shape[0], -1).double()
    if lo.shape != hi.shape:
        raise ValueError(f"box bounds differ in shape: {tuple(lo.shape)} vs {tuple(hi.shape)}")
    if bool((lo > hi).any()):
        raise ValueError("input lower bound exceeds upper bound")
    return lo, hi


def check_spec(net: Network, C: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """``C`` as float64 ``(B, k, out_dim)`` (a ``(k, out_dim)`` matrix is shared by all samples)."""
    if C is None:
        return None
    C = C.double()
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(batch, -1, -1)
    if C.dim() != 3 or C.shape[0] != batch or C.shape[2] != net.out_dim:
        raise ValueError(f"spec matrix C must have shape ({batch}, k, {net.out_dim}), got {tuple(C.shape)}")
    return C


def backward_pass(
    net: Network,
    end: int,
    A: torch.Tensor,
    c: torch.Tensor | None,
    lo: torch.Tensor,
    hi: torch.Tensor,
    pre: PreBounds,
    alphas: Alphas | None = None,
    errs: FloatErrors | None = None,
    betas: Mapping[int, torch.Tensor] | None = None,
    signs: Mapping[int, torch.Tensor] | None = None,
    parts: Mapping[int, tuple[torch.Tensor, ...]] | None = None,
    coeffs: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bound over the box ``[lo, hi]`` of ``A h_end + c``, where ``h_end`` is the output of
    layer ``end`` (``end = -1``: the input), and the input coefficients it ends with.

    ``A``: ``(B or 1, m, dim_end)``; ``c``: broadcastable to ``(B, m)`` (None: 0). Each layer takes
    one step of its own (:meth:`~robustkit.network.layers.LinearLayer.backward_step`;
    :meth:`~robustkit.network.activations.Activation.backward_step` with ``pre[r]``, its input
    bounds, and ``alphas[r]``, its relaxation parameters, ``(B, m, dim)`` or ``(B, dim)``). With
    ``errs`` the bound holds for every perturbed network of the float error model: ``|A| e_i`` is
    charged at each layer that rounds; without, for the exact one. ``signs[r]``/``betas[r]``: split
    constraints on the operator at ``r`` and their multipliers (beta-CROWN,
    :meth:`~robustkit.network.activations.Activation.split_terms`). ``parts[r]``: its
    ``relaxation_parts`` of ``pre[r]``, computed once by a caller that evaluates many slopes.
    ``coeffs``, when given, receives each operator's output coefficients (before it is relaxed).
    Returns ``((B, m), A_in)``."""
    c = torch.zeros(A.shape[:-1], dtype=A.dtype) if c is None else c
    for i in range(end, -1, -1):
        layer = net.layers[i]
        if errs is not None and layer.rounds:
            c = c - (A.abs() @ errs.rounding[i].unsqueeze(-1)).squeeze(-1)
        if not layer.nonlinear:
            A, c = layer.backward_step(A, c)
            continue
        if coeffs is not None:
            coeffs[i] = A
        l, u = pre[i]
        alpha = None if alphas is None else alphas.get(i)
        if alpha is not None and alpha.dim() == 2:
            alpha = alpha.unsqueeze(1)
        A, c = layer.backward_step(A, c, l.unsqueeze(1), u.unsqueeze(1), alpha,  # type: ignore[call-arg]
                                   None if parts is None else parts.get(i))
        if betas is not None and signs is not None and i in betas:
            A, c = layer.split_terms(A, c, betas[i], signs[i])  # type: ignore[attr-defined]
    center = ((lo + hi) / 2).unsqueeze(-1)
    radius = ((hi - lo) / 2).unsqueeze(-1)
    return c + (A @ center).squeeze(-1) - (A.abs() @ radius).squeeze(-1), A


def backward_lower(
    net: Network, end: int, A: torch.Tensor, bias: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor,
    pre: PreBounds, alphas: Alphas | None = None, errs: FloatErrors | None = None,
) -> torch.Tensor:
    """The bound of :func:`backward_pass` alone: a lower bound ``(B, m)`` of ``A h_end + bias``."""
    return backward_pass(net, end, A, bias, lo, hi, pre, alphas, errs)[0]


def unit_rows(net: Network, end: int, rows: torch.Tensor, sign: float, dtype: torch.dtype = torch.float64
              ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``sign * e_rows`` pulled through layer ``end`` where it offers its rows (a row selection of
    ``W``, cheaper than multiplying one-hot rows: :meth:`LinearLayer.row_slice`); returns
    ``(A, bias, new_end)`` in ``dtype`` with a batch dimension of 1."""
    layer = net.layers[end]
    dim = layer.out_dim
    sliced = None if layer.nonlinear else layer.row_slice(rows, dtype)  # type: ignore[attr-defined]
    if sliced is not None:
        w, b = sliced
        return (w * sign).unsqueeze(0), (b * sign).unsqueeze(0), end - 1
    A = torch.zeros(1, rows.numel(), dim, dtype=dtype)
    A[0, torch.arange(rows.numel()), rows] = sign
    return A, None, end


def chunk_rows(net: Network, end: int, batch: int, memory_mb: float) -> int:
    """How many specification rows fit one backward pass to layer ``end`` within ``memory_mb``."""
    widest = max([net.in_dim] + [net.layers[i].out_dim for i in range(end + 1)])
    per_row = batch * widest * 8 * 4  # A, its positive/negative parts and the product
    return max(1, int(memory_mb * 2**20 // per_row))


def layer_bounds(
    net: Network,
    end: int,
    rows: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    pre: PreBounds,
    memory_mb: float,
    alphas: Alphas | None = None,
    errs: FloatErrors | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN lower and upper bounds ``(B, len(rows))`` of neurons ``rows`` of layer ``end``
    (without the float64 slack; with the float32 rounding when ``errs`` is given). ``alphas[r]``: lower slopes per side (lower-bound rows use ``[:, 0]``,
    upper-bound rows ``[:, 1]``), per neuron ``(B, 2, dim_r)`` or per row ``(B, 2, len(rows), dim_r)``,
    or ``(B, dim_r)`` for both sides."""
    batch = lo.shape[0]
    step = chunk_rows(net, end, batch, memory_mb)
    lows, ups = [], []
    for start in range(0, rows.numel(), step):
        part = rows[start : start + step]
        res = []
        for side, sign in ((0, 1.0), (1, -1.0)):
            A, bias, last = unit_rows(net, end, part, sign, lo.dtype)
            if errs is not None and bias is not None:  # layer ``end`` itself was folded into A
                bias = bias - errs.rounding[end][:, part]
            side_alphas = None
            if alphas is not None:
                side_alphas = {r: _side_alpha(a, side, start, start + step) for r, a in alphas.items()}
            res.append(backward_lower(net, last, A, bias, lo, hi, pre, side_alphas, errs))
        lows.append(res[0])
        ups.append(-res[1])
    return torch.cat(lows, dim=1), torch.cat(ups, dim=1)


def _side_alpha(alpha: torch.Tensor, side: int, start: int, stop: int) -> torch.Tensor:
    if alpha.dim() == 4:
        return alpha[:, side, start:stop]
    return alpha[:, side] if alpha.dim() == 3 else alpha


def spec_lower(
    net: Network, C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, pre: PreBounds, alphas: Alphas | None = None,
    errs: FloatErrors | None = None,
) -> torch.Tensor:
    """CROWN lower bound ``(B, k)`` of ``C y`` (without the float64 slack: subtract
    ``errs.spec_slack(C)``); ``alphas[r]``: ``(B, k, dim_r)`` or ``(B, dim_r)``."""
    return backward_lower(net, len(net.layers) - 1, C, None, lo, hi, pre, alphas, errs)


def needs_backward(net: Network, i: int) -> bool:
    """Whether layer ``i``'s bounds come from a backward pass: a linear layer, not the first
    (interval arithmetic is exact for one affine map of a box), feeding a ReLU or the output."""
    layers = net.layers
    if i == 0 or layers[i].nonlinear:
        return False
    return i == len(layers) - 1 or layers[i + 1].nonlinear


def charged(layer: Layer) -> bool:
    """Whether a forward bound step moves this layer's output out by its float error and slack:
    every linear layer (robustkit's float64 arithmetic computed it), and a nonlinear operator that
    rounds (LeakyReLU); an exact one (ReLU, HardTanh) passes its input's bounds through as they are."""
    return not layer.nonlinear or layer.rounds


def pre_bounds(net: Network, bounds: NetBounds, upto: int | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Pre-activation bounds of every ReLU (before position ``upto``) from ``bounds``."""
    out = {}
    for r in net.activation_indices:
        if upto is not None and r >= upto:
            break
        out[r] = (bounds.input_lower, bounds.input_upper) if r == 0 else (bounds.lower[r - 1], bounds.upper[r - 1])
    return out


def intersect(
    lo: torch.Tensor, hi: torch.Tensor, lo2: torch.Tensor, hi2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection of two valid boxes (both contain the true set, so it is never empty; float
    rounding cannot cross them because both carry the float error model's slack). A NaN bound
    (an overflow inside a bound computation) bounds nothing: the other side's bound is kept."""
    return torch.fmax(lo, lo2), torch.fmin(hi, hi2)


def refresh(net: Network, bounds: NetBounds) -> NetBounds:
    """Re-run interval arithmetic from the input through ``bounds`` (each layer's interval image
    of the previous, tightened, layer, moved outward by its float error), intersected with the
    stored bounds."""
    errs = bounds.float_errors(net)
    lo, hi = bounds.input_lower, bounds.input_upper
    out = NetBounds(lo, hi, [], [], bounds.method, errs)
    for i, layer in enumerate(net.layers):
        lo, hi = layer.interval(lo, hi)
        if charged(layer):
            lo, hi = outward(lo, hi, errs.rounding[i] + errs.slack[i])
        lo, hi = intersect(lo, hi, bounds.lower[i], bounds.upper[i])
        out.lower.append(lo)
        out.upper.append(hi)
    return out


def crown_bounds(
    net: Network,
    lower: torch.Tensor,
    upper: torch.Tensor,
    C: torch.Tensor | None = None,
    config: CrownConfig = CrownConfig(),
    base: NetBounds | None = None,
    start: int = 0,
    slopes: dict[int, dict[int, torch.Tensor]] | None = None,
    deadline: float | None = None,
) -> tuple[NetBounds, SpecBounds | None]:
    """CROWN bounds of every layer over the box (``(B, in_dim)``), and of ``C y`` when ``C``
    (``(B, k, out_dim)`` or ``(k, out_dim)``) is given. ``base`` (optional, e.g. from a previous
    method) is intersected in; with ``start > 0`` the layers before ``start`` are taken from
    ``base`` as they are (e.g. after tightening them by LP). All returned bounds hold for the
    float32 network (:mod:`robustkit.bounds.floaterr`); the error model is built from these bounds
    as they are computed, each term the smaller of that and ``base``'s (when it has one).
    ``slopes`` (:attr:`NetBounds.slopes`, e.g. alpha-CROWN's over a larger region): the lower
    slopes of the backward pass of each target layer it names, instead of CROWN's adaptive ones.
    ``deadline`` (a ``time.perf_counter()`` value): once passed, the layers left get no backward
    pass, only the interval step intersected with ``base`` (as sound, looser; a caller bounded by
    a time limit, such as branch and bound recomputing its children's bounds, stops within one
    layer's backward pass instead of finishing every layer)."""
    if start > 0 and base is None:
        raise ValueError("start > 0 needs base bounds")
    lo_in, hi_in = as_box(lower, upper)
    C = check_spec(net, C, lo_in.shape[0])
    tracker = ErrorTracker(lo_in, hi_in)
    prior = None if base is None else base.errors
    errs = tracker.out
    out = NetBounds(lo_in, hi_in, [], [], "crown", errs)
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    lo, hi = lo_in, hi_in
    with torch.no_grad():
        for i, layer in enumerate(net.layers):
            if layer.nonlinear:
                pre[i] = (lo, hi)
            tracker.add(layer, lo, hi)
            if prior is not None:
                tracker.meet(prior)
            if i < start:
                assert base is not None
                lo, hi = base.lower[i], base.upper[i]
                out.lower.append(lo)
                out.upper.append(hi)
                continue
            lo, hi = layer.interval(lo, hi)
            if charged(layer):
                lo, hi = outward(lo, hi, errs.rounding[i] + errs.slack[i])
            if base is not None:
                lo, hi = intersect(lo, hi, base.lower[i], base.upper[i])
            if needs_backward(net, i) and (deadline is None or time.perf_counter() < deadline):
                lo, hi = _tighten_layer(net, i, lo, hi, lo_in, hi_in, pre, config, errs,
                                        None if slopes is None else slopes.get(i))
            out.lower.append(lo)
            out.upper.append(hi)
        spec = None if C is None else spec_bounds_from(net, out, C, "crown", config.intersect_interval)
    return out, spec


def _tighten_layer(
    net: Network,
    i: int,
    lo: torch.Tensor,
    hi: torch.Tensor,
    lo_in: torch.Tensor,
    hi_in: torch.Tensor,
    pre: PreBounds,
    config: CrownConfig,
    errs: FloatErrors,
    slopes: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersect ``[lo, hi]`` (layer ``i``) with its CROWN bounds; without ``refine_stable`` only
    neurons unstable under ``[lo, hi]`` in some sample are computed, and only used there.
    ``slopes``: lower slopes for this layer's backward pass (``{r: (B', 2, d_i, d_r)}`` per row
    or ``(B', 2, d_r)``, ``B'`` 1 or the batch)."""
    feeds_relu = i + 1 < len(net.layers)
    if config.refine_stable or not feeds_relu:
        mask = torch.ones_like(lo, dtype=torch.bool)
    else:  # the next operator's undecided neurons (not the coordinates it carries)
        mask = net.layers[i + 1].unstable(lo, hi)  # type: ignore[attr-defined]
    rows = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return lo, hi
    alphas = None
    if slopes is not None:
        alphas = {r: a[:, :, rows] if a.dim() == 4 else a for r, a in slopes.items()}
    cl, cu = layer_bounds(net, i, rows, lo_in, hi_in, pre, config.memory_mb, alphas, errs)
    cl, cu = outward(cl, cu, errs.slack[i][:, rows])
    sel = mask[:, rows]
    if config.intersect_interval:
        cl, cu = intersect(cl, cu, lo[:, rows], hi[:, rows])
    lo, hi = lo.clone(), hi.clone()
    lo[:, rows] = torch.where(sel, cl, lo[:, rows])
    hi[:, rows] = torch.where(sel, cu, hi[:, rows])
    return lo, hi


def spec_bounds_from(
    net: Network, bounds: NetBounds, C: torch.Tensor, method: str, with_interval: bool = True
) -> SpecBounds:
    """CROWN bounds of ``C y`` given the intermediate bounds, intersected with the interval bound
    of ``C y`` (``C`` folded into the last linear layer); valid for the float32 network."""
    errs = bounds.float_errors(net)
    pre = pre_bounds(net, bounds)
    batch = bounds.input_lower.shape[0]
    lower = spec_lower(net, C, bounds.input_lower, bounds.input_upper, pre, errs=errs)
    upper = -spec_lower(net, -C, bounds.input_lower, bounds.input_upper, pre, errs=errs)
    lower, upper = outward(lower, upper, errs.spec_slack(C))
    if with_interval:
        il, iu = interval_spec(net, bounds, C)
        lower, upper = intersect(lower, upper, il, iu)
    assert lower.shape == (batch, C.shape[1])
    return SpecBounds(lower, upper, method)


def interval_spec(net: Network, bounds: NetBounds, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds of ``C y``: ``C W`` applied to the box of the last linear layer's input
    when the net ends in a linear layer (tighter than bounding ``C`` over the output box), and
    the better of that and ``C`` over the output box; valid for the float32 network."""
    C = C.double()
    errs = bounds.float_errors(net)
    yl, yu = bounds.output()
    center, radius = ((yl + yu) / 2).unsqueeze(-1), ((yu - yl) / 2).unsqueeze(-1)
    lower = (C @ center).squeeze(-1) - (C.abs() @ radius).squeeze(-1)
    upper = (C @ center).squeeze(-1) + (C.abs() @ radius).squeeze(-1)
    last = net.layers[-1] if net.layers else None
    if last is not None and not last.nonlinear:
        assert isinstance(last, LinearLayer)
        n = len(net.layers)
        gl, gu = (bounds.input_lower, bounds.input_upper) if n == 1 else (bounds.lower[-2], bounds.upper[-2])
        A = last.backward(C)
        c = C @ last.bias_tensor(torch.float64)
        gc, gr = ((gl + gu) / 2).unsqueeze(-1), ((gu - gl) / 2).unsqueeze(-1)
        mid = c + (A @ gc).squeeze(-1)
        rad = (A.abs() @ gr).squeeze(-1) + (C.abs() @ errs.rounding[-1].unsqueeze(-1)).squeeze(-1)
        lower, upper = intersect(lower, upper, mid - rad, mid + rad)
    return outward(lower, upper, errs.spec_slack(C))


def float_charge(net: Network, bounds: NetBounds, C: torch.Tensor) -> torch.Tensor:
    """How much the float error model lowers the CROWN bound of each row of ``C y`` at these
    intermediate bounds (``(B, k)``): the rounding charged plus the float64 slack. Reported with
    every verdict, so a proof shows how much room float error took."""
    C = check_spec(net, C, bounds.input_lower.shape[0])
    assert C is not None
    errs = bounds.float_errors(net)
    pre = pre_bounds(net, bounds)
    with torch.no_grad():
        exact = spec_lower(net, C, bounds.input_lower, bounds.input_upper, pre)
        charged = spec_lower(net, C, bounds.input_lower, bounds.input_upper, pre, errs=errs)
    return exact - charged + errs.spec_slack(C)
