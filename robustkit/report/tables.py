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
from robustkit.numbers import format_eps
from robustkit.report.intervals import wilson_interval
from robustkit.verification.run import summarize

logger = logging.getLogger(__name__)

TABLE_FORMATS = ("md", "csv", "json", "latex")


class _EpsFormat:
    """The display format of eps: the fraction it was given as (``8/255``), see :func:`format_eps`."""

    def format(self, value: float) -> str:
        return format_eps(value)


EPS_FORMAT = _EpsFormat()

# (key, header, display format); md and LaTeX show the display format, CSV and JSON the full value.
TABLE_COLUMNS: list[tuple[str, str, Any]] = [
    ("model", "model", "{}"),
    ("regularizer", "regularizer", "{}"),
    ("eps", "eps", EPS_FORMAT),
    ("n", "n", "{:d}"),
    ("clean_accuracy", "clean %", "{:.1f}"),
    ("pgd_accuracy", "PGD %", "{:.1f}"),
    ("verified_accuracy", "verified %", "{:.1f}"),
    ("clean_ci_low", "clean % CI low", "{:.1f}"),
    ("clean_ci_high", "clean % CI high", "{:.1f}"),
    ("pgd_ci_low", "PGD % CI low", "{:.1f}"),
    ("pgd_ci_high", "PGD % CI high", "{:.1f}"),
    ("verified_ci_low", "verified % CI low", "{:.1f}"),
    ("verified_ci_high", "verified % CI high", "{:.1f}"),
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

#: Display columns that join two data columns into one cell (md and LaTeX): Wilson 95% intervals
#: as ``[low, high]``. In CSV and JSON they stand for their two data columns.
CI_COLUMNS: dict[str, tuple[str, str, str]] = {
    "clean_ci": ("clean 95% CI", "clean_ci_low", "clean_ci_high"),
    "pgd_ci": ("PGD 95% CI", "pgd_ci_low", "pgd_ci_high"),
    "verified_ci": ("verified 95% CI", "verified_ci_low", "verified_ci_high"),
}
#: Every column ``--columns`` accepts.
COLUMN_KEYS: tuple[str, ...] = tuple(k for k, _, _ in TABLE_COLUMNS) + tuple(CI_COLUMNS)
#: What ``robustkit table`` prints unless ``--columns`` says otherwise (n, the time limit and the
#: interval's level go in the caption).
DEFAULT_COLUMNS: tuple[str, ...] = ("model", "eps", "clean_accuracy", "pgd_accuracy", "verified_accuracy",
                                    "verified_ci", "timeout", "median_time")


def parse_columns(text: str | Sequence[str]) -> tuple[str, ...]:
    """Column keys from ``a,b,c`` (or a list of such); ``all`` is every data column, ``default``
    :data:`DEFAULT_COLUMNS`. An unknown key is an :class:`InputError` listing the known ones."""
    items = [text] if isinstance(text, str) else list(text)
    keys: list[str] = []
    for item in items:
        for key in (k.strip() for k in str(item).split(",")):
            if not key:
                continue
            if key == "all":
                keys += [k for k, _, _ in TABLE_COLUMNS]
            elif key == "default":
                keys += DEFAULT_COLUMNS
            elif key in COLUMN_KEYS:
                keys.append(key)
            else:
                raise InputError(f"unknown table column {key!r}; choose from all, default, {', '.join(COLUMN_KEYS)}")
    if not keys:
        raise InputError("--columns names no column")
    return tuple(dict.fromkeys(keys))


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
    formulation: str = "per-target"
    solver: str = "highs"
    bab_intermediate: str = "auto"
    bab_depth_weight: float = 3.0
    bab_split: str = "auto"
    seed: int = 0
    order: str = "hardest-first"
    inputs: Path | None = None  # an .npz with x and y: the samples instead of each model's test split

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(Path(m) for m in self.models))
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        object.__setattr__(self, "results_root", Path(self.results_root))
        if not self.models:
            raise InputError("no models given: name ONNX files (e.g. models/mnist/*.onnx) or a --config")
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
                            attack_steps=self.attack_steps, attack_restarts=self.attack_restarts,
                            formulation=self.formulation, solver=self.solver,  # type: ignore[arg-type]
                            bab_intermediate=self.bab_intermediate, bab_depth_weight=self.bab_depth_weight,
                            bab_split=self.bab_split, seed=self.seed)


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
    clean_ci_low: float = 0.0  # Wilson 95% intervals of the three accuracies, in percent
    clean_ci_high: float = 100.0
    pgd_ci_low: float = 0.0
    pgd_ci_high: float = 100.0
    verified_ci_low: float = 0.0
    verified_ci_high: float = 100.0

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
    by_attack = sum(1 for r in records if r.get("status") == "falsified" and r.get("stage") == "attack")
    clean = n - s["misclassified"]
    ci = {name: wilson_interval(k, n) for name, k in
          (("clean", clean), ("pgd", clean - by_attack), ("verified", s["verified"]))}
    return TableRow(
        model=model, regularizer=regularizer, eps=float(eps), n=n,
        clean_accuracy=s["clean_accuracy"], pgd_accuracy=s["pgd_accuracy"],
        verified_accuracy=s["verified_accuracy"], bounds_verified_accuracy=100.0 * by_bounds / n if n else 0.0,
        bounds=bounds, verified=s["verified"], bounds_verified=by_bounds, falsified=s["falsified"],
        timeout=s["timeout"], unknown=s["unknown"], misclassified=s["misclassified"], error=s["error"],
        mean_time=s["mean_time"], median_time=s["median_time"], mean_unstable_relus=s["mean_unstable_relus"] if bounded else None,
        records=records_path, p95_time=s["p95_time"],
        unstable_per_layer=" / ".join(f"{v:.1f}" for v in s["mean_unstable_per_layer"]) if bounded else None,
        **{f"{name}_ci_{end}": bound for name, (lo, hi) in ci.items() for end, bound in (("low", lo), ("high", hi))},
    )


