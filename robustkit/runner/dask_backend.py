"""Run tasks on a Dask cluster with the same records as :func:`robustkit.runner.run_pool`.

Optional: needs ``pip install "robustkit[cluster]"`` (dask + distributed).

Every Dask worker thread owns a *sandbox*: one robustkit worker process (the very same
:func:`robustkit.runner.pool.worker_main` as the local pool) in which the tasks actually run.
So the hard timeout (kill the sandbox, record ``timeout``), crash isolation (segfault or
``os._exit`` -> ``error``) and the single-threaded setting hold as with ``run_pool``.
The initializer and its arguments (e.g. the model bytes) travel once per Dask worker, inside a
worker plugin, and run once per sandbox.

``cluster="local:N"`` starts a LocalCluster of N single-threaded workers in this process
(threads: the computing happens in the sandboxes). With ``scheduler="tcp://host:port"`` the
remote workers must be able to start child processes: run them with
``distributed.worker.daemon: false`` (env ``DASK_DISTRIBUTED__WORKER__DAEMON=False``); on
daemonic workers the tasks run in the worker thread itself, without hard timeout (warned).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from robustkit.errors import InputError
from robustkit.runner.pool import (
    Task,
    WorkerProcess,
    describe_exception,
    finish_record,
    check_keys,
    death_message,
    error_record,
    spawn_worker,
    timeout_record,
)

logger = logging.getLogger(__name__)

try:
    from distributed import WorkerPlugin
except ImportError:  # the optional extra is not installed
    WorkerPlugin = object  # type: ignore[assignment,misc]
    HAVE_DASK = False
else:
    HAVE_DASK = True

_LOCAL = re.compile(r"^local:(\d+)$")


class _Sandbox:
    """One worker process used synchronously: run a task, enforce the hard timeout."""

    def __init__(self, fn: Callable[[Any], dict], initializer: Callable[..., Any] | None,
                 initargs: tuple, memory_limit_mb: int | None) -> None:
        self.fn, self.initializer, self.initargs = fn, initializer, initargs
        self.memory_limit_mb = memory_limit_mb
        self.proc: WorkerProcess | None = None

    def _ensure(self) -> str | None:
        """Start the process if needed and wait until it is ready; an error message or None."""
        if self.proc is not None:
            return None
        w = spawn_worker(mp.get_context("spawn"), self.fn, self.initializer, self.initargs,
                         self.memory_limit_mb)
        try:
            kind, payload = w.conn.recv()
        except (EOFError, OSError):
            w.kill()
            return f"sandbox died at start-up (exit code {w.proc.exitcode})"
        if kind != "ready":
            w.kill()
            return f"worker initializer failed: {payload}"
        self.proc = w
        return None

    def run(self, task: Task, hard_timeout: float | None) -> dict[str, Any]:
        problem = self._ensure()
        if problem is not None:
            return error_record(task.key, problem, 0.0)
        w = self.proc
        assert w is not None
        t0 = time.monotonic()
        try:
            w.conn.send((task.key, task))
        except (OSError, ValueError):
            self.close()
            return self.run(task, hard_timeout)
        if not w.conn.poll(hard_timeout):
            self.close()
            return timeout_record(task.key, time.monotonic() - t0)
        try:
            kind, record = w.conn.recv()
        except (EOFError, OSError):
            w.proc.join(timeout=1)
            code = w.proc.exitcode
            self.close()
            return error_record(task.key, death_message(code), time.monotonic() - t0)
        return record if kind == "result" else error_record(task.key, f"bad reply {kind!r}", 0.0)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None


class _SandboxPlugin(WorkerPlugin):  # type: ignore[misc,valid-type]
    """Worker plugin carrying fn/initializer/initargs; one sandbox per worker thread."""

    def __init__(self, name: str, fn: Callable[[Any], dict], initializer: Callable[..., Any] | None,
                 initargs: tuple, hard_timeout: float | None, memory_limit_mb: int | None) -> None:
        self.name = name
        self.fn, self.initializer, self.initargs = fn, initializer, initargs
        self.hard_timeout = hard_timeout
        self.memory_limit_mb = memory_limit_mb
        self._boxes: dict[int, _Sandbox] = {}
        self._lock = threading.Lock()
        self._direct_ready = False

    def setup(self, worker: Any) -> None:
        self._boxes = {}
        self._lock = threading.Lock()
        self._direct_ready = False

    def teardown(self, worker: Any) -> None:
        with self._lock:
            for box in self._boxes.values():
                box.close()
            self._boxes = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_boxes"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def run(self, task: Task) -> dict[str, Any]:
        if mp.current_process().daemon:  # cannot have children: run in this thread
            return self._run_direct(task)
        tid = threading.get_ident()
        with self._lock:
            box = self._boxes.get(tid)
            if box is None:
                box = self._boxes[tid] = _Sandbox(self.fn, self.initializer, self.initargs,
                                                  self.memory_limit_mb)
        return box.run(task, self.hard_timeout)

    def _run_direct(self, task: Task) -> dict[str, Any]:
        with self._lock:
            if not self._direct_ready:
                logger.warning("dask worker is daemonic: tasks run without hard timeout; start "
                               "workers with distributed.worker.daemon=false to enforce it")
                if self.initializer is not None:
                    self.initializer(*self.initargs)
                self._direct_ready = True
        t0 = time.perf_counter()
        try:
            return finish_record(task.key, self.fn(task), time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - recorded like in the pool
            return error_record(task.key, describe_exception(exc), time.perf_counter() - t0)


def _run_on_worker(task: Task, plugin_name: str) -> dict[str, Any]:
    """The function Dask runs: hand the task to this worker's sandbox plugin."""
    from distributed import get_worker

    return get_worker().plugins[plugin_name].run(task)


