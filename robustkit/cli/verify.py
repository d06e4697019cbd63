"""``robustkit verify``: robustness of the first N test images of a model's dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.cli.common import EXAMPLES, finish_run, legacy_file_out
from robustkit.cli.options import alias, opt, settings

C = "verify"


def register(app: typer.Typer) -> None:
    app.command(C, epilog=EXAMPLES[C])(verify)


def verify(
    ctx: typer.Context,
    model: Optional[Path] = opt(C, "model"),
    eps: Optional[str] = opt(C, "eps"),
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
    write_milp: Optional[Path] = opt(C, "write_milp"),
    bab_intermediate: str = opt(C, "bab_intermediate"),
    bab_depth_weight: str = opt(C, "bab_depth_weight"),
    bab_split: str = opt(C, "bab_split"),
    attack_steps: int = opt(C, "attack_steps"),
    attack_restarts: int = opt(C, "attack_restarts"),
    seed: int = opt(C, "seed"),
    workers: int = opt(C, "workers"),
    order: str = opt(C, "order"),
    cluster: Optional[str] = opt(C, "cluster"),
    scheduler: Optional[str] = opt(C, "scheduler"),
    out: Optional[Path] = opt(C, "out"),
    format: str = opt(C, "format"),  # noqa: A002 - the option's registry name
    rerun: list[str] = opt(C, "rerun"),
    quiet: bool = opt(C, "quiet"),
    config: Optional[Path] = opt(C, "config"),
    tighten: Optional[str] = alias(C, "--tighten"),
) -> None:
    """Verify robustness of test images: attack, then bounds, then the complete method; print the
    table (clean, PGD and verified accuracy, timeouts, times) and keep one record per sample."""
    from robustkit.config.build import verify_config
    from robustkit.milp.solvers import check_solver
    from robustkit.milp.write import milp_dir
    from robustkit.numbers import format_eps
    from robustkit.report.summary import format_rows
    from robustkit.verification.model import ModelContext
    from robustkit.verification.run import DatasetChoice, RunOptions, input_tag, verify_dataset

    s = settings(ctx, C)
    check_solver(s["solver"])  # an unavailable solver fails here, naming what to install
    cfg = verify_config(s, s["eps"])
    milp_dir(s["write_milp"])  # a folder that cannot be made fails here, before any sample runs
    model_path: Path = s["model"]
    ctx_model = ModelContext.from_path(model_path)
    if cfg.method in ("milp", "bab") and not ctx_model.net.piecewise_linear:
        typer.echo(f"note: {model_path.name} has Sigmoid/Tanh layers; {cfg.method} (complete) does not apply to "
                   "them: 'verified' comes from alpha-CROWN bounds, and every other sample is 'unknown' (never "
                   "falsified except by a replayed attack)", err=True)
    choice = DatasetChoice(input_tag(ctx_model, s["dataset"], s["inputs"]), s["n"], s["start"], s["data_dir"],
                           s["inputs"])
    records_file = legacy_file_out(s["out"], (".jsonl",), "the per-sample records file")
    opts = RunOptions(out=records_file, run_dir=None if records_file else s["out"], workers=s["workers"],
                      rerun=tuple(s["rerun"]), quiet=s["quiet"], cluster=s["cluster"], scheduler=s["scheduler"],
                      order=s["order"])
    result = verify_dataset(model_path, cfg, choice, opts)
    row = {"model": model_path.name, "eps": format_eps(cfg.eps), **result.summary}
    typer.echo(format_rows([row], s["format"], label_key="model"))
    folder = result.records_path.parent
    saved = finish_run(s, C, folder if records_file is None else None, result.records_path,
                       {"records": str(result.records_path), "summary": result.summary})
    typer.echo(f"per-sample records: {result.records_path}" + (f" ({result.skipped} resumed)" if result.skipped else "")
               + f"; config: {saved}", err=True)
    if s["write_milp"] is not None and result.skipped:
        typer.echo(f"note: the {result.skipped} resumed samples were not solved again, so they wrote no MILP "
                   f"(--rerun all solves them again)", err=True)
