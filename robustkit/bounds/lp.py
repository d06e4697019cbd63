"""Bound tightening by linear programming (and optionally MILP), layer by layer, in the
progressive scheme of MIPVerify (Tjeng, Xiao & Tedrake 2019, "Evaluating Robustness of Neural
Networks with Mixed Integer Programming", Sec. 5.1): the bounds of layer ``t`` are the min and
max of each of its neurons over a relaxation of the network up to ``t``, built with the
(already tightened) bounds of the layers before.

Relaxation (LP): every affine layer is exact up to the float32 rounding of the deployed network
(``|W v_{i-1} + b - v_i| <= e_i``, :mod:`robustkit.bounds.floaterr`); every unstable ReLU
``v = relu(z)`` with ``l < 0 < u`` is its convex hull, the "triangle" (Ehlers 2017, Eq. 3):
``v >= 0, v >= z, v <= u (z - l) / (u - l)``; stable ReLUs are exact. All variables carry their
current bounds as column bounds. MILP (``relaxation="milp"``) adds one binary per unstable
ReLU, the formulation of Tjeng et al. Eq. 5.

Soundness: an LP optimum found with tolerances is not itself a bound. robustkit instead
evaluates the Lagrangian dual bound at the solver's row duals ``y`` exactly in float64:
``min_x c.x >= min_{x in col box} (c - A^T y).x + min_{r in row range} y.r`` holds for *every*
``y`` (components whose sign would make a term unbounded are set to 0), so only the float64
rounding of that evaluation remains, and it is bounded and subtracted too
(``gamma_N`` times the sum of the absolute values of its terms). MILP bounds
use HiGHS's MIP dual bound, widened by ``1e-6 (1 + |bound|)``: they rest on HiGHS's tolerances,
so ``relaxation="milp"`` is an option, never a default. Non-optimal
solves (time limit, numerical trouble) leave the old bound. Results are intersected with the
previous bounds; neurons not reached within the time budget keep theirs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import scipy.sparse as sp
import torch

from robustkit.bounds.crown import CrownConfig, SpecBounds, crown_bounds, needs_backward, refresh
from robustkit.bounds.floaterr import U64, gamma
from robustkit.bounds.types import NetBounds
from robustkit.network import Network
from robustkit.network.encoding import ZERO

logger = logging.getLogger(__name__)

RELAXATIONS = ("lp", "milp")
MILP_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LpConfig:
    """``relaxation``: ``"lp"`` or ``"milp"``; ``milp_time_per_problem``: HiGHS time limit of one
    MILP (seconds); ``threads``: HiGHS threads; ``spec``: also bound the rows of ``C y``."""

    relaxation: str = "lp"
    milp_time_per_problem: float = 2.0
    threads: int = 1
    spec: bool = True
    crown: CrownConfig = CrownConfig()

    def __post_init__(self) -> None:
        if self.relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {self.relaxation!r}")
        if not self.milp_time_per_problem > 0 or self.threads < 1:
            raise ValueError("milp_time_per_problem must be > 0 and threads >= 1")


@dataclass
class LpStats:
    """What a tightening run did: problems solved, bounds improved, unreached neurons, time."""

    solved: int = 0
    improved: int = 0
    not_optimal: int = 0
    skipped: int = 0
    seconds: float = 0.0
    per_layer_solved: dict[int, int] = field(default_factory=dict)


class _Model:
    """The relaxation of one sample's network, grown layer by layer in a HiGHS instance, with its
    constraint data kept for the dual bound. It is the :class:`~robustkit.network.encoding.RowBuilder`
    every layer adds itself to: linear rows ranged by the float error (each column is the float
    value itself), the operators' convex hulls (``integer``: their binaries), nothing relaxed (the
    dual bound is evaluated exactly instead)."""

    ranged = True
    exact = False

    def __init__(self, net: Network, bounds: NetBounds, config: LpConfig) -> None:
        self.net, self.bounds, self.config = net, bounds, config
        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("threads", config.threads)
        self.col_lo: list[np.ndarray] = []
        self.col_hi: list[np.ndarray] = []
        self.blocks: list[sp.coo_matrix] = []
        self.row_lo: list[np.ndarray] = []
        self.row_hi: list[np.ndarray] = []
        self.integer = config.relaxation == "milp"
        if not self.integer:  # the objective changes between solves: simplex restarts from the last basis
            self.h.setOptionValue("presolve", "off")
        self.ncols = 0
        self.nrows = 0
        self.layer_cols: list[np.ndarray] = []  # the column of each neuron of each layer (ZERO: 0)
        self._A: sp.csr_matrix | None = None
        self._cost_cols = np.zeros(0, dtype=np.int32)
        lo, hi = self._np(bounds.input_lower), self._np(bounds.input_upper)
        self.input_cols = self.add_cols(lo, hi)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().reshape(-1).double().cpu().numpy().copy()

    def add_cols(self, lower: np.ndarray, upper: np.ndarray, scale: np.ndarray | float | None = None,
                 integer: bool = False) -> np.ndarray:
        lo, hi = np.array(lower, dtype=np.float64), np.array(upper, dtype=np.float64)
        first = self.ncols
        if lo.size:
            self.h.addVars(lo.size, lo, hi)
        self.col_lo.append(lo)
        self.col_hi.append(hi)
        self.ncols += lo.size
        self._A = None
        cols = np.arange(first, self.ncols, dtype=np.int64)
        if integer and cols.size:
            idx = cols.astype(np.int32)
            self.h.changeColsIntegrality(idx.size, idx, np.full(idx.size, highspy.HighsVarType.kInteger))
        return cols

    def add_rows(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, lower: np.ndarray,
                 upper: np.ndarray, scale: np.ndarray | float | None = None) -> None:
        lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        csr = sp.csr_matrix((vals, (rows, cols)), shape=(lo.size, self.ncols))
        csr.sum_duplicates()
        csr.eliminate_zeros()
        self.h.addRows(
            csr.shape[0], lo, hi, csr.nnz,
            csr.indptr[:-1].astype(np.int32), csr.indices.astype(np.int32), csr.data.astype(np.float64),
        )
        self.blocks.append(csr.tocoo())
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        self.nrows += csr.shape[0]
        self._A = None

    def layer_col(self, i: int) -> np.ndarray:
        """The columns of layer ``i``'s output (``i = -1``: the input)."""
        return self.input_cols if i < 0 else self.layer_cols[i]

    def extend_to(self, end: int) -> None:
        """Add the layers up to ``end`` (inclusive) with the current bounds: each adds itself."""
        errs = self.bounds.float_errors(self.net)
        for i in range(len(self.layer_cols), end + 1):
            layer = self.net.layers[i]
            z = self.layer_col(i - 1)
            zero = np.zeros(z.size)
            if layer.nonlinear:
                l, u = (self._np(t) for t in self.bounds.pre_activation(self.net, i))
                out, _ = layer.encode(self, z, l, u, zero)  # type: ignore[attr-defined]
            else:
                lo, hi = self._np(self.bounds.lower[i]), self._np(self.bounds.upper[i])
                nxt = self.net.layers[i + 1] if i + 1 < len(self.net.layers) else None
                # a neuron whose operator's output is constant constrains nothing downstream: leaving
                # out its row only relaxes the LP (sound) and keeps it small
                needed = nxt.needs_input(lo, hi) if nxt is not None and nxt.nonlinear \
                    else np.ones(layer.out_dim, dtype=bool)  # type: ignore[attr-defined]
                e = errs.rounding[i][0].detach().cpu().numpy()
                out, _ = layer.encode(self, z, lo, hi, zero, e, needed)  # type: ignore[attr-defined]
            self.layer_cols.append(out)

    def set_col_bounds(self, col: int, lo: float, hi: float) -> None:
        self.h.changeColBounds(col, lo, hi)
        pos = 0
        for k, arr in enumerate(self.col_lo):
            if col < pos + arr.size:
                self.col_lo[k][col - pos], self.col_hi[k][col - pos] = lo, hi
                return
            pos += arr.size

    def minimize(self, cols: np.ndarray, coefs: np.ndarray, time_limit: float) -> float | None:
        """A sound lower bound of ``coefs . x[cols]`` over the relaxation (``None``: no result)."""
        self.h.changeColsCost(self._cost_cols.size, self._cost_cols, np.zeros(self._cost_cols.size))
        self._cost_cols = cols.astype(np.int32)
        self.h.changeColsCost(cols.size, self._cost_cols, coefs.astype(np.float64))
        limit = min(time_limit, self.config.milp_time_per_problem) if self.integer else time_limit
        self.h.setOptionValue("time_limit", max(float(limit), 1e-3))
        self.h.run()
        status = self.h.getModelStatus()
        if self.integer:
            value = self.h.getInfo().mip_dual_bound
            if status not in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kTimeLimit):
                return None
            if not np.isfinite(value):
                return None
            return float(value - MILP_TOLERANCE * (1 + abs(value)))
        if status != highspy.HighsModelStatus.kOptimal:
            return None
        return self._dual_bound(cols, coefs)

    def _dual_bound(self, cols: np.ndarray, coefs: np.ndarray) -> float:
        """Lagrangian bound at the solver's row duals, evaluated exactly (see module docstring)."""
        if self._A is None:
            self._A = sp.vstack(
                [sp.csr_matrix((b.data, (b.row, b.col)), shape=(b.shape[0], self.ncols)) for b in self.blocks]
            ).tocsr() if self.blocks else sp.csr_matrix((0, self.ncols))
            self._rlo = np.concatenate(self.row_lo) if self.row_lo else np.zeros(0)
            self._rhi = np.concatenate(self.row_hi) if self.row_hi else np.zeros(0)
        y = np.array(self.h.getSolution().row_dual, dtype=np.float64)
        y[(y > 0) & ~np.isfinite(self._rlo)] = 0.0
        y[(y < 0) & ~np.isfinite(self._rhi)] = 0.0
        c = np.zeros(self.ncols)
        np.add.at(c, cols, coefs)
        reduced = c - self._A.T @ y
        xlo, xhi = np.concatenate(self.col_lo), np.concatenate(self.col_hi)
        col_terms = np.where(reduced > 0, reduced * xlo, reduced * xhi)
        r = np.where(y > 0, np.where(y > 0, self._rlo, 0.0), np.where(y < 0, self._rhi, 0.0))
        row_terms = y * r
        # float64 rounding of this evaluation: each reduced cost is off by at most
        # gamma (|c| + |A|^T |y|), each sum by gamma times the sum of its terms' absolute values
        x_mag = np.maximum(np.abs(xlo), np.abs(xhi))
        x_mag = np.where(np.isfinite(x_mag), x_mag, 0.0)
        n = self._A.nnz + self.ncols + self.nrows + 2
        err = gamma(n, U64) * (
            float(((np.abs(c) + abs(self._A).T @ np.abs(y)) * x_mag).sum()) + float(np.abs(col_terms).sum())
            + float(np.abs(row_terms).sum())
        )
        return float(col_terms.sum() + row_terms.sum()) - 2 * err


