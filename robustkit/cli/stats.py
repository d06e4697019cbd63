"""``robustkit stats``: ReLU stability, activation-pattern Hamming distances and linear pieces of
an ONNX model over eps-boxes around the first N test images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.cli.common import EXAMPLES
from robustkit.cli.options import alias, opt, settings
from robustkit.numbers import parse_eps

C = "stats"


def register(app: typer.Typer) -> None:
    app.command(C, epilog=EXAMPLES[C])(stats)


def stats(
    ctx: typer.Context,
    model: Optional[Path] = opt(C, "model"),
    eps: Optional[str] = opt(C, "eps"),
    n: int = opt(C, "n"),
    dataset: Optional[str] = opt(C, "dataset"),
    data_dir: Optional[Path] = opt(C, "data_dir"),
    inputs: Optional[Path] = opt(C, "inputs"),
    bounds: str = opt(C, "bounds"),
    corner_pairs: int = opt(C, "corner_pairs"),
    region_samples: int = opt(C, "region_samples"),
    attack_steps: int = opt(C, "attack_steps"),
    attack_restarts: int = opt(C, "attack_restarts"),
    seed: int = opt(C, "seed"),
    batch_size: int = opt(C, "batch_size"),
    plot: Optional[Path] = opt(C, "plot"),
    format: str = opt(C, "format"),  # noqa: A002 - the option's registry name
    method: Optional[str] = alias(C, "--method"),
    pgd_steps: Optional[int] = alias(C, "--pgd-steps"),
) -> None:
    """Per ReLU layer: mean/median stably active, inactive, unstable; Hamming distances; linear pieces."""
    from robustkit.report.stats import StatsConfig, format_stats, model_stability_report

    s = settings(ctx, C)
    if s["plot"] is not None:
        from robustkit.report.plots import check_plot_path

        check_plot_path(s["plot"])  # fail before the work, not after
    cfg = StatsConfig(eps=parse_eps(s["eps"]), n=s["n"], method=s["bounds"], corner_pairs=s["corner_pairs"],
                      region_samples=s["region_samples"], pgd_steps=s["attack_steps"],
                      pgd_restarts=s["attack_restarts"], seed=s["seed"], batch_size=s["batch_size"])
    report = model_stability_report(s["model"], cfg, s["dataset"], s["data_dir"], s["inputs"])
    typer.echo(format_stats(report, s["format"]))
    if s["plot"] is not None:
        from robustkit.report.plots import plot_stability

        typer.echo(f"plot: {plot_stability(report, s['plot'])}", err=True)
