"""``robustkit table``: verified-accuracy table over models x eps (resumable), from the command
line or a run configuration (``--config verify/mnist.toml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.cli.common import EXAMPLES, legacy_file_out
from robustkit.cli.options import alias, opt, settings

C = "table"
_TABLE_SUFFIXES = (".md", ".csv", ".json", ".tex", ".txt")
_EXTENSIONS = {"md": ".md", "csv": ".csv", "json": ".json", "latex": ".tex"}


def legacy_out(given: dict) -> None:
    """``--out FILE.md`` (a file, as before ``--out`` named the results folder): the table file."""
    old = legacy_file_out(Path(given["out"]), _TABLE_SUFFIXES, "the table file") if "out" in given else None
    if old is not None:
        given.setdefault("table_file", given.pop("out"))


def register(app: typer.Typer) -> None:
    app.command(C, epilog=EXAMPLES[C])(table)


def table(
    ctx: typer.Context,
    models: Optional[list[Path]] = opt(C, "models"),
    eps: list[str] = opt(C, "eps"),
    n: int = opt(C, "n"),
    start: int = opt(C, "start"),
    dataset: Optional[str] = opt(C, "dataset"),
    data_dir: Optional[Path] = opt(C, "data_dir"),
    inputs: Optional[Path] = opt(C, "inputs"),
    method: str = opt(C, "method"),
    bounds: str = opt(C, "bounds"),
    timeout: str = opt(C, "timeout"),
    formulation: str = opt(C, "formulation"),
    solver: str = opt(C, "solver"),
    bab_intermediate: str = opt(C, "bab_intermediate"),
    bab_depth_weight: str = opt(C, "bab_depth_weight"),
    bab_split: str = opt(C, "bab_split"),
    attack_steps: int = opt(C, "attack_steps"),
    attack_restarts: int = opt(C, "attack_restarts"),
    seed: int = opt(C, "seed"),
    workers: int = opt(C, "workers"),
    order: str = opt(C, "order"),
    out: Optional[Path] = opt(C, "out"),
    name: str = opt(C, "name"),
    format: str = opt(C, "format"),  # noqa: A002 - the option's registry name
    columns: str = opt(C, "columns"),
    table_file: Optional[Path] = opt(C, "table_file"),
    plot: Optional[Path] = opt(C, "plot"),
    quiet: bool = opt(C, "quiet"),
    config: Optional[Path] = opt(C, "config"),
    tighten: Optional[str] = alias(C, "--tighten"),
    results_root: Optional[Path] = alias(C, "--results-root"),
) -> None:
    """Verify every model at every eps (resuming finished samples) and print one row per
    (model, eps): accuracies with Wilson 95% intervals, timeouts, times. The table, the effective
    config and run.json go to --out as <name>.md, <name>.config.toml, <name>.run.json."""
    from robustkit.config.build import columns as column_keys
    from robustkit.config.build import table_config
    from robustkit.config.resolve import write_effective
    from robustkit.report.plots import check_plot_path, plot_accuracy
    from robustkit.report.run_info import record_invocation
    from robustkit.report.tables import build_table, format_table, table_caption

    s = settings(ctx, C, legacy_out)
    folder: Path = s["out"] if s["out"] is not None else Path("robustkit-results")
    keys = column_keys(s)
    if s["plot"] is not None:
        check_plot_path(s["plot"])
    cfg = table_config(s, folder, quiet=s["quiet"])
    rows = build_table(cfg)
    caption = table_caption(rows, cfg.timeout, f"{cfg.method} with {cfg.tighten} bounds")
    text = format_table(rows, s["format"], keys, caption if s["format"] in ("md", "latex") else None).rstrip("\n")
    typer.echo(text)
    written = [folder / f"{s['name']}{_EXTENSIONS[s['format']]}"]
    if s["table_file"] is not None:
        written.append(s["table_file"])
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    saved = write_effective(s.replace(out=folder), folder / f"{s['name']}.config.toml")
    record_invocation(folder / f"{s['name']}.run.json", C, {"config": str(saved), "rows": [r.to_dict() for r in rows]})
    typer.echo(f"table: {', '.join(map(str, written))}; config: {saved}", err=True)
    if s["plot"] is not None:
        note = caption.replace("per row", "per point")
        typer.echo(f"plot: {plot_accuracy(rows, s['plot'], note)}", err=True)
