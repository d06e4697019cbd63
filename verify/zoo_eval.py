"""Score the model zoo at one eps: the table users want (issue 3).

For each `models/{mnist|cifar10}/{mnist|cifar}_small_<name>.onnx`:
  * clean accuracy on the full test set (onnxruntime-equivalent torch forward);
  * PGD accuracy on the first `--n-pgd` test images (L-inf, 50 steps, 10 restarts, margin loss);
  * mean stably-active / stably-inactive / unstable ReLUs per layer under interval (IBP) and CROWN
    bounds on the first `--n-stats` images;
  * FGSM accuracy (L-inf, eps) and L2 PGD accuracy (radius `--l2-eps`) on the first `--n-pgd` images,
    and the median minimal L2 distortion a PGD attack needs (bisection; Gu & Rigazio's RMS units,
    ||x' - x||_2 / sqrt(784)) over the correctly classified ones among the first `--n-dist` images:
    the papers' own robustness measures;
  * complete-verifier results (attack -> CROWN -> MILP) on the first `--n-verify` images, and a
    soundness cross-check: a stronger PGD on those same images must break none of the verified ones.

    python verify/zoo_eval.py --data-dir ../shared/data --eps 0.1 --n-verify 100 --timeout 30 --workers 2
    python verify/zoo_eval.py --dataset cifar10 --eps 8/255 --l2-eps 0.5 --models jin-rinard pgd-rs
Writes (merges the evaluated rows into) verify/results/zoo_<dataset>_eps<eps>.md and .json. Resumable:
verification records are kept in runs/zoo_eval/ keyed by model and settings, so rerunning only fills
what is missing.
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
from robustkit.numbers import parse_eps
from robustkit.verification import VerifyConfig
from robustkit.verification.run import DatasetChoice, RunOptions, verify_dataset

ROOT = Path(__file__).resolve().parents[1]


def eps_slug(eps: str) -> str:
    """``0.1`` -> ``0.1``; ``8/255`` -> ``8_255`` (for file names)."""
    return eps.replace("/", "_")


def clean_accuracy(model: Path, dataset: str, data_dir: Path) -> float:
    ds = load_dataset(dataset, "test", data_dir)
    module = load_onnx(model).to_torch().eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(ds), 1000):
            correct += int((module(ds.images[i:i + 1000]).argmax(1) == ds.labels[i:i + 1000]).sum())
    return 100.0 * correct / len(ds)


def attack_columns(model: Path, dataset: str, data_dir: Path, eps: float, l2_eps: float, n_pgd: int,
                   n_dist: int) -> dict[str, float]:
    """FGSM and L2-PGD accuracy, and the median minimal L2 distortion (RMS units)."""
    from robustkit.attacks import PGD, fgsm

    ds = load_dataset(dataset, "test", data_dir).head(max(n_pgd, n_dist))
    module = load_onnx(model).to_torch().eval()
    x, y = ds.images, ds.labels
    out = {}
    res = fgsm(norm="linf", device="cpu", batch_size=250).run(module, x[:n_pgd], y[:n_pgd], eps, 0.0, 1.0)
    out["FGSM %"] = round(100 * res.robust_accuracy, 2)
    l2 = PGD(norm="l2", steps=50, restarts=3, loss="margin", device="cpu", batch_size=250)
    out[f"PGD-L2 {l2_eps:g} %"] = round(100 * l2.run(module, x[:n_pgd], y[:n_pgd], l2_eps, 0.0, 1.0).robust_accuracy, 2)
    out.update(distortion_column(module, x[:n_dist], y[:n_dist]))
    return out


OLD_DISTORTION = "min L2 distortion (RMS, median)"  # over all images, misclassified ones as 0 (before 2026-12-07)
DISTORTION = "min L2 distortion (RMS, median of correct)"


def distortion_column(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Gu & Rigazio's measure: the median, over the correctly classified images, of the smallest L2
    radius (RMS units) at which PGD breaks each (misclassified images need no adversarial example;
    counted as 0 they made the median 0 on every CIFAR-10 model, below 50% clean accuracy)."""
    from robustkit.attacks import PGD
    from robustkit.attacks.distortion import median_or_nan, minimal_distortion

    dist = minimal_distortion(PGD(norm="l2", steps=30, restarts=1, loss="margin", device="cpu"), module,
                              x, y, max_eps=8.0, iterations=7)
    return {DISTORTION: round(median_or_nan(dist.rms[~dist.misclassified]), 4)}


