"""``robustkit verify``: robustness of the first N test images of a model's dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.numbers import parse_eps, parse_number


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)


def verify(
    model: Path = typer.Argument(..., help="ONNX model file."),
    eps: str = typer.Option(..., "--eps", help="L-inf radius in input units, e.g. 0.1 or 8/255."),
    n: int = typer.Option(100, "--n", help="Number of test images."),
    start: int = typer.Option(0, "--start", help="Index of the first test image."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="mnist or cifar10 (default: from the model's metadata)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset directory (default: $ROBUSTKIT_DATA, else the embedded test subset)."),
    method: str = typer.Option("milp", "--method", help="milp or bab (complete: MILP, or branch and bound over ReLU splits) or interval|crown|alpha-crown (incomplete, fast)."),
    bab_intermediate: str = typer.Option("auto", "--bab-intermediate", help="With --method bab: the layers after a split, per child: recompute (CROWN), fixed (the parent's; the split multipliers carry the split), or auto (recompute while it decides ReLUs, about 1 in 2 children or more)."),
    bab_depth_weight: str = typer.Option("3", "--bab-depth-weight", help="With --method bab: branching weights a neuron's score by (1 + ReLU layers after it) to this power while recomputing the children's intermediate bounds decides ReLUs (0.5 or more per child so far; 0: the intercept score alone)."),
    bab_split: str = typer.Option("auto", "--bab-split", help="With --method bab: what a domain splits: relu (one unstable ReLU), input (the input box, halved along one dimension), or auto (input for inputs of at most 10 dimensions, else relu)."),
    tighten: str = typer.Option("crown", "--tighten", help="Bounds for the MILP: interval|crown|alpha-crown|lp."),
    formulation: str = typer.Option("per-target", "--formulation", help="per-target (one MILP per class) or max (one MILP)."),
    timeout: str = typer.Option("60", "--timeout", help="Seconds per sample."),
    solver: str = typer.Option("highs", "--solver", help="MILP solver: highs (highspy, default), or through PuLP: pulp-highs, cbc (bundled with PuLP), gurobi, cplex (need their own install and licence), scip (pip install pyscipopt)."),
    write_milp: Optional[Path] = typer.Option(None, "--write-milp", help="Also write each MILP solved to this directory: .mps, .lp, and a .json saying what each variable is and what the optimum means."),
    attack_steps: int = typer.Option(50, "--attack-steps", help="PGD steps before bounds/MILP (0 = no attack)."),
    attack_restarts: int = typer.Option(4, "--attack-restarts", help="PGD restarts (small steps, corner-to-corner steps, two leaky surrogate gradients; cycled)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (0 = in this process, no hard timeout)."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Dask: local:N starts a LocalCluster."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask: address of an existing scheduler."),
    order: str = typer.Option("hardest-first", "--order", help="With several workers: hardest-first (most unstable ReLUs first, so no long sample starts last) or index."),
    out: Optional[Path] = typer.Option(None, "--out", help="Per-sample JSONL file (resumable). Default: robustkit-results/<settings hash>/records.jsonl."),
    rerun: list[str] = typer.Option([], "--rerun", help="Redo finished samples with this status: timeout|unknown|error|all."),
    fmt: str = typer.Option("md", "--format", help="Table format: md|csv|json."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Verify robustness of test images: attack, then bounds, then MILP; print the table."""
    from robustkit.report.summary import format_rows
    from robustkit.milp.write import milp_dir
    from robustkit.verification import VerifyConfig
    from robustkit.verification.model import ModelContext
    from robustkit.verification.run import DatasetChoice, RunOptions, model_dataset, verify_dataset

    cfg = VerifyConfig(
        eps=parse_eps(eps), timeout=parse_number(timeout, "timeout"), method=method, tighten=tighten,  # type: ignore[arg-type]
        formulation=formulation, attack_steps=attack_steps, attack_restarts=attack_restarts,  # type: ignore[arg-type]
        solver=solver, write_milp=None if write_milp is None else str(write_milp.resolve()),
        bab_intermediate=bab_intermediate,
        bab_depth_weight=parse_number(bab_depth_weight, "--bab-depth-weight"), bab_split=bab_split,
    )
    from robustkit.milp.solvers import check_solver

    check_solver(cfg.solver)  # an unavailable solver fails here, naming what to install
    milp_dir(write_milp)  # a folder that cannot be made fails here, before any sample runs
    ctx = ModelContext.from_path(model)
    if cfg.method in ("milp", "bab") and not ctx.net.piecewise_linear:
        typer.echo(f"note: {model.name} has Sigmoid/Tanh layers; {cfg.method} (complete) does not apply to them: "
                   "'verified' comes from alpha-CROWN bounds, and every other sample is 'unknown' (never "
                   "falsified except by a replayed attack)", err=True)
    ds_name = model_dataset(ctx, dataset)
    choice = DatasetChoice(ds_name, n, start, data_dir)
    opts = RunOptions(out=out, workers=workers, rerun=tuple(rerun), quiet=quiet, cluster=cluster, scheduler=scheduler,
                      order=order)
    result = verify_dataset(model, cfg, choice, opts)
    row = {"model": model.name, "eps": f"{cfg.eps:g}", **result.summary}
    typer.echo(format_rows([row], fmt, label_key="model"))
    typer.echo(f"per-sample records: {result.records_path}" + (f" ({result.skipped} resumed)" if result.skipped else ""),
               err=True)
    if write_milp is not None and result.skipped:
        typer.echo(f"note: the {result.skipped} resumed samples were not solved again, so they wrote no MILP "
                   f"(--rerun all solves them again)", err=True)
