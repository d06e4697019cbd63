"""Running a VNN-COMP benchmark folder and scoring robustkit next to the published tools.

A benchmark folder (as under ``shared/benchmarks/vnncomp/``) holds ``instances.csv`` (rows
``onnx, vnnlib, timeout``; ``test_2021`` has ``test_instances.csv``), and for the published
results ``results_summary.csv`` (``ground_truth`` and ``<tool>_<year>_result`` /
``<tool>_<year>_time`` per instance) or ``expected_results.csv`` (``ground_truth`` only).

:func:`run_benchmark` runs the selected instances in worker processes (each with its timeout x
``timeout_scale``, killed past it), one JSONL record per instance in a resumable store, writes
each answer as a VNN-COMP result file, re-reads every ``sat`` file and replays its counterexample
on the ONNX file, and builds the comparison table (:func:`score_rows`, :func:`format_table`).
Scoring follows VNN-COMP: +10 per correct answer, -150 per wrong one (a ``sat`` whose
counterexample does not replay counts as wrong); the competition's time bonuses are not included.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robustkit.errors import InputError
from robustkit.verification.config import VerifyConfig
from robustkit.vnnlib.instance import KILL_GRACE, InstanceTask, replay_counterexample, result_from_record

log = logging.getLogger(__name__)

__all__ = [
    "BenchInstance",
    "BenchOptions",
    "BenchOutcome",
    "Benchmark",
    "ToolRow",
    "disagreements",
    "format_table",
    "load_benchmark",
    "run_benchmark",
    "score_rows",
    "score_tool",
]

INSTANCE_LISTS = ("instances.csv", "test_instances.csv")
GROUND_TRUTH_FILES = ("results_summary.csv", "expected_results.csv")
ROBUSTKIT = "robustkit"
POINTS_CORRECT = 10
POINTS_WRONG = -150
TOOL_NAMES = {
    "abcrown": "alpha-beta-CROWN", "verinet": "VeriNet", "mnbab": "MN-BaB", "debona": "Debona",
    "marabou": "Marabou", "nnenum": "nnenum", "peregrinn": "PeregriNN", "cgdtest": "CGDTest",
    "verapak": "VeraPAk", "averinn": "AVeriNN",
}


@dataclass(frozen=True)
class BenchInstance:
    """One row of the instance list (paths relative to the benchmark folder)."""

    index: int
    onnx: str
    vnnlib: str
    timeout: float
    ground_truth: str | None = None  # "sat" | "unsat" | None (unknown)

    @property
    def key(self) -> str:
        return f"{self.index}:{self.onnx}:{self.vnnlib}"


@dataclass(frozen=True)
class Benchmark:
    """A benchmark folder: its instances and the published results per tool
    (``published[tool][index] = (result, seconds or None)``)."""

    name: str
    root: Path
    instances: tuple[BenchInstance, ...]
    published: Mapping[str, Mapping[int, tuple[str, float | None]]] = field(default_factory=dict)
    instance_list: str = "instances.csv"

    def select(self, filter_text: str | None = None, limit: int | None = None) -> list[BenchInstance]:
        """Instances whose ``onnx vnnlib`` contains ``filter_text``, the first ``limit`` of them."""
        chosen = [i for i in self.instances if not filter_text or filter_text in f"{i.onnx} {i.vnnlib}"]
        if not chosen:
            raise InputError(f"no instance of {self.root} matches --filter {filter_text!r}")
        return chosen[:limit] if limit is not None else chosen


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [[c.strip() for c in row] for row in csv.reader(fh) if row and any(c.strip() for c in row)]


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _ground_truth(value: str) -> str | None:
    value = value.strip().lower()
    return {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat"}.get(value)


def load_benchmark(root: str | Path) -> Benchmark:
    """Read a benchmark folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"benchmark folder {root} not found (VNN-COMP benchmarks live under "
                         f"../shared/benchmarks/vnncomp/<name>)")
    listing = next((root / n for n in INSTANCE_LISTS if (root / n).is_file()), None)
    if listing is None:
        raise InputError(f"{root} has no instance list ({' or '.join(INSTANCE_LISTS)} with rows onnx,vnnlib,timeout)")
    rows = _read_rows(listing)
    if rows and _as_float(rows[0][2] if len(rows[0]) > 2 else "") is None:
        rows = rows[1:]  # a header line
    instances: list[BenchInstance] = []
    for n, row in enumerate(rows):
        timeout = _as_float(row[2]) if len(row) >= 3 else None
        if timeout is None or not timeout > 0:
            raise InputError(f"{listing}: row {n + 1} is not 'onnx,vnnlib,timeout' with a positive timeout: {row}")
        instances.append(BenchInstance(n, row[0], row[1], timeout))
    truth_file = next((root / n for n in GROUND_TRUTH_FILES if (root / n).is_file()), None)
    published: dict[str, dict[int, tuple[str, float | None]]] = {}
    if truth_file is not None:
        instances, published = _attach_results(instances, truth_file)
    return Benchmark(root.name, root, tuple(instances), published, listing.name)


