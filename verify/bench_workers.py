"""Throughput of the local worker pool: --workers 1 vs 2 (index order and hardest-first), side
by side on the same samples (issue 6).

    python verify/bench_workers.py --model models/mnist/mnist_small_pgd_rs.onnx --n 200 --eps 0.1
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

DATA = Path("../shared/data")


def run(model: Path, cfg: VerifyConfig, n: int, workers: int, order: str, out: Path, dask: bool = False) -> dict:
    t0 = time.perf_counter()
    res = verify_dataset(model, cfg, DatasetChoice("mnist", n, data_dir=DATA),
                         RunOptions(out=out, workers=workers, quiet=True, order=order,
                                    cluster=f"local:{workers}" if dask else None))
    wall = time.perf_counter() - t0
    times = [float(r["time"]) for r in res.records]
    row = {"workers": f"{workers} (Dask LocalCluster)" if dask else workers, "order": order, "wall": wall, "busy": sum(times), "longest": max(times),
           "efficiency": sum(times) / (workers * wall), "statuses": [r["status"] for r in res.records]}
    print(json.dumps({k: v for k, v in row.items() if k != "statuses"}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/mnist/mnist_small_pgd_rs.onnx"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--dask", action="store_true", help="also a Dask LocalCluster(2) row (needs robustkit[cluster])")
    ap.add_argument("--report", type=Path, default=Path("verify/results/bench_workers.md"))
    args = ap.parse_args()
    cfg = VerifyConfig(eps=args.eps, timeout=args.timeout, tighten="crown")
    with tempfile.TemporaryDirectory() as d:
        rows = [run(args.model, cfg, args.n, w, order, Path(d) / f"w{w}-{order}.jsonl")
                for w, order in ((1, "index"), (2, "index"), (2, "hardest-first"))]
        if args.dask:
            rows.append(run(args.model, cfg, args.n, 2, "hardest-first", Path(d) / "dask.jsonl", dask=True))
    base = rows[0]
    text = (f"# Worker pool throughput\n\nmodel `{args.model}`, eps={args.eps:g}, first {args.n} MNIST test images "
            f"(`{DATA}`), timeout {args.timeout:g} s; wall times include worker start-up (spawn + import torch). "
            f"busy = sum of the per-sample times; efficiency = busy / (workers x wall); "
            f"longest = the slowest sample, a floor under any wall time.\n\n"
            f"| workers | order | wall (s) | samples/s | busy (s) | longest (s) | efficiency | speed-up vs 1 | same statuses |\n"
            f"|---|---|---|---|---|---|---|---|---|\n"
            + "".join(f"| {r['workers']} | {r['order']} | {r['wall']:.1f} | {args.n / r['wall']:.2f} | {r['busy']:.1f} | "
                      f"{r['longest']:.1f} | {r['efficiency']:.2f} | **{base['wall'] / r['wall']:.2f}x** | "
                      f"{r['statuses'] == base['statuses']} |\n" for r in rows)
            + (f"\nDask LocalCluster(2) vs the local pool (2 workers, same order): wall-time ratio "
               f"**{rows[3]['wall'] / rows[2]['wall']:.2f}**\n" if args.dask else "")
            + "\nReproduce: `python verify/bench_workers.py" + (" --dask" if args.dask else "")
            + "` on an otherwise idle machine.\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
