"""Two settings of branch and bound on the same VNN-COMP instances, each pair side by side.

Each instance runs once per setting, the two at the same time (one process and one thread
each, so both sides see the same load on a 2-core machine), in process through
`verify_instance` with `VerifyConfig(method="bab", tighten="alpha-crown")` and the setting's
`bab_intermediate`, optionally with a branching depth weight after a slash (`auto/0`:
`bab_depth_weight=0`; default 3). Prints (and with --out writes) a Markdown table: status, time, domains
bounded, domains per second, the share of time in the intermediate and optimise stages, and
how many ReLUs the recomputed intermediate bounds decided per recomputed child.

    python verify/bench_bab_pairs.py --a recompute --b auto --limit 72 \\
        oval21_2022:cifar_base_kw:cifar_base_kw-img2578-eps0.021176470588235297 \\
        mnist_fc_2022:mnist-net_256x4:prop_14_0.05
    python verify/bench_bab_pairs.py --a auto/0 --b auto/3 --limit 300 mnist_fc_2022:mnist-net_256x6:prop_3_0.05
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp"


def one(instance: str, setting: str, limit: float) -> dict:
    """Run one instance (``bench:onnx_stem:vnnlib_stem``) with one setting; the row's numbers."""
    sys.path.insert(0, str(ROOT))
    from robustkit.verification import VerifyConfig
    from robustkit.vnnlib.instance import verify_instance

    bench, onnx, prop = instance.split(":")
    folder = BENCH / bench
    mode, _, weight = setting.partition("/")
    cfg = VerifyConfig(method="bab", tighten="alpha-crown", timeout=limit, bab_intermediate=mode,
                       bab_depth_weight=float(weight) if weight else 3.0)
    r = verify_instance(folder / "onnx" / f"{onnx}.onnx", folder / "vnnlib" / f"{prop}.vnnlib", cfg, in_process=True)
    st = r.record.get("details", {}).get("bab", {})
    t = float(st.get("time", 0.0)) or 1.0
    rec = st.get("recomputed", 0)
    return {"status": r.status, "time": round(r.time, 1), "domains": st.get("domains", 0),
            "per_s": round(float(st.get("domains_per_s", 0.0)), 1),
            "intermediate": round(float(st.get("time_intermediate", 0.0)) / t, 2),
            "optimise": round(float(st.get("time_optimise", 0.0)) / t, 2),
            "stabilised": round(st.get("stabilised", 0) / rec, 2) if rec else None,
            "fixed_from": st.get("fixed_from"), "split_layer_mean": st.get("split_layer_mean")}


def cell(r: dict) -> str:
    s = f"{r['status']} {r['time']} s, {r['domains']:,} domains ({r['per_s']}/s; intermediate {r['intermediate']:.0%}, " \
        f"optimise {r['optimise']:.0%})"
    if r["stabilised"] is not None:
        s += f"; {r['stabilised']} decided/child"
    if r["fixed_from"]:
        s += f"; fixed from {r['fixed_from']}"
    if r.get("split_layer_mean") is not None and r["split_layer_mean"] == r["split_layer_mean"]:
        s += f"; split layer {r['split_layer_mean']:.2f}"
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("instances", nargs="*", help="bench:onnx_stem:vnnlib_stem")
    ap.add_argument("--a", default="recompute", help="bab_intermediate[/depth weight] of the first column")
    ap.add_argument("--b", default="auto", help="bab_intermediate[/depth weight] of the second column")
    ap.add_argument("--limit", type=float, default=72.0, help="seconds per instance")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    ap.add_argument("--one", nargs=2, metavar=("INSTANCE", "SETTING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.limit)))
        return
    if not args.instances:
        raise SystemExit("name at least one instance as bench:onnx_stem:vnnlib_stem")
    for inst in args.instances:
        parts = inst.split(":")
        if len(parts) != 3:
            raise SystemExit(f"{inst!r}: name an instance as bench:onnx_stem:vnnlib_stem")
        folder = BENCH / parts[0]
        for sub, stem, ext in (("onnx", parts[1], "onnx"), ("vnnlib", parts[2], "vnnlib")):
            if not (folder / sub / f"{stem}.{ext}").is_file():
                raise SystemExit(f"{inst!r}: {folder / sub / f'{stem}.{ext}'} not found")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = [f"| instance | limit (s) | {args.a} | {args.b} |", "|---|---|---|---|"]
    for inst in args.instances:
        procs = [subprocess.Popen([sys.executable, __file__, "--one", inst, s, "--limit", str(args.limit)],
                                  stdout=subprocess.PIPE, text=True, env=env) for s in (args.a, args.b)]
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"{inst}: a side failed (exit {[p.returncode for p in procs]})")
        a, b = (json.loads(o.strip().splitlines()[-1]) for o in outs)
        rows.append(f"| {inst.replace(':', ' ')} | {args.limit:g} | {cell(a)} | {cell(b)} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows) + "\n"
    if args.out:
        args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
