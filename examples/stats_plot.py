"""ReLU stability of two zoo models side by side, with a figure each.

    python examples/stats_plot.py                               # plain vs PGD + ReLU-stability
    python examples/stats_plot.py --models models/mnist/mnist_small_mrnet.onnx --n 100 --eps 0.1

For each model: per ReLU layer, the mean numbers of stably active / stably inactive / unstable
neurons under CROWN bounds over eps-boxes around the first ``--n`` test images, the Hamming
distance of activation patterns between random opposite corners of the box (Jin & Rinard), and
between the clean input and its PGD point; a PNG (stacked bars + histogram of unstable ReLUs per
sample) goes to ``--out``. Uses the MNIST test subset embedded in the package: no data needed.
The CLI equivalent is ``robustkit stats MODEL.onnx --eps 0.1 --n 500 --plot stats.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [REPO / "models" / "mnist" / "mnist_small_none.onnx", REPO / "models" / "mnist" / "mnist_small_pgd_rs.onnx"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--method", default="crown", help="interval | crown | alpha-crown | lp")
    ap.add_argument("--region-samples", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "stats_plot")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from robustkit.report.plots import plot_stability
    from robustkit.report.stats import StatsConfig, format_stats, model_stability_report

    cfg = StatsConfig(eps=args.eps, n=args.n, method=args.method, region_samples=args.region_samples)
    summary = []
    for model in args.models:
        if not model.is_file():
            print(f"model {model} not found", file=sys.stderr)
            return 1
        report = model_stability_report(model, cfg)
        print(format_stats(report, "md"), end="\n\n")
        png = plot_stability(report, args.out / f"{model.stem}_eps{args.eps:g}.png")
        t = report.totals()
        summary.append((model.name, t["unstable_mean"], t["corner_hamming_mean"], t["pgd_hamming_mean"], png))
    print("| model | unstable ReLUs | Hamming x+ vs x- | Hamming x vs PGD | figure |")
    print("|---|---|---|---|---|")
    for name, unstable, corner, pgd, png in summary:
        print(f"| {name} | {unstable:.1f} | {corner:.1f} | {pgd:.1f} | {png} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
