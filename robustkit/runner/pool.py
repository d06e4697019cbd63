"""A process pool with a hard wall-clock timeout per task, crash isolation and recycling.

Each worker is a single-threaded ``spawn`` (or ``forkserver``) process that runs one task at a
time; the parent sends the next task only when the worker is idle, so the time a task is charged
is its own. A task still running after ``hard_timeout`` seconds gets a ``timeout`` record and
its worker (and the worker's process group) is SIGKILLed and replaced. A task that raises, or
whose worker dies (segfault, ``os._exit``, the OOM killer), gets an ``error`` record; the run
goes on. Ctrl-C kills the workers and re-raises ``KeyboardInterrupt`` after every finished result
has reached ``on_result``.

Functions and tasks cross a process boundary: ``fn``, ``initializer`` and the tasks must be
picklable (top-level functions, plain dataclasses).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from robustkit.errors import InputError, RobustkitError

logger = logging.getLogger(__name__)

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
START_METHODS = ("spawn", "forkserver")
_MAX_START_FAILURES = 3


class Task(Protocol):
    """Anything picklable with a string ``key`` (unique within a run)."""

    key: str


class WorkerStartError(RobustkitError):
    """Workers keep failing before their first task (e.g. the initializer raises)."""


def timeout_record(key: str, elapsed: float) -> dict[str, Any]:
    """The record of a task killed by the hard timeout."""
    return {"key": key, "status": "timeout", "time": round(elapsed, 6),
            "reason": "hard timeout: worker killed"}


def error_record(key: str, message: str, elapsed: float) -> dict[str, Any]:
    """The record of a task that raised or whose worker died."""
    return {"key": key, "status": "error", "error": message, "time": round(elapsed, 6)}


def limit_threads() -> None:
    """Make this process single-threaded (env vars for native pools; torch if imported)."""
    for var in THREAD_ENV:
        os.environ[var] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set or parallel work has started
            pass


def finish_record(key: str, result: Any, elapsed: float) -> dict[str, Any]:
    """Validate ``fn``'s return value and complete it into a record."""
    if not isinstance(result, dict):
        return error_record(key, f"task returned {type(result).__name__}, expected a dict", elapsed)
    record = dict(result)
    if record.get("key", key) != key:
        logger.warning("task %r returned key %r; using the task's key", key, record["key"])
    record["key"] = key
    record.setdefault("time", round(elapsed, 6))
    return record


