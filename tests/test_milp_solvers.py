"""Other MILP solvers through PuLP, and the MILP files of ``--write-milp``.

* The PuLP conversion of the assembled model (CBC, HiGHS through PuLP) and highspy agree on the
  optimum of the (>= 20) MILPs of a trained MNIST net (``t``'s lower bound removed, so that every MILP has
  an optimum), and on the verdict of the production models (``t >= -safety_margin``).
* A ranged row (``lower < a.x < upper``, both finite) survives the conversion.
* A written MPS (and LP) file re-read and re-solved by HiGHS gives the same optimum; its sidecar
  names the columns.
* A candidate from CBC is replayed in onnxruntime like HiGHS's; an unavailable solver is an
  InputError naming what to install, exit code 1 in the CLI.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import highspy
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from robustkit.bounds import interval_bounds
from robustkit.cli.main import main
from robustkit.errors import InputError
from robustkit.milp import encode, solve_violation
from robustkit.milp.assembled import AssembledMilp, MilpArrays
from robustkit.milp.solve import SolveResult
from robustkit.milp.solvers import SOLVERS, check_solver, milp_hook, pulp_solver_class, solve_arrays
from robustkit.spec import eps_box, robustness_spec
from robustkit.verification import ModelContext, VerifyConfig, verify_sample

EPS = 0.03  # tiny_mnist at this eps: 10-16 unstable ReLUs (binaries) per sample under interval bounds
IMAGES = (0, 1, 2, 3, 4)


def _highs_of(arrays: MilpArrays) -> highspy.Highs:
    """A fresh HiGHS holding ``arrays`` (built directly from the arrays, not through PuLP)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    inf = highspy.kHighsInf
    h.addVars(arrays.num_cols, np.clip(arrays.col_lower, -inf, inf), np.clip(arrays.col_upper, -inf, inf))
    mat = arrays.matrix.tocsr()
    h.addRows(arrays.num_rows, np.clip(arrays.row_lower, -inf, inf), np.clip(arrays.row_upper, -inf, inf), mat.nnz,
              mat.indptr[:-1].astype(np.int32), mat.indices.astype(np.int32), mat.data.astype(np.float64))
    ints = np.flatnonzero(arrays.integer).astype(np.int32)
    if ints.size:
        h.changeColsIntegrality(ints.size, ints, np.array([highspy.HighsVarType.kInteger] * ints.size))
    cols = np.arange(arrays.num_cols, dtype=np.int32)
    h.changeColsCost(arrays.num_cols, cols, arrays.cost.astype(np.float64))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-7)
    return h


def _highs_optimum(h: highspy.Highs) -> float:
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal, h.modelStatusToString(h.getModelStatus())
    return float(h.getInfo().objective_function_value)


def _relaxed(arrays: MilpArrays, t_col: int) -> MilpArrays:
    """``arrays`` with ``t``'s lower bound removed: max t is then the (finite) worst case."""
    lower = arrays.col_lower.copy()
    lower[t_col] = -np.inf
    return replace(arrays, col_lower=lower)


class _Capture:
    """A ``before_run`` hook that keeps the assembled model and lets HiGHS run it as usual."""

    def __init__(self) -> None:
        self.models: list[tuple[MilpArrays, AssembledMilp]] = []

    def __call__(self, m: AssembledMilp) -> SolveResult | None:
        self.models.append((m.arrays(), m))
        return None


@pytest.fixture(scope="module")
def mnist_milps(tiny_mnist):  # type: ignore[no-untyped-def]
    """Per-target MILPs of ``tiny_mnist`` around its first images: (arrays, t column, verdict of
    highspy on the production model, sample index, target, the context)."""
    ctx = ModelContext.from_path(tiny_mnist.path)
    out = []
    for i in IMAGES:
        x0 = tiny_mnist.images[i].astype(np.float64)
        label = int(tiny_mnist.labels[i])
        box = eps_box(x0, EPS, 0.0, 1.0)
        nb = interval_bounds(ctx.net, torch.tensor(box.lower[None]), torch.tensor(box.upper[None]))
        enc = encode(ctx.net, nb)
        output = next(iter(robustness_spec(label, 10, box)))[1]
        for k in range(len(output)):
            cap = _Capture()
            res = solve_violation(enc, [output[k]], 30.0, 1e-4, x0, before_run=cap)
            if res.solver_status == "bounds":  # decided before a MILP was built
                continue
            arrays, m = cap.models[0]
            out.append((arrays, m.t_col, res, i, k, enc, output[k], x0))
    return out


def test_enough_real_milps_with_binaries(mnist_milps) -> None:  # type: ignore[no-untyped-def]
    assert len(mnist_milps) >= 20
    assert all(int(a.integer.sum()) > 0 for a, *_ in mnist_milps)