def distortion_row(path: Path, name: str, args: argparse.Namespace, n_test: int) -> None:
    """Recompute the distortion column of the model's existing row (the other columns are kept)."""
    table = ROOT / "verify" / "results" / f"zoo_{args.dataset}_eps{eps_slug(args.eps)}.json"
    rows = json.loads(table.read_text()) if table.exists() else []
    row = next((r for r in rows if r.get("model") == name), None)
    if row is None:
        print(f"{name}: no row in {table}; skipped", flush=True)
        return
    ds = load_dataset(args.dataset, "test", args.data_dir).head(args.n_dist)
    value = distortion_column(load_onnx(path).to_torch().eval(), ds.images, ds.labels)
    new = {}
    for key, v in row.items():  # the column goes where attack_columns puts it: after PGD-L2
        if key not in (OLD_DISTORTION, DISTORTION):
            new[key] = v
        if key.startswith("PGD-L2"):
            new.update(value)
    print(json.dumps({"model": name, **value}), flush=True)
    write_report(new, args, n_test)


def cross_check(model: Path, dataset: str, data_dir: Path, eps: float, records: list[dict]) -> dict[str, object]:
    """PGD accuracy on exactly the verified samples' set, and the soundness cross-check.

    A strong PGD (margin loss, 100 steps x 10 restarts, another seed than the verifier's attack) on
    the same images the verifier saw: a sample recorded ``verified`` that this attack breaks would
    be a wrong proof, so the column ``verified but PGD-broken`` must read 0.
    """
    from robustkit.attacks import PGD

    n = len(records)
    ds = load_dataset(dataset, "test", data_dir).head(n)
    module = load_onnx(model).to_torch().eval()
    res = PGD(steps=100, restarts=10, loss="margin", seed=1, device="cpu", batch_size=250).run(
        module, ds.images, ds.labels, eps, 0.0, 1.0)
    broken = [r["index"] for r in records if r.get("status") == "verified" and bool(res.success[r["index"]])]
    return {"PGD % (verify samples)": round(100 * res.robust_accuracy, 1), "verified but PGD-broken": len(broken)}


def time_columns(summary: dict) -> dict[str, float]:
    """Median and 95th percentile of the per-sample verification time (from
    :func:`robustkit.verification.run.summarize`: the correctly classified samples)."""
    return {"median time (s)": round(summary["median_time"], 2), "p95 time (s)": round(summary["p95_time"], 2)}


def stability(model: Path, dataset: str, data_dir: Path, eps: float, n: int, method: str) -> str:
    ds = load_dataset(dataset, "test", data_dir).head(n)
    stats = dataset_bound_statistics(load_onnx(model), ds.images, ds.labels, eps, method)
    return " / ".join(f"{layer.unstable.mean():.1f}" for layer in stats.layers)


