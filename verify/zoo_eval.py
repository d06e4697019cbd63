"""Score the model zoo at one eps: the table users want (issue 3).

For each `models/mnist_small_<name>.onnx`:
  * clean accuracy on the full MNIST test set (onnxruntime-equivalent torch forward);
  * PGD accuracy on the first `--n-pgd` test images (L-inf, 50 steps, 10 restarts, margin loss);
  * mean stably-active / stably-inactive / unstable ReLUs per layer under interval (IBP) and CROWN
    bounds on the first `--n-stats` images;
  * FGSM accuracy (L-inf, eps) and L2 PGD accuracy (radius `--l2-eps`) on the first `--n-pgd` images,
    and the median minimal L2 distortion a PGD attack needs (bisection; Gu & Rigazio's RMS units,
    ||x' - x||_2 / sqrt(784)) on the first `--n-dist` images: the papers' own robustness measures;
  * complete-verifier results (attack -> CROWN -> MILP) on the first `--n-verify` images.

    python verify/zoo_eval.py --data-dir ../shared/data --eps 0.1 --n-verify 100 --timeout 30 --workers 2
Writes verify/results/zoo_mnist_eps<eps>.md (and .json). Resumable: verification records are kept in
runs/zoo_eval/ keyed by model and settings, so rerunning only fills what is missing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from robustkit.bounds.stability import dataset_bound_statistics
from robustkit.cli.attack import evaluate_attack
from robustkit.data import load_dataset
from robustkit.network import load_onnx
from robustkit.verification import VerifyConfig
from robustkit.verification.run import DatasetChoice, RunOptions, verify_dataset

ROOT = Path(__file__).resolve().parents[1]


def clean_accuracy(model: Path, data_dir: Path) -> float:
    ds = load_dataset("mnist", "test", data_dir)
    module = load_onnx(model).to_torch().eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(ds), 1000):
            correct += int((module(ds.images[i:i + 1000]).argmax(1) == ds.labels[i:i + 1000]).sum())
    return 100.0 * correct / len(ds)


def attack_columns(model: Path, eps: float, l2_eps: float, n_pgd: int, n_dist: int) -> dict[str, float]:
    """FGSM and L2-PGD accuracy, and the median minimal L2 distortion (RMS units)."""
    from robustkit.attacks import PGD, fgsm
    from robustkit.attacks.distortion import minimal_distortion

    ds = load_dataset("mnist", "test", None).head(max(n_pgd, n_dist))
    module = load_onnx(model).to_torch().eval()
    x, y = ds.images, ds.labels
    out = {}
    res = fgsm(norm="linf", device="cpu", batch_size=250).run(module, x[:n_pgd], y[:n_pgd], eps, 0.0, 1.0)
    out[f"FGSM {eps:g} %"] = round(100 * res.robust_accuracy, 2)
    l2 = PGD(norm="l2", steps=50, restarts=3, loss="margin", device="cpu", batch_size=250)
    out[f"PGD-L2 {l2_eps:g} %"] = round(100 * l2.run(module, x[:n_pgd], y[:n_pgd], l2_eps, 0.0, 1.0).robust_accuracy, 2)
    dist = minimal_distortion(PGD(norm="l2", steps=30, restarts=1, loss="margin", device="cpu"), module,
                              x[:n_dist], y[:n_dist], max_eps=8.0, iterations=7)
    out["min L2 distortion (RMS, median)"] = round(float(dist.rms.median()), 4)
    return out


def stability(model: Path, eps: float, n: int, method: str) -> str:
    ds = load_dataset("mnist", "test", None).head(n)
    stats = dataset_bound_statistics(load_onnx(model), ds.images, ds.labels, eps, method)
    return " / ".join(f"{layer.unstable.mean():.1f}" for layer in stats.layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--models", nargs="*", default=None, help="zoo names (default: every models/mnist_small_*.onnx)")
    ap.add_argument("--n-pgd", type=int, default=1000)
    ap.add_argument("--n-stats", type=int, default=200)
    ap.add_argument("--n-verify", type=int, default=100)
    ap.add_argument("--n-dist", type=int, default=100)
    ap.add_argument("--l2-eps", type=float, default=1.5)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    order = ["pgd_rs", "jin_rinard", "jin_rinard_h90", "pgd", "none", "mrnet", "mat", "contractive", "advprop"]
    paths = sorted((ROOT / "models").glob("mnist_small_*.onnx"),
                   key=lambda p: order.index(p.stem[12:]) if p.stem[12:] in order else len(order))
    if args.models:
        paths = [ROOT / "models" / f"mnist_small_{m.replace('-', '_')}.onnx" for m in args.models]
    rows = []
    for path in paths:
        name = path.stem.removeprefix("mnist_small_")
        t0 = time.perf_counter()
        row: dict = {"model": name, "clean (10k) %": round(clean_accuracy(path, args.data_dir), 2)}
        pgd = evaluate_attack(path, args.eps, steps=50, restarts=10, loss="margin", n=args.n_pgd, dataset="mnist",
                              device="cpu")
        row[f"PGD (first {args.n_pgd}) %"] = round(100 * pgd.pgd_accuracy, 2)
        row.update(attack_columns(path, args.eps, args.l2_eps, args.n_pgd, args.n_dist))
        row["unstable/layer IBP"] = stability(path, args.eps, args.n_stats, "interval")
        row["unstable/layer CROWN"] = stability(path, args.eps, args.n_stats, "crown")
        cfg = VerifyConfig(eps=args.eps, timeout=args.timeout, tighten="crown")
        out = verify_dataset(path, cfg, DatasetChoice("mnist", args.n_verify),
                             RunOptions(results_root=ROOT / "runs" / "zoo_eval", workers=args.workers, quiet=True))
        s = out.summary
        row.update({f"verified (first {args.n_verify}) %": round(s["verified_accuracy"], 1),
                    "falsified": s["falsified"], "timeouts": s["timeout"], "unknown": s["unknown"],
                    "mean time (s)": round(s["mean_time"], 2), "eval wall (s)": round(time.perf_counter() - t0, 1)})
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_report(rows, args)  # after every model, so a partial run leaves a usable table


def write_report(rows: list[dict], args: argparse.Namespace) -> None:
    cols = list(rows[0]) if rows else []
    lines = [f"# Model zoo: MNIST `small`, eps={args.eps:g}\n",
             f"Training budget: see `verify/zoo.py` and each model's card. Verification: attack -> CROWN -> MILP "
             f"(HiGHS), timeout {args.timeout:g} s per sample, first {args.n_verify} test images; unstable ReLUs "
             f"are means over the first {args.n_stats} test images (layers conv1 / conv2 / fc1). PGD: L-inf, 50 steps x 10 "
             f"restarts, margin loss; FGSM: one step of eps; PGD-L2: 50 steps x 3 restarts at radius {args.l2_eps:g}; "
             f"min L2 distortion: per image the smallest L2 radius at which PGD (30 steps) finds an adversarial "
             f"example, by bisection up to 8, over sqrt(784) (Gu & Rigazio's units), median over the first "
             f"{args.n_dist} test images (an attack's upper bound on the true minimal distortion).\n",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    report = ROOT / "verify" / "results" / f"zoo_mnist_eps{args.eps:g}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n\nReproduce: `python verify/zoo_eval.py " +
                      f"--eps {args.eps:g} --n-verify {args.n_verify} --n-pgd {args.n_pgd} --n-stats {args.n_stats} "
                      f"--timeout {args.timeout:g} --n-dist {args.n_dist} --l2-eps {args.l2_eps:g}`\n")
    report.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
