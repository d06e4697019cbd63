"""Throughput of the local worker pool: --workers 1 vs 2, side by side on the same samples (issue 6).

    python verify/bench_workers.py --model models/mnist_small_pgd_rs.onnx --n 100 --eps 0.1
Run it on an otherwise idle machine: the ratio is meaningless when other jobs hold a core.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from robustkit.verification import VerifyConfig
from robustkit.verification.run import DatasetChoice, RunOptions, verify_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/mnist_small_pgd_rs.onnx"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--report", type=Path, default=Path("verify/results/bench_workers.md"))
    args = ap.parse_args()
    cfg = VerifyConfig(eps=args.eps, timeout=args.timeout, tighten="crown")
    walls: dict[int, float] = {}
    statuses: dict[int, list[str]] = {}
    with tempfile.TemporaryDirectory() as d:
        for w in (1, 2):
            t0 = time.perf_counter()
            out = verify_dataset(args.model, cfg, DatasetChoice("mnist", args.n),
                                 RunOptions(out=Path(d) / f"w{w}.jsonl", workers=w, quiet=True))
            walls[w] = time.perf_counter() - t0
            statuses[w] = [r["status"] for r in out.records]
            print(json.dumps({"workers": w, "wall": walls[w], "summary": out.summary}), flush=True)
    text = (f"# Worker pool throughput\n\nmodel `{args.model}`, eps={args.eps:g}, first {args.n} MNIST test images, "
            f"timeout {args.timeout:g} s (wall times include worker start-up: spawn + import torch)\n\n"
            f"| workers | wall (s) | samples/s |\n|---|---|---|\n"
            + "".join(f"| {w} | {walls[w]:.1f} | {args.n / walls[w]:.2f} |\n" for w in walls)
            + f"\nthroughput ratio 2 vs 1 workers: **{walls[1] / walls[2]:.2f}x**; identical statuses: "
              f"{statuses[1] == statuses[2]}\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
