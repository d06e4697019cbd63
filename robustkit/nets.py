"""Network architectures by name (registry) and access to hidden activations.

Every robustkit net is a ``torch.nn.Sequential`` built only from ``Normalize``,
``nn.Conv2d``, ``nn.Linear``, ``nn.ReLU`` and ``nn.Flatten``, so that it exports to plain
ONNX (Sub/Div, Conv, Gemm, Relu, Flatten) and loads back into robustkit's verifier.

``small`` and ``large`` are the architectures of Wong & Kolter (2018) used by Xiao et al.
(2019) and Jin & Rinard (2020): small = Conv 16 4x4/2, Conv 32 4x4/2, FC 100, FC 10;
large = Conv 32 3x3/1, Conv 32 4x4/2, Conv 64 3x3/1, Conv 64 4x4/2, FC 512, FC 512, FC 10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from robustkit.errors import InputError


class Normalize(nn.Module):
    """Per-channel input normalization ``(x - mean) / std`` (exported as ONNX Sub and Div)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise InputError(f"normalization std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class NetConfig:
    """What a net is built from: its name, the data's shape and classes, and options."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int = 10
    hidden: tuple[int, ...] = ()  # for "mlp": hidden layer widths
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in NETS:
            raise InputError(f"unknown net {self.name!r}; choose one of {sorted(NETS)}")
        if len(self.input_shape) != 3 or min(self.input_shape) <= 0:
            raise InputError(f"input_shape must be (C, H, W) with positive sizes, got {self.input_shape}")
        if self.num_classes < 2:
            raise InputError("num_classes must be at least 2")
        if any(h <= 0 for h in self.hidden):
            raise InputError(f"hidden widths must be positive, got {self.hidden}")
        if (self.mean is None) != (self.std is None):
            raise InputError("give both mean and std for normalization, or neither")


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _conv_stack(cfg: NetConfig, convs: list[tuple[int, int, int, int]], fcs: list[int]) -> list[nn.Module]:
    c, h, w = cfg.input_shape
    layers: list[nn.Module] = []
    for out_c, k, s, p in convs:
        layers += [nn.Conv2d(c, out_c, k, stride=s, padding=p), nn.ReLU()]
        c, h, w = out_c, _conv_out(h, k, s, p), _conv_out(w, k, s, p)
    layers.append(nn.Flatten())
    width = c * h * w
    for f in fcs:
        layers += [nn.Linear(width, f), nn.ReLU()]
        width = f
    layers.append(nn.Linear(width, cfg.num_classes))
    return layers


def _small(cfg: NetConfig) -> list[nn.Module]:
    return _conv_stack(cfg, [(16, 4, 2, 1), (32, 4, 2, 1)], [100])


def _large(cfg: NetConfig) -> list[nn.Module]:
    return _conv_stack(cfg, [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 512])


def _mlp(cfg: NetConfig) -> list[nn.Module]:
    return _conv_stack(cfg, [], list(cfg.hidden or (100, 100)))


NETS: dict[str, Callable[[NetConfig], list[nn.Module]]] = {
    "mlp": _mlp,
    "small": _small,
    "large": _large,
}


def build_net(cfg: NetConfig) -> nn.Sequential:
    """Build the registered architecture ``cfg.name`` (input ``(B, C, H, W)``, logits out)."""
    layers = NETS[cfg.name](cfg)
    if cfg.mean is not None and cfg.std is not None:
        layers.insert(0, Normalize(cfg.mean, cfg.std))
    return nn.Sequential(*layers)


@dataclass
class Activations:
    """One forward pass with its hidden quantities.

    ``preacts[k]`` is the input of the k-th ReLU (pre-activation), ``posts[k]`` its output;
    ``linear_inputs[k]`` is the input of the k-th Linear/Conv layer (for layer-wise Jacobians).
    """

    logits: torch.Tensor
    preacts: list[torch.Tensor] = field(default_factory=list)
    posts: list[torch.Tensor] = field(default_factory=list)
    linear_inputs: list[torch.Tensor] = field(default_factory=list)

    @property
    def last_hidden(self) -> torch.Tensor:
        """Activations of the last hidden layer, flattened (the embedding used by MRnet/MAT)."""
        if not self.posts:
            raise ValueError("the net has no hidden layer")
        return self.posts[-1].flatten(1)


def forward_with_activations(model: nn.Sequential, x: torch.Tensor) -> Activations:
    """Run a robustkit ``nn.Sequential`` and keep every pre-/post-activation (differentiable)."""
    acts = Activations(logits=x)
    h = x
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            acts.linear_inputs.append(h)
        if isinstance(layer, nn.ReLU):
            acts.preacts.append(h)
            h = layer(h)
            acts.posts.append(h)
        else:
            h = layer(h)
    acts.logits = h
    return acts
