"""The adversarial soundness suite (robustkit.verification.soundness_suite), every method, attack off and on.

Run from the repository root:
    python verify/bench_soundness.py [--timeout 10] [--out verify/results/soundness_suite.md]
(`robustkit bench soundness` prints the same table.) Writes the table of answers per instance and
method and the count of wrong answers (an ``unsat`` where a violation is known, a ``sat`` whose
witness does not hold), then the models and properties that must be refused.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from pathlib import Path

from robustkit.verification.soundness_suite import default_instances, outcome_table, run_suite

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per instance and method")
    ap.add_argument("--out", type=Path, default=ROOT / "verify" / "results" / "soundness_suite.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    outcomes = run_suite(default_instances(), timeout=args.timeout)
    elapsed = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        "# Adversarial soundness suite",
        "",
        f"`python verify/bench_soundness.py --timeout {args.timeout:g}` at commit {commit or '?'} on "
        f"{platform.machine()} ({platform.python_version()}), {elapsed:.0f} s. Every method runs with the "
        "attack off (the bounds, the MILP and branch and bound must settle each instance) and on (`+attack`: "
        "50 PGD steps first); known violations come from the planted points, dense sampling in onnxruntime, "
        "one attack run and every method's witnesses, each re-checked in fresh onnxruntime sessions "
        "(graph optimizations on and off).",
        "",
        outcome_table(outcomes),
        "",
    ])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
