"""Standard torch modules for robustkit's layers, on flat activations: what a layer's
``torch_modules`` returns, so that a :class:`~robustkit.network.network.Network` can be handed to
code that understands ``nn.Linear``, ``nn.Conv2d``, ``nn.ReLU`` and the like (auto_LiRPA, ONNX
export)."""

from __future__ import annotations

import torch
from torch import nn


class Flat(nn.Module):
    """``(B, ...) -> (B, n)`` (no batch size baked into a trace)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Unflat(nn.Module):
    """``(B, n) -> (B, *shape)``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)


class Affine(nn.Module):
    """Elementwise ``x * scale + shift`` on a flat activation (constants, not trained)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale.clone(), requires_grad=False)
        self.shift = nn.Parameter(shift.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def linear(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    lin.weight.data = weight.detach().to(dtype).clone()
    lin.bias.data = bias.detach().to(dtype).clone()
    return lin
