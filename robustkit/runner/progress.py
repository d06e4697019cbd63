"""Progress display for long runs: a rich live bar with per-status counts and ETA.

On a terminal a ``rich`` progress bar shows done/total, the count of each status and the ETA.
With ``quiet=True`` or when stderr is not a TTY (CI logs, redirected output) there is no bar:
a log line (``logging`` INFO on ``robustkit.runner.progress``) every ~10% instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TextIO

logger = logging.getLogger(__name__)


def format_counts(counts: Mapping[str, int]) -> str:
    """``"verified 3, falsified 1, timeout 2"`` in descending count order (ties by name)."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunProgress:
    """Context manager; call :meth:`update` with each finished record.

    ``total`` counts the tasks of this run; ``already_done`` the ones skipped because finished
    earlier (shown, not timed). Use as ``with RunProgress(n) as p: ... p.update(record)``.
    """

    def __init__(self, total: int, description: str = "running", quiet: bool = False,
                 already_done: int = 0, stream: TextIO | None = None) -> None:
        self.total = total
        self.description = description
        self.already_done = already_done
        self.counts: Counter[str] = Counter()
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self.live = not quiet and _isatty(self._stream)
        self._start = time.monotonic()
        self._next_log = 0.1
        self._bar: Any = None
        self._task_id: Any = None

    def __enter__(self) -> RunProgress:
        self._start = time.monotonic()
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(file=self._stream), transient=False,
            )
            self._bar.start()
            self._task_id = self._bar.add_task(self.description, total=self.total, counts="")
        else:
            logger.info("%s: %d task(s) to run, %d already done", self.description, self.total,
                        self.already_done)
        return self

    def update(self, record: Mapping[str, Any]) -> None:
        """Count one finished record (its ``status``; ``?`` when it has none)."""
        self.done += 1
        self.counts[str(record.get("status", "?"))] += 1
        if self._bar is not None:
            self._bar.update(self._task_id, advance=1, counts=format_counts(self.counts))
        elif self.total and self.done / self.total >= self._next_log - 1e-12:
            while self._next_log <= self.done / self.total + 1e-12:
                self._next_log += 0.1
            logger.info("%s: %d/%d (%.0f%%) [%s] elapsed %s, ETA %s", self.description, self.done,
                        self.total, 100.0 * self.done / self.total, format_counts(self.counts),
                        format_eta(self.elapsed), format_eta(self.eta))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    @property
    def eta(self) -> float | None:
        """Seconds left at the average rate so far (None before the first result)."""
        if self.done == 0:
            return None
        return self.elapsed / self.done * max(self.total - self.done, 0)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        logger.info("%s: finished %d/%d in %s [%s]", self.description, self.done, self.total,
                    format_eta(self.elapsed), format_counts(self.counts))


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
