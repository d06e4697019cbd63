"""A benchmark definition: a ``robustkit table`` run configuration (``verify/mnist.toml``) read
into the table to build and where its outputs go. The files of the release before (top-level
``timeout``/``workers``/``results_root``, ``[verify] tighten``/``attack_steps``, ``[output]
table``) still read, with a deprecation note per old key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robustkit.config.build import columns, table_config
from robustkit.config.files import read_toml
from robustkit.config.resolve import Settings, resolve
from robustkit.errors import InputError
from robustkit.report.tables import TableConfig


@dataclass(frozen=True)
class BenchmarkConfig:
    """A parsed benchmark: its name, the table to build, where the table and the plot go."""

    name: str
    source: Path
    table: TableConfig
    fmt: str = "md"
    table_out: Path | None = None
    plot: Path | None = None
    columns: tuple[str, ...] = ()
    settings: Settings | None = None


def load_benchmark(path: Path | str) -> BenchmarkConfig:
    """Parse and check a benchmark file (relative paths are relative to its folder; the per-sample
    records go to ``out``, default ``robustkit-results`` beside the file)."""
    path = Path(path)
    for key in ("models", "eps"):
        if key not in read_toml(path).data:
            raise InputError(f"{path}: missing required key {key!r}")
    s = resolve("table", {}, path)
    root = s["out"] if s["out"] is not None else path.parent / "robustkit-results"
    table = table_config(s, root, quiet=True)
    table.verify_config(table.eps[0])  # checks the method settings now, not mid-run
    name = s["name"] if s.given("name") else path.stem
    return BenchmarkConfig(name=name, source=path, table=table, fmt=s["format"], table_out=s["table_file"],
                           plot=s["plot"], columns=columns(s), settings=s)
