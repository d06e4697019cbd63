"""``robustkit stats``: ReLU stability, activation-pattern Hamming distances and linear pieces of
an ONNX model over eps-boxes around the first N test images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.numbers import parse_eps


def register(app: typer.Typer) -> None:
    app.command("stats")(stats)


def stats(
    model: Path = typer.Argument(..., help="ONNX model file."),
    eps: str = typer.Option(..., "--eps", help="L-inf radius in input units, e.g. 0.1 or 8/255."),
    n: int = typer.Option(500, "--n", help="Number of test images (the first N)."),
    method: str = typer.Option("crown", "--method", help="Bounds for the stability counts: interval|crown|alpha-crown|lp."),
    corner_pairs: int = typer.Option(8, "--corner-pairs", help="Random opposite-corner pairs per sample (Hamming x+ vs x-)."),
    region_samples: int = typer.Option(64, "--region-samples", help="Uniform points per box for counting distinct activation patterns."),
    pgd_steps: int = typer.Option(20, "--pgd-steps", help="PGD steps for the clean-vs-PGD Hamming distance."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random draw."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="mnist or cifar10 (default: from the model's metadata)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset directory (default: $ROBUSTKIT_DATA, else the embedded test subset)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Samples processed together."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a figure (.png/.pdf/.svg): stacked bars per layer + histogram of unstable ReLUs."),
    fmt: str = typer.Option("md", "--format", help="md or json."),
) -> None:
    """Per ReLU layer: mean/median stably active, inactive, unstable; Hamming distances; linear pieces."""
    from robustkit.report.stats import STATS_FORMATS, StatsConfig, format_stats, model_stability_report
    from robustkit.errors import InputError

    if fmt not in STATS_FORMATS:
        raise InputError(f"unknown --format {fmt!r}; choose one of {', '.join(STATS_FORMATS)}")
    if plot is not None:
        from robustkit.report.plots import check_plot_path

        check_plot_path(plot)  # fail before the work, not after
    cfg = StatsConfig(eps=parse_eps(eps), n=n, method=method, corner_pairs=corner_pairs,
                      region_samples=region_samples, pgd_steps=pgd_steps, seed=seed, batch_size=batch_size)
    report = model_stability_report(model, cfg, dataset, data_dir)
    typer.echo(format_stats(report, fmt))
    if plot is not None:
        from robustkit.report.plots import plot_stability

        typer.echo(f"plot: {plot_stability(report, plot)}", err=True)
