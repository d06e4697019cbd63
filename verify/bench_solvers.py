"""MILP solvers side by side (issue 18): HiGHS through highspy (the default), HiGHS through PuLP,
and CBC through PuLP, on the same samples, one after the other in one run.

    python verify/bench_solvers.py --model models/mnist/mnist_small_pgd_rs.onnx --n 100 --eps 0.1

is ``robustkit verify --eps 0.1 models/mnist/mnist_small_pgd_rs.onnx --n 100 --method milp --workers 1
--solver S`` for S = highs, pulp-highs, cbc (the embedded MNIST test subset). Most samples are
decided before the MILP (attack, CROWN bounds); the table says how many reached it, and the
MILP-stage times are those of these samples only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from robustkit.verification import VerifyConfig
from robustkit.verification.run import STATUSES, DatasetChoice, RunOptions, verify_dataset

SOLVERS = (("highs", "HiGHS (highspy, direct)"), ("pulp-highs", "HiGHS through PuLP"), ("cbc", "CBC through PuLP"))


def run(model: Path, cfg: VerifyConfig, n: int, out: Path) -> dict:
    t0 = time.perf_counter()
    res = verify_dataset(model, cfg, DatasetChoice("mnist", n), RunOptions(out=out, workers=1, quiet=True))
    wall = time.perf_counter() - t0
    milp = [r for r in res.records if r.get("stage") == "milp"]
    row = {
        "solver": cfg.solver, "wall": wall, "statuses": {r["index"]: r["status"] for r in res.records},
        "counts": Counter(r["status"] for r in res.records), "milp_samples": len(milp),
        "milps": sum(len(r.get("solver_status", [])) for r in milp),
        "milp_time": [float(r.get("time_milp", 0.0)) for r in milp],
        "milp_by_index": {r["index"]: (r["status"], float(r.get("time_milp", 0.0)), r.get("solver_status", []))
                          for r in milp},
        "solver_statuses": Counter(s for r in milp for s in r.get("solver_status", [])),
    }
    print(json.dumps({"solver": cfg.solver, "wall": round(wall, 1), "counts": row["counts"],
                      "milp_samples": len(milp)}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/mnist/mnist_small_pgd_rs.onnx"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--report", type=Path, default=Path("verify/results/bench_solvers.md"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for solver, _ in SOLVERS:
            cfg = VerifyConfig(eps=args.eps, timeout=args.timeout, method="milp", tighten="crown", solver=solver)
            rows.append(run(args.model, cfg, args.n, Path(d) / f"{solver}.jsonl"))
    names = dict(SOLVERS)
    base = rows[0]
    shown = [s for s in STATUSES if any(r["counts"][s] for r in rows)]
    lines = [
        "# MILP solvers: highspy vs PuLP + HiGHS vs PuLP + CBC",
        "",
        f"model `{args.model}`, eps={args.eps:g}, first {args.n} MNIST test images (embedded subset), "
        f"`--method milp --tighten crown --timeout {args.timeout:g} --workers 1`, one solver after the other in "
        f"one run on {platform.machine()} ({platform.processor() or 'cpu'}), 1 solver thread. Wall time includes "
        f"the worker's start-up and everything before the MILP (attack, CROWN), which is the same for all three; "
        f"the MILP columns are the MILP stage alone, over the samples that reached it.",
        "",
        "| solver | wall (s) | " + " | ".join(shown) + " | reached the MILP | MILPs solved | MILP stage total (s) "
        "| MILP stage median (s) | statuses as highspy |",
        "|---|---|" + "---|" * len(shown) + "---|---|---|---|---|",
    ]
    for r in rows:
        same = sum(r["statuses"][k] == base["statuses"].get(k) for k in r["statuses"])
        lines.append(
            f"| {names[r['solver']]} | {r['wall']:.1f} | " + " | ".join(str(r["counts"][s]) for s in shown)
            + f" | {r['milp_samples']} | {r['milps']} | {sum(r['milp_time']):.2f} | "
            f"{statistics.median(r['milp_time']) if r['milp_time'] else 0.0:.2f} | {same}/{len(r['statuses'])} |")
    lines += ["", "Per sample that reached the MILP (status, MILP-stage seconds, solver statuses of its MILPs):", "",
              "| sample | " + " | ".join(names[r["solver"]] for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for idx in sorted(set().union(*(r["milp_by_index"] for r in rows))):
        cells = []
        for r in rows:
            st, t, ss = r["milp_by_index"].get(idx, ("-", 0.0, []))
            cells.append(f"{st}, {t:.2f} s, {', '.join(sorted(set(ss)))}")
        lines.append(f"| {idx} | " + " | ".join(cells) + " |")
    lines += ["", "Reproduce: `python verify/bench_solvers.py"
              + (f" --n {args.n}" if args.n != 100 else "") + (f" --eps {args.eps:g}" if args.eps != 0.1 else "")
              + "` (or `robustkit verify --eps 0.1 models/mnist/mnist_small_pgd_rs.onnx --n 100 --method milp --workers 1 "
              "--solver S` for each S), on an otherwise idle core.", ""]
    text = "\n".join(lines)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
