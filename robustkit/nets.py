"""Network architectures by name (registry) and access to hidden activations.

Every robustkit net is a ``torch.nn.Sequential`` built only from ``Normalize``,
``nn.Conv2d``, ``nn.Linear``, ``nn.ReLU``, ``nn.Flatten``, ``nn.MaxPool2d`` and
:class:`Residual` (``x + body(x)``, its body again such a Sequential), so that it exports to plain
ONNX (Sub/Div, Conv, Gemm, Relu, Flatten, MaxPool, Add; :mod:`robustkit.onnx_export`).

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
        check_net_name(self.name)
        if not self.input_shape or min(self.input_shape) <= 0:
            raise InputError(f"input_shape must have positive sizes, got {self.input_shape}")
        if len(self.input_shape) != 3 and not is_factory(self.name):
            raise InputError(f"the {self.name} net takes images (C, H, W), got input shape {self.input_shape}")
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


def is_factory(name: str) -> bool:
    """Whether ``name`` names a user's model factory (``pkg.module:function`` or
    ``path/to/file.py:function``) rather than a registered net."""
    return ":" in name and name not in NETS


def check_net_name(name: str) -> None:
    """A registered net or a well-formed factory reference, else :class:`InputError`."""
    if is_factory(name):
        where, _, fn = name.rpartition(":")
        if not where or not fn.isidentifier():
            raise InputError(f"--net {name!r}: a model factory is MODULE:FUNCTION or FILE.py:FUNCTION, "
                             "e.g. mypkg.models:make_net")
    elif name not in NETS:
        raise InputError(f"unknown net {name!r}; choose one of {sorted(NETS)}, or name a function returning an "
                         "nn.Module as MODULE:FUNCTION or FILE.py:FUNCTION")


def load_factory(name: str) -> Callable[..., nn.Module]:
    """The function ``name`` refers to (``pkg.module:function``, imported with the current directory on
    the path the way ``python -m`` does, or ``path/to/file.py:function``)."""
    import importlib
    import importlib.util
    import os
    import sys
    from pathlib import Path

    check_net_name(name)
    where, _, fn_name = name.rpartition(":")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = Path(where).expanduser()
            if not path.is_file():
                raise InputError(f"--net {name!r}: file {path} not found")
            mod_name = f"robustkit_user_{path.stem}_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(mod_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(mod_name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
        else:
            cwd = os.getcwd()
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(where)
            finally:
                if added:
                    sys.path.remove(cwd)
    except InputError:
        raise
    except Exception as exc:  # the user's module: any import error is theirs to fix
        raise InputError(f"--net {name!r}: cannot import {where}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise InputError(f"--net {name!r}: {where} has no function {fn_name!r}")
    return fn  # type: ignore[no-any-return]


def _call_factory(cfg: NetConfig) -> nn.Module:
    """Call the user's factory with the keyword arguments it takes among ``input_shape`` and ``num_classes``."""
    import inspect

    fn = load_factory(cfg.name)
    offered = {"input_shape": tuple(cfg.input_shape), "num_classes": cfg.num_classes}
    try:
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
    except (TypeError, ValueError):
        kwargs = {}
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise InputError(f"--net {cfg.name!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def build_net(cfg: NetConfig) -> nn.Module:
    """Build the registered architecture ``cfg.name`` (an ``nn.Sequential``, input ``(B, C, H, W)``,
    logits out), or call the user's factory ``cfg.name`` (``MODULE:FUNCTION``; with
    normalization it becomes ``Sequential(Normalize, model)``)."""
    if is_factory(cfg.name):
        model = _call_factory(cfg)
        if cfg.mean is not None and cfg.std is not None:
            return nn.Sequential(Normalize(cfg.mean, cfg.std), model)
        return model
    layers = NETS[cfg.name](cfg)
    if cfg.mean is not None and cfg.std is not None:
        layers.insert(0, Normalize(cfg.mean, cfg.std))
    return nn.Sequential(*layers)


def forward_with_activations(model: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    """The model's forward pass with every nonlinear operator's input and output, through its
    captured layers (:func:`robustkit.network.torch_capture.activations`)."""
    from robustkit.network.torch_capture import activations

    return activations(model, x)
