"""Verifying one VNN-COMP instance: an ONNX network and a VNN-LIB property, within a time limit.

The answer follows the VNN-COMP convention: ``sat`` (a counterexample exists; it is written to
the result file as ``((X_0 v) ... (Y_0 v) ...)``), ``unsat`` (the property holds), ``timeout``,
``unknown`` (the method gave up, e.g. an incomplete bound method), or ``error``.

The solve runs in a worker process (:func:`robustkit.runner.pool.run_pool` with one task), so the
limit is hard: the pipeline gets a soft deadline a little before it, and a worker still running
past the limit (plus :data:`KILL_GRACE`) is killed and the instance answers ``timeout``.

Every ``sat`` is replayed before it is reported: the float32 witness is fed to the *original*
ONNX file in a fresh onnxruntime session (:func:`replay_counterexample`, independent of
robustkit's network representation) and must violate the property exactly, with no tolerance.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from robustkit.errors import InputError
from robustkit.spec import InputBox, Specification
from robustkit.verification.config import VerifyConfig
from robustkit.verification.model import ModelContext
from robustkit.vnnlib.parser import parse_vnnlib
from robustkit.vnnlib.result_file import write_result

log = logging.getLogger(__name__)

__all__ = [
    "CHECK_TOLERANCE",
    "INSTANCE_RESULTS",
    "InstanceResult",
    "InstanceTask",
    "KILL_GRACE",
    "Replay",
    "load_instance",
    "replay_counterexample",
    "result_from_record",
    "run_instance_task",
    "soft_budget",
    "spec_part",
    "verify_instance",
]

INSTANCE_RESULTS: tuple[str, ...] = ("sat", "unsat", "timeout", "unknown", "error")
KILL_GRACE = 2.0  # seconds past the limit before a worker is killed
CHECK_TOLERANCE = 1e-4  # VNN-COMP's counterexample check (input box and output constraints)


def soft_budget(limit: float) -> float:
    """Seconds the solver may use out of ``limit``: a reserve (5 %, at most 2 s, at least 0.2 s)
    is kept for writing the result and for the process boundary."""
    reserve = min(2.0, max(0.2, 0.05 * limit))
    return max(limit - reserve, 0.0)


def load_instance(onnx_path: str | os.PathLike[str], vnnlib_path: str | os.PathLike[str]) -> tuple[ModelContext, Specification]:
    """The model and the property, with the property's ``X``/``Y`` counts checked against the
    model's flat input and output sizes (mismatch: :class:`InputError` naming both)."""
    onnx_path, vnnlib_path = Path(onnx_path), Path(vnnlib_path)
    for path, what in ((onnx_path, "ONNX model"), (vnnlib_path, "VNN-LIB property")):
        if not path.is_file():
            raise InputError(f"{what} {path} not found (give the path of an existing file; "
                             f"VNN-COMP benchmarks keep them under onnx/ and vnnlib/)")
    ctx = ModelContext.from_path(onnx_path)
    spec = parse_vnnlib(vnnlib_path, n_inputs=ctx.net.in_dim, n_outputs=ctx.net.out_dim)
    return ctx, spec


@dataclass(frozen=True)
class InstanceTask:
    """One instance for a worker (picklable). The answer must exist ``cfg.timeout`` seconds after
    the worker starts the task, or by ``deadline`` (wall clock, ``time.time()``) when that is
    given and earlier; the solver gets :func:`soft_budget` of what is left after loading."""

    key: str
    onnx: str
    vnnlib: str
    cfg: VerifyConfig
    deadline: float | None = None
    part: tuple[int, int] | None = None  # (index, count): search only that part of each input box

    def __post_init__(self) -> None:
        if self.deadline is not None and not math.isfinite(self.deadline):
            raise InputError(f"instance deadline must be finite, got {self.deadline}")
        if self.part is not None and not 0 <= self.part[0] < self.part[1]:
            raise InputError(f"part must be (index, count) with 0 <= index < count, got {self.part}")


def spec_part(spec: Specification, index: int, count: int) -> Specification:
    """Part ``index`` of ``count`` of every region's input box: the box cut into ``count`` equal
    slices along its widest input (the slices share their cut faces, closed on both sides; the
    box's own faces keep their strictness), with the region's output conditions. The parts
    cover each box: the property holds iff it holds on every part, and a counterexample of a part
    is one of the whole (each is also replayed against the whole property)."""
    regions = []
    for box, output in spec:
        width = box.upper - box.lower
        j = int(np.argmax(width))
        cuts = box.lower[j] + width[j] * np.arange(count + 1) / count
        cuts[0], cuts[-1] = box.lower[j], box.upper[j]
        lo, hi = box.lower.copy(), box.upper.copy()
        lo[j], hi[j] = cuts[index], cuts[index + 1]
        ls = None if box.lower_strict is None else box.lower_strict.copy()
        us = None if box.upper_strict is None else box.upper_strict.copy()
        if ls is not None and index > 0:
            ls[j] = False  # a cut face: closed
        if us is not None and index < count - 1:
            us[j] = False
        regions.append((InputBox(lo, hi, ls, us), output))
    return Specification(tuple(regions))