def parse_cluster(cluster: str | None, scheduler: str | None) -> int | None:
    """Validate the choice of cluster; returns N for ``local:N``, None for a scheduler."""
    if (cluster is None) == (scheduler is None):
        raise InputError("give exactly one of cluster='local:N' or scheduler='tcp://host:port'")
    if cluster is not None:
        m = _LOCAL.match(cluster.strip())
        if not m or int(m.group(1)) < 1:
            raise InputError(f"cluster {cluster!r} not understood; use local:N with N >= 1")
        return int(m.group(1))
    return None


def run_dask(
    tasks: Sequence[Task],
    fn: Callable[[Any], dict],
    on_result: Callable[[dict], None],
    cluster: str | None = "local:1",
    scheduler: str | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    hard_timeout: float | None = None,
    memory_limit_mb: int | None = None,
) -> None:
    """Like :func:`robustkit.runner.run_pool`, on Dask (``cluster="local:N"`` or ``scheduler``).

    Results reach ``on_result`` in the calling thread as they finish. Ctrl-C cancels the
    remaining tasks and re-raises ``KeyboardInterrupt``.
    """
    if not HAVE_DASK:
        raise InputError('the dask backend needs dask and distributed: pip install "robustkit[cluster]"')
    from distributed import Client, LocalCluster, as_completed

    n_local = parse_cluster(cluster, scheduler)
    if hard_timeout is not None and not hard_timeout > 0:
        raise InputError(f"hard timeout must be > 0 seconds, got {hard_timeout}")
    check_keys(tasks)
    if not tasks:
        return
    local = None
    if n_local is not None:
        local = LocalCluster(n_workers=n_local, threads_per_worker=1, processes=False,
                             dashboard_address=None)
    client = Client(local if local is not None else scheduler)
    name = f"robustkit-{uuid.uuid4().hex[:12]}"
    futures: list[Any] = []
    try:
        client.register_plugin(
            _SandboxPlugin(name, fn, initializer, initargs, hard_timeout, memory_limit_mb), name=name)
        futures = client.map(_run_on_worker, list(tasks), plugin_name=name, pure=False,
                             key=[f"{name}-{i}" for i in range(len(tasks))], retries=0)
        keys = {f.key: t.key for f, t in zip(futures, tasks)}
        for fut in as_completed(futures):
            try:
                record = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker
                record = error_record(keys[fut.key], f"dask: {describe_exception(exc)}", 0.0)
            on_result(record)
    except KeyboardInterrupt:
        client.cancel(futures)
        raise
    finally:
        try:
            client.unregister_worker_plugin(name)
        except Exception:  # noqa: BLE001 - the cluster may be gone already
            logger.debug("could not unregister the plugin %s", name)
        client.close()
        if local is not None:
            local.close()
