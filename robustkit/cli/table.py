"""``robustkit table``: verified-accuracy table over models x eps (resumable), from the command
line or a TOML benchmark definition (``--config verify/mnist.toml``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer

from robustkit.numbers import parse_eps, parse_number


def register(app: typer.Typer) -> None:
    app.command("table")(table)


def table(
    models: Optional[list[Path]] = typer.Argument(None, help="ONNX model files (e.g. models/*.onnx)."),
    eps: list[str] = typer.Option([], "--eps", help="L-inf radius, repeatable: --eps 0.1 --eps 0.3."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML benchmark definition; options given here override it."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of test images (default 100)."),
    start: Optional[int] = typer.Option(None, "--start", help="Index of the first test image (default 0)."),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="Seconds per sample (default 60)."),
    method: Optional[str] = typer.Option(None, "--method", help="milp (complete, default) or interval|crown|alpha-crown."),
    tighten: Optional[str] = typer.Option(None, "--tighten", help="Bounds for the MILP (default crown)."),
    attack_steps: Optional[int] = typer.Option(None, "--attack-steps", help="PGD steps before bounds/MILP (default 50)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (0 = in this process; default 1)."),
    results_root: Optional[Path] = typer.Option(None, "--results-root", help="Where per-sample records are kept (default robustkit-results)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="mnist or cifar10 (default: from each model's metadata)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset directory (default: $ROBUSTKIT_DATA, else the embedded test subset)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="md|csv|json|latex (default md)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the table to this file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Figure of clean/PGD/verified accuracy per model and eps (.png/.pdf/.svg)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Verify every model at every eps (resuming finished samples) and print one row per (model, eps)."""
    from robustkit.errors import InputError
    from robustkit.report.bench_config import load_benchmark
    from robustkit.report.plots import check_plot_path, plot_accuracy
    from robustkit.report.tables import TABLE_FORMATS, TableConfig, build_table, format_table

    overrides: dict[str, Any] = {
        "n": n, "start": start, "timeout": parse_number(timeout, "timeout") if timeout is not None else None,
        "method": method, "tighten": tighten, "attack_steps": attack_steps, "workers": workers,
        "results_root": results_root, "dataset": dataset, "data_dir": data_dir,
        "models": tuple(models) if models else None, "eps": tuple(parse_eps(e) for e in eps) if eps else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config is not None:
        bench = load_benchmark(config)
        cfg = replace(bench.table, **overrides, quiet=quiet)
        fmt = fmt or bench.fmt
        out = out or bench.table_out
        plot = plot or bench.plot
    else:
        if "models" not in overrides:
            raise InputError("name ONNX model files (e.g. models/*.onnx) or give --config FILE.toml")
        overrides.setdefault("eps", ())  # TableConfig says what is missing
        cfg = TableConfig(**overrides, quiet=quiet)
    fmt = fmt or "md"
    if fmt not in TABLE_FORMATS:
        raise InputError(f"unknown --format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    if plot is not None:
        check_plot_path(plot)
    rows = build_table(cfg)
    text = format_table(rows, fmt).rstrip("\n")
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        typer.echo(f"table: {out}", err=True)
    if plot is not None:
        typer.echo(f"plot: {plot_accuracy(rows, plot)}", err=True)