def _attach_results(instances: list[BenchInstance], path: Path
                    ) -> tuple[list[BenchInstance], dict[str, dict[int, tuple[str, float | None]]]]:
    """Ground truth and published results matched to instances by (onnx, vnnlib), in order."""
    with open(path, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    by_pair: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in table:
        by_pair.setdefault((row.get("onnx", "").strip(), row.get("vnnlib", "").strip()), []).append(row)
    tools = sorted(c[: -len("_result")] for c in (table[0].keys() if table else [])
                   if c.endswith("_result") and f"{c[: -len('_result')]}_time" in table[0])
    published: dict[str, dict[int, tuple[str, float | None]]] = {t: {} for t in tools}
    out = []
    for inst in instances:
        rows = by_pair.get((inst.onnx, inst.vnnlib))
        if not rows:
            out.append(inst)
            continue
        row = rows.pop(0)
        out.append(replace(inst, ground_truth=_ground_truth(row.get("ground_truth", ""))))
        for t in tools:
            result = (row.get(f"{t}_result") or "missing").strip().lower()
            published[t][inst.index] = (result, _as_float(row.get(f"{t}_time") or ""))
    return out, published


@dataclass(frozen=True)
class ToolRow:
    """One line of the comparison table."""

    tool: str
    instances: int
    solved: int
    unsat: int
    sat: int
    other: int  # timeout, unknown, error, missing
    wrong: int
    unjudged: int  # solved where the ground truth is unknown (not scored)
    score: int
    time_solved: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def score_tool(tool: str, answers: Mapping[int, tuple[str, float | None, bool]],
               instances: Iterable[BenchInstance]) -> ToolRow:
    """Count one tool's answers (``answers[index] = (result, seconds, counterexample_ok)``) over
    ``instances``; a missing answer counts as 'other'. ``counterexample_ok`` False makes a ``sat``
    wrong whatever the ground truth (VNN-COMP rule)."""
    n = solved = unsat = sat = other = wrong = unjudged = 0
    points, t_solved = 0, 0.0
    for inst in instances:
        n += 1
        result, seconds, ce_ok = answers.get(inst.index, ("missing", None, True))
        if result not in ("sat", "unsat"):
            other += 1
            continue
        solved += 1
        unsat += result == "unsat"
        sat += result == "sat"
        t_solved += seconds or 0.0
        if (result == "sat" and not ce_ok) or (inst.ground_truth is not None and result != inst.ground_truth):
            wrong += 1
            points += POINTS_WRONG
        elif inst.ground_truth is None:
            unjudged += 1
        else:
            points += POINTS_CORRECT
    return ToolRow(tool, n, solved, unsat, sat, other, wrong, unjudged, points, t_solved)


def robustkit_answers(records: Mapping[str, Mapping[str, Any]], instances: Iterable[BenchInstance]
                      ) -> dict[int, tuple[str, float | None, bool]]:
    out = {}
    for inst in instances:
        rec = records.get(inst.key)
        if rec is not None:
            out[inst.index] = (str(rec.get("status")), rec.get("time"), bool(rec.get("ce_valid", True)))
    return out


def published_at_limit(bench: Benchmark, instances: Iterable[BenchInstance], scale: float) -> Benchmark:
    """``bench`` with every published answer given after more than ``scale`` x the instance's official
    limit turned into a timeout, so that a run at a reduced limit is compared like with like
    (``scale >= 1`` changes nothing)."""
    if scale >= 1:
        return bench
    limit = {i.index: i.timeout * scale for i in instances}
    return replace(bench, published={
        tool: {k: (r if t is not None and t <= limit.get(k, 0.0) else "timeout", t) for k, (r, t) in res.items()}
        for tool, res in bench.published.items()})


def score_rows(bench: Benchmark, instances: list[BenchInstance], records: Mapping[str, Mapping[str, Any]]) -> list[ToolRow]:
    """robustkit's row, then every published tool's row over the same instances (most solved first)."""
    rows = [score_tool(ROBUSTKIT, robustkit_answers(records, instances), instances)]
    published = [
        score_tool(tool, {i: (r, t, True) for i, (r, t) in results.items()}, instances)
        for tool, results in bench.published.items()
    ]
    rows += sorted(published, key=lambda r: (-r.score, -r.solved, r.time_solved))
    return rows


def disagreements(instances: list[BenchInstance], records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every instance where robustkit's answer contradicts the ground truth or its counterexample
    does not replay (one line each)."""
    lines = []
    for inst in instances:
        rec = records.get(inst.key)
        if rec is None or rec.get("status") not in ("sat", "unsat"):
            continue
        if rec["status"] == "sat" and not rec.get("ce_valid", False):
            lines.append(f"{inst.key}: sat, but the counterexample does not replay ({rec.get('ce_error', 'no violation')})")
        elif inst.ground_truth is not None and rec["status"] != inst.ground_truth:
            lines.append(f"{inst.key}: robustkit {rec['status']}, ground truth {inst.ground_truth}")
    return lines


def _tool_label(tool: str) -> str:
    base, _, year = tool.rpartition("_")
    if not base or not year.isdigit():
        return tool
    return f"{TOOL_NAMES.get(base, base)} ({year})"


def format_table(rows: list[ToolRow]) -> str:
    """The Markdown comparison table."""
    lines = ["| tool | instances | solved | unsat | sat | timeout/other | wrong | score | time of solved (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"**{r.tool}**" if r.tool.startswith(ROBUSTKIT) else _tool_label(r.tool)
        lines.append(f"| {name} | {r.instances} | {r.solved} | {r.unsat} | {r.sat} | {r.other} | {r.wrong} | "
                     f"{r.score} | {r.time_solved:.1f} |")
    return "\n".join(lines)


def _per_instance_table(bench: Benchmark, instances: list[BenchInstance],
                        records: Mapping[str, Mapping[str, Any]], scale: float) -> str:
    lines = ["| # | onnx | vnnlib | limit (s) | ground truth | robustkit | time (s) | stage | fastest published |",
             "|---|---|---|---|---|---|---|---|---|"]
    for inst in instances:
        rec = records.get(inst.key, {})
        best = min(((t, tool) for tool, res in bench.published.items()
                    for r, t in [res.get(inst.index, ("missing", None))]
                    if r in ("sat", "unsat") and r == (inst.ground_truth or r) and t is not None), default=None)
        fastest = f"{_tool_label(best[1])} {best[0]:.1f}" if best else "-"
        t = rec.get("time")
        lines.append(f"| {inst.index} | {Path(inst.onnx).name} | {Path(inst.vnnlib).name} | {inst.timeout * scale:g} | "
                     f"{inst.ground_truth or '?'} | {rec.get('status', 'not run')} | "
                     f"{'-' if t is None else f'{float(t):.2f}'} | {rec.get('stage', '-')} | {fastest} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class BenchOptions:
    """How to run a benchmark (validated)."""

    timeout_scale: float = 1.0
    workers: int = 1
    limit: int | None = None
    filter: str | None = None
    out: Path | None = None  # default: robustkit-results/vnncomp/<name>-<settings hash>
    rerun: tuple[str, ...] = ()
    quiet: bool = False

    def __post_init__(self) -> None:
        if not self.timeout_scale > 0:
            raise InputError(f"--timeout-scale must be positive, got {self.timeout_scale}")
        if self.workers < 1:
            raise InputError(f"--workers must be >= 1 (instances run in worker processes), got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be >= 1, got {self.limit}")
        bad = set(self.rerun) - {"timeout", "unknown", "error", "all"}
        if bad:
            raise InputError(f"--rerun takes timeout, unknown, error or all; got {sorted(bad)}")


@dataclass
class BenchOutcome:
    instances: list[BenchInstance]
    records: dict[str, dict[str, Any]]
    rows: list[ToolRow]
    disagreements: list[str]
    summary_md: str
    out: Path


def _check_answer(bench: Benchmark, inst: BenchInstance, record: dict[str, Any], limit: float,
                  results_dir: Path) -> None:
    """Write the record's VNN-COMP result file; for ``sat`` read it back and replay it. An answer
    that came after ``limit`` seconds counts as ``timeout`` (as in VNN-COMP)."""
    from robustkit.vnnlib.parser import parse_vnnlib
    from robustkit.vnnlib.result_file import read_result, write_result

    status, x, y = result_from_record(record)
    if status in ("sat", "unsat") and float(record.get("time", 0.0)) > limit:
        record["late_answer"] = status
        status, x, y = "timeout", None, None
    record["status"] = status
    path = write_result(results_dir / f"{inst.index}.txt", status, x, y)
    record["result_file"] = str(path)
    if status != "sat":
        return
    record.pop("x", None)
    record.pop("y", None)
    try:
        back = read_result(path)
        assert back.x is not None
        spec = parse_vnnlib(bench.root / inst.vnnlib)
        replay = replay_counterexample(bench.root / inst.onnx, spec, back.x, back.y)
        record["ce_valid"] = bool(replay.exact)
        record["ce_within_tolerance"] = bool(replay.within_tolerance)
        record["ce_output_gap"] = replay.max_output_gap
    except InputError as exc:
        record["ce_valid"] = False
        record["ce_error"] = str(exc)


def run_benchmark(root: str | Path, cfg: VerifyConfig, opts: BenchOptions) -> BenchOutcome:
    """Run (or resume) the selected instances of a benchmark and score them; writes
    ``<out>/records.jsonl``, ``<out>/results/<index>.txt``, ``<out>/summary.md`` and ``summary.json``."""
    from robustkit.runner.pool import run_pool
    from robustkit.runner.progress import RunProgress
    from robustkit.runner.store import RunDir, settings_hash, versions

    bench = load_benchmark(root)
    chosen = bench.select(opts.filter, opts.limit)
    listing_bytes = (bench.root / bench.instance_list).read_bytes()
    settings = {"verify": {k: v for k, v in cfg.to_dict().items() if k != "timeout"},
                "timeout_scale": opts.timeout_scale, "benchmark": bench.name, "versions": versions()}
    digest = settings_hash(listing_bytes, settings)
    out = Path(opts.out) if opts.out is not None else Path("robustkit-results") / "vnncomp" / f"{bench.name}-{digest[:12]}"
    store = RunDir.at(out, digest, settings).store()
    rerun = ("timeout", "unknown", "error", "sat", "unsat") if "all" in opts.rerun else opts.rerun
    done = store.done_keys(rerun)
    todo = [i for i in chosen if i.key not in done]
    by_key = {i.key: i for i in todo}
    results_dir = out / "results"
    groups: dict[float, list[InstanceTask]] = {}
    for inst in todo:
        limit = inst.timeout * opts.timeout_scale
        task = InstanceTask(inst.key, str(bench.root / inst.onnx), str(bench.root / inst.vnnlib),
                            replace(cfg, timeout=limit))
        groups.setdefault(limit, []).append(task)
    if len(todo) < len(chosen):
        log.info("resuming: %d of %d instances already finished in %s", len(chosen) - len(todo), len(chosen), store.path)
    with RunProgress(len(todo), f"vnncomp {bench.name}", quiet=opts.quiet, already_done=len(chosen) - len(todo)) as progress:
        def on_result(record: dict[str, Any]) -> None:
            inst = by_key[record["key"]]
            record.update(index=inst.index, onnx=inst.onnx, vnnlib=inst.vnnlib,
                          limit=inst.timeout * opts.timeout_scale, ground_truth=inst.ground_truth)
            _check_answer(bench, inst, record, inst.timeout * opts.timeout_scale, results_dir)
            store.append(record)
            progress.update(record)

        for limit, tasks in sorted(groups.items()):
            from robustkit.vnnlib.instance import run_instance_task

            run_pool(tasks, run_instance_task, opts.workers, limit + KILL_GRACE, on_result)
    all_records = store.records()
    records = {i.key: all_records[i.key] for i in chosen if i.key in all_records}
    rows = score_rows(published_at_limit(bench, chosen, opts.timeout_scale), chosen, records)
    bad = disagreements(chosen, records)
    summary = summary_markdown(bench, chosen, records, rows, bad, cfg, opts)
    (out / "summary.md").write_text(summary + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps({"benchmark": bench.name, "settings": settings,
                                                  "rows": [r.to_dict() for r in rows], "disagreements": bad},
                                                 indent=2, default=str) + "\n", encoding="utf-8")
    return BenchOutcome(chosen, records, rows, bad, summary, out)


def summary_markdown(bench: Benchmark, instances: list[BenchInstance], records: Mapping[str, Mapping[str, Any]],
                     rows: list[ToolRow], bad: list[str], cfg: VerifyConfig, opts: BenchOptions) -> str:
    """The report: the comparison table, notes on timing and scoring, disagreements, per instance."""
    used = sorted({str(r.get("details", {}).get("bounds_method")) for r in records.values()
                   if isinstance(r.get("details"), dict) and r["details"].get("bounds_method")})
    limits = sorted({i.timeout * opts.timeout_scale for i in instances})
    parts = [
        f"## VNN-COMP `{bench.name}`: {len(instances)} instance(s)"
        + (f" matching `{opts.filter}`" if opts.filter else "") + (f", first {opts.limit}" if opts.limit else ""),
        "",
        format_table(rows),
        "",
        f"robustkit: method `{cfg.method}`, tighten `{cfg.tighten}` (bounds used: {', '.join(used) or '-'}), "
        f"limits {', '.join(f'{t:g}' for t in limits)} s (published limit x {opts.timeout_scale:g}), "
        f"{opts.workers} worker(s)."
        + (f" The published tools are scored at the same limit: an answer they gave after more than "
           f"{opts.timeout_scale:g} x the official limit counts as a timeout." if opts.timeout_scale < 1 else ""),
        "",
        "Solved = sat + unsat; wrong = contradicts the ground truth, or a `sat` whose counterexample does not "
        f"replay on the ONNX file; score = {POINTS_CORRECT:+d} per correct answer, {POINTS_WRONG:+d} per wrong one "
        "(VNN-COMP's time bonuses left out); answers where the ground truth is unknown are not scored.",
        ("Times: the published times are the tools' wall-clock times from the official results and include "
         "each tool's start-up (loading libraries and the model, often several seconds) and were measured on "
         "the competition's machines; robustkit's time is the time in an already started worker process "
         "(loading the ONNX file and the property included, Python start-up excluded), measured on this machine."
         if bench.published else
         "Times: robustkit's time in an already started worker process (loading the ONNX file and the "
         "property included, Python start-up excluded)."),
        "",
        "### robustkit vs ground truth",
        "",
        "\n".join(f"- {line}" for line in bad) if bad else "No disagreement: every robustkit answer matches the "
        "ground truth and every robustkit counterexample replays in onnxruntime.",
        "",
        "### Per instance",
        "",
        _per_instance_table(bench, instances, records, opts.timeout_scale),
    ]
    return "\n".join(parts)
