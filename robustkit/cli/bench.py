"""``robustkit bench``: VNN-COMP benchmark folders next to the published tools, and the
adversarial soundness suite."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.cli.common import EXAMPLES, finish_run, legacy_file_out
from robustkit.cli.options import alias, opt, settings

bench_app = typer.Typer(help="Benchmarks: VNN-COMP folders against the published tools; the soundness suite.",
                        no_args_is_help=True)
V = "bench vnncomp"
S = "bench soundness"


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("vnncomp", epilog=EXAMPLES[V])
def vnncomp(
    ctx: typer.Context,
    benchmark: Optional[Path] = opt(V, "benchmark"),
    filter: Optional[str] = opt(V, "filter"),  # noqa: A002 - the option's registry name
    limit: Optional[int] = opt(V, "limit"),
    timeout_scale: str = opt(V, "timeout_scale"),
    method: str = opt(V, "method"),
    bounds: str = opt(V, "bounds"),
    formulation: str = opt(V, "formulation"),
    solver: str = opt(V, "solver"),
    write_milp: Optional[Path] = opt(V, "write_milp"),
    bab_intermediate: str = opt(V, "bab_intermediate"),
    bab_depth_weight: str = opt(V, "bab_depth_weight"),
    bab_split: str = opt(V, "bab_split"),
    attack_steps: int = opt(V, "attack_steps"),
    attack_restarts: int = opt(V, "attack_restarts"),
    seed: int = opt(V, "seed"),
    workers: int = opt(V, "workers"),
    out: Optional[Path] = opt(V, "out"),
    rerun: list[str] = opt(V, "rerun"),
    quiet: bool = opt(V, "quiet"),
    config: Optional[Path] = opt(V, "config"),
    tighten: Optional[str] = alias(V, "--tighten"),
) -> None:
    """Verify every instance with its published time limit x --timeout-scale; print the table next
    to the published tools (resumable: run it again to continue)."""
    from robustkit.config.build import bench_options, verify_config
    from robustkit.vnnlib.bench import run_benchmark

    s = settings(ctx, V)
    outcome = run_benchmark(s["benchmark"], verify_config(s), bench_options(s))
    typer.echo(outcome.summary_md)
    rows = outcome.rows[0].to_dict() if outcome.rows else {}
    saved = finish_run(s, V, Path(outcome.out), None, {"robustkit": rows, "disagreements": outcome.disagreements})
    typer.echo(f"summary: {outcome.out / 'summary.md'}; records: {outcome.out / 'records.jsonl'}; config: {saved}",
               err=True)


@bench_app.command("soundness", epilog=EXAMPLES[S])
def soundness(
    ctx: typer.Context,
    timeout: str = opt(S, "timeout"),
    method: list[str] = opt(S, "method"),
    out: Optional[Path] = opt(S, "out"),
) -> None:
    """Run the adversarial soundness suite (float-error exploits, float16, subnormals, overflow, strict
    comparisons, needles, planted counterexamples), every method with the attack off and on: never
    unsat where a violation exists, never sat with a witness that does not hold, and the models that
    must be refused refused. Exit code 2 on a wrong answer."""
    from robustkit.errors import InputError
    from robustkit.report.run_info import record_invocation
    from robustkit.verification.soundness_suite import default_instances, outcome_table, run_suite

    s = settings(ctx, S)
    table_file = legacy_file_out(s["out"], (".md", ".txt"), "the table file")
    folder = None if table_file is not None else s["out"]
    target = table_file if table_file is not None else (folder / "soundness.md" if folder is not None else None)
    if target is not None and not target.parent.is_dir() and table_file is not None:
        raise InputError(f"--out {target}: folder {target.parent} does not exist")
    outcomes = run_suite(default_instances(), tuple(s["method"]), timeout=float(s["timeout"]))
    table = outcome_table(outcomes)
    typer.echo(table)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(table + "\n")
        record_invocation(target.with_name(target.name + ".run.json") if folder is None else folder / "run.json", S,
                          {"methods": list(s["method"]), "timeout": float(s["timeout"]),
                           "wrong": sum(bool(o.wrong) for o in outcomes)})
    if any(o.wrong for o in outcomes):
        raise typer.Exit(2)