def lp_tighten(
    net: Network,
    bounds: NetBounds,
    C: torch.Tensor | None = None,
    spec: SpecBounds | None = None,
    config: LpConfig = LpConfig(),
    time_budget: float | None = None,
) -> tuple[NetBounds, SpecBounds | None, LpStats]:
    """Tighten ``bounds`` (and ``spec``, the bounds of ``C y``) by LP/MILP, sample by sample, within
    ``time_budget`` seconds in all (shared evenly among the samples not yet done)."""
    start = time.perf_counter()
    stats = LpStats()
    batch = bounds.input_lower.shape[0]
    targets = [i for i in range(len(net.layers) - 1) if needs_backward(net, i)]
    outs: list[NetBounds] = []
    spec_lo, spec_hi = [], []
    for b in range(batch):
        deadline = None
        if time_budget is not None:
            left = time_budget - (time.perf_counter() - start)
            deadline = time.perf_counter() + max(left, 0.0) / (batch - b)
        nb = bounds.select(b)
        nb, s_lo, s_hi = _tighten_sample(net, nb, targets, C, spec, b, config, deadline, stats)
        outs.append(nb)
        spec_lo.append(s_lo)
        spec_hi.append(s_hi)
    stats.seconds = time.perf_counter() - start
    merged = NetBounds(
        bounds.input_lower, bounds.input_upper,
        [torch.cat([o.lower[i] for o in outs]) for i in range(len(net.layers))],
        [torch.cat([o.upper[i] for o in outs]) for i in range(len(net.layers))],
        config.relaxation,
    )
    new_spec = None
    if spec is not None:
        new_spec = SpecBounds(torch.cat(spec_lo), torch.cat(spec_hi), config.relaxation)
    return merged, new_spec, stats


