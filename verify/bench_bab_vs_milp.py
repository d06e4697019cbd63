"""Soundness sweep: branch and bound (``method="bab"``) against the MILP (``method="milp"``), no attack.

The two complete methods must never disagree (one ``sat`` where the other says ``unsat``). Three parts:

1. ``--nets`` random small ReLU nets (1-3 hidden layers of width 4-24, 2-10 inputs, 2-4 outputs, seeded),
   each with one robustness property per factor of ``--factors``: an L-inf box around a random point
   whose radius is that factor times the radius at which sampling first finds a misclassified point
   (so the answers mix ``sat`` and ``unsat``). Decided with ``verify_spec``, ``--timeout`` s each.
2. Every instance of ``../shared/benchmarks/vnncomp/test_2021`` through ``verify_instance``
   (in process), at ``--vnn-timeout`` s, against each other and the expected results.
3. With ``--mnist-fc N``, the first N instances of ``../shared/benchmarks/vnncomp/mnist_fc_2022`` at
   ``--mnist-timeout`` s, against each other and the ground truth of ``results_summary.csv``.

Every ``sat`` of part 1 must come with a witness inside the box that violates the property (checked
here); ``verify_instance`` replays its witnesses in onnxruntime itself (a witness that fails becomes
``unknown``). The attack is off (``--attack-steps 0``), so the complete methods must decide.

Run from the repository root:
    OMP_NUM_THREADS=1 python verify/bench_bab_vs_milp.py [--nets 60] [--timeout 10] [--vnn-timeout 60] [--mnist-fc 0]
        [--bab-split auto|relu|input]
Smoke run:
    OMP_NUM_THREADS=1 python verify/bench_bab_vs_milp.py --nets 4 --timeout 5 --vnn-timeout 20 --out /tmp/bab_vs_milp.md
Writes verify/results/bab_vs_milp.md (one row per property, then the summary) and prints the summary.
Exits with code 1 on any disagreement between the methods, any answer that contradicts the known
result, any bad witness or any error.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from robustkit.onnx_export import OPSET
from robustkit.network import Dense, Network, ReLU
from robustkit.spec import InputBox, robustness_spec
from robustkit.verification import ModelContext, VerifyConfig, verify_spec
from robustkit.vnnlib.bench import load_benchmark
from robustkit.vnnlib.instance import verify_instance

IR_VERSION = 8  # readable by every onnxruntime robustkit supports (>= 1.17); robustkit.onnx_export no longer defines it

ROOT = Path(__file__).resolve().parents[1]
VNNCOMP = ROOT.parent / "shared" / "benchmarks" / "vnncomp"
METHODS = ("milp", "bab")
DECIDED = ("sat", "unsat")


# -- random nets -----------------------------------------------------------------------------------
def random_sizes(rng: np.random.Generator) -> tuple[int, ...]:
    depth = int(rng.integers(1, 4))  # hidden layers
    return (int(rng.integers(2, 11)), *(int(rng.integers(4, 25)) for _ in range(depth)), int(rng.integers(2, 5)))


def random_weights(rng: np.random.Generator, sizes: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Float32 weights (as tests/test_bab.py draws them), so the ONNX file and the Network agree exactly."""
    return [((rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32), (rng.normal(size=b) * 0.2).astype(np.float32))
            for a, b in zip(sizes[:-1], sizes[1:])]


def network_of(mats: list[tuple[np.ndarray, np.ndarray]]) -> Network:
    """The robustkit Network of a Dense/ReLU chain (no ReLU after the last layer), like test_bab's _random_net."""
    layers: list = []
    for i, (w, b) in enumerate(mats):
        layers.append(Dense(torch.from_numpy(w.astype(np.float64)), torch.from_numpy(b.astype(np.float64))))
        if i < len(mats) - 1:
            layers.append(ReLU(w.shape[0]))
    n_in = mats[0][0].shape[1]
    return Network(tuple(layers), (n_in,), (1, n_in))


