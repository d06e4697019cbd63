"""``robustkit vnnlib``: verify one VNN-COMP instance (ONNX network + VNN-LIB property)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.cli.common import EXAMPLES, finish_run
from robustkit.cli.options import alias, opt, settings

C = "vnnlib"


def register(app: typer.Typer) -> None:
    app.command(C, epilog=EXAMPLES[C])(vnnlib)


def vnnlib(
    ctx: typer.Context,
    model: Optional[Path] = opt(C, "model"),
    property: Optional[Path] = opt(C, "property"),  # noqa: A002 - the option's registry name
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
    result: Optional[Path] = opt(C, "result"),
    out: Optional[Path] = opt(C, "out"),
    check: bool = opt(C, "check"),
    cores: int = opt(C, "cores"),
    config: Optional[Path] = opt(C, "config"),
    tighten: Optional[str] = alias(C, "--tighten"),
    started_at: Optional[float] = typer.Option(
        None, "--started-at", envvar="ROBUSTKIT_STARTED_AT", hidden=True,
        help="Wall-clock time (Unix seconds) the timeout counts from (set by vnncomp/run_instance.sh)."),
) -> None:
    """Verify one instance; print sat, unsat, timeout or unknown (exit 0 for any of them; error:
    exit 2). With --out, the result file, run.json and the effective config.toml go there."""
    from robustkit.config.build import verify_config
    from robustkit.milp.solvers import check_solver
    from robustkit.milp.write import milp_dir
    from robustkit.vnnlib.instance import load_instance, verify_instance

    s = settings(ctx, C)
    model_path, prop = s["model"], s["property"]
    if s["check"]:
        net_ctx, spec = load_instance(model_path, prop)
        typer.echo(f"ok: {model_path.name} ({net_ctx.net.in_dim} inputs, {net_ctx.net.out_dim} outputs, "
                   f"{net_ctx.net.num_neurons} ReLUs), {prop.name}: {len(spec)} region(s)")
        return
    check_solver(s["solver"])  # an unavailable solver fails here, naming what to install
    cfg = verify_config(s)
    milp_dir(s["write_milp"])  # a folder that cannot be made fails here, before any sample runs
    folder: Path | None = s["out"]
    result_path = s["result"] if s["result"] is not None else (folder / "result.txt" if folder else None)
    res = verify_instance(model_path, prop, cfg, result_path=result_path, started_at=started_at,
                          cores=s["cores"])
    typer.echo(res.status)
    saved = None
    if folder is not None:
        saved = finish_run(s.replace(result=result_path), C, folder, None,
                           {"status": res.status, "time": res.time, "stage": res.record.get("stage")})
    typer.echo(f"{res.status} in {res.time:.2f} s (stage {res.record.get('stage', '-')})"
               + (f"; result file {res.result_path}" if res.result_path else "")
               + (f"; config {saved}" if saved else ""), err=True)
    if res.status == "error":
        raise typer.Exit(2)
