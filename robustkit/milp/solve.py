"""Deciding a violation with the MILP: is there an input in the box whose output satisfies one
of the disjuncts ``C_k y <= d_k``?

For disjuncts ``k`` with rows ``r`` we maximise ``t`` subject to ``t <= d_r - C_r y`` for every row
of the chosen disjunct. With one disjunct this is a plain MILP; with several (formulation
``max``), a one-hot selector ``s_k`` and big-M rows ``t <= d_r - C_r y + M_rk (1 - s_k)`` pick
the disjunct, as in MIPVerify's encoding of a maximum.

Soundness: ``t`` gets the lower bound ``-safety_margin``. If HiGHS proves the model infeasible,
every input has ``t < -safety_margin`` for every disjunct: the property holds with that margin.
The model's rows hold for the float32 network and are relaxed beyond HiGHS's tolerances
(:mod:`robustkit.milp.encoder`), so the verdict rests neither on exact arithmetic nor on those
tolerances: a real violation (``t >= 0``) is feasible with room ``safety_margin`` in ``t`` and
at least ``SOLVER_SLACK (1 + |scale|)`` in every row. A feasible point with ``t >= 0`` is only a *candidate*: the caller
re-checks it in onnxruntime before calling it a counterexample. HiGHS's ``objective_bound``
is not used (in HiGHS 1.14 it can end with status Optimal on a non-optimal point).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import highspy
import numpy as np
import scipy.sparse as sp

from robustkit.errors import SolverError
from robustkit.milp.encoder import INF, Encoding, add_rows_csr, relax
from robustkit.spec import LinearConstraints

if TYPE_CHECKING:
    from robustkit.milp.assembled import AssembledMilp

Outcome = Literal["holds", "candidate", "timeout", "undecided"]


@dataclass
class SolveResult:
    outcome: Outcome
    t_upper: float  # proven upper bound on max t (inf when nothing proven)
    t_best: float  # best t found (-inf when no feasible point)
    x: np.ndarray | None  # input of the best point
    disjunct: int | None  # which disjunct the best point satisfies
    solver_status: str
    time: float
    nodes: int = 0


def row_bounds(C: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of ``C y`` for ``y`` in ``[lower, upper]``."""
    cp, cn = np.clip(C, 0, None), np.clip(C, None, 0)
    return cp @ lower + cn @ upper, cp @ upper + cn @ lower


def solve_violation(
    enc: Encoding,
    disjuncts: list[LinearConstraints],
    time_limit: float,
    safety_margin: float = 1e-4,
    start_x: np.ndarray | None = None,
    candidate_target: float = 1e-3,
    rows_lower: list[np.ndarray] | None = None,
    before_run: "Callable[[AssembledMilp], SolveResult | None] | None" = None,
) -> SolveResult:
    """Maximise ``t`` over the encoded network (see module docstring); the model is restored after.

    ``rows_lower[k]`` optionally gives tighter lower bounds on ``C_k y`` (e.g. from CROWN),
    used only for the big-M constants and ``t``'s upper bound.
    ``before_run`` sees the assembled model just before HiGHS would run it (see
    :mod:`robustkit.milp.assembled`); a result it returns replaces HiGHS's run.
    """
    h = enc.highs
    t0 = time.perf_counter()
    n_out = enc.output_cols.size
    base_rows, base_cols = h.getNumRow(), h.getNumCol()
    # upper bound of t: max over disjuncts of min over rows of (d - lb(C y)). The output columns
    # are within ``output_err`` of the float32 outputs: a row's threshold moves up by |C| err.
    ubs, lbs, dd = [], [], []
    for k, dj in enumerate(disjuncts):
        if dj.C.shape[1] != n_out:
            raise ValueError(f"disjunct has {dj.C.shape[1]} output columns, the network has {n_out}")
        shift = np.abs(dj.C) @ enc.output_err if enc.output_err.size else np.zeros(dj.C.shape[0])
        lo, hi = row_bounds(dj.C, enc.output_lower, enc.output_upper)
        if rows_lower is not None:
            lo = np.maximum(lo, rows_lower[k] - shift)
        dd.append(dj.d + shift)
        ubs.append(dd[k] - lo)
        lbs.append(dd[k] - hi)
    t_ub = float(max(np.min(u) for u in ubs))
    if t_ub < -safety_margin:
        return SolveResult("holds", t_ub, -np.inf, None, None, "bounds", time.perf_counter() - t0)
    multi = len(disjuncts) > 1
    t_col = base_cols
    h.addVars(1, np.array([-safety_margin]), np.array([t_ub]))
    ncols = base_cols + 1
    s_cols = np.arange(ncols, ncols + len(disjuncts)) if multi else np.zeros(0, dtype=np.int64)
    if multi:
        k = len(disjuncts)
        h.addVars(k, np.zeros(k), np.ones(k))
        h.changeColsIntegrality(k, s_cols.astype(np.int32), np.array([highspy.HighsVarType.kInteger] * k))
        ncols += k
    rows, cols, vals, lower, upper = [], [], [], [], []
    r = 0
    for k, dj in enumerate(disjuncts):
        for i in range(dj.C.shape[0]):
            nz = np.flatnonzero(dj.C[i])
            big_m = t_ub - lbs[k][i] if multi else 0.0
            rows += [r] * (1 + nz.size + (1 if multi else 0))
            cols += [t_col] + list(enc.output_cols[nz]) + ([int(s_cols[k])] if multi else [])
            vals += [1.0] + list(dj.C[i, nz]) + ([big_m] if multi else [])
            lower.append(-INF)
            # relaxed against solver tolerances like every inequality of the encoding
            upper.append(relax(np.zeros(1), np.array([dd[k][i] + big_m]), abs(dd[k][i]) + abs(big_m))[1][0])
            r += 1
    if multi:  # sum_k s_k = 1
        rows += [r] * len(disjuncts)
        cols += list(s_cols)
        vals += [1.0] * len(disjuncts)
        lower.append(1.0)
        upper.append(1.0)
        r += 1
    mat = sp.csr_matrix((vals, (rows, cols)), shape=(r, ncols))
    add_rows_csr(h, mat, np.array(lower), np.array(upper))
    h.changeColsCost(1, np.array([t_col], dtype=np.int32), np.array([-1.0]))
    try:
        if start_x is not None:
            _set_start(enc, disjuncts, start_x, t_col, s_cols, ncols, safety_margin, t_ub)
        remaining = max(time_limit - (time.perf_counter() - t0), 0.01)
        if before_run is not None:
            from robustkit.milp.assembled import AssembledMilp

            hooked = before_run(AssembledMilp(enc, disjuncts, t_col, s_cols, t_ub, safety_margin, start_x,
                                              remaining, candidate_target, t0))
            if hooked is not None:
                return hooked
        h.setOptionValue("time_limit", float(remaining))
        h.setOptionValue("objective_target", -float(candidate_target))
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 1e-7)
        h.run()
        return _read_result(enc, disjuncts, t_col, t_ub, safety_margin, time.perf_counter() - t0)
    finally:
        h.deleteRows(h.getNumRow() - base_rows, np.arange(base_rows, h.getNumRow(), dtype=np.int32))
        h.deleteCols(h.getNumCol() - base_cols, np.arange(base_cols, h.getNumCol(), dtype=np.int32))
        h.clearSolver()


