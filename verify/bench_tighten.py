"""MILP with different bounds (issue 4): verified count and time with interval, CROWN, alpha-CROWN, +LP.

Every sample goes through attack -> bounds (the tightening under test) -> MILP, so the table shows
how much each tightening saves the MILP. Side by side in one run:

    python verify/bench_tighten.py --model models/mnist/mnist_small_pgd_rs.onnx --n 20 --eps 0.1 --timeout 60
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from robustkit.verification import VerifyConfig
from robustkit.verification.run import DatasetChoice, RunOptions, verify_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/mnist/mnist_small_pgd_rs.onnx"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--report", type=Path, default=Path("verify/results/bench_tighten.md"))
    args = ap.parse_args()
    lines = [f"# MILP with each bound tightening\n\nmodel `{args.model}`, eps={args.eps:g}, first {args.n} MNIST test "
             f"images, timeout {args.timeout:g} s, 1 worker.\n",
             "| tightening | verified | falsified | timeouts | unknown | by bounds | by MILP | mean unstable | "
             "mean binaries | bounds time (s) | MILP time (s) | wall (s) |", "|" + "---|" * 12]
    with tempfile.TemporaryDirectory() as d:
        for tighten in ("interval", "crown", "alpha-crown", "lp"):
            cfg = VerifyConfig(eps=args.eps, timeout=args.timeout, tighten=tighten)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            out = verify_dataset(args.model, cfg, DatasetChoice("mnist", args.n),
                                 RunOptions(out=Path(d) / f"{tighten}.jsonl", workers=1, quiet=True))
            wall = time.perf_counter() - t0
            recs, s = out.records, out.summary
            by_bounds = sum(1 for r in recs if r.get("status") == "verified" and r.get("stage") == "bounds")
            by_milp = sum(1 for r in recs if r.get("stage") == "milp" and r.get("status") in ("verified", "falsified"))
            tb = sum(float(r.get("time_bounds", 0)) for r in recs)
            tm = sum(float(r.get("time_milp", 0)) for r in recs)
            lines.append(f"| {tighten} | {s['verified']} | {s['falsified']} | {s['timeout']} | {s['unknown']} | "
                         f"{by_bounds} | {by_milp} | {s['mean_unstable_relus']:.1f} | {s['mean_binaries']:.1f} | "
                         f"{tb:.1f} | {tm:.1f} | {wall:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
