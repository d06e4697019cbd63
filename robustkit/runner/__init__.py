"""Running many per-sample tasks: process pool with hard timeouts, resumable store, progress.

:func:`run_tasks` is the usual entry point: it skips keys already finished in the store (except
those whose status is in ``rerun``), runs the rest with :func:`run_pool` and appends every
record to the store as soon as it exists, with a progress display.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from robustkit.runner.pool import (
    PoolConfig,
    Task,
    WorkerStartError,
    check_keys,
    error_record,
    limit_threads,
    run_pool,
    timeout_record,
)
from robustkit.runner.progress import RunProgress
from robustkit.runner.store import ResultStore, RunDir, canonical_json, settings_hash, versions

__all__ = [
    "PoolConfig",
    "ResultStore",
    "RunDir",
    "RunProgress",
    "Task",
    "WorkerStartError",
    "canonical_json",
    "check_keys",
    "error_record",
    "limit_threads",
    "run_pool",
    "run_tasks",
    "settings_hash",
    "timeout_record",
    "versions",
]


def run_tasks(
    tasks: Sequence[Task],
    fn: Callable[[Any], dict],
    store: ResultStore,
    workers: int = 1,
    hard_timeout: float | None = None,
    rerun: Collection[str] = (),
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    quiet: bool = False,
    description: str = "running",
    max_tasks_per_worker: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the unfinished tasks into ``store``; return the last record of every task's key.

    ``rerun``: statuses to redo (e.g. ``{"timeout", "unknown"}``). Keys with a finished record
    are skipped, so re-running after a crash or Ctrl-C continues where the run stopped.
    """
    check_keys(tasks)
    done = store.done_keys(rerun)
    todo = [t for t in tasks if t.key not in done]
    with RunProgress(len(todo), description, quiet=quiet, already_done=len(tasks) - len(todo)) as prog:

        def on_result(record: dict) -> None:
            store.append(record)
            prog.update(record)

        run_pool(todo, fn, workers, hard_timeout, on_result, initializer, initargs,
                 max_tasks_per_worker=max_tasks_per_worker)
    records = store.records()
    return {t.key: records[t.key] for t in tasks if t.key in records}
