"""Bound propagation benchmark: unstable ReLUs per layer, margin lower bounds and time per sample
for interval arithmetic, CROWN, alpha-CROWN and +LP tightening; robustkit vs auto_LiRPA.

Settings:
* VNN-COMP 2022 ``mnist-net_256x2.onnx`` at eps 0.03 on its 15 properties
  ``prop_{0..14}_0.03.vnnlib`` (boxes and labels read with ``robustkit.vnnlib.parse_vnnlib``);
  the official ground truth (``results_summary.csv``) is shown beside what the bounds certify
  (a certified ``sat`` instance would be a soundness bug).
* robustkit-trained MNIST models (``--models``, default the PGD + ReLU-stability model and the
  plain baseline under ``models/``) on the first N embedded test images at their training eps
  (``robustkit.train_config``; 0.02 for eps-0 models).
* Each method is the whole pipeline up to it (``compute_bounds``), run per sample (batch 1),
  CPU, ``torch.set_num_threads(1)``; "+LP" gets ``--lp-budget`` seconds per sample for its
  optimising stages together (alpha-CROWN, then LP with what is left).
* auto_LiRPA 0.3 (when importable): CROWN time ratio and bound difference against robustkit's
  plain CROWN (no interval intersection; auto_LiRPA with ``sparse_intermediate_bounds`` off),
  and both alpha-CROWNs with 30 iterations, lr 0.1.

Run from the repository root:  python verify/bench_bounds.py [--n 15] [--lp-budget 20] [--models A.onnx,B.onnx]
Writes verify/results/bounds.md and prints it.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robustkit.bounds import (
    AlphaCrownConfig,
    CrownConfig,
    alpha_crown_bounds,
    crown_bounds,
    lirpa_available,
    margin_matrix,
    relu_stability,
    run_bounds,
)
from robustkit.network import Network, load_onnx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp" / "mnist_fc_2022"
OUT = ROOT / "verify" / "results" / "bounds.md"
METHODS = ("interval", "crown", "alpha-crown", "lp")


@dataclass
class Case:
    """One input box with its label (and the official answer when known)."""

    lower: torch.Tensor
    upper: torch.Tensor
    label: int
    truth: str = "-"


@dataclass
class MethodRow:
    method: str
    unstable: list[list[int]] = field(default_factory=list)  # per sample, per ReLU layer
    seconds: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)


def vnn_cases(n: int) -> list[Case]:
    from robustkit.vnnlib import parse_vnnlib

    truth: dict[str, str] = {}
    summary = BENCH / "results_summary.csv"
    if summary.exists():
        with summary.open() as f:
            for row in csv.DictReader(f):
                if row["onnx"].endswith("mnist-net_256x2.onnx"):
                    truth[Path(row["vnnlib"]).name] = row["ground_truth"]
    cases = []
    for i in range(n):
        name = f"prop_{i}_0.03.vnnlib"
        spec = parse_vnnlib(BENCH / "vnnlib" / name)
        box, out = spec.regions[0]
        label = out.robustness_label()
        assert label is not None, f"{name} is not a robustness property"
        lo = torch.from_numpy(np.array(box.lower)).unsqueeze(0)
        hi = torch.from_numpy(np.array(box.upper)).unsqueeze(0)
        cases.append(Case(lo, hi, label, truth.get(name, "-")))
    return cases


def image_cases(net: Network, eps: float, n: int) -> list[Case]:
    from robustkit.data import embedded_subset

    ds = embedded_subset("mnist").head(n)
    x = ds.images.reshape(len(ds), -1).double()
    return [
        Case((x[i : i + 1] - eps).clamp(0, 1), (x[i : i + 1] + eps).clamp(0, 1), int(ds.labels[i]))
        for i in range(len(ds))
    ]


def run_methods(net: Network, cases: list[Case], methods: tuple[str, ...], lp_budget: float) -> list[MethodRow]:
    rows = []
    for method in methods:
        row = MethodRow(method)
        warm = cases[0]  # first call pays for lazy imports and allocator warm-up: not timed
        run_bounds(net, warm.lower, warm.upper, method, margin_matrix(torch.tensor([warm.label]), net.out_dim), 1.0)
        for case in cases:
            C = margin_matrix(torch.tensor([case.label]), net.out_dim)
            t0 = time.perf_counter()
            result = run_bounds(net, case.lower, case.upper, method, C, lp_budget if method in ("lp", "milp") else None)
            row.seconds.append(time.perf_counter() - t0)
            assert result.spec is not None
            row.unstable.append([int(s.unstable[0]) for s in relu_stability(net, result.bounds)])
            row.margin.append(float(result.spec.lower.min()))
        rows.append(row)
        print(f"  {method}: {statistics.mean(row.seconds):.3f} s/sample", flush=True)
    return rows


def method_table(net: Network, rows: list[MethodRow], cases: list[Case], lp_budget: float) -> list[str]:
    n_layers = len(net.split_indices)
    dims = [net.layers[r].in_dim for r in net.split_indices]
    head = ["method"] + [f"unstable L{k} (of {d})" for k, d in enumerate(dims)] + [
        "unstable total", "removed vs previous", "certified", "mean min-margin LB", "s/sample (mean)", "s/sample (median)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    prev = None
    for row in rows:
        per_layer = np.array(row.unstable).mean(axis=0) if row.unstable else np.zeros(n_layers)
        total = float(per_layer.sum())
        removed = "-" if prev is None else f"{prev - total:.2f}"
        prev = total
        certified = sum(m > 0 for m in row.margin)
        name = row.method if row.method != "lp" else f"+LP (alpha-CROWN + LP within {lp_budget:g} s)"
        lines.append("| " + " | ".join(
            [name] + [f"{v:.2f}" for v in per_layer] + [f"{total:.2f}", removed, f"{certified}/{len(cases)}",
             f"{statistics.mean(row.margin):.4f}", f"{statistics.mean(row.seconds):.3f}",
             f"{statistics.median(row.seconds):.3f}"]) + " |")
    return lines


def per_case_table(rows: list[MethodRow], cases: list[Case]) -> list[str]:
    head = ["#", "label", "ground truth"] + [f"{r.method} min-margin LB" for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, case in enumerate(cases):
        lines.append("| " + " | ".join([str(i), str(case.label), case.truth] + [f"{r.margin[i]:.4f}" for r in rows]) + " |")
    unsound = [i for i, c in enumerate(cases) if c.truth == "sat" and any(r.margin[i] > 0 for r in rows)]
    lines.append("")
    lines.append(f"Certified (margin LB > 0) instances whose official answer is `sat`: {unsound or 'none'}.")
    return lines


def lirpa_section(net: Network, cases: list[Case], name: str, alpha_boxes: int) -> list[str]:
    from robustkit.bounds.lirpa_compat import LirpaNetwork

    plain = CrownConfig(intersect_interval=False, refine_stable=True)
    full = LirpaNetwork(net, {"sparse_intermediate_bounds": False})
    default = LirpaNetwork(net)
    lo = torch.cat([c.lower for c in cases])
    hi = torch.cat([c.upper for c in cases])
    C = margin_matrix(torch.tensor([c.label for c in cases]), net.out_dim)

    def timed(fn, repeat: int = 3) -> tuple[float, object]:
        fn()  # warm-up
        best, out = float("inf"), None
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    n = len(cases)
    t_rk, (_, rk) = timed(lambda: crown_bounds(net, lo, hi, C, plain))
    t_rk_def, (_, rk_def) = timed(lambda: crown_bounds(net, lo, hi, C))
    t_li, li = timed(lambda: full.bounds(lo, hi, "crown", C))
    t_li_def, li_def = timed(lambda: default.bounds(lo, hi, "crown", C))
    diff = float(torch.maximum((rk.lower - li.lower).abs(), (rk.upper - li.upper).abs()).max())
    rel = diff / float(li.lower.abs().max())
    t1_rk = min(timed(lambda c=c: crown_bounds(net, c.lower, c.upper, margin_matrix(torch.tensor([c.label]), net.out_dim), plain), 1)[0] for c in cases)
    t1_li = min(timed(lambda c=c: full.bounds(c.lower, c.upper, "crown", margin_matrix(torch.tensor([c.label]), net.out_dim)), 1)[0] for c in cases)
    lines = [
        f"### {name}: robustkit vs auto_LiRPA 0.3 ({n} boxes)",
        "",
        "| computation | robustkit (s) | auto_LiRPA (s) | ratio auto_LiRPA / robustkit | bounds |",
        "|---|---|---|---|---|",
        f"| plain CROWN, batch of {n} (best of 3) | {t_rk:.4f} | {t_li:.4f} | {t_li / t_rk:.2f} | max abs difference "
        f"{diff:.2e} (relative to the largest bound {rel:.1e}; robustkit's carry the float error model of robustkit/bounds/floaterr.py) |",
        f"| plain CROWN, one box (fastest of {n}) | {t1_rk:.4f} | {t1_li:.4f} | {t1_li / t1_rk:.2f} | same |",
        f"| default CROWN, batch of {n} (robustkit: stable neurons skipped, tighter of CROWN and interval per "
        f"neuron; auto_LiRPA: sparse intermediate bounds) | {t_rk_def:.4f} | {t_li_def:.4f} | {t_li_def / t_rk_def:.2f} "
        f"| mean min-margin LB robustkit {float(rk_def.lower.min(1).values.mean()):.4f}, auto_LiRPA "
        f"{float(li_def.lower.min(1).values.mean()):.4f} |",
    ]
    k = min(alpha_boxes, n)
    if k == 0:
        return lines + ["", "(alpha-CROWN comparison not run for this net; see --lirpa-alpha-conv.)", ""]
    lo, hi, C = lo[:k], hi[:k], C[:k]
    t0 = time.perf_counter()
    _, rk_a = alpha_crown_bounds(net, lo, hi, C, AlphaCrownConfig())
    t_rk_a = time.perf_counter() - t0
    t0 = time.perf_counter()
    li_a = default.bounds(lo, hi, "alpha-crown", C)
    t_li_a = time.perf_counter() - t0
    assert rk_a is not None
    return lines + [
        f"| alpha-CROWN 30 it., batch of {k} | {t_rk_a:.2f} | {t_li_a:.2f} | {t_li_a / t_rk_a:.2f} | mean min-margin LB "
        f"robustkit {float(rk_a.lower.min(1).values.mean()):.4f}, auto_LiRPA {float(li_a.lower.min(1).values.mean()):.4f}; "
        f"certified {int((rk_a.lower.min(1).values > 0).sum())} vs {int((li_a.lower.min(1).values > 0).sum())} |",
        "",
    ]


def train_eps(net: Network) -> float:
    """The eps the model was trained for (0.0 for plain training or unreadable metadata)."""
    try:
        return float(json.loads(net.metadata.get("robustkit.train_config", "{}")).get("eps", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=15, help="boxes per model")
    parser.add_argument("--lp-budget", type=float, default=20.0, help="LP seconds per sample")
    parser.add_argument("--models", default="mnist_small_pgd_rs.onnx,mnist_small_plain.onnx",
                        help="comma-separated file names under models/mnist/ (robustkit-trained MNIST nets)")
    parser.add_argument("--skip-lirpa", action="store_true")
    parser.add_argument("--lirpa-alpha-conv", type=int, default=0,
                        help="boxes for the auto_LiRPA alpha-CROWN comparison on conv nets (slow: minutes per box)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ok, why = lirpa_available()
    lines = [
        "# Bound propagation benchmark",
        "",
        f"`python verify/bench_bounds.py --n {args.n} --lp-budget {args.lp_budget:g} --models {args.models}`; "
        f"{platform.processor() or platform.machine()}, "
        f"1 torch thread, HiGHS 1 thread, shared 2-core machine (timings are indicative); torch {torch.__version__}.",
        "Each method row is the whole pipeline up to that method (interval -> CROWN -> alpha-CROWN -> LP), "
        "per sample (batch 1). Unstable counts are means per sample; \"certified\": min-margin lower bound > 0.",
        "",
    ]
    vnn = BENCH / "onnx" / "mnist-net_256x2.onnx"
    if vnn.exists():
        net = load_onnx(vnn)
        cases = vnn_cases(args.n)
        print(f"VNN mnist-net_256x2, {len(cases)} properties", flush=True)
        rows = run_methods(net, cases, METHODS, args.lp_budget)
        lines += [f"## VNN-COMP 2022 mnist-net_256x2.onnx, eps 0.03, prop_0..{len(cases) - 1}", ""]
        lines += method_table(net, rows, cases, args.lp_budget) + [""]
        lines += per_case_table(rows, cases) + [""]
        if ok and not args.skip_lirpa:
            lines += lirpa_section(net, cases, "mnist-net_256x2", len(cases))
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        path = ROOT / "models" / "mnist" / model_name
        if not path.exists():
            print(f"{path} absent: skipped", flush=True)
            continue
        net = load_onnx(path)
        if net.metadata.get("robustkit.dataset", "").strip('"') != "mnist":
            continue
        trained = train_eps(net)
        eps = trained if trained > 0 else 0.02
        cases = image_cases(net, eps, args.n)
        print(f"{path.name}, eps {eps}", flush=True)
        many_unstable = trained == 0  # plain training: thousands of unstable ReLUs, LP is hopeless
        methods = METHODS[:3] if many_unstable else METHODS
        rows = run_methods(net, cases, methods, args.lp_budget)
        lines += [f"## {path.name} (robustkit-trained), eps {eps:g}, first {len(cases)} embedded MNIST test images", ""]
        lines += method_table(net, rows, cases, args.lp_budget) + [""]
        if many_unstable:
            lines += ["(+LP skipped: thousands of unstable ReLUs per sample.)", ""]
        if ok and not args.skip_lirpa:
            lines += lirpa_section(net, cases, path.name, args.lirpa_alpha_conv)
    if not ok:
        lines += [f"auto_LiRPA not importable here ({why}); comparison skipped.", ""]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
