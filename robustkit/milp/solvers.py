"""MILP solvers by name: HiGHS through highspy (the default) and, through PuLP, CBC, HiGHS, Gurobi,
CPLEX and SCIP.

The PuLP path never re-encodes the network: it reads the model that ``solve_violation`` assembled
in HiGHS (:mod:`robustkit.milp.assembled`), every row as a ranged row ``lower <= a.x <= upper``,
and hands it to PuLP column by column. It gets the same time limit (what is left of the sample's
deadline), the same start point (CBC: ``warmStart``; HiGHS through PuLP: ``setSolution``), and the
same soundness rule as :func:`robustkit.milp.solve._read_result`:

* ``holds`` only from a proven infeasible status of the model, whose ``t`` has the lower bound
  ``-safety_margin`` (every column is bounded, so "infeasible or unbounded" means infeasible);
* a primal point is only a ``candidate`` (its input is replayed in onnxruntime by the caller),
  and only when it lies inside the proven output bounds (else :class:`SolverError`);
* a time limit is ``timeout``; anything else ``undecided``.

PuLP passes coefficients to CBC through an MPS file written with 13 significant digits (relative
error below 1e-12, far inside the safety margin).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robustkit.errors import InputError, SolverError
from robustkit.milp.assembled import AssembledMilp, MilpArrays
from robustkit.milp.solve import SolveResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolverSpec:
    """A solver name: the PuLP solver classes tried in order (none: highspy directly) and what to install."""

    name: str
    pulp_names: tuple[str, ...]
    install: str
    description: str


SOLVERS: dict[str, SolverSpec] = {
    s.name: s
    for s in (
        SolverSpec("highs", (), 'pip install "highspy>=1.14,!=1.15.1"', "HiGHS through its direct highspy API (default)"),
        SolverSpec("pulp-highs", ("HiGHS",), 'pip install "highspy>=1.14,!=1.15.1" "pulp>=2.8"', "HiGHS through PuLP"),
        SolverSpec("cbc", ("PULP_CBC_CMD", "COIN_CMD"), 'pip install "pulp>=2.8" (it bundles CBC)',
                   "COIN-OR CBC through PuLP"),
        SolverSpec("gurobi", ("GUROBI", "GUROBI_CMD"),
                   "pip install gurobipy (with a Gurobi licence), or put gurobi_cl on PATH", "Gurobi through PuLP"),
        SolverSpec("cplex", ("CPLEX_PY", "CPLEX_CMD"),
                   "pip install cplex (with a CPLEX licence beyond the community edition's size limits), "
                   "or put cplex on PATH", "CPLEX through PuLP"),
        SolverSpec("scip", ("SCIP_PY", "SCIP_CMD"), "pip install pyscipopt, or put scip on PATH",
                   "SCIP through PuLP"),
    )
}
SOLVER_NAMES = tuple(SOLVERS)


def solver_spec(name: str) -> SolverSpec:
    if name not in SOLVERS:
        raise InputError(f"unknown solver {name!r}; choose one of {', '.join(SOLVER_NAMES)}")
    return SOLVERS[name]


def _import_pulp() -> Any:
    try:
        import pulp
    except ImportError as exc:  # pragma: no cover - pulp is a declared dependency
        raise InputError('the PuLP solvers need PuLP: pip install "pulp>=2.8"') from exc
    return pulp


def pulp_solver_class(name: str) -> str:
    """The first available PuLP solver class for ``name``; InputError naming what to install if none is."""
    spec = solver_spec(name)
    if not spec.pulp_names:
        return ""
    pulp = _import_pulp()
    for cls_name in spec.pulp_names:
        cls = getattr(pulp, cls_name, None)
        if cls is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                if cls(msg=False).available():
                    return cls_name
        except Exception as exc:  # noqa: BLE001 - a broken install is "not available"
            log.debug("PuLP solver %s unusable: %s", cls_name, exc)
    raise InputError(f"solver {name!r} is not available (PuLP found none of {', '.join(spec.pulp_names)}): "
                     f"{spec.install}")


def check_solver(name: str) -> None:
    """Raise InputError (exit code 1 in the CLI) when ``name`` is unknown or cannot run here."""
    if solver_spec(name).pulp_names:
        pulp_solver_class(name)


# -- the model in PuLP -----------------------------------------------------------------------------
def to_pulp(arrays: MilpArrays, name: str = "robustkit") -> tuple[Any, list[Any]]:
    """A PuLP problem equal to ``arrays`` and its variables (column ``j`` is named ``c{j}``, as in
    HiGHS's MPS/LP files). A ranged row becomes two constraints ``r{i}_lo`` / ``r{i}_up``; an
    equality (lower == upper) one, ``r{i}``."""
    pulp = _import_pulp()
    prob = pulp.LpProblem(name, pulp.LpMaximize if arrays.maximize else pulp.LpMinimize)
    variables = [
        prob.add_variable(f"c{j}", None if not np.isfinite(lo) else float(lo),
                          None if not np.isfinite(up) else float(up), pulp.LpInteger if integer else pulp.LpContinuous)
        for j, (lo, up, integer) in enumerate(zip(arrays.col_lower, arrays.col_upper, arrays.integer))
    ]
    nz = np.flatnonzero(arrays.cost)
    prob.setObjective(pulp.LpAffineExpression([(variables[j], float(arrays.cost[j])) for j in nz],
                                              constant=arrays.offset))
    mat = arrays.matrix
    indptr, indices, data = mat.indptr, mat.indices, mat.data
    for i in range(arrays.num_rows):
        lo, up = float(arrays.row_lower[i]), float(arrays.row_upper[i])
        if not (np.isfinite(lo) or np.isfinite(up)):
            continue
        sl = slice(indptr[i], indptr[i + 1])
        terms = [(variables[j], float(v)) for j, v in zip(indices[sl], data[sl]) if v != 0.0]
        if lo == up:
            prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintEQ, f"r{i}", lo))
            continue
        if np.isfinite(lo):
            prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintGE, f"r{i}_lo", lo))
        if np.isfinite(up):
            prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintLE, f"r{i}_up", up))
    return prob, variables


@dataclass(frozen=True)
class PulpSolve:
    """What a PuLP solver said, normalised: a proof of infeasibility, proven optimality, a time
    limit, and the primal point (None when there is none)."""

    infeasible: bool
    optimal: bool
    time_limit: bool
    values: np.ndarray | None
    status: str
    nodes: int = 0


def _highs_class(pulp: Any) -> Any:
    """PuLP's HiGHS with a warm start (PuLP 3.3 passes none to highspy) and the raw HiGHS status kept."""

    class _StartedHiGHS(pulp.HiGHS):  # type: ignore[misc, name-defined]
        start: np.ndarray | None = None

        def callSolver(self, lp: Any) -> None:  # noqa: N802 - PuLP's name
            if self.start is not None:
                import highspy

                col = np.zeros(lp.solverModel.getNumCol())
                for var in lp.variables():
                    if var.varValue is not None:
                        col[var.index] = var.varValue
                sol = highspy.HighsSolution()
                sol.col_value = list(col)
                sol.value_valid = True
                lp.solverModel.setSolution(sol)
            lp.solverModel.run()

    return _StartedHiGHS


# The keyword arguments each PuLP 3.3 solver class takes (when its solver is installed) of those
# robustkit passes; the rest go as the solver's own parameters (_EXTRA). Only CBC and HiGHS are
# installed where this was written: the Gurobi, CPLEX and SCIP rows follow PuLP's signatures.
_COMMON = frozenset({"msg", "timeLimit", "gapRel"})
_ACCEPTS: dict[str, frozenset[str]] = {
    "PULP_CBC_CMD": _COMMON | {"gapAbs", "warmStart", "threads"},
    "COIN_CMD": _COMMON | {"gapAbs", "warmStart", "threads"},
    "GUROBI": _COMMON | {"warmStart"},
    "GUROBI_CMD": _COMMON | {"gapAbs", "warmStart", "threads"},
    "CPLEX_PY": _COMMON | {"warmStart", "threads"},
    "CPLEX_CMD": _COMMON | {"gapAbs", "warmStart", "threads"},
    "SCIP_PY": _COMMON | {"gapAbs", "warmStart", "threads"},
    "SCIP_CMD": _COMMON | {"gapAbs", "threads"},
}
_EXTRA: dict[str, dict[str, Any]] = {"GUROBI": {"MIPGapAbs": 1e-7, "Threads": 1}}


def solve_arrays(arrays: MilpArrays, solver: str, time_limit: float, start: np.ndarray | None = None,
                 options: dict[str, float] | None = None) -> PulpSolve:
    """Solve ``arrays`` with the PuLP solver ``solver`` (a name of :data:`SOLVERS` other than ``highs``)
    within ``time_limit`` seconds, one thread, optimality gap 0 (absolute 1e-7)."""
    pulp = _import_pulp()
    cls_name = pulp_solver_class(solver)
    if not cls_name:
        raise ValueError("solve_arrays() is for the PuLP solvers; 'highs' runs through solve_violation directly")
    t0 = time.perf_counter()
    prob, variables = to_pulp(arrays)
    if start is not None:
        for var, value in zip(variables, start):
            var.setInitialValue(float(value), check=False)
    left = max(time_limit - (time.perf_counter() - t0), 0.01)
    common: dict[str, Any] = dict(msg=False, timeLimit=float(left), gapRel=0.0, gapAbs=1e-7)
    if cls_name == "HiGHS":
        engine = _highs_class(pulp)(threads=1, **common, **(options or {}))
        engine.start = start
    else:
        offered: dict[str, Any] = dict(common, warmStart=start is not None, threads=1)
        kwargs = {k: v for k, v in offered.items() if k in _ACCEPTS[cls_name]}
        kwargs.update(_EXTRA.get(cls_name, {}))
        with warnings.catch_warnings():  # PuLP 3.3 deprecates PULP_CBC_CMD (bundled CBC) for PuLP 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            engine = getattr(pulp, cls_name)(**kwargs)
    log.debug("PuLP %s: %d columns, %d rows, built in %.2f s", cls_name, arrays.num_cols, arrays.num_rows,
              time.perf_counter() - t0)
    try:
        prob.solve(engine)
    except pulp.PulpSolverError as exc:
        raise SolverError(f"{solver} (PuLP {cls_name}) failed: {exc}") from exc
    return _normalise(pulp, prob, variables, cls_name, arrays.bounded)


def _normalise(pulp: Any, prob: Any, variables: list[Any], cls_name: str, bounded: bool) -> PulpSolve:
    def point() -> np.ndarray | None:
        vals = [v.varValue for v in variables]
        if any(v is None for v in vals):
            return None
        return np.asarray(vals, dtype=np.float64)

    if cls_name == "HiGHS":  # the raw status: PuLP maps kUnboundedOrInfeasible to Infeasible
        import highspy

        h = prob.solverModel
        st = h.getModelStatus()
        name = h.modelStatusToString(st)
        nodes = int(getattr(h.getInfo(), "mip_node_count", 0))
        if st == highspy.HighsModelStatus.kInfeasible:
            return PulpSolve(True, False, False, None, name, nodes)
        has_point = h.getInfo().primal_solution_status == 2
        return PulpSolve(False, st == highspy.HighsModelStatus.kOptimal, st == highspy.HighsModelStatus.kTimeLimit,
                         point() if has_point else None, name, nodes)
    status, sol = prob.status, prob.sol_status
    name = f"{pulp.LpStatus.get(status, status)}/{pulp.LpSolution.get(sol, sol)}"
    if status == pulp.LpStatusInfeasible or sol == pulp.LpSolutionInfeasible:
        # PuLP reports "infeasible or unbounded" as infeasible; only a bounded model makes that a proof
        return PulpSolve(bounded, False, False, None, name)
    if sol in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return PulpSolve(False, sol == pulp.LpSolutionOptimal, sol == pulp.LpSolutionIntegerFeasible, point(), name)
    return PulpSolve(False, False, status == pulp.LpStatusNotSolved, None, name)


# -- the solve_violation hook ----------------------------------------------------------------------
def solve_assembled(m: AssembledMilp, solver: str) -> SolveResult:
    """Decide the assembled MILP ``m`` with ``solver`` through PuLP, by the rules of the module docstring."""
    deadline = time.perf_counter() + m.time_limit  # m.time_limit: what was left when the hook was called
    arrays = m.arrays()
    t_lower = float(arrays.col_lower[m.t_col])
    start = m.start_point(t_lower)
    options = {"objective_target": -float(m.candidate_target)} if solver == "pulp-highs" else None
    res = solve_arrays(arrays, solver, max(deadline - time.perf_counter(), 0.01), start, options)
    elapsed = time.perf_counter() - m.t0
    name = f"{solver}:{res.status}"
    if res.infeasible:
        return SolveResult("holds", t_lower, -np.inf, None, None, name, elapsed, res.nodes)
    if res.values is None:
        return SolveResult("timeout" if res.time_limit else "undecided", m.t_ub, -np.inf, None, None, name, elapsed,
                           res.nodes)
    col = res.values
    t = float(col[m.t_col])
    enc = m.enc
    y = col[enc.output_cols]
    values = m.slacks(col)
    best = int(np.argmax(values))
    x = col[enc.input_cols].copy()
    tol = 1e-4 * (1.0 + np.abs(enc.output_upper).max(initial=0.0) + np.abs(enc.output_lower).max(initial=0.0))
    if np.any(y > enc.output_upper + tol) or np.any(y < enc.output_lower - tol) or t > m.t_ub + tol:
        raise SolverError(f"{solver} returned a point outside the proven bounds (status {name}): numerical trouble")
    if t >= 0 or values[best] >= 0:
        return SolveResult("candidate", m.t_ub, max(t, values[best]), x, best, name, elapsed, res.nodes)
    if res.optimal:  # optimum in [t_lower, 0): holds, but not with the required margin
        return SolveResult("undecided", t, t, x, best, name, elapsed, res.nodes)
    return SolveResult("timeout" if res.time_limit else "undecided", m.t_ub, t, x, best, name, elapsed, res.nodes)


def milp_hook(solver: str = "highs", write_dir: str | Path | None = None,
              tag: str = "milp") -> Callable[[AssembledMilp], SolveResult | None] | None:
    """The ``before_run`` hook of ``solve_violation`` for ``solver`` and ``--write-milp``: writes the
    MILP to ``write_dir/<tag>.*`` when asked, then solves it through PuLP unless ``solver`` is
    ``highs`` (then None: HiGHS runs as before). None when there is nothing to do."""
    solver_spec(solver)
    if solver == "highs" and write_dir is None:
        return None

    def hook(m: AssembledMilp) -> SolveResult | None:
        deadline = time.perf_counter() + m.time_limit
        if write_dir is not None:
            from robustkit.milp.write import write_assembled

            write_assembled(m, Path(write_dir), tag)
        if solver == "highs":
            return None
        return solve_assembled(replace(m, time_limit=max(deadline - time.perf_counter(), 0.01)), solver)

    return hook
