"""Verify VNN-LIB instances: an ONNX network plus a property, answered sat / unsat / timeout.

    python examples/vnnlib_instance.py                       # VNN-COMP 2021 "test" instances
    python examples/vnnlib_instance.py --only test_nano --timeout 30
    python examples/vnnlib_instance.py --benchmark DIR       # any folder with instances.csv

By default it runs the sanity instances of VNN-COMP 2021 from
``../shared/benchmarks/vnncomp/test_2021`` (beside the repository) and compares each answer with
the folder's ``expected_results.csv``. A ``sat`` answer carries a counterexample that was
replayed on the original ONNX file with onnxruntime before it was reported. The CLI equivalent
of one instance is ``robustkit vnnlib NET.onnx PROP.vnnlib --timeout 60``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO.parent / "shared" / "benchmarks" / "vnncomp" / "test_2021"


def read_instances(folder: Path) -> list[tuple[str, str, float]]:
    """``(onnx, vnnlib, timeout)`` rows of ``instances.csv`` (or ``test_instances.csv``)."""
    for name in ("instances.csv", "test_instances.csv"):
        path = folder / name
        if path.is_file():
            with open(path, newline="") as fh:
                return [(r[0].strip(), r[1].strip(), float(r[2])) for r in csv.reader(fh) if len(r) >= 3]
    raise FileNotFoundError(f"no instances.csv in {folder}")


def read_expected(folder: Path) -> dict[tuple[str, str], str]:
    path = folder / "expected_results.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {(r["onnx"], r["vnnlib"]): r["ground_truth"] for r in csv.DictReader(fh)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--only", nargs="*", default=None, help="instances whose ONNX name contains one of these")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per instance (default: the csv's)")
    ap.add_argument("--in-process", action="store_true",
                    help="solve in this process (faster start, but the timeout is not enforced by a kill)")
    args = ap.parse_args(argv)

    from robustkit.verification import VerifyConfig
    from robustkit.vnnlib.instance import verify_instance

    if not args.benchmark.is_dir():
        print(f"benchmark folder {args.benchmark} not found (clone the repository with shared/ beside it, "
              "or pass --benchmark DIR)", file=sys.stderr)
        return 1
    expected = read_expected(args.benchmark)
    wrong = 0
    print("| network | property | answer | expected | time (s) |")
    print("|---|---|---|---|---|")
    for onnx_name, vnnlib_name, timeout in read_instances(args.benchmark):
        if args.only and not any(k in onnx_name for k in args.only):
            continue
        cfg = VerifyConfig(timeout=args.timeout or timeout)
        res = verify_instance(args.benchmark / onnx_name, args.benchmark / vnnlib_name, cfg, in_process=args.in_process)
        truth = expected.get((onnx_name, vnnlib_name), "?")
        if truth in ("sat", "unsat") and res.status in ("sat", "unsat") and res.status != truth:
            wrong += 1
        print(f"| {onnx_name} | {vnnlib_name} | {res.status} | {truth} | {res.time:.2f} |")
        if res.status == "sat" and res.x is not None:
            print(f"|   counterexample x = {[round(float(v), 4) for v in res.x.reshape(-1)[:5]]} | | | | |")
    if wrong:
        print(f"{wrong} answer(s) contradict the expected results", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
