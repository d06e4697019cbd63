"""Every example script runs end to end on a tiny budget (as a subprocess, like a user would run
it); examples that need ``../shared`` skip when it is absent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED = REPO.parent / "shared"


def run_example(name: str, *args: str, timeout: float = 240) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("ROBUSTKIT_DATA", None)
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_every_example_is_tested() -> None:
    tested = {"quickstart.py", "vnnlib_instance.py", "stats_plot.py", "custom_resnet.py", "bounds_quickstart.py",
              "own_training_loop.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_stats_plot_example(tmp_path: Path) -> None:
    model = REPO / "models" / "mnist" / "mnist_small_pgd_rs.onnx"
    if not model.is_file():
        pytest.skip(f"{model} is absent")
    out = run_example("stats_plot.py", "--models", str(model), "--n", "3", "--method", "interval",
                      "--region-samples", "4", "--out", str(tmp_path))
    png = tmp_path / "mnist_small_pgd_rs_eps0.1.png"
    assert png.is_file() and png.stat().st_size > 1000
    row = re.search(r"\| mnist_small_pgd_rs.onnx \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out)
    assert row is not None, out
    unstable, corner, pgd = (float(v) for v in row.groups())
    assert 0 < corner <= unstable and pgd <= unstable


def test_vnnlib_example(tmp_path: Path) -> None:
    folder = SHARED / "benchmarks" / "vnncomp" / "test_2021"
    if not folder.is_dir():
        pytest.skip(f"VNN-COMP test benchmark not found at {folder}")
    out = run_example("vnnlib_instance.py", "--only", "test_nano", "test_sat", "--timeout", "30", "--in-process")
    assert "| test_nano.onnx | test_nano.vnnlib | unsat | unsat |" in out
    assert "| test_sat.onnx | test_prop.vnnlib | sat | sat |" in out
    assert "counterexample" in out


def test_quickstart_example(tmp_path: Path) -> None:
    data = SHARED / "data"
    if not (data / "mnist").is_dir():
        pytest.skip(f"MNIST training data not found at {data / 'mnist'}")
    args = ("--data-dir", str(data), "--out", str(tmp_path), "--n-train", "2000", "--epochs", "1", "--n", "3",
            "--timeout", "10")
    out = run_example("quickstart.py", *args)
    for step in ("[1] trained", "[2] exported", "[3] verified 3 samples", "[4] table"):
        assert step in out, out
    assert (tmp_path / "quickstart.onnx").is_file()
    table = [ln for ln in out.splitlines() if ln.startswith("| quickstart.onnx | pgd:steps=3+relu-stability=0.001 |")]
    assert [ln.split(" | ")[2] for ln in table] == ["0.05", "0.02"]
    # a second run resumes: no training, no new verification records
    stores = sorted(tmp_path.glob("results/*/records.jsonl"))
    sizes = [p.stat().st_size for p in stores]
    again = run_example("quickstart.py", *args)
    assert "already trained" in again
    assert sorted(tmp_path.glob("results/*/records.jsonl")) == stores  # same model bytes, same stores
    assert [p.stat().st_size for p in stores] == sizes
    assert [ln for ln in again.splitlines() if ln.startswith("| quickstart.onnx | pgd")] == table


def test_custom_resnet_example(tmp_path: Path) -> None:
    data = SHARED / "data"
    if not (data / "mnist").is_dir():
        pytest.skip(f"MNIST training data not found at {data / 'mnist'}")
    out = run_example("custom_resnet.py", "--data-dir", str(data), "--out", str(tmp_path), "--n-train", "1000",
                      "--epochs", "1", "--n", "5", "--timeout", "5")
    for step in ("[1] data", "[2] trained SmallResNet", "[3] verified 5 samples"):
        assert step in out, out
    row = re.search(r"\| SmallResNet \| 5 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| (\d+) \| (\d+) \| (\d+) \|", out)
    assert row is not None, out
    assert sum(int(v) for v in row.groups()) <= 5
    statuses = out.split("statuses: ")[1].split()[:5]
    assert set(statuses) <= {"verified", "falsified", "misclassified", "timeout", "unknown"}
    assert (tmp_path / "mnist_train.npz").is_file() and (tmp_path / "mnist_eval.npz").is_file()


def test_bounds_quickstart_example() -> None:
    out = run_example("bounds_quickstart.py", "--n", "1", "--method", "interval", "--method", "crown")
    assert out.count("(ground-truth)") == 2 and "Bounding method: crown" in out
    widths = [float(m.group(2)) - float(m.group(1))
              for m in re.finditer(r"f_0\(x_0\):\s+(-?[\d.]+) <= f_0\(x_0\+delta\) <=\s+(-?[\d.]+)", out)]
    assert len(widths) == 2 and widths[1] <= widths[0]  # CROWN no looser than interval


def test_own_training_loop_example() -> None:
    out = run_example("own_training_loop.py", "--steps", "30", "--n", "4", "--timeout", "5",
                      "--data-dir", str(SHARED / "nowhere"))
    assert "step 29: loss" in out and "jin-rinard.intrinsic" in out and "relu-stability" in out
    assert "| Net | 4 |" in out
