"""Tests of the runner: result store, worker pool (timeouts, crashes, kill -9, Ctrl-C), progress,
and the optional Dask backend.

The task functions live at module level so that spawned worker processes can import them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from robustkit.errors import InputError
from robustkit.runner import (
    ResultStore,
    RunDir,
    RunProgress,
    WorkerStartError,
    run_pool,
    run_tasks,
    settings_hash,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    key: str
    kind: str = "ok"
    value: int = 0
    sleep: float = 0.0
    pid_dir: str = ""


def job_fn(job: Job) -> dict:
    if job.pid_dir:
        # written whole or not at all: a worker killed mid-write must not leave an empty file
        tmp = Path(job.pid_dir, f"{job.key}.pid.tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, Path(job.pid_dir, f"{job.key}.pid"))
    if job.sleep:
        time.sleep(job.sleep)
    if job.kind == "hang":
        time.sleep(1000)
    elif job.kind == "raise":
        raise ValueError(f"bad sample {job.key}")
    elif job.kind == "exit":
        os._exit(7)
    elif job.kind == "segv":
        import ctypes

        ctypes.string_at(0)
    elif job.kind == "oom":
        blob = bytearray(1024 * 1024 * 1024)  # 1 GiB under a 256 MiB address-space limit
        return {"status": "ok", "n": len(blob)}
    return {"status": "ok", "value": job.value * job.value, "pid": os.getpid(),
            "threads": os.environ.get("OMP_NUM_THREADS")}


def failing_init() -> None:
    raise RuntimeError("cannot load the model")


_STATE: dict[str, int] = {}


def remember_init(value: int) -> None:
    _STATE["init"] = value


def init_value_fn(job: Job) -> dict:
    return {"status": "ok", "init": _STATE.get("init", -1)}


def _collect(tasks, workers, hard_timeout=None, **kw) -> dict[str, dict]:
    out: dict[str, dict] = {}

    def on_result(rec: dict) -> None:
        assert rec["key"] not in out, "one record per task"
        out[rec["key"]] = rec

    run_pool(tasks, job_fn if "fn" not in kw else kw.pop("fn"), workers, hard_timeout, on_result, **kw)
    return out


# ---------------------------------------------------------------- store


def test_store_roundtrip_last_record_wins_and_rerun(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    assert store.records() == {} and store.done_keys() == set()
    store.append({"key": "a", "status": "timeout", "time": 1.5})
    store.append({"key": "b", "status": "verified", "nan": float("nan")})
    store.append({"key": "a", "status": "falsified"})
    store.append({"key": "c", "status": "unknown"})
    recs = ResultStore(tmp_path / "r.jsonl").records()
    assert list(recs) == ["a", "b", "c"]
    assert recs["a"]["status"] == "falsified"
    assert recs["b"]["nan"] == "nan"  # NaN is not JSON: stored as a string
    assert store.done_keys() == {"a", "b", "c"}
    assert store.done_keys(rerun={"timeout", "unknown"}) == {"a", "b"}
    with pytest.raises(ValueError):
        store.append({"status": "verified"})
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(ln)["key"] for ln in lines)


def test_store_ignores_truncated_last_line_and_appends_on_fresh_line(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultStore(path)
    store.append({"key": "a", "status": "verified"})
    store.append({"key": "b", "status": "falsified"})
    full = path.read_bytes()
    path.write_bytes(full[:-9])  # kill -9 in the middle of writing b's line
    store = ResultStore(path)
    assert set(store.records()) == {"a"}
    store.append({"key": "b", "status": "falsified"})
    store.append({"key": "c", "status": "timeout"})
    recs = ResultStore(path).records()
    assert {k: r["status"] for k, r in recs.items()} == {"a": "verified", "b": "falsified",
                                                         "c": "timeout"}
    lines = path.read_text().splitlines()
    assert len(lines) == 4  # a, the broken fragment, b, c: each on its own line
    assert json.loads(lines[-1])["key"] == "c" and json.loads(lines[-2])["key"] == "b"


def test_settings_hash_is_canonical_and_sensitive():
    s1 = {"eps": 0.1, "solver": {"name": "highs", "version": "1.14.0"}, "timeout": 30}
    s2 = {"timeout": 30, "solver": {"version": "1.14.0", "name": "highs"}, "eps": 0.1}
    h = settings_hash(b"model", s1)
    assert len(h) == 64 and h == settings_hash(b"model", s2)
    assert h != settings_hash(b"model2", s1)
    assert h != settings_hash(b"model", {**s1, "eps": 0.2})
    assert h != settings_hash(b"model", {**s1, "solver": {"name": "highs", "version": "1.15.1"}})


def test_rundir_places_by_hash_and_refuses_to_mix(tmp_path):
    settings = {"eps": 0.1, "solver": "highs 1.14.0"}
    rd = RunDir.for_settings(tmp_path, b"net", settings)
    digest = settings_hash(b"net", settings)
    assert rd.path == tmp_path / digest[:12] and rd.settings_hash == digest
    assert rd.meta["settings"] == settings
    rd.store().append({"key": "0", "status": "verified"})
    again = RunDir.for_settings(tmp_path, b"net", dict(reversed(list(settings.items()))))
    assert again.store().done_keys() == {"0"}
    other = RunDir.for_settings(tmp_path, b"net", {**settings, "eps": 0.2})
    assert other.path != rd.path
    with pytest.raises(InputError, match="different settings"):
        RunDir.at(rd.path, other.settings_hash, {**settings, "eps": 0.2})
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "records.jsonl").write_text('{"key": "x"}\n')
    with pytest.raises(InputError, match="settings are unknown"):
        RunDir.at(orphan, digest, settings)


# ---------------------------------------------------------------- pool


def test_pool_runs_everything_single_threaded():
    tasks = [Job(str(i), value=i) for i in range(12)]
    env_before = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = _collect(tasks, workers=2, hard_timeout=30)
    assert {v: os.environ.get(v) for v in env_before} == env_before  # parent env restored
    assert sorted(out, key=int) == [t.key for t in tasks]
    assert all(out[t.key]["value"] == t.value**2 for t in tasks)
    assert all(r["threads"] == "1" and r["time"] >= 0 for r in out.values())
    assert len({r["pid"] for r in out.values()}) <= 2
    assert all(r["pid"] != os.getpid() for r in out.values())


def test_hanging_task_times_out_and_later_tasks_still_run():
    tasks = [Job("hang", "hang"), Job("a", value=2), Job("b", value=3)]
    seen: dict[str, float] = {}
    recs: dict[str, dict] = {}
    t0 = time.monotonic()

    def on_result(rec: dict) -> None:
        seen[rec["key"]] = time.monotonic() - t0
        recs[rec["key"]] = rec

    run_pool(tasks, job_fn, 1, 2.0, on_result)
    assert recs["hang"]["status"] == "timeout"
    assert recs["hang"]["reason"] == "hard timeout: worker killed"
    assert 2.0 <= recs["hang"]["time"] < 3.0
    assert 2.0 <= seen["hang"] <= 2.0 + 3.0
    assert recs["a"]["value"] == 4 and recs["b"]["value"] == 9


def test_crashing_tasks_give_error_records_and_the_run_continues(tmp_path):
    tasks = [Job("raise", "raise"), Job("ok1", value=1), Job("exit", "exit"), Job("segv", "segv"),
             Job("ok2", value=2)]
    out = _collect(tasks, workers=1, hard_timeout=20)
    assert out["raise"]["status"] == "error" and "ValueError: bad sample raise" in out["raise"]["error"]
    assert out["exit"]["status"] == "error" and "exited with code 7" in out["exit"]["error"]
    assert out["segv"]["status"] == "error" and "SIGSEGV" in out["segv"]["error"]
    assert out["ok1"]["value"] == 1 and out["ok2"]["value"] == 4


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS memory caps are tested on Linux")
def test_memory_limit_turns_oom_into_error():
    out = _collect([Job("oom", "oom"), Job("ok", value=3)], workers=1, hard_timeout=20,
                   memory_limit_mb=256)
    assert out["oom"]["status"] == "error" and "MemoryError" in out["oom"]["error"]
    assert out["ok"]["value"] == 9


def test_in_process_mode_and_initializer():
    out = _collect([Job("a", value=2), Job("b", "raise")], workers=0)
    assert out["a"]["pid"] == os.getpid() and out["a"]["value"] == 4
    assert out["b"]["status"] == "error"
    out = _collect([Job("x")], workers=1, fn=init_value_fn, initializer=remember_init, initargs=(42,))
    assert out["x"]["init"] == 42
    with pytest.raises(WorkerStartError, match="cannot load the model"):
        _collect([Job("y")], workers=1, initializer=failing_init)


def test_workers_are_recycled():
    out = _collect([Job(str(i)) for i in range(6)], workers=1, max_tasks_per_worker=2)
    assert len(out) == 6 and len({r["pid"] for r in out.values()}) == 3


def test_bad_pool_arguments():
    with pytest.raises(InputError, match="duplicate"):
        _collect([Job("a"), Job("a")], workers=1)
    with pytest.raises(InputError, match="workers"):
        _collect([Job("a")], workers=-1)
    with pytest.raises(InputError, match="fork"):
        _collect([Job("a")], workers=1, start_method="fork")


_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from dataclasses import dataclass
    from robustkit.runner import ResultStore, run_tasks

    @dataclass(frozen=True)
    class T:
        key: str
        i: int

    def work(t):
        time.sleep(0.15)
        if t.i % 7 == 3:
            raise ValueError("unlucky")
        return {"status": "even" if t.i % 2 == 0 else "odd", "sq": t.i * t.i}

    if __name__ == "__main__":
        store = ResultStore(sys.argv[1])
        tasks = [T(f"s{i}", i) for i in range(20)]
        run_tasks(tasks, work, store, workers=2, hard_timeout=30, quiet=True)
    """
)


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_kill_9_midway_then_rerun_gives_one_record_per_key(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    ref = tmp_path / "ref.jsonl"
    subprocess.run([sys.executable, str(script), str(ref)], check=True, env=_python_env(), timeout=120)
    expected = {k: (r["status"], r.get("sq")) for k, r in ResultStore(ref).records().items()}
    assert len(expected) == 20
    assert sum(s == "error" for s, _ in expected.values()) == 3

    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=_python_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 6:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    n_before = len(ResultStore(out).records())
    assert 6 <= n_before < 20, "the kill must land midway"
    with open(out, "a") as fh:  # as if the kill had cut a record in half
        fh.write('{"key":"s19","sq":3')
    subprocess.run([sys.executable, str(script), str(out)], check=True, env=_python_env(), timeout=120)
    lines = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip().endswith("}")]
    keys = [r["key"] for r in lines]
    assert sorted(keys) == sorted(expected), "exactly one record per key"
    got = {k: (r["status"], r.get("sq")) for k, r in ResultStore(out).records().items()}
    assert got == expected


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from test_runner import Job
    from robustkit.runner import ResultStore, run_tasks
    from test_runner import job_fn

    if __name__ == "__main__":
        tasks = [Job(f"j{i}", sleep=0.3, pid_dir=sys.argv[2]) for i in range(40)]
        try:
            run_tasks(tasks, job_fn, ResultStore(sys.argv[1]), workers=2, hard_timeout=30, quiet=True)
        except KeyboardInterrupt:
            sys.exit(130)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="checks worker processes through /proc")
