"""The MILP of one ``solve_violation`` call, fully assembled, as another solver or a writer sees it.

:func:`robustkit.milp.solve.solve_violation` builds the model in HiGHS (network encoding, the
objective variable ``t``, disjunct rows, selectors) and, just before it would run HiGHS, hands an
:class:`AssembledMilp` to its ``before_run`` hook. Everything else in robustkit reads the model
from HiGHS's arrays (:meth:`AssembledMilp.arrays`), so a change of the encoding (new rows, ranged
rows, other bounds of ``t``) reaches the other solvers and the written files unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

from robustkit.milp.encoder import Encoding
from robustkit.spec import LinearConstraints


@dataclass(frozen=True)
class MilpArrays:
    """A MILP ``min/max cost.x + offset`` s.t. ``row_lower <= A x <= row_upper``,
    ``col_lower <= x <= col_upper``, ``x_j`` integer where ``integer[j]``; infinite bounds are ``+-inf``."""

    col_lower: np.ndarray
    col_upper: np.ndarray
    cost: np.ndarray
    offset: float
    maximize: bool
    row_lower: np.ndarray
    row_upper: np.ndarray
    matrix: sp.csr_matrix
    integer: np.ndarray  # bool per column

    @property
    def num_cols(self) -> int:
        return int(self.col_lower.size)

    @property
    def num_rows(self) -> int:
        return int(self.row_lower.size)

    @property
    def bounded(self) -> bool:
        """Every column has finite bounds: the MILP cannot be unbounded (infeasible-or-unbounded = infeasible)."""
        return bool(np.all(np.isfinite(self.col_lower)) and np.all(np.isfinite(self.col_upper)))


def arrays_of(h: highspy.Highs) -> MilpArrays:
    """The model held by ``h``, as arrays (a copy; ``h`` is not changed)."""
    lp = h.getLp()
    ncol, nrow = int(lp.num_col_), int(lp.num_row_)
    a = lp.a_matrix_
    start = np.asarray(a.start_, dtype=np.int64)
    index = np.asarray(a.index_, dtype=np.int64)
    value = np.asarray(a.value_, dtype=np.float64)
    if a.format_ == highspy.MatrixFormat.kRowwise:
        mat = sp.csr_matrix((value, index, start), shape=(nrow, ncol))
    else:
        mat = sp.csc_matrix((value, index, start), shape=(nrow, ncol)).tocsr()
    integrality = list(lp.integrality_)
    integer = np.zeros(ncol, dtype=bool)
    if integrality:
        integer = np.array([v != highspy.HighsVarType.kContinuous for v in integrality], dtype=bool)

    def finite(v: list[float]) -> np.ndarray:
        arr = np.asarray(v, dtype=np.float64)
        arr[arr >= highspy.kHighsInf] = np.inf
        arr[arr <= -highspy.kHighsInf] = -np.inf
        return arr

    return MilpArrays(
        col_lower=finite(lp.col_lower_), col_upper=finite(lp.col_upper_), cost=np.asarray(lp.col_cost_, dtype=float),
        offset=float(lp.offset_), maximize=lp.sense_ == highspy.ObjSense.kMaximize,
        row_lower=finite(lp.row_lower_), row_upper=finite(lp.row_upper_), matrix=mat, integer=integer,
    )


@dataclass(frozen=True)
class AssembledMilp:
    """What ``solve_violation`` has built when its ``before_run`` hook is called.

    ``enc.highs`` holds the full model (objective: minimise ``-t``); ``time_limit`` is what is left
    of the call's limit; ``t0`` is the call's ``perf_counter`` start (results report time since it).
    """

    enc: Encoding
    disjuncts: list[LinearConstraints]
    t_col: int
    s_cols: np.ndarray
    t_ub: float
    safety_margin: float
    start_x: np.ndarray | None
    time_limit: float
    candidate_target: float
    t0: float

    def arrays(self) -> MilpArrays:
        return arrays_of(self.enc.highs)

    def slacks(self, col: np.ndarray) -> list[float]:
        """Per disjunct, the smallest slack ``d - C y`` at the columns' outputs (>= 0: the disjunct holds)."""
        y = col[self.enc.output_cols]
        return [float(np.min(dj.slack(y), initial=np.inf)) for dj in self.disjuncts]

    def start_point(self, t_lower: float) -> np.ndarray | None:
        """All columns' values at ``start_x`` (forward pass; ``t`` and the selectors set to the best
        disjunct), as ``solve_violation`` gives HiGHS; None without a start or when the start's ``t``
        is below ``t_lower`` (a useless start)."""
        if self.start_x is None:
            return None
        col = self.enc.start_vector(self.start_x)
        values = self.slacks(col)
        best = int(np.argmax(values))
        t = min(values[best], self.t_ub)
        if t < t_lower:
            return None
        ncols = self.enc.highs.getNumCol()
        full = np.zeros(ncols)
        full[: col.size] = col
        full[self.t_col] = t
        if self.s_cols.size:
            full[self.s_cols[best]] = 1.0
        return full
