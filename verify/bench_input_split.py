"""Input splitting on low-dimensional nets: boxes per second and answers, before and after a change,
side by side, and every answer checked against the MILP where the MILP decides.

Instances (all written as ONNX + VNN-LIB under a temporary folder):

* ``wide``: random nets with 2, 3 or 5 inputs and one or two hidden layers of 500-2,000 ReLUs
  (Gaussian weights scaled by ``1/sqrt(fan_in)``), a robustness property of a random point at
  0.5 and 0.9 times the radius where sampling first finds a violation (r_s);
* ``trained``: nets of the same shapes trained (Adam, 400 steps) on a two-class problem with a
  curved boundary in the first two inputs, the same property at points near the boundary;
* ``acas``: ACAS Xu property 1 on the nets named by ``--acas`` (the ones that timed out at 0.1x
  before this change), when the benchmark folder is there.

Each instance runs in a fresh process, one thread, ``--before`` (a worktree of the old code) and
the current tree one after the other, so machine drift hits both alike; the MILP
(``--milp-max`` ReLUs at most) runs once. Boxes per second: every box the search bounded
(``boxes_per_s``; the old code's ``domains_per_s``, where each bounded box is a domain), over
the search's own time.

    OMP_NUM_THREADS=1 python verify/bench_input_split.py --before ../wt-base --timeout 15 \\
        --out verify/results/input_split_wide.md

Exits 1 on any disagreement (one side ``sat``, the other ``unsat``, or against the ground truth).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "verify"))
from bench_bab_vs_milp import network_of, onnx_of, sampled_radius  # noqa: E402

ACAS = ROOT.parent / "shared" / "benchmarks" / "vnncomp" / "acasxu_2021"
ACAS_NETS = "1_4 2_2 2_4 2_8 3_1 3_6 3_7 3_8 3_9 4_7 4_9 5_2 5_6 5_7 5_9"
SHAPES = ((2, (500,)), (2, (2000,)), (3, (500, 500)), (5, (1000,)))


def vnnlib_text(lo: np.ndarray, hi: np.ndarray, label: int, n_out: int) -> str:
    """The violation of robustness: some other output at least the label's."""
    lines = [f"(declare-const X_{i} Real)" for i in range(lo.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(lo.size):
        lines += [f"(assert (>= X_{i} {float(lo[i])!r}))", f"(assert (<= X_{i} {float(hi[i])!r}))"]
    ors = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label)
    lines.append(f"(assert (or {ors}))")
    return "\n".join(lines) + "\n"


def trained_weights(rng: np.random.Generator, n_in: int, hidden: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """A ReLU net trained to tell ``x1 > sin(3 x0)`` on ``[-1, 1]^n``."""
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    sizes = (n_in, *hidden, 2)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        x = torch.rand(256, n_in, generator=gen) * 2 - 1
        y = (x[:, 1] > torch.sin(3 * x[:, 0])).long()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [(m.weight.detach().numpy().astype(np.float32), m.bias.detach().numpy().astype(np.float32))
            for m in model if isinstance(m, torch.nn.Linear)]


def instances(args: argparse.Namespace, folder: Path) -> list[dict]:
    import onnx

    rng = np.random.default_rng(args.seed)
    out = []
    for kind in ("wide", "trained"):
        if kind not in args.kinds:
            continue
        for n_in, hidden in SHAPES:
            if kind == "wide":
                sizes = (n_in, *hidden, 3)
                mats = [((rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32),
                         (rng.normal(size=b) * 0.2).astype(np.float32)) for a, b in zip(sizes[:-1], sizes[1:])]
            else:
                mats = trained_weights(rng, n_in, hidden)
            net = network_of(mats)
            name = f"{kind}_{n_in}-{'-'.join(map(str, hidden))}"
            onnx.save(onnx_of(mats), folder / f"{name}.onnx")
            for tries in range(20):
                x0 = rng.uniform(-0.6, 0.6, size=n_in)
                label = int(net.forward(torch.from_numpy(x0[None])).argmax())
                r_s = sampled_radius(net, x0, label, rng)
                if r_s is not None and r_s > 1e-3:
                    break
            assert r_s is not None
            for scale in (0.5, 0.9):
                r = scale * r_s
                prop = folder / f"{name}_{scale}.vnnlib"
                prop.write_text(vnnlib_text(x0 - r, x0 + r, label, net.out_dim))
                out.append({"name": name, "radius": f"{r:.4g} ({scale} r_s)", "onnx": str(folder / f"{name}.onnx"),
                            "vnnlib": str(prop), "relus": sum(hidden), "truth": None})
    if args.acas and ACAS.is_dir() and "acas" in args.kinds:
        for tag in args.acas.split():
            out.append({"name": f"ACAS Xu {tag}", "radius": "prop_1", "relus": 300, "truth": "unsat",
                        "onnx": str(ACAS / f"ACASXU_run2a_{tag}_batch_2000.onnx"), "vnnlib": str(ACAS / "prop_1.vnnlib")})
    return out


def worker(method: str, onnx_path: str, vnnlib_path: str, timeout: float) -> None:
    """Run one instance with the robustkit on ``sys.path`` and print one JSON line."""
    torch.set_num_threads(1)
    from robustkit.verification.config import VerifyConfig
    from robustkit.verification.pipeline import verify_spec
    from robustkit.vnnlib.instance import load_instance

    ctx, spec = load_instance(onnx_path, vnnlib_path)
    t0 = time.perf_counter()
    cfg = VerifyConfig(method=method, attack_steps=0, tighten="crown", timeout=timeout)
    v = verify_spec(ctx, spec, cfg)
    bab = v.details.get("bab", {}) if isinstance(v.details, dict) else {}
    if v.result == "sat" and v.witness is not None:
        assert spec.is_violated_by(v.witness.x.astype(np.float64), v.witness.y)
    print(json.dumps({"result": v.result, "time": time.perf_counter() - t0, "stage": v.stage,
                      "boxes_per_s": bab.get("boxes_per_s", bab.get("domains_per_s")),
                      "boxes": bab.get("domains", 0) + bab.get("looked_ahead", 0) + bab.get("refined", 0),
                      "search_time": bab.get("time")}))


def run(root: str, method: str, inst: dict, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--worker", method, inst["onnx"], inst["vnnlib"], str(timeout)],
                          capture_output=True, text=True, env=env, timeout=timeout * 3 + 60)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"result": "error", "time": float("nan"), "boxes_per_s": None, "error": proc.stderr[-400:]}
    return json.loads(lines[-1])


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    rate = "" if not r.get("boxes_per_s") else f", {r['boxes_per_s']:.0f} boxes/s"
    return f"{r['result']} {r['time']:.2f} s{rate}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=4, metavar=("METHOD", "ONNX", "VNNLIB", "TIMEOUT"))
    ap.add_argument("--before", help="a worktree of the code to compare with")
    ap.add_argument("--timeout", type=float, default=15.0)
    ap.add_argument("--milp-max", type=int, default=500, help="MILP check for nets with at most this many ReLUs")
    ap.add_argument("--acas", default=ACAS_NETS, help="ACAS Xu nets for property 1 ('' for none)")
    ap.add_argument("--kinds", nargs="+", default=["wide", "trained", "acas"], choices=["wide", "trained", "acas"],
                    help="which instances (the module docstring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="only the first K instances")
    ap.add_argument("--out", type=Path, default=ROOT / "verify" / "results" / "input_split_wide.md")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2], float(args.worker[3]))
        return 0
    rows, bad = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for inst in instances(args, Path(tmp))[: args.limit]:
            after = run(str(ROOT), "bab", inst, args.timeout)
            before = run(args.before, "bab", inst, args.timeout) if args.before else None
            milp = run(str(ROOT), "milp", inst, args.timeout) if inst["relus"] <= args.milp_max and \
                not inst["name"].startswith("ACAS") else None
            answers = {r["result"] for r in (after, before, milp) if r} | ({inst["truth"]} if inst["truth"] else set())
            if {"sat", "unsat"} <= answers or "error" in answers:
                bad.append(inst["name"] + " " + inst["radius"])
            rows.append((inst, before, after, milp))
            print(inst["name"], inst["radius"], "| before:", cell(before), "| after:", cell(after), "| milp:", cell(milp),
                  flush=True)
    kinds = "" if len(args.kinds) == 3 else " --kinds " + " ".join(args.kinds)
    lines = [f"`OMP_NUM_THREADS=1 python verify/bench_input_split.py --before <worktree> --timeout {args.timeout:g}{kinds}`"
             f" (seed {args.seed}); before and after run one after the other per instance, one thread each, "
             "no attack, tighten=crown; MILP for nets of at most "
             f"{args.milp_max} ReLUs.", "",
             "| net | radius | before | after | MILP | speed-up (boxes/s) |", "|---|---|---|---|---|---|"]
    ratios = []
    for inst, before, after, milp in rows:
        ratio = ""
        if before and before.get("boxes_per_s") and after.get("boxes_per_s"):
            ratios.append(after["boxes_per_s"] / before["boxes_per_s"])
            ratio = f"{ratios[-1]:.1f}x"
        lines.append(f"| {inst['name']} | {inst['radius']} | {cell(before)} | {cell(after)} | {cell(milp)} | {ratio} |")
    decided = {k: sum(r is not None and r["result"] in ("sat", "unsat") for r in col)
               for k, col in (("before", [x[1] for x in rows]), ("after", [x[2] for x in rows]))}
    lines += ["", f"decided: before {decided['before']}, after {decided['after']} of {len(rows)}; "
              f"median boxes/s speed-up {np.median(ratios) if ratios else float('nan'):.1f}x; "
              f"disagreements: {len(bad)} {bad}"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
