"""robustkit's regularizers in your own PyTorch training loop (drop-in form).

    python examples/own_training_loop.py
    python examples/own_training_loop.py --reg "pgd:steps=5" --reg relu-stability=0.001 --steps 600

The loop below is plain PyTorch; the only robustkit line in it is ``reg(model, x, y, logits=...)``,
whose ``.loss`` is added to the cross-entropy. Any regularizer of ``robustkit regularizers`` works on
a module whose ReLUs are ``nn.ReLU`` modules or ``F.relu`` calls in a traceable ``forward()``. Then
the trained module is verified with ``rk.verify``. Training data: MNIST from ``--data-dir`` (default
``../shared/data``), else the 1000 embedded test images (the last ``--n`` are held out).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 4, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 14 * 14, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        return self.fc2(F.relu(self.fc1(torch.flatten(h, 1))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ROBUSTKIT_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--reg", action="append", help="regularizer spec (repeatable); default jin-rinard and relu-stability")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=20, help="test images to verify")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    import robustkit as rk
    from robustkit.data import load_dataset

    test = load_dataset("mnist", "test")  # embedded subset without a data directory
    if (args.data_dir / "mnist").is_dir():
        train = load_dataset("mnist", "train", args.data_dir)
        xs, ys = train.images, train.labels
    else:
        xs, ys = test.images[:-args.n], test.labels[:-args.n]
    x_test, y_test = test.images[-args.n:], test.labels[-args.n:]

    model = Net()
    specs = args.reg or ["intrinsic", "relu-stability=0.001"]
    reg = rk.regularizer(*specs, eps=args.eps)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(xs), (50,), generator=gen)
        x, y = xs[idx], ys[idx]
        logits = model(x)
        out = reg(model, x, y, logits=logits)  # the drop-in line
        loss = F.cross_entropy(logits, y) + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            terms = ", ".join(f"{k} {v.item():.4f}" for k, v in out.terms.items())
            print(f"step {step}: loss {loss.item():.4f} ({terms})")
    model.eval()
    verdict = rk.verify(model, x_test, y_test, args.eps, timeout=args.timeout)
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
