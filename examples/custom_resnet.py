"""Your model, your data: a ResNet class of your own, trained on an .npz dataset with a seed
regularizer plus a ReLU-stability term, then verified in memory with ``rk.verify``.

    python examples/custom_resnet.py                        # MNIST from ../shared/data beside the repo
    python examples/custom_resnet.py --n-train 5000 --epochs 3 --n 100 --workers 2

1. writes ``OUT/mnist_train.npz`` (the first ``--n-train`` MNIST training images as ``x``/``y`` and
   the first ``--n`` test images as ``x_test``/``y_test``) and ``OUT/mnist_eval.npz`` (those test
   images as ``x``/``y``: an evaluation set for ``--inputs``);
2. trains :class:`SmallResNet` (defined below: ``F.relu`` calls, a residual sum, a concatenated skip,
   its own head) with robustkit's trainer, Jin & Rinard's intrinsic-robustness term (``--seed-regularizer``)
   and Xiao et al.'s ReLU-stability loss;
3. verifies the test images at ``--eps`` with ``rk.verify`` on the module itself (exported to ONNX
   in memory; what is proven is that float32 graph as onnxruntime runs it) and prints the table.

The same model trained through the command line gives the same figures (``--net`` takes this file's
``factory``)::

    robustkit train --net examples.custom_resnet:factory --dataset OUT/mnist_train.npz --epochs 2 \\
        --batch-size 50 --lr 2e-3 --eps 0.1 -r intrinsic -r relu-stability=0.001 --weight-decay 5e-4 \\
        --n-eval 50 --out OUT/cli-run
    robustkit export OUT/cli-run --out OUT/cli.onnx
    robustkit verify OUT/cli.onnx --inputs OUT/mnist_eval.npz --eps 0.05 --n 50 --timeout 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class Block(nn.Module):
    """``relu(x + conv(relu(conv(x))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class SmallResNet(nn.Module):
    """A stem, one residual block, a skip concatenated to the block's output, a pooled head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 4, stride=2, padding=1)  # 28 -> 14
        self.block = Block(channels)
        self.down = nn.Conv2d(2 * channels, channels, 4, stride=2, padding=1)  # 14 -> 7
        self.pool = nn.AvgPool2d(2)  # 7 -> 3
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 9, 50), nn.ReLU(), nn.Linear(50, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        z = torch.cat([h, self.block(h)], dim=1)
        return self.head(self.pool(F.relu(self.down(z))))


def factory(input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """What ``robustkit train --net examples.custom_resnet:factory`` calls."""
    if tuple(input_shape[1:]) != (28, 28):
        raise ValueError(f"SmallResNet is laid out for 28 x 28 images, got {input_shape}")
    return SmallResNet(input_shape[0], num_classes)


def make_npz(data_dir: Path, out: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    """The training set (with its test split) and the evaluation set, as .npz files."""
    from robustkit.data import save_npz
    from robustkit.data.datasets import load_raw

    xs, ys, _ = load_raw("mnist", "train", data_dir)
    xt, yt, _ = load_raw("mnist", "test", data_dir)
    train = save_npz(out / "mnist_train.npz", xs[:n_train], ys[:n_train], x_test=xt[:n_test], y_test=yt[:n_test])
    evaluation = save_npz(out / "mnist_eval.npz", xt[:n_test], yt[:n_test])
    return train, evaluation


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ROBUSTKIT_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "custom_resnet")
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-eps", type=float, default=0.1)
    ap.add_argument("--seed-regularizer", default="intrinsic", help="a seed regularizer spec (robustkit regularizers)")
    ap.add_argument("--stability", default="relu-stability=0.001")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--n", type=int, default=50, help="test images to verify")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import numpy as np

    import robustkit as rk
    from robustkit.training import TrainConfig, train

    if not (args.data_dir / "mnist").is_dir():
        print(f"MNIST not found under {args.data_dir}; pass --data-dir DIR (a folder with mnist/*-ubyte.gz)",
              file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    train_npz, eval_npz = make_npz(args.data_dir, args.out, args.n_train, args.n)
    print(f"[1] data: {train_npz} ({args.n_train} training images), {eval_npz} ({args.n} test images)")

    # 2. robustkit's trainer on our own class (the CLI: robustkit train --net examples.custom_resnet:factory)
    cfg = TrainConfig(dataset=str(train_npz), net=f"{Path(__file__).resolve()}:factory", epochs=args.epochs,
                      batch_size=50, lr=((0.0, 2e-3),), eps=args.train_eps, weight_decay=5e-4, n_eval=args.n,
                      regularizers=(args.seed_regularizer, args.stability))
    run = args.out / "run"
    if (run / "checkpoint.pt").exists():
        import shutil

        shutil.rmtree(run)
    result = train(cfg, run, quiet=True)
    t_train = time.perf_counter() - t0
    print(f"[2] trained {type(result.model).__name__} for {args.epochs} epoch(s): test acc {result.test_acc:.3f} "
          f"({t_train:.1f} s)")

    # 3. verify the module in memory
    evaluation = np.load(eval_npz)
    x = torch.from_numpy(evaluation["x"]).float().div(255.0)
    y = torch.from_numpy(evaluation["y"])
    t1 = time.perf_counter()
    verdict = rk.verify(result.model, x, y, args.eps, timeout=args.timeout, workers=args.workers)
    print(f"[3] verified {len(verdict)} samples at eps {args.eps:g} ({time.perf_counter() - t1:.1f} s)")
    print(verdict)
    print(f"statuses: {' '.join(s.status for s in verdict)}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
