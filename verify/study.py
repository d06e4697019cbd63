"""The regularizer study (issue 17) as one table and one plot, from the zoo evaluations.

Merges `verify/results/zoo_mnist_eps0.1.json`, `zoo_mnist_eps0.3.json`, `zoo_cifar10_eps2_255.json`
and `zoo_cifar10_eps8_255.json` (each written by `verify/zoo_eval.py`) into one row per (model,
eps): its regularizers (`verify/zoo.py`), clean / PGD / verified accuracy, the verification sample
and timeout, timeouts, median and p95 verification time, unstable ReLUs per layer under CROWN.
No model is re-run: rerun `zoo_eval.py` for a row, then this script.

    python verify/study.py      # -> verify/results/study.md, verify/results/study.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "verify" / "results"
TABLES = [("mnist", "0.1", "zoo_mnist_eps0.1.json"), ("mnist", "0.3", "zoo_mnist_eps0.3.json"),
          ("cifar10", "2/255", "zoo_cifar10_eps2_255.json"), ("cifar10", "8/255", "zoo_cifar10_eps8_255.json")]


def specs() -> dict[str, str]:
    """``cifar_small_pgd_rs`` -> its regularizer specs, extra training options and epochs, from verify/zoo.py."""
    sys.path.insert(0, str(ROOT / "verify"))
    import zoo

    out = {}
    for name, regs in [*zoo.ZOO.items(), *zoo.CIFAR_ZOO.items()]:
        extra = zoo.EXTRA_ARGS.get(name, [])
        text = " ".join(regs) + (" + weight decay " + extra[1] if "--weight-decay" in extra else "")
        eps = zoo.TRAIN_EPS.get(name)
        out[zoo.stem(name)] = text + (f" (trained at {eps})" if eps else "") + f", {zoo.EPOCHS.get(name, 20)} epochs"
    return out


def rows() -> list[dict]:
    regs = specs()
    out = []
    for dataset, eps, file in TABLES:
        path = RESULTS / file
        if not path.exists():
            continue
        prefix = "cifar_small_" if dataset == "cifar10" else "mnist_small_"
        for r in json.loads(path.read_text()):
            out.append({"dataset": dataset, "eps": eps, "model": r["model"],
                        "regularizers": regs.get(prefix + r["model"], "-"), **r})
    return out


def table(all_rows: list[dict]) -> str:
    head = ["dataset", "model", "regularizers", "eps", "clean %", "PGD %", "verified %", "verify n @ timeout",
            "timeouts", "median time (s)", "p95 time (s)", "unstable/layer CROWN"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(all_rows, key=lambda r: (r["dataset"], r["model"], r["eps"])):
        lines.append("| " + " | ".join(str(r.get(h, "-")) for h in head) + " |")
    return "\n".join(lines)


def plot(all_rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(16, 7), gridspec_kw={"width_ratios": [3, 1]})
    for ax, dataset in zip(axes, ("mnist", "cifar10")):
        mine = [r for r in all_rows if r["dataset"] == dataset]
        models = sorted({r["model"] for r in mine})
        epss = [e for d, e, _ in TABLES if d == dataset]
        width = 0.8 / len(epss)
        for k, eps in enumerate(epss):
            vals = {r["model"]: r["verified %"] for r in mine if r["eps"] == eps}
            ax.barh([i + k * width for i in range(len(models))], [vals.get(m, 0.0) for m in models], height=width,
                    label=f"eps {eps}")
        ax.set_yticks([i + 0.4 - width / 2 for i in range(len(models))], models, fontsize=8)
        ax.set_xlabel("verified accuracy (%)")
        ax.set_title(f"{dataset}: verified accuracy per model")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    all_rows = rows()
    text = ("# The regularizer study: every zoo model at every eps (issue 17)\n\n"
            "One row per model and eps, from `verify/results/zoo_<dataset>_eps<eps>.json` (`verify/zoo_eval.py`; "
            "each table's header says how its columns were measured; `-`: not recorded for that row). "
            "Regularizer specs and training options as in `verify/zoo.py` (every model: the `small` net, Adam, "
            "trained at the row's dataset default eps unless noted). Regenerate: `python verify/study.py`.\n\n"
            + table(all_rows) + "\n\n![verified accuracy per model](study.png)\n")
    (RESULTS / "study.md").write_text(text)
    plot(all_rows, RESULTS / "study.png")
    print(text)


if __name__ == "__main__":
    main()