def run_instance_task(task: InstanceTask) -> dict[str, Any]:
    """Worker entry point: load, verify, and return a JSON-able record.

    Record keys: ``status`` (one of :data:`INSTANCE_RESULTS`), ``stage``, ``time`` (seconds in
    this worker, loading included), ``cpu_time`` (this process's CPU seconds), ``time_load``,
    ``time_verify``, ``details`` (the pipeline's), and for ``sat`` the witness ``x`` (float32
    values) and ``y`` (onnxruntime output).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    deadline = time.time() + task.cfg.timeout
    if task.deadline is not None:
        deadline = min(deadline, task.deadline)
    if deadline <= time.time():
        return {"status": "timeout", "stage": "none", "time": 0.0, "reason": "no time left to start"}
    ctx, spec = load_instance(task.onnx, task.vnnlib)
    if task.part is not None:
        spec = spec_part(spec, *task.part)
    t_load = time.perf_counter() - t0
    budget = soft_budget(deadline - time.time())
    if budget <= 0:
        return {"status": "timeout", "stage": "load", "time": time.perf_counter() - t0, "time_load": t_load}
    from robustkit.verification.pipeline import verify_spec

    verdict = verify_spec(ctx, spec, replace(task.cfg, timeout=budget), tag=Path(task.vnnlib).stem)
    record: dict[str, Any] = {
        "status": verdict.result,
        "stage": verdict.stage,
        "time_load": t_load,
        "time_verify": verdict.time,
        "details": verdict.details,
    }
    if verdict.witness is not None:
        record["x"] = [float(v) for v in np.asarray(verdict.witness.x, dtype=np.float32)]
        record["y"] = [float(v) for v in np.asarray(verdict.witness.y, dtype=np.float64)]
    record["time"] = time.perf_counter() - t0
    record["cpu_time"] = time.process_time() - cpu0  # below "time" when the machine is shared
    return record


@dataclass(frozen=True)
class Replay:
    """The original ONNX model's output at a counterexample, and whether it violates the
    property: ``exact`` (no tolerance) and ``within_tolerance`` (VNN-COMP's 1e-4 check)."""

    y: np.ndarray
    exact: bool
    within_tolerance: bool
    max_output_gap: float | None = None  # |Y claimed - Y replayed|, when Y was claimed


def _ort_feed_shape(shape: list[Any], size: int) -> tuple[int, ...]:
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    if int(np.prod(dims)) != size:
        raise InputError(f"counterexample has {size} inputs but the model's input shape is {shape}")
    return tuple(dims)


def replay_counterexample(onnx_path: str | os.PathLike[str], spec: Specification, x: np.ndarray,
                          y_claimed: np.ndarray | None = None) -> Replay:
    """Run ``x`` (flat, row-major) through the ONNX file in onnxruntime (one thread, inputs cast to
    the model's input type exactly as fed) and check the violation of ``spec``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(inp.type, np.float32)
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    fed = flat.astype(dtype)
    y = np.asarray(session.run(None, {inp.name: fed.reshape(_ort_feed_shape(list(inp.shape), flat.size))})[0],
                   dtype=np.float64).reshape(-1)
    if y.size != spec.n_out:
        raise InputError(f"the model gives {y.size} outputs, the property has {spec.n_out}")
    fed64 = fed.astype(np.float64)
    finite = bool(np.all(np.isfinite(y)))
    exact = finite and spec.is_violated_by(fed64, y)
    loose = finite and spec.is_violated_by(fed64, y, tol=CHECK_TOLERANCE, out_tol=CHECK_TOLERANCE)
    gap = None
    if y_claimed is not None:
        yc = np.asarray(y_claimed, dtype=np.float64).reshape(-1)
        gap = float(np.abs(yc - y).max()) if yc.size == y.size else math.inf
    return Replay(y, exact, loose, gap)


class _PartSat(Exception):
    """A part answered ``sat``: the pool stops (its busy workers are killed)."""


def combine_parts(records: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """One record from the parts' records: the first ``sat`` if any; ``unsat`` if all ``count``
    parts are; else ``error`` if one failed, ``timeout`` if one ran out of time, ``unknown``."""
    sat = [r for r in records if r.get("status") == "sat"]
    if sat:
        out = dict(sat[0])
    else:
        statuses = [r.get("status") for r in records]
        status = "unsat" if len(records) == count and all(s == "unsat" for s in statuses) else \
            next((s for s in ("error", "timeout", "unknown") if s in statuses), "timeout")
        out = {"status": status, "stage": "parts"}
        errors = [r.get("error") for r in records if r.get("status") == "error"]
        if errors:
            out["error"] = errors[0]
    out["parts"] = [{k: r.get(k) for k in ("key", "status", "stage", "time")} for r in records]
    out["time"] = max((float(r.get("time", 0.0)) for r in records), default=0.0)
    return out


def _run_parts(tasks: list[InstanceTask], workers: int, hard_timeout: float) -> dict[str, Any]:
    """The parts' tasks on ``workers`` processes (0: in this one), stopped at the first ``sat``."""
    from robustkit.runner.pool import run_pool

    got: list[dict[str, Any]] = []

    def on_result(record: dict[str, Any]) -> None:
        got.append(record)
        if record.get("status") == "sat":
            raise _PartSat

    try:
        run_pool(tasks, run_instance_task, workers, hard_timeout, on_result)
    except _PartSat:
        pass
    return combine_parts(got, len(tasks))


@dataclass
class InstanceResult:
    """The answer for one instance: ``status`` (one of :data:`INSTANCE_RESULTS`), the wall time
    of the whole call, and for ``sat`` the witness ``x`` (float32) and ``y`` (its ONNX output)."""

    status: str
    time: float
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    record: dict[str, Any] = field(default_factory=dict)
    result_path: Path | None = None


def result_from_record(record: dict[str, Any]) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """``(status, x, y)`` from a worker record: a pool ``timeout``/``error`` record maps to that
    status; ``sat`` without a witness becomes ``unknown`` (never report an unchecked ``sat``)."""
    status = str(record.get("status", "error"))
    if status not in INSTANCE_RESULTS:
        log.warning("unexpected status %r in record; reporting 'error'", status)
        return "error", None, None
    if status != "sat":
        return status, None, None
    if record.get("x") is None or record.get("y") is None:
        log.warning("a 'sat' record without a witness; reporting 'unknown'")
        return "unknown", None, None
    return "sat", np.asarray(record["x"], dtype=np.float32), np.asarray(record["y"], dtype=np.float64)


def verify_instance(
    onnx_path: str | os.PathLike[str],
    vnnlib_path: str | os.PathLike[str],
    cfg: VerifyConfig,
    result_path: str | os.PathLike[str] | None = None,
    started_at: float | None = None,
    in_process: bool = False,
    cores: int = 1,
) -> InstanceResult:
    """Verify one instance within ``cfg.timeout`` seconds counted from ``started_at`` (wall clock,
    default now), write the VNN-COMP result file if ``result_path`` is given, and return the result.

    Bad input (missing files, malformed VNN-LIB, sizes that do not match the model, unsupported
    operators) raises :class:`InputError` before any solving. ``in_process`` skips the worker
    process (no hard kill; for debugging). ``cores > 1``: a network of at most
    :data:`~robustkit.verification.input_split.AUTO_MAX_DIM` inputs decided by branch and bound is
    searched in ``cores`` parts of its input box (:func:`spec_part`), one worker process each, the
    first ``sat`` ending the others (:func:`combine_parts`).
    """
    from robustkit.runner.pool import run_pool
    from robustkit.verification.input_split import AUTO_MAX_DIM

    t_start = time.time() if started_at is None else float(started_at)
    ctx, spec = load_instance(onnx_path, vnnlib_path)  # validate here: InputError -> exit 1
    deadline = t_start + cfg.timeout
    parts = cores if cores > 1 and cfg.method == "bab" and ctx.net.in_dim <= AUTO_MAX_DIM \
        and any(float((box.upper - box.lower).max()) > 0 for box, _ in spec) else 1
    tasks = [InstanceTask("instance", str(onnx_path), str(vnnlib_path), cfg, deadline)] if parts == 1 else \
        [InstanceTask(f"part{i}", str(onnx_path), str(vnnlib_path), cfg, deadline, (i, parts)) for i in range(parts)]
    records: list[dict[str, Any]] = []
    left = deadline - time.time()
    if left <= 0:
        records.append({"key": "instance", "status": "timeout", "time": 0.0, "reason": "no time left to start"})
    elif parts == 1:
        run_pool(tasks, run_instance_task, 0 if in_process else 1, left + KILL_GRACE, records.append)
    else:
        records.append(_run_parts(tasks, 0 if in_process else parts, left + KILL_GRACE))
    record = records[0]
    status, x, y = result_from_record(record)
    if status == "error":
        log.error("instance failed: %s", record.get("error", "unknown error"))
    if status == "sat":
        assert x is not None
        replay = replay_counterexample(onnx_path, spec, x, y)
        record["replay"] = {"exact": replay.exact, "within_tolerance": replay.within_tolerance,
                            "max_output_gap": replay.max_output_gap}
        if not replay.exact:
            log.warning("the witness does not violate the property on the ONNX file; reporting 'unknown'")
            status, x, y = "unknown", None, None
        else:
            y = replay.y
    elapsed = time.time() - t_start
    if status in ("sat", "unsat") and elapsed > cfg.timeout:
        log.warning("answer came after the limit (%.2f s > %.2f s); reporting 'timeout'", elapsed, cfg.timeout)
        status, x, y = "timeout", None, None
    written = None
    if result_path is not None:
        written = write_result(result_path, status, x, y)
    return InstanceResult(status, elapsed, x, y, record, written)