def build_table(cfg: TableConfig) -> list[TableRow]:
    """Verify (or resume) every model at every eps; rows in the order models x eps."""
    from robustkit.onnx_export import read_metadata
    from robustkit.metadata import dataset_of
    from robustkit.verification.run import DatasetChoice, RunOptions, verify_dataset

    opts = RunOptions(results_root=cfg.results_root, workers=cfg.workers, quiet=cfg.quiet, order=cfg.order)
    rows = []
    for model in cfg.models:
        meta = read_metadata(model)
        dataset = Path(cfg.inputs).name if cfg.inputs is not None else dataset_of(meta, cfg.dataset, model)
        regularizer = regularizer_of(meta)
        for eps in cfg.eps:
            outcome = verify_dataset(model, cfg.verify_config(eps), DatasetChoice(dataset, cfg.n, cfg.start,
                                                                                  cfg.data_dir, cfg.inputs), opts)
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


_FORMATS = {key: (header, fmt) for key, header, fmt in TABLE_COLUMNS}


def _header(key: str) -> str:
    return CI_COLUMNS[key][0] if key in CI_COLUMNS else _FORMATS[key][0]


def _cell(row: dict[str, Any], key: str) -> str:
    if key in CI_COLUMNS:
        _, lo, hi = CI_COLUMNS[key]
        if row.get(lo) is None or row.get(hi) is None:
            return "-"
        return f"[{row[lo]:.1f}, {row[hi]:.1f}]"
    return display_cell(row.get(key, ""), _FORMATS[key][1])


def _data_keys(columns: Sequence[str]) -> list[str]:
    """The data columns behind display columns (an interval stands for its two bounds)."""
    keys: list[str] = []
    for key in columns:
        keys += list(CI_COLUMNS[key][1:]) if key in CI_COLUMNS else [key]
    return list(dict.fromkeys(keys))


def table_caption(rows: Sequence[TableRow | dict[str, Any]], timeout: float | None = None,
                  method: str | None = None) -> str:
    """What a reader needs beside the numbers: n, the time limit, the method, the intervals' kind."""
    data = _dicts(rows)
    ns = sorted({int(r["n"]) for r in data}) if data else []
    n_text = (f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}") + " test images per row" if ns else ""
    parts = [p for p in (
        n_text,
        f"time limit {timeout:g} s per sample" if timeout is not None else "",
        f"method {method}" if method else "",
        "intervals: Wilson 95%",
    ) if p]
    return "; ".join(parts) + "."


def format_table(rows: Sequence[TableRow | dict[str, Any]], fmt: str = "md",
                 columns: Sequence[str] | None = None, caption: str | None = None) -> str:
    """Render rows as Markdown, CSV, JSON or LaTeX (booktabs: a ``table`` float with ``\\toprule``,
    ``\\midrule``, ``\\bottomrule``, no vertical rules, the caption below). ``columns``: keys of
    :data:`COLUMN_KEYS` (default: every data column); CSV and JSON carry the full values of the
    data columns behind them (JSON also the records path when every column is shown), md and
    LaTeX the rounded display values. A missing value is ``null`` in JSON, empty in CSV and ``-``
    in md and LaTeX. ``caption`` goes below the md table and into LaTeX's ``\\caption``."""
    if fmt not in TABLE_FORMATS:
        raise InputError(f"unknown table format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    data = _dicts(rows)
    cols = list(columns) if columns is not None else [key for key, _, _ in TABLE_COLUMNS]
    unknown = [c for c in cols if c not in COLUMN_KEYS]
    if unknown:
        raise InputError(f"unknown table column(s) {unknown}; choose from {', '.join(COLUMN_KEYS)}")
    if fmt == "json":
        if columns is None:
            return json.dumps(data, indent=2)
        keys = _data_keys(cols)
        return json.dumps([{k: r.get(k) for k in keys} for r in data], indent=2)
    if fmt == "csv":
        keys = _data_keys(cols)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(keys)
        for r in data:
            writer.writerow(["" if r.get(key) is None else r[key] for key in keys])
        return buf.getvalue()
    cells = [[_cell(r, key) for key in cols] for r in data]
    headers = [_header(key) for key in cols]
    if fmt == "md":
        def md(text: str) -> str:
            return text.replace("|", "\\|")

        lines = ["| " + " | ".join(md(h) for h in headers) + " |", "|" + "|".join(
            "---" if key in TEXT_COLUMNS else "---:" for key in cols) + "|"]
        lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in cells]
        if caption:
            lines += ["", caption]
        return "\n".join(lines)
    spec = "".join("l" if key in TEXT_COLUMNS else "r" for key in cols)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    # a row starting with "[" would be read as the optional argument of the "\\" before it
    lines += [" & ".join("{" + c + "}" if c.startswith("[") else c for c in map(latex_escape, row)) + r" \\"
              for row in cells]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines += [r"\label{tab:robustkit}", r"\end{table}"]
    return "\n".join(lines)
