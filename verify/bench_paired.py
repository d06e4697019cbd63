"""The same robustkit command in two source trees, side by side: wall time and per-sample answers.

Each round runs the trees in turn, alternating the order (A B, then B A, ...) so that a drift of
the machine's speed falls on both; every run gets a fresh output folder and one environment
(``PYTHONPATH`` = the tree, ``OMP_NUM_THREADS`` as given). The answers are read from the JSONL
records the command writes (``--records``, a glob under the run's output path), keyed by the
record's ``index``/``instance``, and compared across every run.

Usage (from the repository root):
    python verify/bench_paired.py --tree before=/path/a --tree after=/path/b --rounds 2 \\
        --records 'records.jsonl' --report verify/results/x.md -- \\
        robustkit verify --eps 0.1 models/mnist_small_pgd_rs.onnx --n 200 --workers 2 --out {out}/records.jsonl
``{out}`` in the command is replaced by the run's output folder; ``robustkit`` by
``python -m robustkit.cli.main``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(tree: Path, command: list[str], out: Path, threads: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    cmd = [sys.executable, "-m", "robustkit.cli.main", *command[1:]] if command[0] == "robustkit" else command
    cmd = [c.replace("{out}", str(out)) for c in cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return wall


def answers(out: Path, pattern: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(glob.glob(str(out / pattern))):
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            key = str(rec.get("index", rec.get("instance", rec.get("sample", len(found)))))
            found[key] = str(rec.get("status", rec.get("result", "?")))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree (two)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--records", default="*.jsonl", help="glob of the JSONL records under a run's output")
    ap.add_argument("--threads", default="1", help="OMP_NUM_THREADS of every run")
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    if len(trees) != 2:
        raise SystemExit("give two --tree NAME=PATH")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    times: dict[str, list[float]] = {name: [] for name, _ in trees}
    runs: list[tuple[str, dict[str, str]]] = []
    order = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, tree in (trees if r % 2 == 0 else trees[::-1]):
                out = Path(tmp) / f"{name}_{r}"
                out.mkdir()
                wall = run_once(tree, command, out, args.threads)
                times[name].append(wall)
                runs.append((name, answers(out, args.records)))
                order.append(f"{name} {wall:.1f} s")
                print(f"round {r + 1}: {name} {wall:.1f} s", flush=True)
    keys = sorted({k for _, a in runs for k in a}, key=lambda k: (len(k), k))
    differ = [k for k in keys if len({a.get(k) for _, a in runs}) > 1]
    counts: dict[str, dict[str, int]] = {}
    for name, a in runs:  # each tree's first run
        counts.setdefault(name, {v: sum(1 for x in a.values() if x == v) for v in sorted(set(a.values()))})
    a_name, b_name = trees[0][0], trees[1][0]
    ratio = statistics.median(times[b_name]) / statistics.median(times[a_name])
    paired = [tb / ta for ta, tb in zip(times[a_name], times[b_name])]  # the two runs of one round
    commits = {}
    for name, tree in trees:
        commits[name] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                                       text=True).stdout.strip() or "?"
    lines = [
        f"`{' '.join(command)}`, {args.rounds} rounds alternating the order ({', '.join(order)}); "
        f"{platform.machine()}, Python {platform.python_version()}, OMP_NUM_THREADS={args.threads}.",
        "",
        "| tree | commit | wall (s), each run | median | answers |",
        "|---|---|---|---|---|",
    ]
    for name, _ in trees:
        lines.append(f"| {name} | {commits[name]} | {', '.join(f'{t:.1f}' for t in times[name])} | "
                     f"{statistics.median(times[name]):.1f} | {counts[name]} |")
    lines += ["", f"{b_name} / {a_name} (medians): **{ratio:.3f}x**; within each round: "
              f"{', '.join(f'{p:.3f}' for p in paired)} (median {statistics.median(paired):.3f}); "
              "samples answered differently by any run: "
              f"{len(differ)} of {len(keys)}" + (f" ({', '.join(differ[:10])})" if differ else "")]
    text = "\n".join(lines)
    print(text)
    if args.report is not None:
        with args.report.open("a") as fh:
            fh.write(text + "\n\n")


if __name__ == "__main__":
    main()