@pytest.mark.parametrize("solver", ["cbc", "pulp-highs"])
def test_pulp_and_highspy_agree_on_the_optimum(mnist_milps, solver: str) -> None:  # type: ignore[no-untyped-def]
    pulp_solver_class(solver)  # available here (CBC is bundled with PuLP, HiGHS is highspy)
    checked = 0
    for arrays, t_col, _, i, k, *_ in mnist_milps:
        relaxed = _relaxed(arrays, t_col)
        direct = _highs_optimum(_highs_of(relaxed))
        res = solve_arrays(relaxed, solver, 30.0)
        assert res.optimal and res.values is not None, (i, k, res.status)
        via_pulp = float(relaxed.cost @ res.values + relaxed.offset)
        assert via_pulp == pytest.approx(direct, abs=1e-5 * (1 + abs(direct))), (i, k, res.status)
        # the point satisfies the original rows (PuLP's constraints are really the model's rows)
        ax = relaxed.matrix @ res.values
        assert np.all(ax >= relaxed.row_lower - 1e-5) and np.all(ax <= relaxed.row_upper + 1e-5), (i, k)
        checked += 1
    assert checked >= 20


def test_verdicts_agree_on_the_production_models(mnist_milps) -> None:  # type: ignore[no-untyped-def]
    outcomes = {"highs": [], "cbc": [], "pulp-highs": []}
    for _, _, res, i, k, enc, dj, x0 in mnist_milps:
        outcomes["highs"].append(res.outcome)
        for solver in ("cbc", "pulp-highs"):
            r = solve_violation(enc, [dj], 30.0, 1e-4, x0, before_run=milp_hook(solver))
            assert r.solver_status.startswith(solver + ":")
            outcomes[solver].append(r.outcome)
    assert outcomes["cbc"] == outcomes["highs"]
    assert outcomes["pulp-highs"] == outcomes["highs"]
    assert set(outcomes["highs"]) & {"holds", "candidate"}  # real verdicts, not timeouts


def test_a_ranged_row_survives_the_conversion() -> None:
    # max x + 2y  s.t.  1 <= x + y <= 2.5 and 0 <= x - y <= 3 (ranged rows), y integer in [0, 5]
    mat = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, -1.0]]))
    arrays = MilpArrays(col_lower=np.array([0.0, 0.0]), col_upper=np.array([4.0, 5.0]), cost=np.array([-1.0, -2.0]),
                        offset=0.0, maximize=False, row_lower=np.array([1.0, 0.0]), row_upper=np.array([2.5, 3.0]),
                        matrix=mat, integer=np.array([False, True]))
    direct = _highs_optimum(_highs_of(arrays))
    assert direct == pytest.approx(-3.5)  # y = 1, x = 1.5: the upper side of the first row binds
    for solver in ("cbc", "pulp-highs"):
        res = solve_arrays(arrays, solver, 10.0)
        assert res.values is not None
        assert float(arrays.cost @ res.values) == pytest.approx(direct, abs=1e-7)
    # and the lower side: minimise x + 2y instead (y = 0, x = 1)
    flipped = replace(arrays, cost=-arrays.cost)
    res = solve_arrays(flipped, "cbc", 10.0)
    assert res.values is not None and float(flipped.cost @ res.values) == pytest.approx(1.0, abs=1e-7)


def cols_by_kind(side: dict, kind: str) -> list[dict]:
    return [c for c in side["columns"] if any(r["kind"] == kind for r in c["roles"])]


def test_written_mps_and_lp_resolve_to_the_same_optimum(mnist_milps, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    arrays, t_col, res, i, k, enc, dj, x0 = next(e for e in mnist_milps if e[2].outcome == "holds")
    r = solve_violation(enc, [dj], 30.0, 1e-4, x0, before_run=milp_hook("highs", tmp_path, f"s{i}_t{k}"))
    assert r.outcome == "holds"
    side = json.loads((tmp_path / f"s{i}_t{k}.json").read_text())
    assert side["t_col"] == t_col and side["num_cols"] == arrays.num_cols
    direct = _highs_optimum(_highs_of(_relaxed(arrays, t_col)))
    for ext in ("mps", "lp"):
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        assert h.readModel(str(tmp_path / f"s{i}_t{k}.{ext}")) != highspy.HighsStatus.kError
        assert h.getNumCol() == arrays.num_cols
        h.run()  # as written: t >= -margin, proven infeasible = robust, as the sidecar says
        assert h.getModelStatus() == highspy.HighsModelStatus.kInfeasible, ext
        # by name: an LP file lists the columns in order of appearance, not c0, c1, ...
        status, t_index = h.getColByName(cols_by_kind(side, "t")[0]["name"])
        assert status == highspy.HighsStatus.kOk and (ext == "lp" or t_index == t_col)
        h.changeColBounds(t_index, -highspy.kHighsInf, side["t_bounds"][1])
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 1e-7)
        assert _highs_optimum(h) == pytest.approx(direct, abs=1e-6 * (1 + abs(direct))), ext
        assert -direct < -side["safety_margin"]  # max t below -margin: what "holds" means
    # the sidecar says what each column is
    cols = side["columns"]
    assert [c["roles"][0] for c in cols[: enc.input_cols.size]] == [
        {"kind": "input", "index": n} for n in range(enc.input_cols.size)]
    kinds = {r["kind"] for c in cols for r in c["roles"]}
    assert {"input", "pre_activation", "relu_output", "relu_indicator", "output", "t"} <= kinds
    for c in cols:
        assert c["integer"] == any(r["kind"] == "relu_indicator" for r in c["roles"]), c
    assert "infeasible" in side["meaning"] and side["objective"].startswith("minimise -t")


