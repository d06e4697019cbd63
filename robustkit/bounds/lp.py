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
from robustkit.network import LinearLayer, Network, ReLU

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
    constraint data kept for the dual bound."""

    def __init__(self, net: Network, bounds: NetBounds, matrices: dict[int, sp.csr_matrix], config: LpConfig) -> None:
        self.net, self.bounds, self.matrices, self.config = net, bounds, matrices, config
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
        self.layer_cols: list[int] = []  # first column of each layer's output; [0] = the input
        self._A: sp.csr_matrix | None = None
        self._cost_cols = np.zeros(0, dtype=np.int32)
        lo, hi = self._np(bounds.input_lower), self._np(bounds.input_upper)
        self.input_col = self._add_cols(lo, hi)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().reshape(-1).double().cpu().numpy().copy()

    def _add_cols(self, lo: np.ndarray, hi: np.ndarray) -> int:
        first = self.ncols
        self.h.addVars(lo.size, lo, hi)
        self.col_lo.append(lo)
        self.col_hi.append(hi)
        self.ncols += lo.size
        self._A = None
        return first

    def _add_rows(self, mat: sp.coo_matrix, lo: np.ndarray, hi: np.ndarray) -> None:
        csr = sp.csr_matrix((mat.data, (mat.row, mat.col)), shape=(mat.shape[0], self.ncols))
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

    def layer_start(self, i: int) -> int:
        """First column of layer ``i``'s output (``i = -1``: the input)."""
        return self.input_col if i < 0 else self.layer_cols[i]

    def extend_to(self, end: int) -> None:
        """Add the layers up to ``end`` (inclusive) with the current bounds."""
        for i in range(len(self.layer_cols), end + 1):
            layer = self.net.layers[i]
            prev = self.layer_start(i - 1)
            lo, hi = self._np(self.bounds.lower[i]), self._np(self.bounds.upper[i])
            if isinstance(layer, LinearLayer):
                first = self._add_cols(lo, hi)
                self.layer_cols.append(first)
                w = self.matrices[i]
                n = layer.out_dim
                keep = np.arange(n)
                nxt = self.net.layers[i + 1] if i + 1 < len(self.net.layers) else None
                if isinstance(nxt, ReLU):
                    # a neuron whose ReLU is stably off constrains nothing downstream: leaving out its
                    # row only relaxes the LP (sound) and keeps it small
                    keep = np.flatnonzero((hi > 0) | ~nxt.relu_mask.numpy())
                wk = w[keep].tocoo()
                m = keep.size
                mat = sp.coo_matrix(
                    (np.concatenate([wk.data, -np.ones(m)]),
                     (np.concatenate([wk.row, np.arange(m)]), np.concatenate([wk.col + prev, keep + first]))),
                    shape=(m, self.ncols),
                )
                rhs = -layer.bias_vector()[keep]
                err = self.bounds.float_errors(self.net).rounding[i][0].detach().cpu().numpy()[keep]
                self._add_rows(mat, rhs - err, rhs + err)
            elif isinstance(layer, ReLU):
                self.layer_cols.append(self._add_relu(i, prev))
            else:
                raise TypeError(f"LP tightening does not support {layer.describe()}")

    def _add_relu(self, i: int, prev: int) -> int:
        l, u = self.bounds.pre_activation(self.net, i)
        layer = self.net.layers[i]
        l, u = self._np(l), self._np(u)
        n = l.size
        real = layer.relu_mask.numpy()  # identity coordinates: v = z with z's bounds, no v >= 0
        first = self._add_cols(np.where(real, np.maximum(l, 0.0), l), np.where(real, np.maximum(u, 0.0), u))
        z, v = prev + np.arange(n), first + np.arange(n)
        active, _, unstable = (m.numpy() for m in layer.phases(torch.from_numpy(l), torch.from_numpy(u)))
        rows, cols, vals, rlo, rhi = [], [], [], [], []
        r = 0
        for j in np.flatnonzero(active):  # v = z
            rows += [r, r]; cols += [v[j], z[j]]; vals += [1.0, -1.0]; rlo.append(0.0); rhi.append(0.0); r += 1
        uj = np.flatnonzero(unstable)
        binaries = self._add_cols(np.zeros(uj.size), np.ones(uj.size)) if self.integer and uj.size else -1
        for k, j in enumerate(uj):
            s = u[j] / (u[j] - l[j])
            rows += [r, r]; cols += [v[j], z[j]]; vals += [1.0, -1.0]; rlo.append(0.0); rhi.append(np.inf); r += 1
            if binaries < 0:  # triangle: v - s z <= -s l (raised by the rounding of s)
                slack = 4 * U64 * (s * (u[j] - l[j]) + u[j])
                rows += [r, r]; cols += [v[j], z[j]]; vals += [1.0, -s]; rlo.append(-np.inf); rhi.append(-s * l[j] + slack)
                r += 1
            else:  # v <= u a;  v <= z - l (1 - a)
                a = binaries + k
                rows += [r, r]; cols += [v[j], a]; vals += [1.0, -u[j]]; rlo.append(-np.inf); rhi.append(0.0); r += 1
                rows += [r, r, r]; cols += [v[j], z[j], a]; vals += [1.0, -1.0, -l[j]]
                rlo.append(-np.inf); rhi.append(-l[j]); r += 1
        if binaries >= 0:
            idx = np.arange(binaries, binaries + uj.size, dtype=np.int32)
            self.h.changeColsIntegrality(idx.size, idx, np.full(idx.size, highspy.HighsVarType.kInteger))
        if r:
            mat = sp.coo_matrix((np.array(vals), (np.array(rows), np.array(cols))), shape=(r, self.ncols))
            self._add_rows(mat, np.array(rlo), np.array(rhi))
        return first

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
    matrices = {i: layer.matrix() for i, layer in enumerate(net.layers) if isinstance(layer, LinearLayer)}
    targets = [i for i in range(len(net.layers) - 1) if needs_backward(net, i)]
    outs: list[NetBounds] = []
    spec_lo, spec_hi = [], []
    for b in range(batch):
        deadline = None
        if time_budget is not None:
            left = time_budget - (time.perf_counter() - start)
            deadline = time.perf_counter() + max(left, 0.0) / (batch - b)
        nb = bounds.select(b)
        nb, s_lo, s_hi = _tighten_sample(net, nb, matrices, targets, C, spec, b, config, deadline, stats)
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