def describe_exception(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def worker_main(conn: Connection, fn: Callable[[Any], dict], initializer: Callable[..., Any] | None,
                 initargs: tuple, memory_limit_mb: int | None) -> None:
    """Worker process body: initialize, send ``("ready", None)``, then answer each
    ``(key, task)`` message with ``("result", record)`` until it receives ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        os.setpgrp()  # so that a kill reaches anything the task started
    except OSError:
        pass
    if memory_limit_mb is not None:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    limit_threads()
    try:
        if initializer is not None:
            initializer(*initargs)
        limit_threads()
        conn.send(("ready", None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("init_error", describe_exception(exc)))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if msg is None:
            return
        key, task = msg
        t0 = time.perf_counter()
        try:
            result = fn(task)
            reply: tuple[str, Any] = ("result", finish_record(key, result, time.perf_counter() - t0))
        except BaseException as exc:  # noqa: BLE001 - MemoryError, SystemExit, ... all recorded
            reply = ("result", error_record(key, describe_exception(exc), time.perf_counter() - t0))
        if "torch" in sys.modules:
            limit_threads()
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - unpicklable result
            conn.send(("result", error_record(key, f"result not picklable: {exc}",
                                              time.perf_counter() - t0)))


@contextmanager
def single_thread_env() -> Iterator[None]:
    """Temporarily set the thread env vars so that spawned children inherit them."""
    saved = {v: os.environ.get(v) for v in THREAD_ENV}
    for v in THREAD_ENV:
        os.environ[v] = "1"
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


@dataclass
class WorkerProcess:
    """The parent's handle on one worker process (see :func:`spawn_worker`)."""

    proc: mp.process.BaseProcess
    conn: Connection
    ready: bool = False
    task_key: str | None = None
    started: float = 0.0
    done: int = 0

    @property
    def busy(self) -> bool:
        return self.task_key is not None

    def kill(self) -> None:
        """SIGKILL the worker's process group (falls back to the process), then reap it."""
        pid = self.proc.pid
        if pid is not None and self.proc.exitcode is None:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    self.proc.kill()
            except (ProcessLookupError, PermissionError, OSError):
                self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def stop(self, grace: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``grace`` seconds."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(timeout=grace)
        if self.proc.exitcode is None:
            self.kill()
        else:
            self.conn.close()


def death_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker died: killed by {name}"
    return f"worker died: exited with code {exitcode} during the task"


def spawn_worker(ctx: Any, fn: Callable[[Any], dict], initializer: Callable[..., Any] | None,
                 initargs: tuple, memory_limit_mb: int | None = None) -> WorkerProcess:
    """Start one single-threaded worker process (it sends ``("ready", None)`` when set up)."""
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=worker_main,
        args=(child_conn, fn, initializer, initargs, memory_limit_mb),
        daemon=True,
        name="robustkit-worker",
    )
    with single_thread_env():
        proc.start()
    child_conn.close()
    return WorkerProcess(proc=proc, conn=parent_conn)


@dataclass(frozen=True)
class PoolConfig:
    """Options of :func:`run_pool` beyond the essentials (validated)."""

    workers: int = 1
    hard_timeout: float | None = None
    max_tasks_per_worker: int | None = None
    memory_limit_mb: int | None = None
    start_method: str = "spawn"

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise InputError(f"workers must be >= 0 (0 = in-process), got {self.workers}")
        if self.hard_timeout is not None and not self.hard_timeout > 0:
            raise InputError(f"hard timeout must be > 0 seconds, got {self.hard_timeout}")
        if self.max_tasks_per_worker is not None and self.max_tasks_per_worker < 1:
            raise InputError("max_tasks_per_worker must be >= 1")
        if self.memory_limit_mb is not None and self.memory_limit_mb < 64:
            raise InputError("memory_limit_mb must be >= 64")
        if self.start_method not in START_METHODS:
            raise InputError(f"start method must be one of {list(START_METHODS)} (fork is unsafe "
                             f"with torch threads), got {self.start_method!r}")


def check_keys(tasks: Sequence[Task]) -> None:
    """Every task needs a unique non-empty string ``key``."""
    seen: set[str] = set()
    for t in tasks:
        key = getattr(t, "key", None)
        if not isinstance(key, str) or not key:
            raise InputError(f"every task needs a non-empty string .key, got {key!r} in {t!r}")
        if key in seen:
            raise InputError(f"duplicate task key {key!r}; keys must be unique within a run")
        seen.add(key)


def run_pool(
    tasks: Sequence[Task],
    fn: Callable[[Any], dict],
    workers: int,
    hard_timeout: float | None,
    on_result: Callable[[dict], None],
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    max_tasks_per_worker: int | None = None,
    memory_limit_mb: int | None = None,
    start_method: str = "spawn",
) -> None:
    """Run ``fn(task)`` for every task; each record reaches ``on_result`` as soon as it exists.

    ``workers >= 1``: that many single-threaded worker processes with the hard timeout enforced
    by the parent (``None`` or ``inf``: none). ``workers == 0``: in-process, sequential, no hard
    timeout (for debugging). ``initializer(*initargs)`` runs once per worker (e.g. to load the
    model from bytes). ``max_tasks_per_worker`` recycles workers to bound memory growth;
    ``memory_limit_mb`` caps each worker's address space (then a ``MemoryError`` -> ``error``).
    """
    if hard_timeout is not None and math.isinf(hard_timeout):
        hard_timeout = None
    cfg = PoolConfig(workers, hard_timeout, max_tasks_per_worker, memory_limit_mb, start_method)
    check_keys(tasks)
    if not tasks:
        return
    if cfg.workers == 0:
        _run_inline(tasks, fn, on_result, initializer, initargs)
        return
    _Pool(cfg, fn, on_result, initializer, initargs).run(tasks)


def _run_inline(tasks: Sequence[Task], fn: Callable[[Any], dict], on_result: Callable[[dict], None],
                initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    if initializer is not None:
        initializer(*initargs)
    for task in tasks:
        t0 = time.perf_counter()
        try:
            record = finish_record(task.key, fn(task), time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - recorded; KeyboardInterrupt propagates
            record = error_record(task.key, describe_exception(exc), time.perf_counter() - t0)
        on_result(record)


class _Pool:
    """The parent's bookkeeping for :func:`run_pool` with ``workers >= 1``."""

    def __init__(self, cfg: PoolConfig, fn: Callable[[Any], dict], on_result: Callable[[dict], None],
                 initializer: Callable[..., Any] | None, initargs: tuple) -> None:
        self.cfg = cfg
        self.fn = fn
        self.on_result = on_result
        self.initializer = initializer
        self.initargs = initargs
        self.ctx = mp.get_context(cfg.start_method)
        self.workers: list[WorkerProcess] = []
        self.pending: deque[Task] = deque()
        self.start_failures = 0

    def _spawn(self) -> WorkerProcess:
        return spawn_worker(self.ctx, self.fn, self.initializer, self.initargs,
                            self.cfg.memory_limit_mb)

    def run(self, tasks: Sequence[Task]) -> None:
        self.pending = deque(tasks)
        try:
            self.workers = [self._spawn() for _ in range(min(self.cfg.workers, len(tasks)))]
            while self.pending or any(w.busy for w in self.workers):
                self._dispatch()
                self._wait_and_collect()
        finally:
            for w in self.workers:
                if w.busy:
                    w.kill()
                else:
                    w.stop()
            self.workers = []

    def _dispatch(self) -> None:
        pending = self.pending
        for w in list(self.workers):
            while w.ready and not w.busy and pending:
                task = pending.popleft()
                try:
                    w.conn.send((task.key, task))
                except (OSError, ValueError):  # the worker died while idle: replace it, retry
                    pending.appendleft(task)
                    self._replace(w)
                    break
                except Exception as exc:  # noqa: BLE001 - an unpicklable task
                    self.on_result(error_record(task.key, f"task not picklable: {exc}", 0.0))
                    continue
                w.task_key, w.started = task.key, time.monotonic()

    def _wait_and_collect(self) -> None:
        now = time.monotonic()
        timeout: float | None = None
        if self.cfg.hard_timeout is not None:
            deadlines = [w.started + self.cfg.hard_timeout - now for w in self.workers if w.busy]
            if deadlines:
                timeout = max(0.0, min(deadlines))
        handles: list[Any] = [w.conn for w in self.workers] + [w.proc.sentinel for w in self.workers]
        ready = set(wait(handles, timeout))
        for w in list(self.workers):
            if w.conn in ready or (w.proc.sentinel in ready and _poll(w.conn)):
                self._receive(w)
            elif w.proc.sentinel in ready:
                self._died(w)
        if self.cfg.hard_timeout is not None:
            now = time.monotonic()
            for w in list(self.workers):
                if w.busy and now - w.started >= self.cfg.hard_timeout:
                    key, elapsed = w.task_key, now - w.started
                    logger.info("task %s hit the hard timeout (%.1fs): killing its worker", key, elapsed)
                    assert key is not None
                    self._replace(w)
                    self.on_result(timeout_record(key, elapsed))

    def _receive(self, w: WorkerProcess) -> None:
        try:
            kind, payload = w.conn.recv()
        except (EOFError, OSError):
            self._died(w)
            return
        if kind == "ready":
            w.ready = True
            self.start_failures = 0
        elif kind == "init_error":
            self.start_failures += 1
            logger.warning("worker initializer failed: %s", payload)
            if self.start_failures >= _MAX_START_FAILURES:
                raise WorkerStartError(f"worker initializer failed {self.start_failures} times: {payload}")
            self._replace(w)
        elif kind == "result":
            w.task_key = None
            w.done += 1
            self.on_result(payload)
            if self.cfg.max_tasks_per_worker is not None and w.done >= self.cfg.max_tasks_per_worker:
                w.stop()
                self._respawn(w)

    def _died(self, w: WorkerProcess) -> None:
        w.proc.join(timeout=1)
        key, elapsed = w.task_key, time.monotonic() - w.started
        exitcode = w.proc.exitcode
        if key is None:
            logger.warning("an idle worker died (exit code %s); replacing it", exitcode)
            if not w.ready:
                self.start_failures += 1
            if self.start_failures >= _MAX_START_FAILURES:
                raise WorkerStartError(f"workers keep dying at start-up (exit code {exitcode})")
            self._replace(w)
            return
        self._replace(w)
        self.on_result(error_record(key, death_message(exitcode), elapsed))

    def _replace(self, w: WorkerProcess) -> None:
        w.kill()
        self._respawn(w)

    def _respawn(self, w: WorkerProcess) -> None:
        """Put a fresh worker in ``w``'s place, or just drop ``w`` when no task is left for it."""
        i = self.workers.index(w)
        idle = sum(1 for o in self.workers if o is not w and not o.busy)
        if len(self.pending) > idle:
            self.workers[i] = self._spawn()
        else:
            del self.workers[i]


def _poll(conn: Connection) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False
