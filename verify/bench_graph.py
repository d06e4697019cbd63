"""Benchmark of graph networks (issue 16): one run, side by side.

1. Graph models trained here (a ResNet with 2 residual blocks, a MaxPool CNN): ``robustkit verify``
   by method on the first N MNIST test images: verified / falsified / unknown / timeout, verified
   accuracy, median and p95 time per sample, wall time, and the size of the lowered chain
   (layers, ReLUs, carried identity coordinates).
2. The cost of the graph code on a chain model: ``robustkit verify`` of the same model and images
   with the code before the graph lowering (``--before``, a checkout of that commit) and now, in
   the order before, after, after, before; the ratio of the mean wall times.

Usage (from the repo root; the "before" tree e.g. ``git worktree add /tmp/before 10ca70b``):
    python verify/bench_graph.py --n 100 --timeout 60 --before /tmp/before
Writes verify/results/graph_nets.md (or --report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def verify_cli(model: Path, method: str, n: int, timeout: float, eps: float, workers: int, out: Path,
               pythonpath: Path | None = None, tighten: str | None = None) -> tuple[list[dict], float]:
    """``robustkit verify`` in a fresh process (``pythonpath``: the code tree to run)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-m", "robustkit.cli.main", "verify", str(model), "--eps", str(eps), "--n", str(n),
           "--method", method, "--timeout", str(timeout), "--workers", str(workers), "--out", str(out),
           "--quiet", "--format", "json"]
    if tighten:
        cmd += ["--tighten", tighten]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=pythonpath or ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return records, wall


def summarize(records: list[dict], wall: float) -> dict:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    times = [float(r["time"]) for r in records if "time" in r and r.get("status") != "misclassified"]
    return {
        "n": len(records), **{k: counts.get(k, 0) for k in ("verified", "falsified", "misclassified", "unknown",
                                                            "timeout", "error")},
        "verified %": 100.0 * counts.get("verified", 0) / max(1, len(records)),
        "median s": statistics.median(times) if times else float("nan"),
        "p95 s": float(np.percentile(times, 95)) if times else float("nan"),
        "wall s": wall,
    }


def lowered(model: Path) -> str:
    from robustkit.network import ReLU, load_onnx

    net = load_onnx(model)
    relus = [layer for layer in net.layers if isinstance(layer, ReLU)]
    carried = sum(layer.dim - layer.count for layer in relus)
    return f"{len(net.layers)} layers, {net.num_neurons} ReLUs, {carried} carried coordinates"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="*", default=[ROOT / "models/mnist/mnist_resnet_pgd.onnx",
                                                               ROOT / "models/mnist/mnist_maxpool_pgd.onnx"])
    ap.add_argument("--methods", nargs="*", default=["crown", "alpha-crown", "milp", "bab"])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chain-model", type=Path, default=ROOT / "models/mnist/mnist_small_pgd_rs.onnx")
    ap.add_argument("--chain-n", type=int, default=200)
    ap.add_argument("--before", type=Path, help="checkout of the code before the graph lowering")
    ap.add_argument("--skip-graph", action="store_true")
    ap.add_argument("--report", type=Path, default=ROOT / "verify/results/graph_nets.md")
    args = ap.parse_args()
    if args.before is not None and not (args.before / "robustkit").is_dir():
        ap.error(f"--before {args.before}: no robustkit/ there")
    lines = ["# Graph networks: verification by method, and the cost on chains (issue 16)", "",
             f"Produced by `python verify/bench_graph.py {' '.join(sys.argv[1:])}`; {platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, OMP_NUM_THREADS=1. "
             "Stage times in the records; wall = the whole `robustkit verify` process.", ""]
    tmp = Path(tempfile.mkdtemp(prefix="bench_graph_"))
    if not args.skip_graph:
        lines += [f"## Graph models, MNIST eps {args.eps:g}, first {args.n} test images, timeout {args.timeout:g} s, "
                  f"{args.workers} workers", ""]
        cols = ["method", "verified", "falsified", "misclassified", "unknown", "timeout", "error", "verified %",
                "median s", "p95 s", "wall s"]
        for model in args.models:
            lines += [f"### `{model.relative_to(ROOT) if model.is_relative_to(ROOT) else model}` ({lowered(model)})", "",
                      "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for method in args.methods:
                recs, wall = verify_cli(model, method, args.n, args.timeout, args.eps, args.workers,
                                        tmp / f"{model.stem}_{method}.jsonl")
                s = summarize(recs, wall)
                row = [method] + [f"{s[c]:.1f}" if isinstance(s[c], float) else str(s[c]) for c in cols[1:]]
                lines.append("| " + " | ".join(row) + " |")
                print(lines[-1], flush=True)
            lines.append("")
    if args.before is not None:
        lines += [f"## Cost on a chain: `{args.chain_model.name}`, {args.chain_n} images, eps {args.eps:g}, milp, "
                  f"timeout {args.timeout:g} s, {args.workers} workers", "",
                  "| run | verified | falsified | misclassified | timeout | wall (s) |", "|---|---|---|---|---|---|"]
        walls: dict[str, list[float]] = {"before": [], "after": []}
        statuses: dict[str, list[list[str]]] = {"before": [], "after": []}
        for k, which in enumerate(("before", "after", "after", "before")):
            tree = args.before if which == "before" else ROOT
            recs, wall = verify_cli(args.chain_model.resolve(), "milp", args.chain_n, args.timeout, args.eps,
                                    args.workers, tmp / f"chain_{k}.jsonl", pythonpath=tree)
            s = summarize(recs, wall)
            walls[which].append(wall)
            statuses[which].append([r.get("status") for r in sorted(recs, key=lambda r: r["index"])])
            lines.append(f"| {which} #{len(walls[which])} | {s['verified']} | {s['falsified']} | {s['misclassified']} "
                         f"| {s['timeout']} | {wall:.1f} |")
            print(lines[-1], flush=True)
        same = all(st == statuses["before"][0] for st in statuses["before"] + statuses["after"])
        ratio = statistics.mean(walls["after"]) / statistics.mean(walls["before"])
        lines += ["", f"Wall time after / before: {statistics.mean(walls['after']):.1f} / "
                      f"{statistics.mean(walls['before']):.1f} s = **{ratio:.3f}x**; the same status for every sample "
                      f"in all four runs: {'yes' if same else 'no'}.", ""]
    args.report.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
