"""Benchmark of the complete verifier (issue 2): one run, side by side.

On a robustkit-trained MNIST model, eps=0.1, the first N test images:
  * verified / falsified / timeout counts, mean and median time per sample;
  * wall time with --workers 1 vs --workers 2 (throughput ratio);
  * mean binaries per MILP;
  * per-target vs single ("max") MILP formulation: MILP time on the samples that reach the MILP;
  * (issue 6) Dask LocalCluster(2) vs the local pool with 2 workers, fraction of samples decided
    by attack / bounds / MILP and time per stage, PGD throughput (images/s) on the CPU.

Usage (from the repo root):
    python verify/bench_verify.py --model models/mnist/mnist_small_pgd_rs.onnx --n 100 --eps 0.1 --timeout 60
Writes a Markdown report to verify/results/bench_verify.md (or --report).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from robustkit.report.summary import format_rows
from robustkit.verification import VerifyConfig
from robustkit.verification.run import DatasetChoice, RunOptions, verify_dataset


def run(model: Path, cfg: VerifyConfig, n: int, workers: int, tmp: Path, tag: str,
        cluster: str | None = None) -> tuple[dict, list[dict], float]:
    t0 = time.perf_counter()
    out = verify_dataset(model, cfg, DatasetChoice("mnist", n), RunOptions(out=tmp / f"{tag}.jsonl", workers=workers,
                                                                            quiet=True, cluster=cluster))
    return out.summary, out.records, time.perf_counter() - t0


def pgd_throughput(model: Path, eps: float, n: int = 500) -> float:
    import torch

    from robustkit.attacks import PGD
    from robustkit.data import embedded_subset
    from robustkit.network import load_onnx

    torch.set_num_threads(1)
    module = load_onnx(model).to_torch().eval()
    ds = embedded_subset("mnist").head(n)
    attack = PGD(norm="linf", steps=50, restarts=1, loss="margin", early_stop=False, batch_size=100)
    t0 = time.perf_counter()
    attack.run(module, ds.images, ds.labels, eps)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/mnist/mnist_small_pgd_rs.onnx"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--tighten", default="crown")
    ap.add_argument("--n-max", type=int, default=100, help="samples for the max-formulation run")
    ap.add_argument("--dask", action="store_true", help="also run on a Dask LocalCluster(2)")
    ap.add_argument("--report", type=Path, default=Path("verify/results/bench_verify.md"))
    args = ap.parse_args()
    base = VerifyConfig(eps=args.eps, timeout=args.timeout, tighten=args.tighten)  # type: ignore[arg-type]
    rows, lines = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        s1, rec1, wall1 = run(args.model, base, args.n, 1, tmp, "w1")
        s2, _, wall2 = run(args.model, base, args.n, 2, tmp, "w2")
        maxcfg = VerifyConfig(**{**base.to_dict(), "formulation": "max"})
        s3, rec3, wall3 = run(args.model, maxcfg, args.n_max, 1, tmp, "max")
        if args.dask:
            s4, rec4, wall4 = run(args.model, base, args.n, 0, tmp, "dask", cluster="local:2")
    rows += [{"run": f"per-target, 1 worker, n={args.n}", **s1}, {"run": f"per-target, 2 workers, n={args.n}", **s2},
             {"run": f"max, 1 worker, n={args.n_max}", **s3}]
    if args.dask:
        rows.append({"run": f"per-target, Dask LocalCluster(2), n={args.n}", **s4})
    first = [r for r in rec1 if r["index"] < args.n_max]
    milp1 = {r["index"]: r.get("time_milp") for r in first if r.get("time_milp") is not None}
    milp3 = {r["index"]: r.get("time_milp") for r in rec3 if r.get("time_milp") is not None}
    both = sorted(set(milp1) & set(milp3))
    t_pt = sum(milp1[i] for i in both)
    t_mx = sum(milp3[i] for i in both)
    stages = {s: sum(1 for r in rec1 if r.get("stage") == s) for s in ("clean", "attack", "bounds", "milp")}
    stage_time = {k: sum(float(r.get(k, 0.0)) for r in rec1) for k in ("time_attack", "time_bounds", "time_milp")}
    lines.append(f"# Complete verifier benchmark\n\nmodel `{args.model}`, eps={args.eps}, first {args.n} MNIST test "
                 f"images (embedded subset), timeout {args.timeout:g} s, MILP bounds `{args.tighten}`, HiGHS threads=1.\n")
    lines.append(format_rows(rows, "md", label_key="run"))
    lines.append("")
    lines.append(f"- wall time: 1 worker {wall1:.1f} s, 2 workers {wall2:.1f} s -> throughput ratio "
                 f"**{wall1 / wall2:.2f}x** (only meaningful on an otherwise idle machine; the worker-pool "
                 f"benchmark is `verify/bench_workers.py`, `verify/results/bench_workers.md`)")
    if args.dask:
        lines.append(f"- Dask LocalCluster(2) {wall4:.1f} s vs local pool (2 workers) {wall2:.1f} s -> overhead ratio "
                     f"**{wall4 / wall2:.2f}**; same statuses as 1 worker: "
                     f"{all(a.get('status') == b.get('status') for a, b in zip(rec1, rec4))}")
    lines.append(f"- decided by stage (1-worker run): {json.dumps(stages)}; total time per stage (s): "
                 f"{json.dumps({k: round(v, 1) for k, v in stage_time.items()})}")
    lines.append(f"- samples reaching the MILP in both formulations (first {args.n_max}): {len(both)}; MILP time "
                 f"per-target {t_pt:.1f} s vs max {t_mx:.1f} s -> ratio per-target/max "
                 f"**{(t_pt / t_mx if t_mx else float('nan')):.2f}**")
    if both:
        lines.append(f"- median MILP time per sample: per-target {statistics.median(milp1[i] for i in both):.2f} s, "
                     f"max {statistics.median(milp3[i] for i in both):.2f} s")
    lines.append(f"- PGD throughput (CPU, 1 thread, 50 steps, batch 100): {pgd_throughput(args.model, args.eps):.1f} images/s")
    text = "\n".join(lines) + "\n"
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
