"""The exact LP at a branch-and-bound leaf, decided from certificates rather than from the
solver's verdict.

At a leaf every kink of every piecewise-linear operator is decided (by a split or by its bounds),
so the exact network is affine there: ``y = A x + c`` (each operator on its piece,
``Activation.piece``), and each split neuron ``z = A_z x + c_z`` is on its side of its kink ``b``. The float32
network differs from it by at most the accumulated rounding ``E`` of the error model
(:mod:`robustkit.bounds.floaterr`, plus the float64 slack of computing ``A`` and ``c``), so the
LP is written with every row relaxed by it: for disjunct ``k`` maximise ``t`` s.t.
``C_r (A x + c) + t <= d_r + |C_r| E_out`` (rows ``r`` of ``k``), ``-(A_z x + c_z) <= E_z``
(active), ``A_z x + c_z <= E_z`` (inactive), ``x`` in the box.

The solver (HiGHS through scipy) only proposes. What decides:

* an upper bound on ``t`` from the row duals ``y >= 0``: every feasible ``(x, t)`` has
  ``s t <= y.rhs - min_{x in box} (M^T y).x`` with ``s`` the duals' sum on the rows that hold
  ``t``, evaluated in float64 with its rounding error bounded and added (a Lagrangian bound:
  valid for *any* ``y >= 0``, however inexact the solve was);
* infeasibility only from a Farkas-type certificate: duals ``y >= 0`` of the split rows with
  ``min_{x in box} (G^T y).x - y.h > 0`` beyond its rounding error (taken from the LP that
  minimises the largest split-row violation);
* a candidate only from a primal point with ``t >= 0``, which the caller re-runs in onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog

from robustkit.bounds.floaterr import U64, FloatErrors, gamma
from robustkit.network import Network


@dataclass(frozen=True)
class LeafLp:
    """The leaf's rows: ``CA x + t <= d_rel`` for the specification (``CA``: ``(m, n)``) and
    ``G x <= h`` for the decided neurons, over the box ``[lo, hi]``."""

    CA: np.ndarray
    d_rel: np.ndarray
    G: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _box_min(g: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    return float(np.where(g > 0, g * lo, g * hi).sum())


def _rounding(M: np.ndarray, y: np.ndarray, rhs: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Bound on the float64 error of ``y.rhs - min_box (M^T y).x`` as computed here."""
    xm = np.maximum(np.abs(lo), np.abs(hi))
    n = M.shape[0] + M.shape[1] + 2
    terms = float((np.abs(M).T @ np.abs(y)) @ xm) + float(np.abs(g) @ xm) + float(np.abs(y) @ np.abs(rhs))
    return 2 * gamma(n, U64) * terms


def upper_bound_t(lp: LeafLp, rows: np.ndarray, y_spec: np.ndarray, y_side: np.ndarray) -> float:
    """Certified upper bound on ``max t`` for the disjunct with specification ``rows``, from
    duals ``y_spec`` (on those rows) and ``y_side`` (on the split rows); ``inf`` if none."""
    y_spec, y_side = np.clip(y_spec, 0, None), np.clip(y_side, 0, None)
    s = float(y_spec.sum())
    if not s > 0:
        return np.inf
    y = np.concatenate([y_spec, y_side]) / s
    M = np.vstack([lp.CA[rows], lp.G])
    rhs = np.concatenate([lp.d_rel[rows], lp.h])
    g = M.T @ y
    value = float(y @ rhs) - _box_min(g, lp.lo, lp.hi)
    # s was divided out in float64: the normalised y sums to 1 only up to rounding, which moves
    # t's coefficient off 1 by at most gamma; a bound on |t| is the value itself here
    return value + _rounding(M, y, rhs, g, lp.lo, lp.hi) + gamma(rows.size + 2, U64) * abs(value)


def certify_infeasible(lp: LeafLp) -> bool:
    """Whether the split rows ``G x <= h`` provably have no point in the box."""
    if lp.G.shape[0] == 0:
        return False
    n = lp.G.shape[1]
    obj = np.zeros(n + 1)
    obj[-1] = 1.0  # minimise v subject to G x - v <= h
    A_ub = np.hstack([lp.G, -np.ones((lp.G.shape[0], 1))])
    bounds = [(float(a), float(b)) for a, b in zip(lp.lo, lp.hi)] + [(None, None)]
    res = linprog(obj, A_ub=A_ub, b_ub=lp.h, bounds=bounds, method="highs")
    if res.status != 0:
        return False
    y = np.clip(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0, None)
    if not y.sum() > 0:
        return False
    y = y / y.sum()
    g = lp.G.T @ y
    value = _box_min(g, lp.lo, lp.hi) - float(y @ lp.h)  # <= min over the box of y.(G x - h)
    return value - _rounding(lp.G, y, lp.h, g, lp.lo, lp.hi) > 0


