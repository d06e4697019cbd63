"""``robustkit bench vnncomp``: run a VNN-COMP benchmark folder and compare with the published tools."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustkit.numbers import parse_number

bench_app = typer.Typer(help="Benchmarks against published results.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("vnncomp")
def vnncomp(
    folder: Path = typer.Argument(..., help="Benchmark folder with instances.csv (e.g. ../shared/benchmarks/vnncomp/mnist_fc_2022)."),
    timeout_scale: float = typer.Option(1.0, "--timeout-scale", help="Multiply every instance's timeout by this."),
    workers: int = typer.Option(1, "--workers", help="Instances run at the same time (1 keeps timings honest)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first K (matching) instances."),
    filter_text: Optional[str] = typer.Option(None, "--filter", help="Only instances whose 'onnx vnnlib' contains this."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (records.jsonl, results/, summary.md); resumable."),
    tighten: str = typer.Option("alpha-crown", "--tighten", help="Bounds that start the complete method: interval|crown|alpha-crown|lp."),
    method: str = typer.Option("bab", "--method", help="bab (branch and bound over ReLU splits) or milp (both complete), or interval|crown|alpha-crown (incomplete)."),
    attack_steps: int = typer.Option(50, "--attack-steps", help="PGD steps before bounds/MILP (0 = no attack)."),
    bab_intermediate: str = typer.Option("auto", "--bab-intermediate", help="With --method bab: the layers after a split, per child: recompute (CROWN), fixed (the parent's; the split multipliers carry the split), or auto (recompute while it decides ReLUs, about 1 in 2 children or more)."),
    bab_depth_weight: str = typer.Option("3", "--bab-depth-weight", help="With --method bab: branching weights a neuron's score by (1 + ReLU layers after it) to this power while recomputing the children's intermediate bounds decides ReLUs (0.5 or more per child so far; 0: the intercept score alone)."),
    bab_split: str = typer.Option("auto", "--bab-split", help="With --method bab: what a domain splits: relu (one unstable ReLU), input (the input box, halved along one dimension), or auto (input for inputs of at most 10 dimensions, else relu)."),
    rerun: list[str] = typer.Option([], "--rerun", help="Redo finished instances with this status: timeout|unknown|error|all."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Verify every instance with its timeout x scale; print the table next to the published tools."""
    from robustkit.verification import VerifyConfig
    from robustkit.vnnlib.bench import BenchOptions, run_benchmark

    cfg = VerifyConfig(method=method, tighten=tighten, attack_steps=attack_steps, bab_intermediate=bab_intermediate,  # type: ignore[arg-type]
                       bab_depth_weight=parse_number(bab_depth_weight, "--bab-depth-weight"), bab_split=bab_split)
    opts = BenchOptions(timeout_scale=timeout_scale, workers=workers, limit=limit, filter=filter_text, out=out,
                        rerun=tuple(rerun), quiet=quiet)
    outcome = run_benchmark(folder, cfg, opts)
    typer.echo(outcome.summary_md)
    typer.echo(f"summary: {outcome.out / 'summary.md'}; records: {outcome.out / 'records.jsonl'}", err=True)


@bench_app.command("soundness")
def soundness(
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per instance and method."),
    methods: list[str] = typer.Option(["crown", "alpha-crown", "milp", "bab", "bab-relu", "bab-input"], "--method", help="Methods to run (repeat): crown, alpha-crown, milp, bab (the default split), bab-relu, bab-input (branch and bound with that --bab-split)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the table (Markdown) here."),
) -> None:
    """Run the adversarial soundness suite (float-error exploits, float16, subnormals, overflow, strict
    comparisons, needles, planted counterexamples), every method with the attack off and on: never
    unsat where a violation exists, never sat with a witness that does not hold, and the models that
    must be refused refused. Exit code 2 on a wrong answer."""
    from robustkit.errors import InputError
    from robustkit.verification.soundness_suite import SUITE_METHODS, default_instances, outcome_table, run_suite

    bad = [m for m in methods if m not in SUITE_METHODS]
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(SUITE_METHODS)}")
    if out is not None and not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    outcomes = run_suite(default_instances(), tuple(methods), timeout=timeout)
    table = outcome_table(outcomes)
    typer.echo(table)
    if out is not None:
        out.write_text(table + "\n")
    if any(o.wrong for o in outcomes):
        raise typer.Exit(2)