def _set_start(enc: Encoding, disjuncts: list[LinearConstraints], x: np.ndarray, t_col: int, s_cols: np.ndarray,
               ncols: int, safety_margin: float, t_ub: float) -> None:
    col = enc.start_vector(x)
    y = col[enc.output_cols]
    values = [float(np.min(dj.slack(y), initial=np.inf)) for dj in disjuncts]
    best = int(np.argmax(values))
    t = min(values[best], t_ub)
    if t < -safety_margin:
        return  # the start violates t's lower bound: useless as a start
    full = np.zeros(ncols)
    full[: col.size] = col
    full[t_col] = t
    if s_cols.size:
        full[s_cols[best]] = 1.0
    sol = highspy.HighsSolution()
    sol.col_value = list(full)
    sol.value_valid = True
    enc.highs.setSolution(sol)


def _read_result(enc: Encoding, disjuncts: list[LinearConstraints], t_col: int, t_ub: float, safety_margin: float,
                 elapsed: float) -> SolveResult:
    h = enc.highs
    status = h.getModelStatus()
    name = h.modelStatusToString(status)
    info = h.getInfo()
    nodes = int(getattr(info, "mip_node_count", 0))
    if status == highspy.HighsModelStatus.kInfeasible:
        return SolveResult("holds", -safety_margin, -np.inf, None, None, name, elapsed, nodes)
    has_point = info.primal_solution_status == 2  # kSolutionStatusFeasible
    dual = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else -INF
    t_upper = min(-dual, t_ub) if np.isfinite(dual) else t_ub
    if not has_point:
        outcome: Outcome = "timeout" if status == highspy.HighsModelStatus.kTimeLimit else "undecided"
        return SolveResult(outcome, t_upper, -np.inf, None, None, name, elapsed, nodes)
    col = np.asarray(h.getSolution().col_value)
    t = float(col[t_col])
    y = col[enc.output_cols]
    values = [float(np.min(dj.slack(y), initial=np.inf)) for dj in disjuncts]
    best = int(np.argmax(values))
    x = col[enc.input_cols].copy()
    # sanity: the solver's point must lie inside the proven output bounds (up to tolerance)
    tol = 1e-4 * (1.0 + np.abs(enc.output_upper).max(initial=0.0) + np.abs(enc.output_lower).max(initial=0.0))
    if np.any(y > enc.output_upper + tol) or np.any(y < enc.output_lower - tol) or t > t_ub + tol:
        raise SolverError(
            f"HiGHS returned a point outside the proven bounds (status {name}): numerical trouble"
        )
    if t >= 0 or values[best] >= 0:
        return SolveResult("candidate", t_upper, max(t, values[best]), x, best, name, elapsed, nodes)
    if status == highspy.HighsModelStatus.kOptimal:
        # optimum in [-safety_margin, 0): holds, but not with the required margin
        return SolveResult("undecided", t, t, x, best, name, elapsed, nodes)
    outcome = "timeout" if status == highspy.HighsModelStatus.kTimeLimit else "undecided"
    return SolveResult(outcome, t_upper, t, x, best, name, elapsed, nodes)