ORDER = ["pgd_rs", "pgd_rs_eps03", "jin_rinard", "jin_rinard_h90", "jin_rinard_h90_wd", "jin_rinard_h90_i4_wd", "jin_rinard_wd", "pgd", "none", "mrnet", "mat",
         "contractive", "advprop", "pgd_ham", "advprop_rs", "advprop_rs_eps015", "advprop_ham", "advprop_ham_eps015", "mrnet_rs", "mrnet_ham", "mat_rs",
         "mat_ham", "contractive_rs", "contractive_ham", "jin_rinard_h90_wd_rs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    ap.add_argument("--eps", default="0.1", help="e.g. 0.1 or 8/255")
    ap.add_argument("--models", nargs="*", default=None,
                    help="zoo names (default: every models/<dataset>/<prefix>_small_*.onnx)")
    ap.add_argument("--n-pgd", type=int, default=1000)
    ap.add_argument("--n-stats", type=int, default=200)
    ap.add_argument("--n-verify", type=int, default=100)
    ap.add_argument("--n-dist", type=int, default=100)
    ap.add_argument("--l2-eps", type=float, default=1.5)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cross-check-only", action="store_true",
                    help="only add the PGD cross-check columns to rows already evaluated with these settings")
    ap.add_argument("--distortion-only", action="store_true",
                    help="only recompute the min L2 distortion column of rows already in the table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    eps = parse_eps(args.eps)
    prefix = f"{'cifar' if args.dataset == 'cifar10' else args.dataset}_small_"  # file stems: cifar_small_*
    folder = ROOT / "models" / args.dataset  # models/ is grouped by dataset
    paths = sorted(folder.glob(f"{prefix}*.onnx"),
                   key=lambda p: ORDER.index(p.stem[len(prefix):]) if p.stem[len(prefix):] in ORDER else len(ORDER))
    if args.models:
        paths = [folder / f"{prefix}{m.replace('-', '_')}.onnx" for m in args.models]
    n_test = len(load_dataset(args.dataset, "test", args.data_dir))
    for path in paths:
        name = path.stem.removeprefix(prefix)
        t0 = time.perf_counter()
        if args.cross_check_only:
            cross_check_row(path, name, eps, args, n_test)
            continue
        if args.distortion_only:
            distortion_row(path, name, args, n_test)
            continue
        row: dict = {"model": name, "clean %": round(clean_accuracy(path, args.dataset, args.data_dir), 2)}
        pgd = evaluate_attack(path, eps, steps=50, restarts=10, loss="margin", n=args.n_pgd, dataset=args.dataset,
                              data_dir=args.data_dir, device="cpu")
        row["PGD %"] = round(100 * pgd.pgd_accuracy, 2)
        row.update(attack_columns(path, args.dataset, args.data_dir, eps, args.l2_eps, args.n_pgd, args.n_dist))
        row["unstable/layer IBP"] = stability(path, args.dataset, args.data_dir, eps, args.n_stats, "interval")
        row["unstable/layer CROWN"] = stability(path, args.dataset, args.data_dir, eps, args.n_stats, "crown")
        cfg = VerifyConfig(eps=eps, timeout=args.timeout, tighten="crown")
        out = verify_dataset(path, cfg, DatasetChoice(args.dataset, args.n_verify, data_dir=args.data_dir),
                             RunOptions(results_root=ROOT / "runs" / "zoo_eval", workers=args.workers, quiet=True))
        s = out.summary
        row.update({"verified %": round(s["verified_accuracy"], 1),
                    "verified by bounds": sum(1 for r in out.records
                                              if r.get("status") == "verified" and r.get("stage") == "bounds"),
                    "falsified": s["falsified"], "timeouts": s["timeout"], "unknown": s["unknown"],
                    "mean time (s)": round(s["mean_time"], 2), **time_columns(s),
                    "verify n @ timeout": f"{args.n_verify} @ {args.timeout:g} s",
                    "eval wall (s)": round(time.perf_counter() - t0, 1)})
        row.update(cross_check(path, args.dataset, args.data_dir, eps, out.records))
        if row["verified but PGD-broken"]:
            raise SystemExit(f"{name}: {row['verified but PGD-broken']} verified samples broken by PGD: a soundness bug")
        print(json.dumps(row), flush=True)
        write_report(row, args, n_test)  # after every model, so a partial run leaves a usable table


def cross_check_row(path: Path, name: str, eps: float, args: argparse.Namespace, n_test: int) -> None:
    """Add the cross-check columns to the model's existing row (its verification records are reused)."""
    table = ROOT / "verify" / "results" / f"zoo_{args.dataset}_eps{eps_slug(args.eps)}.json"
    rows = json.loads(table.read_text()) if table.exists() else []
    row = next((r for r in rows if r.get("model") == name), None)
    if row is None or row.get("verify n @ timeout") != f"{args.n_verify} @ {args.timeout:g} s":
        raise SystemExit(f"{name}: no row evaluated with --n-verify {args.n_verify} --timeout {args.timeout:g} in {table}")
    cfg = VerifyConfig(eps=eps, timeout=args.timeout, tighten="crown")
    out = verify_dataset(path, cfg, DatasetChoice(args.dataset, args.n_verify, data_dir=args.data_dir),
                         RunOptions(results_root=ROOT / "runs" / "zoo_eval", workers=args.workers, quiet=True))
    if round(out.summary["verified_accuracy"], 1) != row["verified %"]:
        raise SystemExit(f"{name}: the resumed records give {out.summary['verified_accuracy']}% verified, the row "
                         f"{row['verified %']}%")
    row.update(time_columns(out.summary))
    row.update(cross_check(path, args.dataset, args.data_dir, eps, out.records))
    print(json.dumps(row), flush=True)
    write_report(row, args, n_test)
    if row["verified but PGD-broken"]:
        raise SystemExit(f"{name}: {row['verified but PGD-broken']} verified samples broken by PGD: a soundness bug")


def write_report(row: dict, args: argparse.Namespace, n_test: int) -> None:
    """Merge ``row`` into the table of this dataset and eps (other models' rows are kept)."""
    report = ROOT / "verify" / "results" / f"zoo_{args.dataset}_eps{eps_slug(args.eps)}.md"
    table = report.with_suffix(".json")
    rows = [r for r in (json.loads(table.read_text()) if table.exists() else []) if r.get("model") != row["model"]]
    rows.append(row)
    rows.sort(key=lambda r: ORDER.index(r["model"]) if r["model"] in ORDER else len(ORDER))
    cols = list(row)
    dim = "784" if args.dataset == "mnist" else "3072"
    lines = [f"# Model zoo: {'MNIST' if args.dataset == 'mnist' else 'CIFAR-10'} `small`, L-inf eps={args.eps}\n",
             f"Training budget: see `verify/zoo.py` and each model's card. Clean accuracy: the full test set "
             f"({n_test} images). PGD: L-inf, 50 steps x 10 restarts, margin loss; FGSM: one step of eps; PGD-L2: "
             f"50 steps x 3 restarts at radius {args.l2_eps:g}; all on the first {args.n_pgd} test images. "
             f"Min L2 distortion: per image the smallest L2 radius at which PGD (30 steps) finds an adversarial "
             f"example, by bisection up to 8, over sqrt({dim}) (Gu & Rigazio's units), median over the correctly "
             f"classified ones among the first {args.n_dist} test images (an attack's upper bound on the true "
             f"minimal distortion; an image PGD does not break up to radius 8 counts as larger than any). "
             f"Unstable ReLUs: "
             f"means over the first {args.n_stats} test images (layers conv1 / conv2 / fc1). Verification: attack -> "
             f"CROWN -> MILP (HiGHS) on the first n test images with the per-sample timeout in the column "
             f"`verify n @ timeout`; a timeout counts as not verified. `PGD % (verify samples)`: PGD (100 steps x 10 "
             f"restarts, margin loss, another seed) on exactly those n images, the upper bound the verified % must "
             f"stay under; `verified but PGD-broken` counts verified samples that this attack breaks (a wrong proof; "
             f"must be 0, and the script stops if it is not).\n",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n\nReproduce (one row): `python verify/zoo_eval.py --dataset "
                      f"{args.dataset} --eps {args.eps} --models MODEL --n-verify N --timeout T --n-pgd {args.n_pgd} "
                      f"--n-stats {args.n_stats} --n-dist {args.n_dist} --l2-eps {args.l2_eps:g}` with each row's N and T\n")
    table.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
