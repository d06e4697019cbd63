"""Clean accuracy of a model on a dataset (no gradients, batched)."""

from __future__ import annotations

import torch
from torch import nn

from robustkit.data import Dataset


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (int64, on the CPU) for ``images`` ``(N, C, H, W)``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model(images[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 1000) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly."""
    if len(data) == 0:
        raise ValueError("accuracy of an empty dataset")
    return int((predict(model, data.images, batch_size) == data.labels).sum()) / len(data)
