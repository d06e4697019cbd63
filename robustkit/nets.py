"""Network architectures by name (registry) and access to hidden activations.

Every robustkit net is a ``torch.nn.Sequential`` built only from ``Normalize``,
``nn.Conv2d``, ``nn.Linear``, ``nn.ReLU``, ``nn.Flatten``, ``nn.MaxPool2d`` and
:class:`Residual` (``x + body(x)``, its body again such a Sequential), so that it exports to plain
ONNX (Sub/Div, Conv, Gemm, Relu, Flatten, MaxPool, Add; :mod:`robustkit.export`).

``small`` and ``large`` are the architectures of Wong & Kolter (2018) used by Xiao et al.
(2019) and Jin & Rinard (2020): small = Conv 16 4x4/2, Conv 32 4x4/2, FC 100, FC 10;
large = Conv 32 3x3/1, Conv 32 4x4/2, Conv 64 3x3/1, Conv 64 4x4/2, FC 512, FC 512, FC 10.

``maxpool`` (LeNet-like, channels shrunk for verification): Conv 8 3x3/1 pad 1, ReLU,
MaxPool 2x2/2, Conv 16 3x3/1 pad 1, ReLU, MaxPool 2x2/2, FC 100, FC 10.
``resnet`` (2 residual blocks): Conv 8 3x3/2 pad 1, ReLU, then twice
``relu(x + conv(relu(conv(x))))`` (Conv 8 3x3/1 pad 1), FC 100, FC 10.

The regularizers do not walk these modules: training captures the model into the verifier's
operator classes (:mod:`robustkit.network.torch_capture`), so every regularizer works on every
net here, and on a user's own module.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class Residual(nn.Module):
    """Residual block ``x + body(x)`` (exported as the body's nodes and an ONNX ``Add``); the
    body must keep the shape of its input. The ReLU after the sum is a separate ``nn.ReLU`` in
    the outer Sequential."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        if not isinstance(body, nn.Sequential):
            raise InputError(f"Residual body must be an nn.Sequential, got {type(body).__name__}")
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


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


def _maxpool(cfg: NetConfig) -> list[nn.Module]:
    c, h, w = cfg.input_shape
    layers: list[nn.Module] = []
    for out_c in (8, 16):
        layers += [nn.Conv2d(c, out_c, 3, stride=1, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=2)]
        c, h, w = out_c, _conv_out(h, 2, 2, 0), _conv_out(w, 2, 2, 0)
        if min(h, w) < 1:
            raise InputError(f"maxpool: input {cfg.input_shape} is too small for two 2x2 poolings")
    return layers + [nn.Flatten(), nn.Linear(c * h * w, 100), nn.ReLU(), nn.Linear(100, cfg.num_classes)]


def _resnet(cfg: NetConfig, channels: int = 8, blocks: int = 2) -> list[nn.Module]:
    c, h, w = cfg.input_shape
    layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.ReLU()]
    h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
    for _ in range(blocks):
        body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1, padding=1),
        )
        layers += [Residual(body), nn.ReLU()]
    return layers + [nn.Flatten(), nn.Linear(channels * h * w, 100), nn.ReLU(), nn.Linear(100, cfg.num_classes)]


def _mlp(cfg: NetConfig) -> list[nn.Module]:
    return _conv_stack(cfg, [], list(cfg.hidden or (100, 100)))


NETS: dict[str, Callable[[NetConfig], list[nn.Module]]] = {
    "mlp": _mlp,
    "small": _small,
    "large": _large,
    "maxpool": _maxpool,
    "resnet": _resnet,
}


def build_net(cfg: NetConfig) -> nn.Sequential:
    """Build the registered architecture ``cfg.name`` (input ``(B, C, H, W)``, logits out)."""
    layers = NETS[cfg.name](cfg)
    if cfg.mean is not None and cfg.std is not None:
        layers.insert(0, Normalize(cfg.mean, cfg.std))
    return nn.Sequential(*layers)


def forward_with_activations(model: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    """The model's forward pass with every nonlinear operator's input and output, through its
    captured layers (:func:`robustkit.network.torch_capture.activations`)."""
    from robustkit.network.torch_capture import activations

    return activations(model, x)