def _time_left(deadline: float | None) -> float:
    return np.inf if deadline is None else deadline - time.perf_counter()


def _still_unstable(op: object, lo: np.ndarray, hi: np.ndarray, j: int) -> bool:
    """Whether neuron ``j`` of the operator ``op`` still has an undecided kink at bounds ``lo``/``hi``."""
    mask = op.unstable(torch.from_numpy(lo).unsqueeze(0), torch.from_numpy(hi).unsqueeze(0))  # type: ignore[attr-defined]
    return bool(mask[0, j])


def _order(l: np.ndarray, u: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Unstable neurons, those closest to being stable first (most likely to flip)."""
    return idx[np.argsort(np.minimum(-l[idx], u[idx]), kind="stable")]


def _tighten_sample(
    net: Network, nb: NetBounds, targets: list[int], C: torch.Tensor | None,
    spec: SpecBounds | None, b: int, config: LpConfig, deadline: float | None, stats: LpStats,
) -> tuple[NetBounds, torch.Tensor | None, torch.Tensor | None]:
    model = _Model(net, nb, config)
    for t in targets:
        if _time_left(deadline) <= 0:
            break
        model.extend_to(t)
        lo = nb.lower[t][0].numpy().copy()
        hi = nb.upper[t][0].numpy().copy()
        # the undecided neurons of the operator fed by layer t (not the coordinates it carries)
        op = net.layers[t + 1]
        unstable = np.flatnonzero(op.unstable(torch.from_numpy(lo), torch.from_numpy(hi)).numpy())  # type: ignore[attr-defined]
        cols = model.layer_col(t)
        done = 0
        for j in _order(lo, hi, unstable):
            if _time_left(deadline) <= 0:
                stats.skipped += 1
                continue
            sides = (1.0, -1.0) if hi[j] >= -lo[j] else (-1.0, 1.0)  # the side likelier to flip first
            for sign in sides:
                if not _still_unstable(op, lo, hi, j) or _time_left(deadline) <= 0:
                    break
                value = model.minimize(np.array([cols[j]]), np.array([sign]), _time_left(deadline))
                stats.solved += 1
                done += 1
                if value is None:
                    stats.not_optimal += 1
                    continue
                new_lo, new_hi = (value, hi[j]) if sign > 0 else (lo[j], -value)
                nl, nh = max(lo[j], float(new_lo)), min(hi[j], float(new_hi))
                if nl > lo[j] or nh < hi[j]:
                    stats.improved += 1
                lo[j], hi[j] = nl, nh
                model.set_col_bounds(int(cols[j]), nl, nh)
        stats.per_layer_solved[t] = stats.per_layer_solved.get(t, 0) + done
        nb.lower[t] = torch.from_numpy(lo).unsqueeze(0)
        nb.upper[t] = torch.from_numpy(hi).unsqueeze(0)
        # propagate the tightened layer: interval and CROWN for the layers after it
        nb, _ = crown_bounds(net, nb.input_lower, nb.input_upper, None, config.crown, refresh(net, nb), start=t + 1)
        model.bounds = nb
    nb = refresh(net, nb)
    nb.method = config.relaxation
    if spec is None or C is None:
        return nb, None, None
    s_lo, s_hi = spec.lower[b].clone(), spec.upper[b].clone()
    if config.spec and _time_left(deadline) > 0:
        model.extend_to(len(net.layers) - 1)
        out_cols = model.layer_col(len(net.layers) - 1)
        live = out_cols != ZERO  # an output that is the constant 0 adds nothing to C y
        cb = C[b] if C.dim() == 3 else C
        for k in range(cb.shape[0]):
            row = cb[k].double().numpy()
            for sign in (1.0, -1.0):
                if _time_left(deadline) <= 0:
                    break
                value = model.minimize(out_cols[live], sign * row[live], _time_left(deadline))
                stats.solved += 1
                if value is None:
                    stats.not_optimal += 1
                    continue
                v = torch.tensor(value, dtype=torch.float64)
                if sign > 0:
                    s_lo[k] = torch.maximum(s_lo[k], v)
                else:
                    s_hi[k] = torch.minimum(s_hi[k], -v)
    return nb, s_lo.unsqueeze(0), s_hi.unsqueeze(0)
