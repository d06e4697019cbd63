"""Runs reproduced from their saved configuration alone: every command that takes ``--config``
writes its effective configuration and ``run.json`` next to its results, and rerunning from that
file gives the same answers (computed afresh from a copy, or resumed in place)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from robustkit.cli.main import main
from robustkit.config.files import read_toml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TEST_2021 = SHARED / "benchmarks" / "vnncomp" / "test_2021"
DATA = SHARED / "data"
needs_vnncomp = pytest.mark.skipif(not TEST_2021.is_dir(), reason=f"VNN-COMP benchmarks not found at {TEST_2021}")
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"shared data not found at {DATA}")


@pytest.fixture(autouse=True)
def _embedded_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROBUSTKIT_DATA", raising=False)


def statuses(records: Path) -> dict[str, str]:
    out = {}
    for line in records.read_text().splitlines():
        rec = json.loads(line)
        out[rec["key"]] = rec["status"]
    return out


def untimed(table: str) -> list[dict[str, str]]:
    """The rows of a Markdown table without their time columns (times differ between runs)."""
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    return [{h: c for h, c in zip(header, row) if "time" not in h} for row in rows]


def check_run_json(path: Path, command: str) -> dict:
    data = json.loads(path.read_text())
    last = data["invocations"][-1]
    assert last["command"] == command
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", last["date"])
    assert last["cpu"] and last["logical_cpus"] >= 1 and last["torch_threads"] >= 1
    assert set(last["versions"]) >= {"robustkit", "torch", "numpy", "onnxruntime", "highspy", "pulp"}
    assert re.fullmatch(r"[0-9a-f]{40}", last["git"]["commit"] or "0" * 40)
    return data


def test_verify_reproduced_from_its_saved_config(tiny_mnist, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    first = tmp_path / "first"
    args = ["verify", str(tiny_mnist.path), "--eps", "2/255", "--n", "8", "--workers", "0", "--quiet",
            "--bounds", "interval", "--attack-steps", "10", "--attack-restarts", "1", "--bab-split", "relu",
            "--timeout", "20", "--seed", "3", "--out", str(first)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| tiny_mlp.onnx | 8 |" in table
    config = first / "config.toml"
    saved = read_toml(config).data
    assert saved["command"] == "verify" and saved["eps"] == "2/255" and saved["output"]["out"] == "."
    assert saved["attack"] == {"steps": 10, "restarts": 1} and saved["verify"]["bounds"] == "interval"
    assert saved["bab"]["split"] == "relu" and saved["run"]["seed"] == 3 and saved["verify"]["timeout"] == 20.0
    check_run_json(first / "run.json", "verify")
    reference = statuses(first / "records.jsonl")
    assert len(reference) == 8

    # a copy of the config elsewhere: the same run, computed afresh there
    second = tmp_path / "second"
    second.mkdir()
    shutil.copy(config, second / "config.toml")
    assert main(["verify", "--config", str(second / "config.toml")]) == 0
    again = capsys.readouterr()
    assert "resumed" not in again.err
    assert statuses(second / "records.jsonl") == reference
    assert untimed(again.out) == untimed(table)
    # the original, rerun from its config alone: its settings hash matches, so all 8 resume
    assert main(["verify", "--config", str(config)]) == 0
    assert "(8 resumed)" in capsys.readouterr().err
    assert len(json.loads((first / "run.json").read_text())["invocations"]) == 2


def test_default_results_folder_gets_the_config(tiny_mnist, tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["verify", str(tiny_mnist.path), "--eps", "0.01", "--n", "2", "--workers", "0", "--quiet",
                 "--bounds", "interval", "--attack-steps", "5", "--attack-restarts", "1"]) == 0
    err = capsys.readouterr().err
    folder = Path(re.search(r"per-sample records: (\S+)/records.jsonl", err).group(1))
    assert folder.parent.name == "robustkit-results" and (folder / "config.toml").is_file()
    assert main(["verify", "--config", str(folder / "config.toml")]) == 0
    assert "(2 resumed)" in capsys.readouterr().err


def test_table_reproduced_from_its_saved_config(tiny_mnist, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "zoo"
    args = ["table", str(tiny_mnist.path), "--eps", "1/255", "--eps", "0.02", "--n", "4", "--workers", "0",
            "--bounds", "interval", "--attack-steps", "5", "--attack-restarts", "1", "--name", "tiny", "--quiet",
            "--out", str(out), "--format", "latex", "--columns", "model,eps,n,verified_accuracy,verified_ci,median_time"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert r"\begin{table}" in first and r"\toprule" in first and "1/255" in first and "n = 4 test images" in first
    assert (out / "tiny.tex").read_text() == first
    check_run_json(out / "tiny.run.json", "table")
    assert main(["table", "--config", str(out / "tiny.config.toml")]) == 0
    assert capsys.readouterr().out == first


@needs_vnncomp
def test_vnnlib_out_folder_and_config(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "one"
    nano = [str(TEST_2021 / "test_nano.onnx"), str(TEST_2021 / "test_nano.vnnlib")]
    assert main(["vnnlib", *nano, "--timeout", "30", "--bounds", "interval", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "unsat"
    assert (out / "result.txt").read_text().strip() == "unsat"
    assert read_toml(out / "config.toml").data["model"] == nano[0]
    check_run_json(out / "run.json", "vnnlib")
    copy = tmp_path / "copy"
    copy.mkdir()
    text = (out / "config.toml").read_text().replace(str(out / "result.txt"), str(copy / "result.txt"))
    (copy / "config.toml").write_text(text)
    assert main(["vnnlib", "--config", str(copy / "config.toml")]) == 0
    assert capsys.readouterr().out.strip() == "unsat" and (copy / "result.txt").read_text().strip() == "unsat"


@needs_vnncomp
def test_bench_vnncomp_config_resumes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench"
    assert main(["bench", "vnncomp", str(TEST_2021), "--limit", "2", "--timeout-scale", "0.2", "--bounds", "interval",
                 "--quiet", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    saved = read_toml(out / "config.toml").data
    assert saved["limit"] == 2 and saved["verify"]["timeout_scale"] == 0.2
    records = (out / "records.jsonl").read_text()
    assert main(["bench", "vnncomp", "--config", str(out / "config.toml")]) == 0
    assert capsys.readouterr().out == first and (out / "records.jsonl").read_text() == records  # nothing rerun
    check_run_json(out / "run.json", "bench vnncomp")


@needs_data
def test_train_reproduced_from_its_saved_config(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--net", "mlp", "--hidden", "16", "--epochs", "1", "--n-train", "200",
                 "--n-eval", "100", "--data-dir", str(DATA), "--lr", "0:1e-3,1:5e-4", "--eps", "1/10",
                 "--threads", "1", "-r", "pgd:steps=2", "--quiet"]) == 0
    saved = read_toml(run / "config.toml").data
    assert saved["train"]["regularizer"] == ["pgd:steps=2"] and saved["train"]["eps"] == "0.1"
    assert main(["train", "--config", str(run / "config.toml"), "--out", str(tmp_path / "again")]) == 0
    capsys.readouterr()
    config = json.loads((run / "config.json").read_text())
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == {**config, "data_dir": config["data_dir"]}
    first = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(ln) for ln in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["loss"], m["test_acc"]) for m in again] == [(m["loss"], m["test_acc"]) for m in first]
    check_run_json(run / "run.json", "train")
