"""Bounds of your own module, the way auto_LiRPA's quick start does it: any module in, bounds out.

    python examples/bounds_quickstart.py
    python examples/bounds_quickstart.py --eps 0.02 --n 2 --method alpha-crown

auto_LiRPA: ``BoundedModule(model, x)`` then ``compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(
eps)),), method="CROWN")``. robustkit: ``rk.bounds(model, x, eps, method="crown")``: the module is
read by ``torch.fx`` (its ``nn.ReLU`` modules and ``F.relu`` calls, residual sums and
``torch.cat``), exported to ONNX in memory, and bounded over the L-inf box of radius ``eps``
clipped to the valid input range [0, 1]. The model here is a fresh (untrained) convolutional net
with a residual connection, on the first MNIST test images embedded in robustkit.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn


class Model(nn.Module):
    """Conv, a residual conv, a linear head: what a user writes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 14 * 14, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(h + self.conv2(h))
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--n", type=int, default=2, help="images to bound")
    ap.add_argument("--method", action="append", help="interval, crown, alpha-crown or lp (repeatable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    import robustkit as rk
    from robustkit.data import load_dataset

    test = load_dataset("mnist", "test").head(args.n)  # the embedded test subset: no download
    model = Model().eval()
    x, y = test.images, test.labels
    with torch.no_grad():
        pred = model(x).argmax(1)
    for method in args.method or ["interval", "crown", "alpha-crown"]:
        result = rk.bounds(model, x, args.eps, method, y=y)
        print(f"Bounding method: {method}")
        for i in range(len(x)):
            print(f"  image {i} (label {int(y[i])}, predicted {int(pred[i])}); unstable ReLUs per layer "
                  f"{[int(layer.unstable[i]) for layer in result.layers]}")
            for j in range(result.output_lower.shape[1]):
                mark = " (ground-truth)" if j == int(y[i]) else ""
                print(f"    f_{j}(x_{i}): {float(result.output_lower[i, j]):8.3f} <= f_{j}(x_{i}+delta) <= "
                      f"{float(result.output_upper[i, j]):8.3f}{mark}")
        assert result.margin_lower is not None and result.certified is not None
        print(f"  margin lower bounds (label minus each other class), min per image: "
              f"{[round(float(v), 3) for v in result.margin_lower.min(1).values]}; certified: "
              f"{result.certified.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