def test_write_milp_per_sample_and_target_through_the_pipeline(tiny_mnist, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = ModelContext.from_path(tiny_mnist.path)
    cfg = VerifyConfig(eps=EPS, tighten="interval", attack_steps=0, solver="cbc", write_milp=str(tmp_path))
    rec = verify_sample(ctx, tiny_mnist.images[0], int(tiny_mnist.labels[0]), cfg, tag="mnist_0")
    assert rec["stage"] == "milp"
    assert all(s.startswith("cbc:") for s in rec["solver_status"])
    written = sorted(p.name for p in tmp_path.glob("mnist_0_disjunct*.mps"))
    assert len(written) == len(rec["solver_status"]) >= 1
    for name in written:
        stem = name[:-4]
        assert (tmp_path / f"{stem}.lp").is_file() and (tmp_path / f"{stem}.json").is_file()


def test_a_cbc_candidate_is_replayed_like_a_highs_one(tiny_mnist) -> None:  # type: ignore[no-untyped-def]
    """No attack: the MILP must find the counterexample; it is kept only after the onnxruntime replay."""
    ctx = ModelContext.from_path(tiny_mnist.path)
    found = 0
    for i in range(12):
        x0, label = tiny_mnist.images[i], int(tiny_mnist.labels[i])
        recs = {s: verify_sample(ctx, x0, label, VerifyConfig(eps=0.06, tighten="interval", attack_steps=0, solver=s))
                for s in ("highs", "cbc")}
        assert recs["cbc"]["status"] == recs["highs"]["status"], i
        if recs["cbc"]["status"] == "falsified":
            assert recs["cbc"]["stage"] == "milp"
            x = np.asarray(recs["cbc"]["counterexample"], dtype=np.float32)
            assert np.all(np.abs(x - x0) <= 0.06 + 1e-6)
            assert ctx.predict(x) != label  # the replayed prediction
            found += 1
    assert found >= 1


def test_unavailable_solver_names_what_to_install(tiny_mnist, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    missing = []
    for name in ("gurobi", "cplex", "scip"):
        try:
            check_solver(name)
        except InputError as exc:
            assert "pip install" in str(exc) and name in str(exc)
            missing.append(name)
    if not missing:
        pytest.skip("Gurobi, CPLEX and SCIP are all installed here")
    code = main(["verify", str(tiny_mnist.path), "--eps", "0.03", "--n", "1", "--workers", "0", "--quiet",
                 "--solver", missing[0]])
    assert code == 1
    err = capsys.readouterr().err
    assert "pip install" in err and missing[0] in err
    with pytest.raises(InputError, match="unknown solver"):
        check_solver("glpk")
    assert set(SOLVERS) == {"highs", "pulp-highs", "cbc", "gurobi", "cplex", "scip"}


def test_write_milp_folder_that_cannot_be_made_is_a_usage_error(tiny_mnist, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "records.jsonl"
    code = main(["verify", str(tiny_mnist.path), "--eps", "0.03", "--n", "1", "--workers", "0", "--quiet",
                 "--method", "milp", "--write-milp", str(blocker / "sub"), "--out", str(out)])
    assert code == 1
    assert "--write-milp" in capsys.readouterr().err
    assert not out.exists()  # nothing ran, nothing stored as an error record


def test_solver_options_are_validated() -> None:
    with pytest.raises(InputError, match="unknown solver"):
        VerifyConfig(solver="xpress")
    with pytest.raises(InputError, match="--method milp"):
        VerifyConfig(method="bab", solver="cbc")
    # the default solver leaves the settings (and the result store's hash) as before
    assert "solver" not in VerifyConfig().to_dict() and "write_milp" not in VerifyConfig(write_milp="d").to_dict()
    assert VerifyConfig(solver="cbc").to_dict()["solver"] == "cbc"
