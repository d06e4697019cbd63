"""``robustkit verify`` from the command line: exit codes, messages, the table, and resuming a
run that was killed with SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from robustkit.cli.main import main

EPS = "0.03"
FAST = ["--tighten", "interval", "--attack-steps", "10", "--attack-restarts", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _embedded_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use the embedded MNIST subset, whatever the environment says."""
    monkeypatch.delenv("ROBUSTKIT_DATA", raising=False)


def console_script() -> list[str]:
    """The installed ``robustkit`` entry point (the one next to this interpreter if present)."""
    local = Path(sys.executable).with_name("robustkit")
    if local.exists():
        return [str(local)]
    found = shutil.which("robustkit")
    if found is None:
        pytest.skip("the robustkit console script is not installed (pip install -e .)")
    return [found]


def read_records(path: Path) -> list[dict]:
    """The readable JSON records of a JSONL file (torn lines skipped)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "key" in rec:
            out.append(rec)
    return out


def table_row(stdout: str) -> dict[str, str]:
    """The first data row of the Markdown table, keyed by header."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    assert len(lines) >= 3, stdout
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    return dict(zip(header, row))


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps, words", [
    ("-1", "negative"), ("abc", "not a number"), ("1/0", "division by zero"), ("nan", "not a number"),
    ("inf", "not"),
])
def test_bad_eps(tiny_mnist, capsys: pytest.CaptureFixture, eps: str, words: str) -> None:  # type: ignore[no-untyped-def]
    code = main(["verify", str(tiny_mnist.path), "--eps", eps, "--n", "1", "--workers", "0", *FAST])
    err = capsys.readouterr().err
    assert code == 1
    assert "eps" in err and words in err and repr(eps) in err


