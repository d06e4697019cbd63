"""Root bounds of one VNN-COMP instance by each bound method: time, unstable ReLUs per hidden
layer and the lower bounds of the property's rows (is refining the root worth its time?).

    python verify/bench_root_refine.py mnist_fc_2022:mnist-net_256x4:prop_7_0.05 \\
        --methods alpha-crown lp milp --budget 200 --milp-time 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from robustkit.bounds.lp import LpConfig
    from robustkit.bounds.methods import BoundsConfig, run_bounds
    from robustkit.vnnlib.instance import load_instance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instance", help="bench:onnx_stem:vnnlib_stem")
    ap.add_argument("--methods", nargs="+", default=["alpha-crown", "lp", "milp"])
    ap.add_argument("--budget", type=float, default=200.0, help="seconds per method (its optimising stages)")
    ap.add_argument("--milp-time", type=float, default=1.0, help="HiGHS limit of one MILP (seconds)")
    args = ap.parse_args()
    bench, onnx, prop = args.instance.split(":")
    folder = BENCH / bench
    ctx, spec = load_instance(folder / "onnx" / f"{onnx}.onnx", folder / "vnnlib" / f"{prop}.vnnlib")
    box, out = spec.regions[0]
    lo = torch.tensor(box.lower, dtype=torch.float64).reshape(1, -1)
    hi = torch.tensor(box.upper, dtype=torch.float64).reshape(1, -1)
    C = torch.tensor(np.concatenate([d.C for d in out.disjuncts]), dtype=torch.float64).unsqueeze(0)
    cfg = BoundsConfig(lp=LpConfig(milp_time_per_problem=args.milp_time))
    print("| root bounds | time (s) | unstable per hidden layer | total | least row lower bound |")
    print("|---|---|---|---|---|")
    for method in args.methods:
        t0 = time.perf_counter()
        res = run_bounds(ctx.net, lo, hi, method, C, args.budget, cfg)
        seconds = time.perf_counter() - t0
        per = [int(res.bounds.phases(ctx.net, r)[2].sum()) for r in ctx.net.split_indices]
        least = float(res.spec.lower.min()) if res.spec is not None else float("nan")
        print(f"| {method} | {seconds:.1f} | {', '.join(map(str, per))} | {sum(per)} | {least:.3f} |")


if __name__ == "__main__":
    main()