def onnx_of(mats: list[tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """A Gemm(transB=1) + Relu chain taking (1, n_in), as the tests' ``mlp_model`` builds it."""
    nodes, inits, cur = [], [], "x"
    for i, (w, b) in enumerate(mats):
        last = i == len(mats) - 1
        out = "y" if last else f"z{i}"
        inits += [numpy_helper.from_array(w, name=f"W{i}"), numpy_helper.from_array(b, name=f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], transB=1, name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            cur = f"a{i}"
    graph = helper.make_graph(
        nodes, "bab_vs_milp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, mats[0][0].shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, mats[-1][0].shape[0]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="robustkit-bench")
    onnx.checker.check_model(model)
    return model


def sampled_radius(net: Network, x0: np.ndarray, label: int, rng: np.random.Generator,
                   n: int = 768, r_max: float = 64.0, steps: int = 20) -> float | None:
    """The smallest L-inf radius (bisection) at which one of ``n`` sampled points of the box (uniform
    plus corners) is misclassified: an upper bound on the true robustness radius. None if not found
    up to ``r_max``."""

    def violated(r: float) -> bool:
        lo, hi = x0 - r, x0 + r
        pts = np.concatenate([rng.uniform(lo, hi, size=(n, x0.size)),
                              np.where(rng.random((n // 3, x0.size)) < 0.5, lo, hi)])
        with torch.no_grad():
            y = net.forward(torch.from_numpy(pts)).numpy()
        others = np.delete(y, label, axis=1)
        return bool((others.max(axis=1) >= y[:, label]).any())

    hi = 0.05
    while not violated(hi):
        hi *= 2
        if hi > r_max:
            return None
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if violated(mid) else (mid, hi)
    return hi


def split_of(method: str, args: argparse.Namespace) -> dict[str, str]:
    """``--bab-split`` for the BaB runs (the MILP has no split)."""
    return {"bab_split": args.bab_split} if method == "bab" else {}


# -- the sweep -------------------------------------------------------------------------------------
@dataclass
class Row:
    part: str
    name: str  # net id / instance
    detail: str  # sizes / property
    radius: str
    answers: dict[str, tuple[str, float, str]] = field(default_factory=dict)  # method -> (status, s, note)
    truth: str | None = None

    def status(self, method: str) -> str:
        return self.answers[method][0]

    @property
    def decided(self) -> bool:
        return all(self.status(m) in DECIDED for m in METHODS)

    @property
    def disagree(self) -> bool:
        return self.decided and self.status("milp") != self.status("bab")

    def wrong(self) -> list[str]:
        """Methods whose decided answer contradicts the known result."""
        return [m for m in METHODS if self.truth in DECIDED and self.status(m) in DECIDED and self.status(m) != self.truth]

    def problems(self) -> list[str]:
        out = []
        if self.disagree:
            out.append(f"DISAGREEMENT: milp {self.status('milp')} vs bab {self.status('bab')}")
        out += [f"WRONG: {m} says {self.status(m)}, known {self.truth}" for m in self.wrong()]
        out += [f"{m}: {note}" for m, (st, _, note) in self.answers.items() if st == "error" or note.startswith("BAD")]
        return out

    def agree_cell(self) -> str:
        if self.disagree:
            return "**NO**"
        return "yes" if self.decided else "-"

    def cell(self, method: str) -> str:
        st, t, note = self.answers[method]
        return f"{st} {t:.2f}" + (f" ({note})" if note else "")


def run_random(args: argparse.Namespace, cfgs: dict[str, VerifyConfig]) -> list[Row]:
    rows: list[Row] = []
    for k in range(args.nets):
        rng = np.random.default_rng([args.seed, k])
        sizes = random_sizes(rng)
        if args.in_dims is not None:  # the inputs drawn from another range (the hidden layers as before)
            sizes = (int(rng.integers(args.in_dims[0], args.in_dims[1] + 1)), *sizes[1:])
        mats = random_weights(rng, sizes)
        ctx = ModelContext.from_bytes(onnx_of(mats).SerializeToString(), f"net{k}.onnx")
        net = network_of(mats)
        x0 = rng.uniform(-1, 1, size=sizes[0])
        with torch.no_grad():
            y0 = ctx.net.forward(torch.from_numpy(x0[None])).reshape(-1).numpy()
            y1 = net.forward(torch.from_numpy(x0[None])).reshape(-1).numpy()
        assert np.allclose(y0, y1, atol=1e-6), (k, y0, y1)  # the ONNX file and the Network are one net
        label = int(np.argmax(y0))
        r_s = sampled_radius(net, x0, label, rng)
        base = r_s if r_s is not None else 64.0
        for f in args.factors:
            eps = f * base
            box = InputBox(x0 - eps, x0 + eps)
            spec = robustness_spec(label, sizes[-1], box)
            row = Row("random", f"net{k}", "-".join(map(str, sizes)), f"{eps:.4g} ({f:g} r_s)")
            for method in METHODS:
                t0 = time.perf_counter()
                try:
                    v = verify_spec(ctx, spec, cfgs[method])
                    st, note = v.result, ""
                    if st == "sat":
                        if v.witness is None:
                            note = "BAD: sat without a witness"
                        else:
                            x = v.witness.x.astype(np.float64)
                            if not box.contains(x):
                                note = "BAD: witness outside the box"
                            elif not spec.is_violated_by(x, v.witness.y):
                                note = "BAD: witness does not violate the property"
                except Exception as e:  # noqa: BLE001 - a crash is a finding, the sweep goes on
                    st, note = "error", f"{type(e).__name__}: {e}"
                row.answers[method] = (st, time.perf_counter() - t0, note)
            rows.append(row)
            print(f"[{k + 1}/{args.nets}] {row.name} {row.detail} eps={row.radius}: "
                  f"milp {row.cell('milp')} | bab {row.cell('bab')}" + ("  <-- DISAGREE" if row.disagree else ""),
                  flush=True)
    return rows


def run_vnncomp(folder: Path, part: str, limit: int | None, timeout: float, args: argparse.Namespace) -> list[Row]:
    bench = load_benchmark(folder)
    rows: list[Row] = []
    for inst in bench.select(None, limit):
        row = Row(part, Path(inst.onnx).name, Path(inst.vnnlib).name, "-", truth=inst.ground_truth)
        for method in METHODS:
            cfg = VerifyConfig(method=method, tighten=args.tighten, attack_steps=args.attack_steps,  # type: ignore[arg-type]
                               timeout=timeout, **split_of(method, args))
            t0 = time.perf_counter()
            try:
                res = verify_instance(folder / inst.onnx, folder / inst.vnnlib, cfg, in_process=True)
                st, note = res.status, ""
            except Exception as e:  # noqa: BLE001
                st, note = "error", f"{type(e).__name__}: {e}"
            row.answers[method] = (st, time.perf_counter() - t0, note)
        rows.append(row)
        print(f"{part} #{inst.index} {row.name} {row.detail} (known {row.truth}): "
              f"milp {row.cell('milp')} | bab {row.cell('bab')}" + ("  <-- " + "; ".join(row.problems()) if row.problems() else ""),
              flush=True)
    return rows


# -- the report ------------------------------------------------------------------------------------
def summary(rows: list[Row], title: str) -> list[str]:
    both = [r for r in rows if r.decided]
    lines = [
        f"- **{title}**: {len(rows)} properties; both decided: {len(both)} "
        f"(sat {sum(r.status('milp') == 'sat' for r in both if not r.disagree)}, "
        f"unsat {sum(r.status('milp') == 'unsat' for r in both if not r.disagree)}); "
        f"disagreements: **{sum(r.disagree for r in rows)}**; undecided by either: "
        f"{sum(not r.decided for r in rows)} (milp {sum(r.status('milp') not in DECIDED for r in rows)}, "
        f"bab {sum(r.status('bab') not in DECIDED for r in rows)})",
    ]
    for m in METHODS:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status(m)] = counts.get(r.status(m), 0) + 1
        t = sum(r.answers[m][1] for r in rows)
        lines.append(f"  - {m}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; {t:.1f} s in all")
    if any(r.truth for r in rows):
        lines.append(f"  - answers contradicting the known result: **{sum(len(r.wrong()) for r in rows)}**")
    return lines


def table(rows: list[Row], with_truth: bool) -> list[str]:
    if with_truth:
        head = ["| model | property | known | milp (s) | bab (s) | agree? | vs known |", "|---|---|---|---|---|---|---|"]
        body = [f"| {r.name} | {r.detail} | {r.truth or '?'} | {r.cell('milp')} | {r.cell('bab')} | {r.agree_cell()} | "
                f"{'**WRONG: ' + ', '.join(r.wrong()) + '**' if r.wrong() else ('ok' if r.truth else '-')} |" for r in rows]
    else:
        head = ["| net | sizes | radius | milp (s) | bab (s) | agree? |", "|---|---|---|---|---|---|"]
        body = [f"| {r.name} | {r.detail} | {r.radius} | {r.cell('milp')} | {r.cell('bab')} | {r.agree_cell()} |"
                for r in rows]
    return head + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", type=int, default=60, help="random nets (part 1)")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.5, 0.9, 1.25],
                    help="radii per net, as multiples of the sampled first-violation radius")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per random-net property and method")
    ap.add_argument("--tighten", default="crown", help="the bounds that build the MILP / under BaB")
    ap.add_argument("--attack-steps", type=int, default=0, help="0: the complete methods must decide")
    ap.add_argument("--vnn-timeout", type=float, default=60.0, help="seconds per test_2021 instance and method")
    ap.add_argument("--no-test2021", action="store_true", help="skip part 2")
    ap.add_argument("--mnist-fc", type=int, default=0, help="first N mnist_fc_2022 instances (part 3; 0: skip)")
    ap.add_argument("--mnist-timeout", type=float, default=30.0)
    ap.add_argument("--in-dims", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                    help="draw the random nets' input dimension from LO..HI instead of 2..10")
    ap.add_argument("--bab-split", default="auto", choices=["auto", "relu", "input"],
                    help="what BaB splits: relu, input (the input box), or auto (input for at most 10 inputs)")
    ap.add_argument("--out", type=Path, default=ROOT / "verify" / "results" / "bab_vs_milp.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    command = "OMP_NUM_THREADS=1 python verify/bench_bab_vs_milp.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])

    cfgs = {m: VerifyConfig(method=m, tighten=args.tighten, attack_steps=args.attack_steps,  # type: ignore[arg-type]
                            timeout=args.timeout, **split_of(m, args)) for m in METHODS}
    t0 = time.perf_counter()
    parts: list[tuple[str, list[Row], bool]] = []
    if args.nets > 0:
        parts.append((f"Random ReLU nets ({args.nets} nets x {len(args.factors)} radii, {args.timeout:g} s)",
                      run_random(args, cfgs), False))
    if not args.no_test2021:
        parts.append((f"VNN-COMP 2021 test ({args.vnn_timeout:g} s)",
                      run_vnncomp(VNNCOMP / "test_2021", "test_2021", None, args.vnn_timeout, args), True))
    if args.mnist_fc > 0:
        parts.append((f"VNN-COMP 2022 mnist_fc, first {args.mnist_fc} ({args.mnist_timeout:g} s)",
                      run_vnncomp(VNNCOMP / "mnist_fc_2022", "mnist_fc", args.mnist_fc, args.mnist_timeout, args), True))
    elapsed = time.perf_counter() - t0
    all_rows = [r for _, rows, _ in parts for r in rows]
    problems = [f"{r.part} {r.name} {r.detail} {r.radius}: {p}" for r in all_rows for p in r.problems()]

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0
    commit = (commit or "?") + (" (plus uncommitted changes to tracked files)" if dirty else "")
    summ: list[str] = []
    for title, rows, _ in parts:
        summ += summary(rows, title)
    if len(parts) > 1:
        summ += summary(all_rows, "All parts")
    summ += [""] + (["**PROBLEMS (must be none):**", *(f"- {p}" for p in problems)] if problems else
                    ["No disagreement between milp and bab, no answer against a known result, no bad witness, no error."])
    lines = [
        "# Branch and bound vs the MILP: a soundness sweep",
        "",
        f"`{command}` at commit {commit} on {platform.node() or 'this machine'} ({platform.machine()}, "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}), {elapsed:.0f} s in all. "
        f"Both complete methods run without the attack (attack_steps={args.attack_steps}), tighten={args.tighten}; "
        "a disagreement is one method saying sat where the other says unsat. Random-net radii are multiples of "
        "r_s, the smallest radius at which sampling finds a misclassified point (an upper bound on the true radius).",
        "",
        "## Summary",
        "",
        *summ,
        "",
    ]
    for title, rows, with_truth in parts:
        lines += [f"## {title}", "", *table(rows, with_truth), ""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print("\n" + "\n".join(summ))
    print(f"\n{elapsed:.0f} s; wrote {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
