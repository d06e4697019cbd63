"""MILP size (columns, rows, binaries) of the same model and images in two source trees.

Runs ``robustkit verify --method milp --write-milp DIR`` in each tree (``PYTHONPATH`` = the tree,
a fresh process each) and reads the ``.json`` sidecar of every MILP written (``num_cols``,
``num_rows``, ``num_integer``), keyed by its file name (sample and target), so the two trees'
MILPs of the same (sample, target) are compared one to one. The answers (status per sample) are
compared too.

Usage (from the repository root):
    python verify/bench_milp_size.py --tree before=/path/old --tree after=. \\
        --model models/mnist/mnist_resnet_pgd.onnx --eps 0.1 --n 5 --timeout 20
Writes verify/results/milp_size.md (or --report).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tree(tree: Path, model: Path, eps: float, n: int, timeout: float, out: Path) -> tuple[dict, dict]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    milps = out / "milps"
    records = out / "records.jsonl"
    cmd = [sys.executable, "-m", "robustkit.cli.main", "verify", str(model), "--eps", str(eps), "--n", str(n),
           "--method", "milp", "--timeout", str(timeout), "--workers", "1", "--write-milp", str(milps),
           "--out", str(records)]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    sizes = {}
    for path in sorted(milps.glob("*.json")):
        side = json.loads(path.read_text())
        sizes[path.stem] = (side["num_cols"], side["num_rows"], side["num_integer"])
    answers = {}
    for line in records.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            answers[str(rec.get("index"))] = rec.get("status")
    return sizes, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH (twice)")
    ap.add_argument("--model", type=Path, default=ROOT / "models/mnist/mnist_resnet_pgd.onnx")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--report", type=Path, default=ROOT / "verify/results/milp_size.md")
    args = ap.parse_args()
    trees = [tuple(t.split("=", 1)) for t in args.tree]
    if len(trees) != 2:
        raise SystemExit("--tree NAME=PATH twice")
    model = args.model.resolve()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in trees:
            results[name] = run_tree(Path(path).resolve(), model, args.eps, args.n, args.timeout, Path(tmp) / name)
    (a, _), (b, _) = trees
    common = sorted(set(results[a][0]) & set(results[b][0]))
    lines = [
        f"# MILP size, {a} vs {b}",
        "",
        f"`robustkit verify {args.model} --eps {args.eps} --n {args.n} --method milp --timeout {args.timeout} "
        f"--write-milp DIR` in each tree; every MILP's sidecar (`num_cols`, `num_rows`, `num_integer`). "
        "Trees: " + ", ".join(f"{n} = `{p}`" for n, p in trees) + ". Produced by `python verify/bench_milp_size.py`.",
        "",
        f"MILPs written: {a} {len(results[a][0])}, {b} {len(results[b][0])}; compared (same sample and target): "
        f"{len(common)}.",
        "",
        f"| | columns ({a}) | columns ({b}) | rows ({a}) | rows ({b}) | binaries ({a}) | binaries ({b}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    if common:
        for label, agg in (("median", statistics.median), ("total", sum)):
            vals = [agg([results[t][0][k][i] for k in common]) for i in range(3) for t in (a, b)]
            lines.append(f"| {label} | " + " | ".join(f"{v:,.0f}" for v in vals) + " |")
        ratio_c = statistics.median(results[b][0][k][0] / results[a][0][k][0] for k in common)
        ratio_r = statistics.median(results[b][0][k][1] / results[a][0][k][1] for k in common)
        lines += ["", f"Median per MILP of {b}/{a}: columns {ratio_c:.3f}, rows {ratio_r:.3f}."]
    same = [k for k in results[a][1] if results[a][1][k] == results[b][1].get(k)]
    lines += ["", f"Answers: {len(same)} of {len(results[a][1])} samples have the same status in both trees "
              f"({a}: {sorted(results[a][1].items())}; {b}: {sorted(results[b][1].items())})."]
    text = "\n".join(lines) + "\n"
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
