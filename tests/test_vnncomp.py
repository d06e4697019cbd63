"""Tests of VNN-COMP instance verification, the benchmark runner and the calling-convention scripts.

Benchmarks come from ../shared/benchmarks/vnncomp (tests skip when it is absent). Answers are
checked against the benchmarks' ground truth, and every counterexample is re-read from its result
file and replayed here in a fresh onnxruntime session.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from robustkit.cli.main import main
from robustkit.errors import InputError
from robustkit.verification import VerifyConfig
from robustkit.vnnlib import parse_vnnlib, read_result
from robustkit.vnnlib.bench import (
    BenchInstance,
    BenchOptions,
    disagreements,
    format_table,
    load_benchmark,
    published_at_limit,
    run_benchmark,
    score_tool,
)
from robustkit.vnnlib.instance import load_instance, soft_budget, verify_instance

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VNNCOMP = SHARED / "benchmarks" / "vnncomp"
TEST_2021 = VNNCOMP / "test_2021"
MNIST_FC = VNNCOMP / "mnist_fc_2022"

needs_vnncomp = pytest.mark.skipif(
    not VNNCOMP.is_dir(), reason=f"VNN-COMP benchmarks not found at {VNNCOMP} (../shared next to the repo)"
)
HAS_CROWN = importlib.util.find_spec("robustkit.bounds.methods") is not None
# test_unsat (ACAS Xu 1-6, property 3) is proven by CROWN at the root; interval bounds leave a MILP
# with 217 binaries that HiGHS does not finish in minutes.
needs_crown = pytest.mark.skipif(not HAS_CROWN, reason="robustkit.bounds.methods (CROWN) not available")

TEST_2021_EXPECTED = [
    ("test_nano.onnx", "test_nano.vnnlib", "unsat"),
    ("test_tiny.onnx", "test_tiny.vnnlib", "unsat"),
    ("test_small.onnx", "test_small.vnnlib", "unsat"),
    ("test_sat.onnx", "test_prop.vnnlib", "sat"),
    ("test_unsat.onnx", "test_prop.vnnlib", "unsat"),
]
# A few 256x2 instances with official (counterexample-checked) ground truth; each takes seconds.
MNIST_FAST = ["prop_0_0.03", "prop_1_0.03", "prop_12_0.03", "prop_4_0.03"]
NET_256X2 = "onnx/mnist-net_256x2.onnx"


def ground_truth(folder: Path) -> dict[tuple[str, str], str]:
    """(onnx, vnnlib) -> sat|unsat, read straight from the benchmark's CSV."""
    name = "results_summary.csv" if (folder / "results_summary.csv").is_file() else "expected_results.csv"
    with open(folder / name, newline="") as fh:
        return {(r["onnx"], r["vnnlib"]): r["ground_truth"] for r in csv.DictReader(fh) if r["ground_truth"]}


