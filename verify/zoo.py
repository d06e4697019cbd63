"""Train, export and describe the model zoo: MNIST `small`, one model per regularizer, one budget.

    python verify/zoo.py train [--only NAME ...] [--epochs 5] [--data-dir ../shared/data]
    python verify/zoo.py cards            # (re)write models/<name>.md from each run's metrics

Every model: `small` net, full MNIST training set, Adam, lr 1e-3 (piecewise-linear to 2e-4 at
the last epoch), batch 50, seed 0, training eps 0.1 ramped from 0.01 over epochs 0-3 (used by
the regularizers that take an eps), 1 torch thread. The papers train far longer (Jin & Rinard
100 epochs, Xiao et al. 70); the budget here is what a 2-core CPU allows, and the cards say so.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> regularizer specs (the zoo's rows)
ZOO: dict[str, list[str]] = {
    "none": ["none"],
    "pgd": ["pgd:steps=5"],
    "mrnet": ["mrnet"],
    "mat": ["mat"],
    "jin-rinard": ["jin-rinard"],
    "contractive": ["contractive"],
    "advprop": ["advprop"],
    "pgd-rs": ["pgd:steps=5", "relu-stability=0.002"],
}
# the README's default model (Xiao et al.-style adversarial training + ReLU-stability loss) got one more epoch
EPOCHS = {"pgd-rs": 6}


def train_command(name: str, epochs: int, data_dir: str) -> list[str]:
    epochs = EPOCHS.get(name, epochs)
    cmd = ["robustkit", "train", "--dataset", "mnist", "--net", "small", "--epochs", str(epochs),
           "--eps", "0.1", "--eps-start", "0.01", "--eps-ramp", "0:3",
           "--lr", f"0:1e-3,{max(epochs - 2, 1)}:1e-3,{epochs}:2e-4", "--batch-size", "50", "--seed", "0",
           "--data-dir", data_dir, "--out", f"runs/zoo/mnist-small-{name}", "--threads", "1", "--quiet"]
    for spec in ZOO[name]:
        cmd += ["-r", spec]
    return cmd


def model_path(name: str) -> Path:
    return ROOT / "models" / f"mnist_small_{name.replace('-', '_')}.onnx"


def train(names: list[str], epochs: int, data_dir: str) -> None:
    for name in names:
        run_dir = ROOT / "runs" / "zoo" / f"mnist-small-{name}"
        cmd = train_command(name, epochs, data_dir)
        if (run_dir / "model.pt").exists():
            print(f"[zoo] {name}: already trained", flush=True)
        else:
            print(f"[zoo] {name}: {shlex.join(cmd)}", flush=True)
            t0 = time.time()
            extra = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
            subprocess.run(cmd + extra, cwd=ROOT, check=True)
            (run_dir / "wall_time_s.txt").write_text(f"{time.time() - t0:.1f}\n")
        subprocess.run(["robustkit", "export", str(run_dir), "--out", str(model_path(name))], cwd=ROOT, check=True)


def cards(epochs: int, data_dir: str) -> None:
    for name in ZOO:
        run_dir = ROOT / "runs" / "zoo" / f"mnist-small-{name}"
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        last = rows[-1]
        wall_file = run_dir / "wall_time_s.txt"
        wall = wall_file.read_text().strip() if wall_file.exists() else f"{sum(r.get('time_s', 0.0) for r in rows):.1f}"
        text = f"""# mnist_small_{name.replace('-', '_')}

`small` (Conv 16 4x4/2, Conv 32 4x4/2, FC 100, FC 10) trained on MNIST with regularizer(s)
`{' '.join(ZOO[name])}`, robustkit's model-zoo budget (see `verify/zoo.py`).

## Command
```
{shlex.join(train_command(name, epochs, data_dir))}
robustkit export runs/zoo/mnist-small-{name} --out models/{model_path(name).name}
```

## Training
- data: full MNIST training set (60,000 images), `{data_dir}`
- epochs: {last['epoch']}, steps: {last.get('steps')}, wall time: {wall} s on a shared 2-core CPU, 1 thread
- final train accuracy: {100 * last.get('train_acc', float('nan')):.2f}%, test accuracy (first {last.get('n_eval')} test images): {100 * last.get('test_acc', float('nan')):.2f}%

## Scores
See `verify/results/zoo_mnist_eps0.1.md` for clean / PGD / verified accuracy and ReLU stability at eps=0.1.
"""
        (ROOT / "models" / f"mnist_small_{name.replace('-', '_')}.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "cards"])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--data-dir", default="../shared/data")
    args = ap.parse_args()
    names = args.only or list(ZOO)
    bad = set(names) - set(ZOO)
    if bad:
        sys.exit(f"unknown zoo entries {sorted(bad)}; choose from {sorted(ZOO)}")
    if args.what == "train":
        train(names, args.epochs, args.data_dir)
    cards(args.epochs, args.data_dir)


if __name__ == "__main__":
    main()
