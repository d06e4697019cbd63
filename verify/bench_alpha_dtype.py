"""alpha-CROWN with its slopes stepped in float32 against float64 (issue 15): time and tightness.

For each named VNN-COMP instance, the root bounds of branch and bound (interval -> CROWN ->
alpha-CROWN, 30 Adam steps, no time budget) over the instance's input box, once with
``AlphaCrownConfig(optimise_dtype="float64")`` and once with ``"float32"`` (the default: the
steps in float32, every bound from one float64 pass with the slopes reached), in one process,
one thread, alternating the order per instance. Reports the alpha-CROWN stage's seconds, the
unstable ReLUs it leaves, the property's bound margin (the largest ``d - lower(C y)`` over the
rows: below 0 proves the property) and the summed widths of all layer bounds.

    python verify/bench_alpha_dtype.py            # writes verify/results/alpha_crown_dtype.md
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from pathlib import Path

import torch

from robustkit.bounds.alpha_crown import AlphaCrownConfig
from robustkit.bounds.methods import BoundsConfig, run_bounds
from robustkit.vnnlib.instance import load_instance

ROOT = Path(__file__).resolve().parents[1]
VNNCOMP = ROOT.parent / "shared" / "benchmarks" / "vnncomp"
DEFAULT = [
    "oval21_2022:cifar_base_kw:cifar_base_kw-img876-eps0.024836601307189544",
    "oval21_2022:cifar_wide_kw:cifar_wide_kw-img3458-eps0.022875816993464054",
    "oval21_2022:cifar_deep_kw:cifar_deep_kw-img4510-eps0.028235294117647063",
    "mnist_fc_2022:mnist-net_256x6:prop_3_0.05",
]


def measure(bench: str, onnx: str, prop: str, dtype: str) -> dict[str, float]:
    ctx, spec = load_instance(VNNCOMP / bench / "onnx" / f"{onnx}.onnx", VNNCOMP / bench / "vnnlib" / f"{prop}.vnnlib")
    box, out = spec.regions[0]
    C, d, _ = out.stacked()
    lo, hi = torch.tensor(box.lower[None]), torch.tensor(box.upper[None])
    cfg = BoundsConfig(alpha=AlphaCrownConfig(optimise_dtype=dtype))
    res = run_bounds(ctx.net, lo, hi, "alpha-crown", torch.tensor(C[None]), config=cfg)
    stage = res.stages[-1]
    width = sum(float((u - l).clamp(min=0).sum()) for l, u in zip(res.bounds.lower, res.bounds.upper))
    margin = float((torch.tensor(d) - res.spec.lower[0]).max())
    return {"seconds": stage.seconds, "unstable": stage.unstable, "margin": margin, "width": width}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", nargs="*", default=DEFAULT, help="bench:onnx:prop (names without extensions)")
    ap.add_argument("--out", type=Path, default=ROOT / "verify" / "results" / "alpha_crown_dtype.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rows = []
    t0 = time.perf_counter()
    for i, item in enumerate(args.instances):
        bench, onnx, prop = item.split(":")
        order = ("float64", "float32") if i % 2 == 0 else ("float32", "float64")
        got = {dt: measure(bench, onnx, prop, dt) for dt in order}
        a, b = got["float64"], got["float32"]
        rows.append(f"| {bench} {onnx} {prop} | {a['seconds']:.1f} | {b['seconds']:.1f} | "
                    f"{a['seconds'] / b['seconds']:.2f}x | {a['unstable']} / {b['unstable']} | "
                    f"{a['margin']:.5f} / {b['margin']:.5f} | {a['width']:.2f} / {b['width']:.2f} |")
        print(rows[-1], flush=True)
    text = [
        "# alpha-CROWN: slopes stepped in float32 vs float64 (issue 15)", "",
        f"`python verify/bench_alpha_dtype.py` at commit {commit} on {platform.node()} ({platform.machine()}, "
        f"Python {platform.python_version()}), one thread, {time.perf_counter() - t0:.0f} s in all. The root bounds "
        "of branch and bound (interval -> CROWN -> alpha-CROWN, 30 Adam steps, no time budget) over each "
        "instance's input box; both runs in one process, order alternating per instance. float32: the steps "
        "in float32, every bound from one float64 pass with the slopes reached (the float32 values are never "
        "bounds); float64: the best value of each bound over all the steps.", "",
        "| instance | float64 (s) | float32 (s) | speed-up | unstable ReLUs (64 / 32) | bound margin (64 / 32) "
        "| summed widths (64 / 32) |",
        "|---|---|---|---|---|---|---|",
        *rows, "",
        "Bound margin: the largest `d - lower(C y)` over the rows (below 0 proves the property). Whole-benchmark "
        "effect: `vnncomp_oval21_all30_x0.1_bab.md`.", "",
    ]
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
