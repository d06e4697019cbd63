"""``robustkit vnnlib``: verify one VNN-COMP instance (ONNX network + VNN-LIB property)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.numbers import parse_number


def register(app: typer.Typer) -> None:
    app.command("vnnlib")(vnnlib)


def vnnlib(
    model: Path = typer.Argument(..., help="ONNX network."),
    prop: Path = typer.Argument(..., help="VNN-LIB property (describes the violation)."),
    timeout: str = typer.Option("120", "--timeout", help="Seconds for the whole instance (hard limit)."),
    result: Optional[Path] = typer.Option(None, "--result", help="Write the VNN-COMP result file here."),
    tighten: str = typer.Option("alpha-crown", "--tighten", help="Bounds that start the complete method: interval|crown|alpha-crown|lp."),
    method: str = typer.Option("bab", "--method", help="bab (branch and bound over ReLU splits) or milp (both complete), or interval|crown|alpha-crown (incomplete)."),
    attack_steps: int = typer.Option(50, "--attack-steps", help="PGD steps before bounds/MILP (0 = no attack)."),
    attack_restarts: int = typer.Option(4, "--attack-restarts", help="PGD restarts (small steps, corner-to-corner steps, two leaky surrogate gradients; cycled)."),
    solver: str = typer.Option("highs", "--solver", help="MILP solver (with --method milp): highs (highspy, default), or through PuLP: pulp-highs, cbc (bundled with PuLP), gurobi, cplex (need their own install and licence), scip (pip install pyscipopt)."),
    write_milp: Optional[Path] = typer.Option(None, "--write-milp", help="With --method milp, also write each MILP solved to this directory: .mps, .lp, and a .json saying what each variable is and what the optimum means."),
    bab_intermediate: str = typer.Option("auto", "--bab-intermediate", help="With --method bab: the layers after a split, per child: recompute (CROWN), fixed (the parent's; the split multipliers carry the split), or auto (recompute while it decides ReLUs, about 1 in 2 children or more)."),
    bab_depth_weight: str = typer.Option("3", "--bab-depth-weight", help="With --method bab: branching weights a neuron's score by (1 + ReLU layers after it) to this power while recomputing the children's intermediate bounds decides ReLUs (0.5 or more per child so far; 0: the intercept score alone)."),
    bab_split: str = typer.Option("auto", "--bab-split", help="With --method bab: what a domain splits: relu (one unstable ReLU), input (the input box, halved along one dimension), or auto (input for inputs of at most 10 dimensions, else relu)."),
    check: bool = typer.Option(False, "--check", help="Only load and check the instance (sizes, operators); no solving."),
    cores: int = typer.Option(1, "--cores", help="With --method bab on a network of at most 10 inputs: search the input box in this many parts, one worker process each (the first sat ends the others)."),
    started_at: Optional[float] = typer.Option(
        None, "--started-at", envvar="ROBUSTKIT_STARTED_AT", hidden=True,
        help="Wall-clock time (Unix seconds) the timeout counts from (set by vnncomp/run_instance.sh)."),
) -> None:
    """Verify one instance; print sat/unsat/timeout/unknown (exit 0 for any of them)."""
    from robustkit.milp.write import milp_dir
    from robustkit.verification import VerifyConfig
    from robustkit.vnnlib.instance import load_instance, verify_instance

    if check:
        ctx, spec = load_instance(model, prop)
        typer.echo(f"ok: {model.name} ({ctx.net.in_dim} inputs, {ctx.net.out_dim} outputs, "
                   f"{ctx.net.num_relus} ReLUs), {prop.name}: {len(spec)} region(s)")
        return
    cfg = VerifyConfig(timeout=parse_number(timeout, "timeout"), method=method, tighten=tighten,  # type: ignore[arg-type]
                       attack_steps=attack_steps, attack_restarts=attack_restarts, solver=solver, bab_intermediate=bab_intermediate,
                       bab_depth_weight=parse_number(bab_depth_weight, "--bab-depth-weight"), bab_split=bab_split,
                       write_milp=None if write_milp is None else str(write_milp.resolve()))
    from robustkit.milp.solvers import check_solver

    check_solver(cfg.solver)  # an unavailable solver fails here, naming what to install
    milp_dir(write_milp)  # a folder that cannot be made fails here, before any sample runs
    if cores < 1:
        raise typer.BadParameter(f"--cores must be >= 1, got {cores}")
    res = verify_instance(model, prop, cfg, result_path=result, started_at=started_at, cores=cores)
    typer.echo(res.status)
    typer.echo(f"{res.status} in {res.time:.2f} s (stage {res.record.get('stage', '-')})"
               + (f"; result file {res.result_path}" if res.result_path else ""), err=True)
    if res.status == "error":
        raise typer.Exit(2)