def _order(l: np.ndarray, u: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Unstable neurons, those closest to being stable first (most likely to flip)."""
    return idx[np.argsort(np.minimum(-l[idx], u[idx]), kind="stable")]


def _tighten_sample(
    net: Network, nb: NetBounds, matrices: dict[int, sp.csr_matrix], targets: list[int], C: torch.Tensor | None,
    spec: SpecBounds | None, b: int, config: LpConfig, deadline: float | None, stats: LpStats,
) -> tuple[NetBounds, torch.Tensor | None, torch.Tensor | None]:
    model = _Model(net, nb, matrices, config)
    for t in targets:
        if _time_left(deadline) <= 0:
            break
        model.extend_to(t)
        lo = nb.lower[t][0].numpy().copy()
        hi = nb.upper[t][0].numpy().copy()
        # the unstable ReLUs fed by layer t (identity coordinates of a graph's carried tensors excluded)
        unstable = np.flatnonzero(net.layers[t + 1].phases(torch.from_numpy(lo), torch.from_numpy(hi))[2].numpy())
        first = model.layer_start(t)
        done = 0
        for j in _order(lo, hi, unstable):
            if _time_left(deadline) <= 0:
                stats.skipped += 1
                continue
            sides = (1.0, -1.0) if hi[j] >= -lo[j] else (-1.0, 1.0)  # the side likelier to flip first
            for sign in sides:
                if lo[j] >= 0 or hi[j] <= 0 or _time_left(deadline) <= 0:
                    break
                value = model.minimize(np.array([first + j]), np.array([sign]), _time_left(deadline))
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
                model.set_col_bounds(first + j, nl, nh)
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
        out_first = model.layer_start(len(net.layers) - 1)
        cb = C[b] if C.dim() == 3 else C
        cols = out_first + np.arange(net.out_dim)
        for k in range(cb.shape[0]):
            row = cb[k].double().numpy()
            for sign in (1.0, -1.0):
                if _time_left(deadline) <= 0:
                    break
                value = model.minimize(cols, sign * row, _time_left(deadline))
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