def test_ctrl_c_stops_cleanly_kills_workers_and_keeps_results(tmp_path):
    script = tmp_path / "sigint.py"
    script.write_text(_SIGINT_SCRIPT)
    out, pids = tmp_path / "out.jsonl", tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(pids), str(REPO / "tests")],
                            env=_python_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and len(out.read_text().splitlines()) >= 4):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    kept = ResultStore(out).records()
    assert 4 <= len(kept) < 40 and all(r["status"] == "ok" for r in kept.values())
    time.sleep(0.2)
    for f in pids.glob("*.pid"):  # complete pid files only (a worker killed mid-write leaves a .tmp)
        pid = int(f.read_text())
        alive = Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)
        assert not alive, f"worker {pid} survived Ctrl-C"


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        return "gone"
    return ""


def test_run_tasks_resumes_and_reruns_selected_statuses(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.append({"key": "0", "status": "timeout"})
    store.append({"key": "1", "status": "ok", "value": 1})
    tasks = [Job(str(i), value=i) for i in range(4)]
    recs = run_tasks(tasks, job_fn, store, workers=0, quiet=True)
    assert recs["0"]["status"] == "timeout" and "pid" not in recs["1"]  # both kept
    assert recs["2"]["value"] == 4 and recs["3"]["value"] == 9
    recs = run_tasks(tasks, job_fn, store, workers=0, rerun={"timeout"}, quiet=True)
    assert recs["0"]["status"] == "ok" and recs["0"]["value"] == 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 5


# ---------------------------------------------------------------- progress


def test_progress_logs_about_every_ten_percent_when_not_a_tty(caplog):
    caplog.set_level(logging.INFO, logger="robustkit.runner.progress")
    with RunProgress(50, "verify", quiet=True) as prog:
        for i in range(50):
            prog.update({"key": str(i), "status": "verified" if i % 5 else "timeout"})
    assert prog.counts == {"verified": 40, "timeout": 10}
    lines = [r.getMessage() for r in caplog.records if "%)" in r.getMessage()]
    assert 9 <= len(lines) <= 11
    assert "50/50 (100%)" in lines[-1] and "verified 40, timeout 10" in lines[-1]


def test_progress_live_bar_on_a_tty():
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with RunProgress(3, "attack", stream=stream) as prog:
        assert prog.live
        for s in ("ok", "ok", "error"):
            prog.update({"key": s, "status": s})
    assert "attack" in stream.getvalue() and "ok 2, error 1" in stream.getvalue()


# ---------------------------------------------------------------- dask


def test_dask_local_cluster_gives_the_same_statuses_as_the_pool():
    pytest.importorskip("distributed", reason="dask[distributed] not installed (optional extra)")
    from robustkit.runner.dask_backend import run_dask

    tasks = [Job("ok", value=3), Job("raise", "raise"), Job("exit", "exit"), Job("hang", "hang"),
             Job("ok2", value=4)]
    local = _collect(tasks, workers=1, hard_timeout=2.0)
    got: dict[str, dict] = {}
    run_dask(tasks, job_fn, lambda r: got.__setitem__(r["key"], r), cluster="local:2",
             hard_timeout=2.0)
    assert {k: r["status"] for k, r in got.items()} == {k: r["status"] for k, r in local.items()}
    assert got["ok"]["value"] == 9 and got["ok2"]["value"] == 16
    assert got["hang"]["reason"] == local["hang"]["reason"]
    with pytest.raises(InputError, match="local:N"):
        run_dask(tasks, job_fn, print, cluster="big")


def torch_threads_fn(job: Job) -> dict:
    import torch

    return {"status": "ok", "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}


def import_torch() -> None:
    import torch  # noqa: F401 - as an initializer loading a model would


def test_worker_torch_is_single_threaded():
    pytest.importorskip("torch")
    out = _collect([Job("t")], workers=1, fn=torch_threads_fn, initializer=import_torch)
    assert out["t"]["threads"] == 1 and out["t"]["interop"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_pool_overhead_per_task(workers):
    """Steady-state cost of a no-op task through the pool (printed; bound generous for CI)."""
    n = 1000
    stamps: list[float] = []
    t0 = time.perf_counter()
    run_pool([Job(str(i)) for i in range(n)], job_fn, workers, 30.0,
             lambda r: stamps.append(time.perf_counter()))
    per_task = (stamps[-1] - stamps[0]) / (n - 1)
    print(f"workers={workers}: start-up {stamps[0] - t0:.2f}s, {per_task * 1e6:.0f} us/task")
    assert per_task < 5e-3