def decide(lp: LeafLp, groups: list[np.ndarray], margin: float) -> tuple[str, np.ndarray | None, float]:
    """``("closed", None, cleared)`` if every disjunct's certified ``max t`` is below ``-margin``
    (or the split rows are certified infeasible; ``cleared``: the least ``-bound``, ``inf`` then);
    ``("candidate", x, t)`` if a solve reaches ``t >= 0``; else ``("undecided", None, nan)``."""
    n = lp.lo.size
    bounds = [(float(a), float(b)) for a, b in zip(lp.lo, lp.hi)] + [(None, None)]
    best_t, best_x = -np.inf, None
    worst_bound = -np.inf
    for rows in groups:
        A_ub = np.vstack([np.hstack([lp.CA[rows], np.ones((rows.size, 1))]),
                          np.hstack([lp.G, np.zeros((lp.G.shape[0], 1))])])
        b_ub = np.concatenate([lp.d_rel[rows], lp.h])
        obj = np.zeros(n + 1)
        obj[-1] = -1.0
        res = linprog(obj, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if res.status == 2:  # the solver says the split rows exclude every point: check that
            if certify_infeasible(lp):
                return "closed", None, np.inf
            return "undecided", None, np.nan
        if res.status != 0:
            return "undecided", None, np.nan
        t = -float(res.fun)
        if t > best_t:
            best_t, best_x = t, np.asarray(res.x[:n], dtype=np.float64)
        y = -np.asarray(res.ineqlin.marginals, dtype=np.float64)
        worst_bound = max(worst_bound, upper_bound_t(lp, rows, y[: rows.size], y[rows.size:]))
    if best_t >= 0:
        return "candidate", best_x, best_t
    if worst_bound < -margin:
        return "closed", None, -worst_bound
    return "undecided", None, np.nan


def settle_leaf(net: Network, errs: FloatErrors, lower: list[torch.Tensor], upper: list[torch.Tensor],
                signs: dict[int, torch.Tensor], lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                groups: list[np.ndarray], margin: float, exact: bool = False) -> tuple[str, np.ndarray | None, float]:
    """A branch-and-bound leaf (``lower[i]``/``upper[i]``: its bounds of layer ``i``; ``signs[r]``:
    its splits at the ReLU ``r``) decided by :func:`decide` on its affine piece ``y = A x + c``.

    The LP's side rows are the split neurons' alone: a neuron decided by its bounds is on its
    side at every point of the domain (box and splits), so its row cuts nothing from the domain,
    and leaving it out only enlarges the LP's region (a bound over it still closes the domain;
    a candidate is re-run by the caller anyway). Each row (the specification's, each split
    neuron's) is one backward pass along the leaf's activation pattern, which gives its input
    coefficients, its constant and its float32 rounding charge (``sum_i |A_i| e_i``, with
    cancellation): a few passes, instead of pushing the whole input space forward through wide
    convolutions. ``exact``: no float error at all (the exact network's LP): a source of
    candidate points only; its "closed" proves nothing about the float32 network."""
    n = lo.numel()
    pattern: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for pos, layer in enumerate(net.layers):
        if layer.nonlinear:
            l, u = (lo, hi) if pos == 0 else (lower[pos - 1], upper[pos - 1])
            if bool(layer.unstable(l, u).any()):  # type: ignore[attr-defined]
                return "undecided", None, np.nan
            pattern[pos] = layer.piece(l, u)  # type: ignore[attr-defined]
    side_rows, side_rhs = [], []
    for pos, sg in sorted(signs.items()):
        split = torch.nonzero(sg != 0).flatten()  # units: neuron * kinks + kink
        if pos == 0 or split.numel() == 0:
            continue
        op = net.layers[pos]
        neuron = split // op.kinks  # type: ignore[attr-defined]
        b = op.breakpoints(lo)[split % op.kinks]  # type: ignore[attr-defined]
        unit = torch.zeros(split.numel(), lower[pos - 1].numel(), dtype=torch.float64)
        unit[torch.arange(split.numel()), neuron] = 1.0
        A_z, c_z, charge = _affine_rows(net, errs, unit, pos - 1, pattern)
        slack = torch.zeros(split.numel(), dtype=torch.float64) if exact else charge + errs.slack[pos - 1][0][neuron]
        # above the kink (sign +1): -(A x + c - b) <= E ; below (sign -1): A x + c - b <= E
        sign = -sg[split].double()
        side_rows.append(sign.unsqueeze(1) * A_z)
        side_rhs.append(-sign * (c_z - b) + slack)
    G = torch.cat(side_rows).numpy() if side_rows else np.zeros((0, n))
    h = torch.cat(side_rhs).numpy() if side_rows else np.zeros(0)
    CA, Cc, charge = _affine_rows(net, errs, C, len(net.layers) - 1, pattern)
    out_err = torch.zeros(C.shape[0], dtype=torch.float64) if exact else charge + errs.spec_slack(C.unsqueeze(0))[0]
    relaxed = Cc - out_err  # C y >= C (A x + c) - (error) on the float32 net
    lp = LeafLp(CA.numpy(), (d - relaxed).numpy(), G, h, lo.numpy(), hi.numpy())
    return decide(lp, groups, margin)


def _affine_rows(net: Network, errs: FloatErrors, R: torch.Tensor, end: int,
                 pattern: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows ``R`` (``(k, d_end)``) of layer ``end``'s output as affine functions of the input
    along a fixed pattern of pieces (``pattern[r]``: the operator at ``r``'s slope and intercept
    per neuron): ``(A (k, n), c (k,), charge (k,))``, ``charge`` the float rounding bound
    ``sum_i |A_i| e_i`` of a backward pass."""
    A = R.double()
    c = torch.zeros(R.shape[0], dtype=torch.float64)
    charge = torch.zeros(R.shape[0], dtype=torch.float64)
    for pos in range(end, -1, -1):
        layer = net.layers[pos]
        if layer.rounds:
            charge = charge + A.abs() @ errs.rounding[pos][0]
        if layer.nonlinear:
            slope, intercept = pattern[pos]
            c = c + A @ intercept
            A = A * slope
        else:
            A, c = layer.backward_step(A, c)  # type: ignore[attr-defined]
    return A, c, charge
