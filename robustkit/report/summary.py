"""Rendering a verification summary (one row per run) as Markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from robustkit.errors import InputError

COLUMNS: list[tuple[str, str, str]] = [
    # (key, header, format)
    ("n", "n", "{:d}"),
    ("clean_accuracy", "clean %", "{:.1f}"),
    ("pgd_accuracy", "PGD %", "{:.1f}"),
    ("verified_accuracy", "verified %", "{:.1f}"),
    ("verified", "verified", "{:d}"),
    ("falsified", "falsified", "{:d}"),
    ("misclassified", "misclassified", "{:d}"),
    ("timeout", "timeouts", "{:d}"),
    ("unknown", "unknown", "{:d}"),
    ("error", "errors", "{:d}"),
    ("mean_time", "mean time (s)", "{:.2f}"),
    ("median_time", "median time (s)", "{:.2f}"),
    ("p95_time", "p95 time (s)", "{:.2f}"),
    ("mean_unstable_relus", "mean unstable ReLUs", "{:.1f}"),
    ("mean_binaries", "mean binaries", "{:.1f}"),
]

FORMATS = ("md", "csv", "json")


def format_rows(rows: list[dict[str, Any]], fmt: str = "md", label_key: str | None = None) -> str:
    """Render summaries (``robustkit.verification.run.summarize`` output) as a table."""
    if fmt not in FORMATS:
        raise InputError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    cols = ([(label_key, label_key, "{}")] if label_key else []) + COLUMNS
    if fmt == "json":
        return json.dumps(rows, indent=2, default=float)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([c[0] for c in cols])
        for r in rows:
            writer.writerow([r.get(c[0], "") for c in cols])
        return buf.getvalue()
    header = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [header, sep]
    for r in rows:
        cells = []
        for key, _, f in cols:
            v = r.get(key, "")
            try:
                cells.append(f.format(v))
            except (ValueError, TypeError):
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
