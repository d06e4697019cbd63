"""Benchmark definitions in TOML: which models, which eps, how many samples, where results go.

Example (``verify/mnist.toml``; relative paths are relative to the TOML file's folder)::

    name = "mnist-zoo"
    models = ["../models/mnist_small_*.onnx"]   # files or glob patterns
    eps = [0.1, "8/255"]                      # numbers or fractions
    n = 20
    start = 0
    timeout = 30                              # seconds per sample
    workers = 1
    results_root = "../runs/bench/mnist"      # resumable per-sample records
    dataset = "mnist"                         # optional: default from the model's metadata
    data_dir = "../../shared/data"            # optional: default $ROBUSTKIT_DATA, else embedded subset

    [verify]                                  # optional, defaults of `robustkit verify`
    method = "milp"
    tighten = "crown"
    attack_steps = 50
    attack_restarts = 3

    [output]                                  # optional
    table = "results/mnist_zoo.md"
    format = "md"                             # md | csv | json | latex
    plot = "results/mnist_zoo.png"
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustkit.errors import InputError
from robustkit.numbers import parse_eps
from robustkit.report.tables import TABLE_FORMATS, TableConfig

TOP_KEYS = {"name", "models", "eps", "n", "start", "timeout", "workers", "results_root", "dataset", "data_dir",
            "verify", "output"}
VERIFY_KEYS = {"method", "tighten", "attack_steps", "attack_restarts"}
OUTPUT_KEYS = {"table", "format", "plot"}


@dataclass(frozen=True)
class BenchmarkConfig:
    """A parsed benchmark: its name, the table to build, and where to write the table and plot."""

    name: str
    source: Path
    table: TableConfig
    fmt: str = "md"
    table_out: Path | None = None
    plot: Path | None = None

    def __post_init__(self) -> None:
        if self.fmt not in TABLE_FORMATS:
            raise InputError(f"{self.source}: output format {self.fmt!r} is not one of {', '.join(TABLE_FORMATS)}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as exc:
            raise InputError("reading TOML benchmark files needs Python >= 3.11 or `pip install tomli`") from exc
    if not path.is_file():
        raise InputError(f"benchmark file {path} not found")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from exc


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InputError(f"{where} must be a TOML table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; accepted: {', '.join(sorted(allowed))}")
    return table


def _typed(where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{where} must be {what}, got {value!r}")
    return value


def _models(path: Path, patterns: Any) -> tuple[Path, ...]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise InputError(f"{path}: 'models' must be a non-empty list of ONNX files or glob patterns")
    found: list[Path] = []
    for pattern in patterns:
        full = path.parent / pattern
        if glob.has_magic(pattern):
            matches = sorted(Path(m) for m in glob.glob(str(full)))
            if not matches:
                raise InputError(f"{path}: models pattern {pattern!r} matches no file (looked in {full.parent})")
            found += matches
        else:
            found.append(full)
    return tuple(dict.fromkeys(p.resolve() for p in found))


def _eps(path: Path, values: Any) -> tuple[float, ...]:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise InputError(f"{path}: 'eps' must list at least one radius")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise InputError(f"{path}: eps values are numbers or strings like \"8/255\", got {v!r}")
        out.append(parse_eps(str(v)))
    return tuple(out)


def load_benchmark(path: Path | str) -> BenchmarkConfig:
    """Parse and validate a benchmark TOML file (see the module docstring)."""
    path = Path(path)
    doc = _check_keys(str(path), _read_toml(path), TOP_KEYS)
    for key in ("models", "eps"):
        if key not in doc:
            raise InputError(f"{path}: missing required key {key!r}")
    verify = _check_keys(f"{path} [verify]", doc.get("verify", {}), VERIFY_KEYS)
    output = _check_keys(f"{path} [output]", doc.get("output", {}), OUTPUT_KEYS)
    here = path.parent
    kwargs: dict[str, Any] = {"models": _models(path, doc["models"]), "eps": _eps(path, doc["eps"])}
    for key in ("n", "start", "workers"):
        if key in doc:
            kwargs[key] = _typed(f"{path}: {key!r}", doc[key], int, "an integer")
    if "timeout" in doc:
        kwargs["timeout"] = float(_typed(f"{path}: 'timeout'", doc["timeout"], (int, float), "a number of seconds"))
    if "dataset" in doc:
        kwargs["dataset"] = _typed(f"{path}: 'dataset'", doc["dataset"], str, "a dataset name")
    for key in ("results_root", "data_dir"):
        if key in doc:
            kwargs[key] = here / _typed(f"{path}: {key!r}", doc[key], str, "a path")
    for key in ("method", "tighten"):
        if key in verify:
            kwargs[key] = _typed(f"{path} [verify] {key!r}", verify[key], str, "a name")
    for key in ("attack_steps", "attack_restarts"):
        if key in verify:
            kwargs[key] = _typed(f"{path} [verify] {key!r}", verify[key], int, "an integer")
    kwargs.setdefault("results_root", here / "robustkit-results")
    table = TableConfig(**kwargs)
    table.verify_config(table.eps[0])  # validates method/tighten/attack settings now, not mid-run
    name = _typed(f"{path}: 'name'", doc.get("name", path.stem), str, "a string")
    return BenchmarkConfig(
        name=name, source=path, table=table,
        fmt=_typed(f"{path} [output] 'format'", output.get("format", "md"), str, "a format name"),
        table_out=here / _typed(f"{path} [output] 'table'", output["table"], str, "a path") if "table" in output else None,
        plot=here / _typed(f"{path} [output] 'plot'", output["plot"], str, "a path") if "plot" in output else None,
    )