def replay_in_ort(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """The model's output at ``x`` (flat), computed here in onnxruntime."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    return np.asarray(sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0], dtype=np.float64).reshape(-1)


def violates(vnnlib_path: Path, x: np.ndarray, y: np.ndarray) -> bool:
    """Exact check of the violation region of the property at (x, y): some region's box holds x
    and some disjunct ``C y <= d`` of that region holds for y."""
    spec = parse_vnnlib(vnnlib_path)
    for box, out in spec:
        if np.all(x >= box.lower) and np.all(x <= box.upper):
            for dj in out:
                if np.all(dj.C @ y <= dj.d):
                    return True
    return False


def check_sat_file(result_file: Path, onnx_path: Path, vnnlib_path: Path) -> None:
    res = read_result(result_file)
    assert res.status == "sat" and res.x is not None and res.y is not None
    x = res.x
    assert np.array_equal(x, x.astype(np.float32).astype(np.float64)), "X must be float32 values"
    y = replay_in_ort(onnx_path, x)
    assert res.y.size == y.size and np.max(np.abs(res.y - y)) <= 1e-6
    assert violates(vnnlib_path, x, y)


# ------------------------------------------------------------------------------------------------
# Benchmark files and scoring (no solving)
# ------------------------------------------------------------------------------------------------


@needs_vnncomp
def test_load_benchmarks_match_csv() -> None:
    t21 = load_benchmark(TEST_2021)
    assert t21.instance_list == "test_instances.csv"
    assert [(i.onnx, i.vnnlib, i.timeout, i.ground_truth) for i in t21.instances] == [
        (o, v, 60.0, e) for o, v, e in TEST_2021_EXPECTED]
    assert t21.published == {}

    fc = load_benchmark(MNIST_FC)
    assert len(fc.instances) == 90
    truth = ground_truth(MNIST_FC)
    assert sum(i.ground_truth is not None for i in fc.instances) == len(truth) == 89
    for inst in fc.instances:
        assert inst.ground_truth == truth.get((inst.onnx, inst.vnnlib))
        assert inst.timeout == (120.0 if "256x2" in inst.onnx else 300.0)
    assert "abcrown_2022" in fc.published and len(fc.published) == 10
    with open(MNIST_FC / "results_summary.csv", newline="") as fh:
        raw = list(csv.DictReader(fh))
    sel = fc.select("256x2")
    assert len(sel) == 30
    # alpha-beta-CROWN on the 30 256x2 instances, counted from the raw CSV
    rows = [r for r in raw if "256x2" in r["onnx"]]
    row = score_tool("abcrown_2022", {i: fc.published["abcrown_2022"][i] + (True,) for i in fc.published["abcrown_2022"]}, sel)
    assert row.solved == sum(r["abcrown_2022_result"] in ("sat", "unsat") for r in rows)
    assert row.sat == sum(r["abcrown_2022_result"] == "sat" for r in rows)
    assert row.time_solved == pytest.approx(sum(float(r["abcrown_2022_time"]) for r in rows
                                                if r["abcrown_2022_result"] in ("sat", "unsat")))
    with pytest.raises(InputError, match="no instance"):
        fc.select("no-such-net")


def test_score_tool_counts_and_points(tmp_path: Path) -> None:
    insts = [BenchInstance(0, "a.onnx", "p0.vnnlib", 10, "unsat"), BenchInstance(1, "a.onnx", "p1.vnnlib", 10, "sat"),
             BenchInstance(2, "a.onnx", "p2.vnnlib", 10, "sat"), BenchInstance(3, "a.onnx", "p3.vnnlib", 10, None),
             BenchInstance(4, "a.onnx", "p4.vnnlib", 10, "unsat"), BenchInstance(5, "a.onnx", "p5.vnnlib", 10, "sat")]
    answers = {0: ("unsat", 1.0, True), 1: ("unsat", 2.0, True), 2: ("sat", 4.0, False), 3: ("sat", 8.0, True),
               4: ("timeout", 10.0, True)}  # 5 missing
    row = score_tool("t", answers, insts)
    assert (row.instances, row.solved, row.unsat, row.sat, row.other) == (6, 4, 2, 2, 2)
    assert (row.wrong, row.unjudged) == (2, 1)
    assert row.score == 10 - 150 - 150
    assert row.time_solved == 15.0
    records = {insts[1].key: {"status": "unsat"}, insts[2].key: {"status": "sat", "ce_valid": False},
               insts[0].key: {"status": "unsat"}, insts[5].key: {"status": "sat", "ce_valid": True}}
    bad = disagreements(insts, records)
    assert len(bad) == 2 and "ground truth sat" in bad[0] and "does not replay" in bad[1]
    table = format_table([row])
    assert table.splitlines()[2] == "| t | 6 | 4 | 2 | 2 | 2 | 2 | -290 | 15.0 |"
    with pytest.raises(InputError):
        BenchOptions(timeout_scale=0)
    with pytest.raises(InputError):
        load_benchmark(tmp_path)


def test_published_answers_are_scored_at_the_reduced_limit(tmp_path: Path) -> None:
    from robustkit.vnnlib.bench import Benchmark

    insts = (BenchInstance(0, "a.onnx", "p0.vnnlib", 100, "unsat"), BenchInstance(1, "a.onnx", "p1.vnnlib", 300, "sat"))
    bench = Benchmark("b", tmp_path, insts, published={
        "tool": {0: ("unsat", 20.0), 1: ("sat", 61.0)}, "slow": {0: ("unsat", 20.1), 1: ("timeout", None)}})
    assert published_at_limit(bench, insts, 1.0) is bench
    cut = published_at_limit(bench, insts, 0.2)  # limits 20 s and 60 s
    assert cut.published["tool"] == {0: ("unsat", 20.0), 1: ("timeout", 61.0)}
    assert cut.published["slow"] == {0: ("timeout", 20.1), 1: ("timeout", None)}
    assert bench.published["tool"][1] == ("sat", 61.0)  # the original is left alone


# ------------------------------------------------------------------------------------------------
# One instance
# ------------------------------------------------------------------------------------------------


@needs_vnncomp
@pytest.mark.parametrize("onnx_name,vnnlib_name,expected", [
    pytest.param(*case, marks=needs_crown) if case[0] == "test_unsat.onnx" else case for case in TEST_2021_EXPECTED
])
def test_test_2021_expected_results(tmp_path: Path, onnx_name: str, vnnlib_name: str, expected: str) -> None:
    onnx_path, vnnlib_path = TEST_2021 / onnx_name, TEST_2021 / vnnlib_name
    out = tmp_path / "result.txt"
    res = verify_instance(onnx_path, vnnlib_path, VerifyConfig(timeout=60, tighten="crown"), out, in_process=True)
    assert res.status == expected
    assert read_result(out).status == expected
    if expected == "sat":
        check_sat_file(out, onnx_path, vnnlib_path)
    else:
        assert out.read_text() == f"{expected}\n"


@needs_vnncomp
def test_mnist_fc_256x2_subset_agrees_with_ground_truth(tmp_path: Path) -> None:
    truth = ground_truth(MNIST_FC)
    t0 = time.perf_counter()
    for name in MNIST_FAST:
        vnnlib_rel = f"vnnlib/{name}.vnnlib"
        gt = truth[(NET_256X2, vnnlib_rel)]
        out = tmp_path / f"{name}.txt"
        res = verify_instance(MNIST_FC / NET_256X2, MNIST_FC / vnnlib_rel, VerifyConfig(timeout=60, tighten="crown"),
                              out, in_process=True)
        assert res.status in ("sat", "unsat", "timeout", "unknown")
        assert res.status != {"sat": "unsat", "unsat": "sat"}[gt], f"{name}: robustkit {res.status}, truth {gt}"
        if gt == "sat":  # the attack finds these within a fraction of a second
            assert res.status == "sat"
            check_sat_file(out, MNIST_FC / NET_256X2, MNIST_FC / vnnlib_rel)
    assert time.perf_counter() - t0 < 120


@needs_vnncomp
def test_instance_timeout_is_respected(tmp_path: Path) -> None:
    """A MILP that cannot finish (interval bounds on test_unsat) answers 'timeout' in time, from
    a worker process."""
    out = tmp_path / "r.txt"
    t0 = time.time()
    res = verify_instance(TEST_2021 / "test_unsat.onnx", TEST_2021 / "test_prop.vnnlib",
                          VerifyConfig(timeout=6, tighten="interval"), out, started_at=t0)
    elapsed = time.time() - t0
    assert res.status == "timeout" and out.read_text() == "timeout\n"
    # The deadline counts from started_at, worker start-up included: on a loaded machine the worker
    # may start after it and answer at once, or still be loading the model at it; otherwise it
    # stops in the MILP at the deadline (kill 2 s later).
    if res.record.get("reason") != "no time left to start":
        assert res.record["stage"] in ("milp", "load")
        assert elapsed < 6 + 2 + 1.0, elapsed
    assert soft_budget(120) == 118 and soft_budget(1) == pytest.approx(0.8)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


@needs_vnncomp
def test_cli_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nano = TEST_2021 / "test_nano.onnx"
    assert main(["vnnlib", str(nano), str(tmp_path / "missing.vnnlib"), "--timeout", "5"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["vnnlib", str(tmp_path / "missing.onnx"), str(TEST_2021 / "test_nano.vnnlib")]) == 1
    assert "not found" in capsys.readouterr().err

    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1.0)\n")
    assert main(["vnnlib", str(nano), str(bad), "--result", str(tmp_path / "r.txt")]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3:" in err  # file:line:column of the unclosed parenthesis
    assert not (tmp_path / "r.txt").exists()

    wrong_size = tmp_path / "three_inputs.vnnlib"
    wrong_size.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(3)) + "(declare-const Y_0 Real)\n"
                          + "".join(f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))\n" for i in range(3))
                          + "(assert (>= Y_0 100))\n")
    assert main(["vnnlib", str(nano), str(wrong_size)]) == 1
    err = capsys.readouterr().err
    assert "3 input variables" in err and "network has 1 input" in err
    with pytest.raises(InputError, match="3 input"):
        load_instance(nano, wrong_size)
    assert main(["vnnlib", str(nano), str(TEST_2021 / "test_nano.vnnlib"), "--check"]) == 0


@needs_vnncomp
def test_run_instance_script_on_test_nano(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    env = {**os.environ, "ROBUSTKIT_PYTHON": sys.executable}
    nano, prop = TEST_2021 / "test_nano.onnx", TEST_2021 / "test_nano.vnnlib"
    prep = subprocess.run(["bash", str(REPO / "vnncomp" / "prepare_instance.sh"), "v2", "test", str(nano), str(prop)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert prep.returncode == 1 and "v1" in prep.stderr  # (the v1 path is `vnnlib --check`, tested above)
    out = tmp_path / "out" / "result.txt"
    out.parent.mkdir()
    out.write_text("sat\n")  # a stale answer must not survive
    run = subprocess.run(["bash", str(REPO / "vnncomp" / "run_instance.sh"), "v1", "test", str(nano), str(prop),
                          str(out), "60"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert out.read_text() == "unsat\n"
    bad = subprocess.run(["bash", str(REPO / "vnncomp" / "run_instance.sh"), "v2", "test", str(nano), str(prop),
                          str(out), "60"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1 and "v1" in bad.stderr


@needs_vnncomp
def test_bench_test_2021_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    tighten = "crown" if HAS_CROWN else "interval"
    argv = ["bench", "vnncomp", str(TEST_2021), "--out", str(out), "--tighten", tighten, "--quiet",
            "--timeout-scale", "0.5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = (out / "summary.md").read_text()
    assert summary.strip() in printed
    row = next(line for line in summary.splitlines() if line.startswith("| **robustkit**"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    solved, unsat, sat, other, wrong, score = (int(c) for c in cells[2:8])
    assert cells[1] == "5" and wrong == 0 and sat == 1 and solved + other == 5
    assert score == 10 * solved
    if HAS_CROWN:
        assert (solved, unsat) == (5, 4)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 5
    expected = {(o, v): e for o, v, e in TEST_2021_EXPECTED}
    for rec in records:
        assert rec["status"] in (expected[(rec["onnx"], rec["vnnlib"])], "timeout")
        assert read_result(rec["result_file"]).status == rec["status"]
        if rec["status"] == "sat":
            assert rec["ce_valid"] is True
            check_sat_file(Path(rec["result_file"]), TEST_2021 / rec["onnx"], TEST_2021 / rec["vnnlib"])
    assert "No disagreement" in summary
    # resuming runs nothing new
    assert main(argv) == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == 5


@pytest.mark.slow
@needs_vnncomp
def test_prepare_instance_script(tmp_path: Path) -> None:
    env = {**os.environ, "ROBUSTKIT_PYTHON": sys.executable}
    ok = subprocess.run(["bash", str(REPO / "vnncomp" / "prepare_instance.sh"), "v1", "test",
                         str(TEST_2021 / "test_sat.onnx"), str(TEST_2021 / "test_prop.vnnlib")],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr
    bad = subprocess.run(["bash", str(REPO / "vnncomp" / "prepare_instance.sh"), "v1", "test",
                          str(TEST_2021 / "test_nano.onnx"), str(TEST_2021 / "test_prop.vnnlib")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "5 input variables" in bad.stderr


@pytest.mark.slow
@needs_vnncomp
def test_bench_mnist_fc_256x2_no_wrong_answers(tmp_path: Path) -> None:
    """All 30 256x2 instances at half the official limit (about 10 minutes): nothing wrong."""
    outcome = run_benchmark(MNIST_FC, VerifyConfig(tighten="crown" if HAS_CROWN else "interval"),
                            BenchOptions(timeout_scale=0.5, filter="256x2", out=tmp_path / "b", quiet=True))
    ours = outcome.rows[0]
    assert ours.tool == "robustkit" and ours.instances == 30
    assert ours.wrong == 0 and outcome.disagreements == []
    assert ours.score == 10 * ours.solved
    for rec in outcome.records.values():
        if rec["status"] == "sat":
            assert rec["ce_valid"] is True
            check_sat_file(Path(rec["result_file"]), MNIST_FC / rec["onnx"], MNIST_FC / rec["vnnlib"])