def test_bad_bab_intermediate(tiny_mnist, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    code = main(["verify", str(tiny_mnist.path), "--eps", "0.1", "--method", "bab", "--bab-intermediate", "sometimes",
                 "--n", "1", "--workers", "0", *FAST])
    err = capsys.readouterr().err
    assert code == 1 and "--bab-intermediate" in err and "'sometimes'" in err and "recompute" in err


@pytest.mark.parametrize("weight,words", [("-1", ">= 0"), ("steep", "not a number")])
def test_bad_bab_depth_weight(tiny_mnist, capsys: pytest.CaptureFixture, weight: str, words: str) -> None:  # type: ignore[no-untyped-def]
    code = main(["verify", str(tiny_mnist.path), "--eps", "0.1", "--method", "bab", f"--bab-depth-weight={weight}",
                 "--n", "1", "--workers", "0", *FAST])
    err = capsys.readouterr().err
    assert code == 1 and "--bab-depth-weight" in err and words in err, err


def test_bad_eps_with_equals_sign(tiny_mnist, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    assert main(["verify", str(tiny_mnist.path), "--eps=-0.5", "--n", "1"]) == 1
    assert "negative" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-v"], ["verify", "--bogus", "1"], ["verify"], ["vnnlib", "m.onnx"]])
def test_usage_errors_exit_1_without_a_traceback(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """Unknown options and missing arguments are usage errors (exit 1), also with the copy of
    click that newer typer versions carry (its exceptions are not click's)."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Error" in err and "internal error" not in err and "Traceback" not in err


def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.onnx"
    assert main(["verify", str(missing), "--eps", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "nope.onnx" in err


def test_not_an_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("definitely not a protobuf\n" * 10)
    assert main(["verify", str(bogus), "--eps", "0.1"]) == 1
    assert "model.onnx" in capsys.readouterr().err
    assert main(["verify", str(tmp_path), "--eps", "0.1"]) == 1
    assert "directory" in capsys.readouterr().err


def test_sigmoid_model_gets_bounds_only_results_with_a_note(onnx_kit, save_onnx, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    model = onnx_kit.make_model(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "W", "b"], ["h"], transB=1, name="fc"),
         helper.make_node("Sigmoid", ["h"], ["y"], name="output_sigmoid")],
        [1, 1, 28, 28], [1, 10],
        {"W": np.zeros((10, 784), np.float32), "b": np.zeros(10, np.float32)},
        metadata=onnx_kit.mnist_metadata)
    assert main(["verify", str(save_onnx(model, "sig.onnx")), "--eps", "0.1", "--n", "1", "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "Sigmoid/Tanh" in err and "does not apply" in err


def test_missing_dataset_dir(tiny_mnist, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    code = main(["verify", str(tiny_mnist.path), "--eps", "0.1", "--n", "1", "--data-dir", "/nonexistent", "--workers", "0"])
    assert code == 1
    assert "/nonexistent" in capsys.readouterr().err


def test_model_without_dataset_metadata(onnx_kit, save_onnx, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    path = save_onnx(onnx_kit.mlp_model([(np.zeros((10, 784), np.float32), np.zeros(10, np.float32))],
                                        input_shape=[1, 1, 28, 28]), "nometa.onnx")
    assert main(["verify", str(path), "--eps", "0.1", "--n", "1"]) == 1
    assert "--dataset" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["verify", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "verify" in out
    if argv[0] == "verify":
        assert "--eps" in out and "--out" in out


# -- a successful run ---------------------------------------------------------------------------------
def test_small_run_prints_the_table(tiny_mnist, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run.jsonl"
    code = main(["verify", str(tiny_mnist.path), "--eps", EPS, "--n", "6", "--workers", "0", "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "verified %" in captured.out
    row = table_row(captured.out)
    records = read_records(out)
    assert sorted(r["key"] for r in records) == [f"mnist:{i}" for i in range(6)]
    statuses = [r["status"] for r in records]
    assert row["n"] == "6"
    assert int(row["verified"]) == statuses.count("verified")
    assert int(row["falsified"]) == statuses.count("falsified")
    assert float(row["verified %"]) == pytest.approx(100 * statuses.count("verified") / 6, abs=0.05)
    assert set(statuses) <= {"verified", "falsified", "misclassified"}
    # running again resumes everything: the same table, nothing recomputed
    assert main(["verify", str(tiny_mnist.path), "--eps", EPS, "--n", "6", "--workers", "0", "--out", str(out), *FAST]) == 0
    again = capsys.readouterr()
    assert table_row(again.out)["verified"] == row["verified"]
    assert "6 resumed" in again.err
    assert len(read_records(out)) == 6


def test_other_settings_into_the_same_out_file(tiny_mnist, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run.jsonl"
    assert main(["verify", str(tiny_mnist.path), "--eps", "0.01", "--n", "2", "--workers", "0", "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    before = out.read_text()
    assert main(["verify", str(tiny_mnist.path), "--eps", "0.02", "--n", "2", "--workers", "0", "--out", str(out), *FAST]) == 1
    assert "settings" in capsys.readouterr().err
    assert out.read_text() == before  # nothing was appended


# -- the console script, killed and resumed --------------------------------------------------------------
def test_console_script_exit_code_and_message(tiny_mnist) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([*console_script(), "verify", str(tiny_mnist.path), "--eps", "abc"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "eps 'abc'" in proc.stderr


def test_resume_after_kill(tiny_mnist, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    n = 12
    args = ["verify", str(tiny_mnist.path), "--eps", EPS, "--n", str(n), *FAST]
    # the uninterrupted answer, computed in this process
    ref_path = tmp_path / "reference.jsonl"
    assert main([*args, "--workers", "0", "--out", str(ref_path)]) == 0
    capsys.readouterr()
    reference = {r["key"]: r["status"] for r in read_records(ref_path)}
    assert len(reference) == n

    out = tmp_path / "killed.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ROBUSTKIT_DATA", None)
    cmd = [*console_script(), *args, "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180
    written = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            written = len(read_records(out)) if out.exists() else 0
            if written >= 3:
                break
            time.sleep(0.01)
        finished_early = proc.poll() is not None
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        finished_early = True
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    if finished_early:
        pytest.fail(f"the run ended before it could be killed (exit {proc.returncode}); {written} records")
    partial = read_records(out)
    assert 3 <= len(partial) < n, f"{len(partial)} records when killed"
    # a record torn by the kill (at most the last line) must be ignored
    with open(out, "a") as fh:
        fh.write('{"key": "mnist:11", "status": "verif')

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "verified %" in done.stdout
    assert f"({len(partial)} resumed)" in done.stderr
    records = read_records(out)
    keys = [r["key"] for r in records]
    assert sorted(keys) == sorted(reference), "exactly one record per sample"
    assert len(keys) == len(set(keys)) == n
    assert {r["key"]: r["status"] for r in records} == reference
    # the first records survived untouched
    assert records[: len(partial)] == partial
