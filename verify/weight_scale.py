"""Per-layer weight norms and input sensitivity of zoo models (the Jin & Rinard h90 diagnosis).

ReLU nets are invariant to scaling one layer's weights and bias by c > 0 and the next layer's weights
by 1/c; the tanh-relaxed Hamming term of Jin & Rinard is not (for small pre-activations it is
~alpha * |z+ - z-|, proportional to the scale). This prints, for each model: the Frobenius norm of
each weight layer, the median logit margin, the median L1 norm of the input gradient of the margin
(the first-order change of the margin under an L-inf step of 1), and their ratio (the first-order
L-inf radius at which the margin vanishes), on the first `--n` test images.

    python verify/weight_scale.py models/mnist/mnist_small_none.onnx models/mnist/mnist_small_jin_rinard_h90.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from robustkit.data import load_dataset
from robustkit.network import load_onnx


def describe(model: Path, dataset: str, data_dir: str, n: int) -> str:
    net = load_onnx(model)
    norms = [f"{float(np.linalg.norm(np.asarray(layer.weight))):.1f}" for layer in net.layers
             if getattr(layer, "weight", None) is not None]
    ds = load_dataset(dataset, "test", data_dir).head(n)
    x = torch.as_tensor(ds.images, dtype=torch.float32).clone().requires_grad_(True)
    y = torch.as_tensor(ds.labels)
    logits = net.to_torch().eval()(x)
    rows = torch.arange(len(y))
    others = logits.detach().clone()
    others[rows, y] = -float("inf")
    margin = logits[rows, y] - logits[rows, others.argmax(1)]
    (grad,) = torch.autograd.grad(margin.sum(), x)
    l1 = grad.flatten(1).abs().sum(1)
    ratio = (margin.detach() / l1).median()
    return (f"| {model.stem} | {' / '.join(norms)} | {margin.median():.2f} | {l1.median():.1f} | {ratio:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = ["| model | weight norms per layer (Frobenius) | margin (median) | input-gradient L1 (median) | "
             "margin / gradient L1 (median) |", "|---|---|---|---|---|"]
    lines += [describe(m, args.dataset, args.data_dir, args.n) for m in args.models]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
