"""Branch and bound throughput and stage shares, this tree against an earlier checkout (issue 15).

For each named VNN-COMP instance the same ``verify_instance`` call (``method="bab"``,
``tighten="alpha-crown"``, in process, one thread) runs in two processes at the same time, one on
this tree and one on ``--before`` (a checkout of the earlier commit, e.g. ``git worktree add
/tmp/before 5c402ec``), so both see the same load on a shared machine. The table gives per side
the answer, BaB's time, the domains bounded and domains per second, and the open share of the
tree at the end (0 when proven); then, for this tree, the share of BaB's time in each stage.

Domains per second is not the figure of merit on its own: bounding a domain more tightly costs
more and closes more, so the answer and the time to it come first.

    git worktree add /tmp/before 5c402ec
    python verify/bench_bab_speed.py --before /tmp/before --timeout 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp" / "mnist_fc_2022"
DEFAULT = ["mnist-net_256x4.onnx:prop_14_0.05", "mnist-net_256x4.onnx:prop_0_0.05", "mnist-net_256x6.onnx:prop_3_0.05"]
STAGES = ("intermediate", "optimise", "branching", "split", "falsify", "leaves")

CHILD = r"""
import json, sys
from robustkit.verification import VerifyConfig
from robustkit.vnnlib.instance import verify_instance
onnx, prop, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
r = verify_instance(onnx, prop, VerifyConfig(method="bab", tighten="alpha-crown", timeout=timeout), in_process=True)
d = r.record.get("details", {})
print("RESULT " + json.dumps({"status": r.status, "time": r.time, "bab": d.get("bab", {}),
                               "time_bounds": d.get("time_bounds")}, default=float))
"""


def run_pair(before: Path, onnx: Path, prop: Path, timeout: float) -> tuple[dict, dict]:
    procs = []
    for tree in (ROOT, before):
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(onnx), str(prop), str(timeout)], cwd=tree,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    out = []
    for p in procs:
        text, _ = p.communicate()
        line = next((ln for ln in text.splitlines() if ln.startswith("RESULT ")), None)
        out.append(json.loads(line[7:]) if line else {"status": f"error (exit {p.returncode})", "bab": {}})
    return out[0], out[1]


def side(r: dict) -> str:
    b = r.get("bab", {})
    t, n = float(b.get("time", 0.0)), int(b.get("domains", 0))
    rate = n / t if t > 0 else 0.0
    share = b.get("open_share", 0.0 if r.get("status") == "unsat" else float("nan"))
    return f"{r.get('status')} | {t:.1f} | {n:,} | {rate:.1f} | {share:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="checkout of the earlier commit")
    ap.add_argument("--instances", nargs="+", default=DEFAULT,
                    help="ONNX:PROPERTY names of mnist_fc_2022, or BENCHMARK:ONNX:PROPERTY (e.g. oval21_2022:...)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=ROOT / "verify" / "results" / "bab_speed.md")
    args = ap.parse_args()
    if not (args.before / "robustkit" / "verification" / "bab.py").is_file():
        sys.exit(f"--before {args.before}: not a robustkit checkout (make one with `git worktree add {args.before} <commit>`)")
    rev = lambda tree: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,  # noqa: E731
                                      text=True).stdout.strip()
    t0 = time.perf_counter()
    lines = ["| instance | before: answer | BaB s | domains | domains/s | open share | after: answer | BaB s | domains | "
             "domains/s | open share |", "|" + "---|" * 11]
    shares = ["| instance | " + " | ".join(STAGES) + " | other |", "|" + "---|" * (len(STAGES) + 2)]
    for name in args.instances:
        *bench, net, prop = name.split(":")
        folder = BENCH.parent / bench[0] if bench else BENCH
        after, before = run_pair(args.before, folder / "onnx" / net, folder / "vnnlib" / f"{prop}.vnnlib", args.timeout)
        lines.append(f"| {net.removesuffix('.onnx')} {prop} | {side(before)} | {side(after)} |")
        b = after.get("bab", {})
        total = float(b.get("time", 0.0)) or 1.0
        parts = [float(b.get(f"time_{s}", 0.0)) / total for s in STAGES]
        shares.append(f"| {net.removesuffix('.onnx')} {prop} | " + " | ".join(f"{100 * p:.0f}%" for p in parts)
                      + f" | {100 * (1 - sum(parts)):.0f}% |")
        print(lines[-1], flush=True)
    text = (f"# Branch and bound: before ({rev(args.before)}) and after ({rev(ROOT)})\n\n"
            f"`python verify/bench_bab_speed.py --before <checkout of {rev(args.before)}> --timeout {args.timeout:g}` on "
            f"{platform.node()} ({os.cpu_count()} CPU cores, Python {platform.python_version()}), "
            f"{time.perf_counter() - t0:.0f} s. Each row: both sides at the same time, one thread each, "
            f"limit {args.timeout:g} s per instance (mnist_fc_2022 unless named). BaB s: the search alone (after the attack "
            f"and the root bounds).\n\n" + "\n".join(lines)
            + "\n\nShare of BaB's time per stage (after): intermediate = CROWN for the layers after each split; "
            "optimise = the spec rows' slopes and split multipliers (Adam) and the deciding float64 pass; "
            "branching = the split scores; split = building the children; falsify = corner candidates; "
            "leaves = exact LPs of fully split domains.\n\n" + "\n".join(shares) + "\n")
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
