"""alpha-CROWN at the root of a search with and without the early stop (``stop_tol``), side by side.

For each named VNN-COMP instance (``BENCHMARK:ONNX_STEM:VNNLIB_STEM``) the root bounds that start
branch and bound are computed twice in one process, one thread, alternating over ``--rounds``:
``stop_tol=0`` (every one of the 30 steps) and ``STOP_TOL_BEFORE_SEARCH`` (what
``verify``/``vnnlib`` now use before a complete method). Per setting: seconds (median), the steps
taken, the bound on the violation measure (the search optimises the specification rows again, so
what it takes from here is the intermediate bounds) and the unstable ReLUs per layer.

    python verify/bench_alpha_stop.py --out verify/results/alpha_early_stop.md \\
        oval21_2022:cifar_deep_kw:cifar_deep_kw-img4510-eps0.028235294117647063 \\
        mnist_fc_2022:mnist-net_256x6:prop_3_0.05
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from robustkit.bounds.alpha_crown import STOP_TOL_BEFORE_SEARCH, AlphaCrownConfig, alpha_crown_bounds
from robustkit.vnnlib.instance import load_instance

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp"


class _Steps(logging.Handler):
    """Reads the step count off alpha-CROWN's debug line (absent: all ``iterations`` ran)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        m = re.search(r"converged after (\d+) iterations", record.getMessage())
        if m:
            self.steps = int(m.group(1))


def one(instance: str, tol: float, steps: _Steps) -> tuple[float, int, float, list[int]]:
    bench, onnx, prop = instance.split(":")
    ctx, spec = load_instance(BENCH / bench / "onnx" / f"{onnx}.onnx", BENCH / bench / "vnnlib" / f"{prop}.vnnlib")
    box, out = spec.regions[0]
    C, d, owner = out.stacked()
    lo = torch.tensor(box.lower[None], dtype=torch.float64)
    hi = torch.tensor(box.upper[None], dtype=torch.float64)
    cfg = AlphaCrownConfig(stop_tol=tol)
    steps.steps = None
    t0 = time.perf_counter()
    nb, sb = alpha_crown_bounds(ctx.net, lo, hi, torch.as_tensor(C[None], dtype=torch.float64), cfg)
    seconds = time.perf_counter() - t0
    low = sb.lower.reshape(-1).numpy()
    measure = max(float(np.min(d[owner == k] - low[owner == k])) for k in sorted(set(owner.tolist())))
    unstable = [int(nb.phases(ctx.net, p)[2].sum()) for p in ctx.net.relu_indices]
    return seconds, steps.steps or cfg.iterations, measure, unstable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("instances", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = _Steps()
    logging.getLogger("robustkit.bounds.alpha_crown").addHandler(steps)
    logging.getLogger("robustkit.bounds.alpha_crown").setLevel(logging.DEBUG)
    rows = ["| instance | stop_tol | seconds (median) | steps | violation bound | unstable ReLUs per layer |",
            "|---|---|---|---|---|---|"]
    for inst in args.instances:
        times: dict[float, list[float]] = {0.0: [], STOP_TOL_BEFORE_SEARCH: []}
        last = {}
        for _ in range(args.rounds):
            for tol in times:
                s, n, m, u = one(inst, tol, steps)
                times[tol].append(s)
                last[tol] = (n, m, u)
        for tol, ts in times.items():
            n, m, u = last[tol]
            rows.append(f"| {inst.split(':')[-1]} | {tol:g} | {statistics.median(ts):.2f} | {n} | {m:.4f} | "
                        f"{' / '.join(map(str, u))} |")
            print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    if args.out:
        args.out.write_text(f"`python verify/bench_alpha_stop.py --rounds {args.rounds} ...` (one thread, both "
                            f"settings alternating in one process)\n\n" + text)


if __name__ == "__main__":
    main()
