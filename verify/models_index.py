"""Write ``models/README.md``: one index of the shipped models, grouped by dataset, from each ONNX
file's robustkit metadata (architecture, regularizers, training eps and epochs, accuracy at the
end of training), each linked to its card (the exact training command and its scores).

    python verify/models_index.py            # rewrite models/README.md
    python verify/models_index.py --check    # exit 1 if models/README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robustkit.onnx_export import read_metadata  # noqa: E402
from robustkit.numbers import format_eps  # noqa: E402

DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


def _row(path: Path) -> str:
    meta = read_metadata(path)
    cfg = json.loads(meta.get("robustkit.train_config", "{}"))
    metrics = json.loads(meta.get("robustkit.metrics", "{}"))
    regs = ", ".join(f"`{r}`" for r in cfg.get("regularizers", [])) or "none"
    wd = cfg.get("weight_decay") or 0
    eps = format_eps(cfg.get("eps", 0.0))
    acc = metrics.get("test_acc")
    card = path.with_suffix(".md")
    name = f"[{path.stem}]({path.parent.name}/{card.name})" if card.is_file() else path.stem
    return (f"| {name} | {cfg.get('net', meta.get('robustkit.net', '?'))} | {regs} | {wd:g} | {eps} | "
            f"{cfg.get('epochs', '?')} | {'-' if acc is None else f'{100 * float(acc):.2f}'} |")


def render() -> str:
    lines = [
        "# Shipped models",
        "",
        "Trained by `verify/zoo.py` (MNIST: one per regularizer and their combinations; CIFAR-10: Jin & Rinard,",
        "PGD + ReLU stability, IBP). Each model has a card beside it: the exact `robustkit train` and",
        "`robustkit export` commands, the data, epochs and time, and its rows of the zoo tables",
        "(`verify/results/zoo_*.md`). Every file is one self-contained ONNX file with robustkit metadata",
        "(dataset, input shape, value range, normalisation, training config) that `robustkit verify` reads.",
        "",
        "This index is written by `python verify/models_index.py` from that metadata (test accuracy: the",
        "first 1000 test images after the last epoch).",
    ]
    for folder, title in DATASETS.items():
        paths = sorted((ROOT / "models" / folder).glob("*.onnx"))
        lines += ["", f"## {title} (`models/{folder}/`, {len(paths)} models)", "",
                  "| model | net | regularizers | weight decay | train eps | epochs | test acc % |",
                  "|---|---|---|---:|---:|---:|---:|"]
        lines += [_row(p) for p in paths]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if models/README.md is out of date")
    args = ap.parse_args()
    target = ROOT / "models" / "README.md"
    text = render()
    if args.check:
        ok = target.is_file() and target.read_text() == text
        print("models/README.md is up to date" if ok else "models/README.md is out of date: run python verify/models_index.py")
        return 0 if ok else 1
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
