"""Verified-accuracy tables over several models and eps, built from resumable result stores.

Each row is one (model, eps): :func:`robustkit.verification.run.verify_dataset` is run (or
resumed: finished samples are read from ``<results_root>/<settings hash>/records.jsonl`` and
only missing ones are verified) and the row is computed from the per-sample records alone.
Columns: clean, PGD (the attack stage of the pipeline), verified (complete MILP), verified by
the bounds alone (records decided at ``stage == "bounds"``, i.e. CROWN with the default
``tighten``), falsified, timeouts, mean/median/95th-percentile time, mean unstable ReLUs (in all
and per layer, ``a / b / c``). The regularizer comes
from the model's ``robustkit.train_config`` metadata when present.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from robustkit.errors import InputError
from robustkit.verification.run import summarize

logger = logging.getLogger(__name__)

TABLE_FORMATS = ("md", "csv", "json", "latex")

# (key, header, display format); md and LaTeX show the display format, CSV and JSON the full value.
TABLE_COLUMNS: list[tuple[str, str, str]] = [
    ("model", "model", "{}"),
    ("regularizer", "regularizer", "{}"),
    ("eps", "eps", "{:g}"),
    ("n", "n", "{:d}"),
    ("clean_accuracy", "clean %", "{:.1f}"),
    ("pgd_accuracy", "PGD %", "{:.1f}"),
    ("verified_accuracy", "verified %", "{:.1f}"),
    ("bounds_verified_accuracy", "verified by bounds %", "{:.1f}"),
    ("bounds", "bounds", "{}"),
    ("verified", "verified", "{:d}"),
    ("bounds_verified", "by bounds", "{:d}"),
    ("falsified", "falsified", "{:d}"),
    ("timeout", "timeouts", "{:d}"),
    ("unknown", "unknown", "{:d}"),
    ("mean_time", "mean time (s)", "{:.2f}"),
    ("median_time", "median time (s)", "{:.2f}"),
    ("p95_time", "p95 time (s)", "{:.2f}"),
    ("mean_unstable_relus", "mean unstable ReLUs", "{:.1f}"),
    ("unstable_per_layer", "unstable/layer", "{}"),
]
TEXT_COLUMNS = {"model", "regularizer", "bounds"}


@dataclass(frozen=True)
class TableConfig:
    """Which models and eps, how many samples (the first ``n`` from ``start``), and how each
    sample is decided (see :class:`robustkit.verification.VerifyConfig`)."""

    models: tuple[Path, ...]
    eps: tuple[float, ...]
    n: int = 100
    start: int = 0
    timeout: float = 60.0
    method: str = "milp"
    tighten: str = "crown"
    attack_steps: int = 50
    attack_restarts: int = 4
    workers: int = 1
    results_root: Path = Path("robustkit-results")
    dataset: str | None = None
    data_dir: Path | None = None
    quiet: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(Path(m) for m in self.models))
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        object.__setattr__(self, "results_root", Path(self.results_root))
        if not self.models:
            raise InputError("no models given: name ONNX files (e.g. models/*.onnx) or a --config")
        missing = [str(m) for m in self.models if not m.is_file()]
        if missing:
            raise InputError(f"model file(s) not found: {', '.join(missing)}")
        if not self.eps:
            raise InputError("no eps given: pass --eps (repeatable), e.g. --eps 0.1 --eps 0.3")
        if any(not (e >= 0) or e == float("inf") for e in self.eps):
            raise InputError(f"every eps must be a finite number >= 0, got {list(self.eps)}")
        if self.n < 1 or self.start < 0:
            raise InputError("--n must be positive and --start non-negative")
        if self.workers < 0:
            raise InputError("--workers must be >= 0")

    def verify_config(self, eps: float):  # type: ignore[no-untyped-def]
        from robustkit.verification import VerifyConfig

        return VerifyConfig(eps=eps, timeout=self.timeout, method=self.method, tighten=self.tighten,  # type: ignore[arg-type]
                            attack_steps=self.attack_steps, attack_restarts=self.attack_restarts)


@dataclass(frozen=True)
class TableRow:
    """One (model, eps): accuracies in percent of ``n``; counts; times in seconds."""

    model: str
    regularizer: str
    eps: float
    n: int
    clean_accuracy: float
    pgd_accuracy: float
    verified_accuracy: float
    bounds_verified_accuracy: float
    bounds: str
    verified: int
    bounds_verified: int
    falsified: int
    timeout: int
    unknown: int
    misclassified: int
    error: int
    mean_time: float
    median_time: float
    mean_unstable_relus: float | None  # None: no record reached the bounds stage
    records: str = ""
    p95_time: float = 0.0
    unstable_per_layer: str | None = None  # "a / b / c": means per layer; None as above

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def regularizer_of(meta: dict[str, str]) -> str:
    """The training regularizers named in ``robustkit.train_config`` (``+``-joined), ``none`` for
    plain training, ``-`` when the model carries no training metadata; a non-zero weight decay is
    appended in parentheses."""
    raw = meta.get("robustkit.train_config")
    if not raw:
        return "-"
    try:
        cfg = json.loads(raw)
    except ValueError:
        logger.warning("unreadable robustkit.train_config metadata; regularizer unknown")
        return "-"
    regs = cfg.get("regularizers") if isinstance(cfg, dict) else None
    if regs is None:
        return "-"
    names = [str(r) for r in regs if str(r) and str(r) != "none"]
    label = "+".join(names) if names else "none"
    wd = cfg.get("weight_decay")
    # weight decay changes what some regularizers do (Jin & Rinard's Hamming term): show it
    return f"{label} (weight decay {float(wd):g})" if isinstance(wd, (int, float)) and wd > 0 else label


def row_from_records(model: str, regularizer: str, eps: float, records: Sequence[dict[str, Any]],
                     bounds: str = "crown", records_path: str = "") -> TableRow:
    """A row computed from per-sample records only (see :func:`robustkit.verification.run.summarize`);
    ``bounds_verified``: verified records decided by the bounds stage, before any MILP."""
    s = summarize(list(records))
    by_bounds = sum(1 for r in records if r.get("status") == "verified" and r.get("stage") == "bounds")
    bounded = any(r.get("unstable_per_layer") is not None for r in records)
    n = len(records)
    return TableRow(
        model=model, regularizer=regularizer, eps=float(eps), n=n,
        clean_accuracy=s["clean_accuracy"], pgd_accuracy=s["pgd_accuracy"],
        verified_accuracy=s["verified_accuracy"], bounds_verified_accuracy=100.0 * by_bounds / n if n else 0.0,
        bounds=bounds, verified=s["verified"], bounds_verified=by_bounds, falsified=s["falsified"],
        timeout=s["timeout"], unknown=s["unknown"], misclassified=s["misclassified"], error=s["error"],
        mean_time=s["mean_time"], median_time=s["median_time"], mean_unstable_relus=s["mean_unstable_relus"] if bounded else None,
        records=records_path, p95_time=s["p95_time"],
        unstable_per_layer=" / ".join(f"{v:.1f}" for v in s["mean_unstable_per_layer"]) if bounded else None,
    )


def build_table(cfg: TableConfig) -> list[TableRow]:
    """Verify (or resume) every model at every eps; rows in the order models x eps."""
    from robustkit.export import read_metadata
    from robustkit.metadata import dataset_of
    from robustkit.verification.run import DatasetChoice, RunOptions, verify_dataset

    opts = RunOptions(results_root=cfg.results_root, workers=cfg.workers, quiet=cfg.quiet)
    rows = []
    for model in cfg.models:
        meta = read_metadata(model)
        dataset = dataset_of(meta, cfg.dataset, model)
        regularizer = regularizer_of(meta)
        for eps in cfg.eps:
            outcome = verify_dataset(model, cfg.verify_config(eps), DatasetChoice(dataset, cfg.n, cfg.start,
                                                                                  cfg.data_dir), opts)
            logger.info("%s eps=%g: %d samples (%d resumed) in %s", model.name, eps, len(outcome.records),
                        outcome.skipped, outcome.records_path)
            rows.append(row_from_records(model.name, regularizer, eps, outcome.records, cfg.tighten,
                                         str(outcome.records_path)))
    return rows


# -- rendering -------------------------------------------------------------------------------------
LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (safe in text mode)."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def display_cell(value: Any, fmt: str) -> str:
    """The value as md/LaTeX show it (the column's display format; ``-`` for a missing value)."""
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _dicts(rows: Sequence[TableRow | dict[str, Any]]) -> list[dict[str, Any]]:
    return [r if isinstance(r, dict) else r.to_dict() for r in rows]


def format_table(rows: Sequence[TableRow | dict[str, Any]], fmt: str = "md") -> str:
    """Render rows as Markdown, CSV, JSON or a LaTeX ``tabular`` (booktabs). CSV and JSON carry
    the full values (JSON also the records path); md and LaTeX the rounded display values.
    A missing value is ``null`` in JSON, empty in CSV and ``-`` in md and LaTeX."""
    if fmt not in TABLE_FORMATS:
        raise InputError(f"unknown table format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    data = _dicts(rows)
    if fmt == "json":
        return json.dumps(data, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([key for key, _, _ in TABLE_COLUMNS])
        for r in data:
            writer.writerow(["" if r.get(key) is None else r[key] for key, _, _ in TABLE_COLUMNS])
        return buf.getvalue()
    cells = [[display_cell(r.get(key, ""), f) for key, _, f in TABLE_COLUMNS] for r in data]
    headers = [h for _, h, _ in TABLE_COLUMNS]
    if fmt == "md":
        def md(text: str) -> str:
            return text.replace("|", "\\|")

        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(
            "---" if key in TEXT_COLUMNS else "---:" for key, _, _ in TABLE_COLUMNS) + "|"]
        lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in cells]
        return "\n".join(lines)
    spec = "".join("l" if key in TEXT_COLUMNS else "r" for key, _, _ in TABLE_COLUMNS)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in cells]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)
