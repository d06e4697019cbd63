"""Marabou (maraboupy 2.0.0, a peer, not a dependency) on the same VNN-COMP mnist_fc instances, same machine.

For each instance matching ``--filter``: a fresh Python process reads the ONNX net with
``Marabou.read_onnx``, loads the VNN-LIB property with ``Marabou.loadProperty`` and solves with
``timeoutInSeconds`` = the official limit x ``--timeout-scale``; the process is killed 10 s after
that limit. Its answers are scored against the official ground truth beside robustkit's row from
``verify/bench_vnncomp.py`` (same filter, scale and tightening, read from its run folder) and the
published 2022 rows scored at the same limit.

Install the peer first (not a robustkit dependency):  pip install maraboupy==2.0.0
Run from the repository root (after verify/bench_vnncomp.py with the same --filter / --timeout-scale):
    python verify/bench_marabou.py --filter 256x2 --timeout-scale 1
Writes verify/results/marabou_mnist_fc_<filter>[_x<scale>].md; answers are cached (resumable) in
runs/marabou/<filter>_x<scale>.jsonl.
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

from robustkit.vnnlib.bench import format_table, load_benchmark, published_at_limit, robustkit_answers, score_tool

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp" / "mnist_fc_2022"

RUNNER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from maraboupy import Marabou
onnx_path, prop, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
net = Marabou.read_onnx(onnx_path)
ipq = net.getInputQuery()
Marabou.loadProperty(ipq, prop)
opts = Marabou.createOptions(timeoutInSeconds=limit, verbosity=0)
code, vals, stats = Marabou.solve_query(ipq, verbose=False, options=opts)
print("RESULT " + json.dumps({"result": str(code), "time": time.perf_counter() - t0}), flush=True)
"""


def run_one(onnx_path: Path, prop: Path, limit: float) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(onnx_path), str(prop), str(max(1, int(limit)))],
                              capture_output=True, text=True, timeout=limit + 10)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            code = out["result"].lower()
            result = code if code in ("sat", "unsat") else ("timeout" if code == "timeout" else "unknown")
            return result, wall  # wall time of the process: imports and loading included, as in VNN-COMP
    return f"error: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}", wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default="256x2")
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--tighten", default="alpha-crown", help="which robustkit run of bench_vnncomp.py to show beside")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs")
    args = ap.parse_args()
    scale = args.timeout_scale
    bench = load_benchmark(BENCH)
    chosen = bench.select(args.filter)
    cache = args.runs / "marabou" / f"{args.filter}_x{scale:g}.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if cache.exists():
        done = {int(r["index"]): r for r in map(json.loads, cache.read_text().splitlines()) if r}
    for inst in chosen:
        if inst.index in done:
            continue
        limit = inst.timeout * scale
        result, secs = run_one(BENCH / inst.onnx, BENCH / inst.vnnlib, limit)
        rec = {"index": inst.index, "result": result, "time": round(secs, 2), "limit": limit}
        done[inst.index] = rec
        with open(cache, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"{inst.index} {Path(inst.vnnlib).name}: {result} {secs:.1f} s (truth {inst.ground_truth})", flush=True)

    marabou = score_tool("Marabou 2.0.0 (maraboupy, measured here)",
                         {i: (r["result"] if r["result"] in ("sat", "unsat") else "timeout", r["time"], True)
                          for i, r in done.items()}, chosen)
    rows = [marabou]
    rk_dir = args.runs / "vnncomp" / f"mnist_fc_{args.filter}_{args.tighten}_x{scale:g}" / "records.jsonl"
    if rk_dir.exists():
        records = {r["key"]: r for r in map(json.loads, rk_dir.read_text().splitlines()) if r and "key" in r}
        rk = score_tool(f"robustkit ({args.tighten}, measured here)", robustkit_answers(records, chosen), chosen)
        rows.insert(0, rk)
    bench = published_at_limit(bench, chosen, scale)
    for tool in ("marabou_2022", "nnenum_2022", "abcrown_2022"):  # results_summary.csv's column prefixes
        res = bench.published.get(tool)
        if res is not None:
            rows.append(score_tool(tool, {i: (r, t, True) for i, (r, t) in res.items()}, chosen))
    wrong = [f"{i}: Marabou says {r['result']}, ground truth {inst.ground_truth}" for inst in chosen
             for i, r in [(inst.index, done.get(inst.index, {}))]
             if r.get("result") in ("sat", "unsat") and inst.ground_truth in ("sat", "unsat") and r["result"] != inst.ground_truth]
    text = "\n".join([
        f"# Marabou 2.0.0 beside robustkit: VNN-COMP 2022 mnist_fc, the {len(chosen)} instances matching `{args.filter}`",
        "",
        f"Generated by `python verify/bench_marabou.py --filter {args.filter} --timeout-scale {scale:g}` on "
        f"{platform.node() or 'this machine'} ({os.cpu_count()} CPU cores, Python {platform.python_version()}); "
        f"limit: the official {', '.join(sorted({f'{i.timeout:g}' for i in chosen}))} s x {scale:g} per instance, "
        "one instance at a time. Marabou's time is the wall time of a fresh process (imports, ONNX and "
        "VNN-LIB loading included, as in VNN-COMP); robustkit's row is its `verify/bench_vnncomp.py` run "
        "on this machine (times inside a started worker). The published rows are the 2022 competition's"
        + (", scored at the same reduced limit." if scale < 1 else "."),
        "",
        format_table(rows),
        "",
        "Disagreements of Marabou with the ground truth: " + ("; ".join(wrong) if wrong else "none.")
        + " Marabou runs here with maraboupy's default options (one thread, no Gurobi); the 2022 entry ran "
        "its own competition configuration on the competition's machine, so the two Marabou rows differ "
        "in configuration and hardware as well as version.",
        "",
    ])
    out = ROOT / "verify" / "results" / f"marabou_mnist_fc_{args.filter}{f'_x{scale:g}' if scale != 1 else ''}.md"
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
