"""A network: an input shape, a sequence of layers on flat activations, and metadata."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from robustkit.network.floatfmt import FloatFormat, format_named
from robustkit.network.layers import Dense, Elementwise, Layer, LinearLayer
from robustkit.network.linear_ops import Permute


@dataclass(frozen=True, eq=False)
class Network:
    """A feed-forward network over flat activations: linear layers and elementwise nonlinear ones.

    ``sample_shape`` is the shape of one input sample as the ONNX model sees it without the
    batch dimension (e.g. ``(1, 28, 28)``, ``(784, 1)``); ``onnx_input_shape`` is what
    onnxruntime must be fed for one sample (with the batch dimension when the model has one).
    """

    layers: tuple[Layer, ...]
    sample_shape: tuple[int, ...]
    onnx_input_shape: tuple[int, ...]
    input_name: str = "input"
    output_name: str = "output"
    metadata: dict[str, str] = field(default_factory=dict)
    input_format: str = "float32"  # the element type onnxruntime is fed (robustkit.network.floatfmt)

    def __post_init__(self) -> None:
        format_named(self.input_format)  # raises on an unknown format
        dim = self.in_dim
        for i, layer in enumerate(self.layers):
            if layer.in_dim != dim:
                raise ValueError(f"layer {i} ({layer.describe()}) expects {layer.in_dim} inputs, gets {dim}")
            dim = layer.out_dim

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.sample_shape))

    @property
    def input_fmt(self) -> FloatFormat:
        """The float format of the network's input (what a witness must be written in)."""
        return format_named(self.input_format)

    @property
    def out_dim(self) -> int:
        return self.layers[-1].out_dim if self.layers else self.in_dim

    @property
    def activation_indices(self) -> list[int]:
        """Positions of the nonlinear layers (ReLU, LeakyReLU, HardTanh, Sigmoid, Tanh)."""
        return [i for i, layer in enumerate(self.layers) if layer.nonlinear]

    @property
    def split_indices(self) -> list[int]:
        """Positions of the piecewise-linear nonlinear layers: what branch and bound splits,
        the MILP encodes with binaries and stability statistics count."""
        return [i for i, layer in enumerate(self.layers)
                if layer.nonlinear and layer.piecewise_linear]  # type: ignore[attr-defined]

    @property
    def piecewise_linear(self) -> bool:
        """Whether every layer is linear or piecewise linear (what the MILP and branch and bound need)."""
        return all(getattr(layer, "piecewise_linear", True) for layer in self.layers)

    @property
    def num_neurons(self) -> int:
        """The neurons of the nonlinear layers (not the coordinates they carry)."""
        return sum(self.layers[i].count for i in self.activation_indices)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on a batch: ``x`` has shape ``(B, *sample_shape)`` or ``(B, in_dim)``."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = layer.forward(h)
        return h

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every layer (index i = output of ``layers[i]``)."""
        h = x.reshape(x.shape[0], -1)
        outs = []
        for layer in self.layers:
            h = layer.forward(h)
            outs.append(h)
        return outs

    def to_torch(self, relu_grad_slope: float = 0.0) -> nn.Module:
        """A torch module computing the same function (float32), for attacks and evaluation.

        ``relu_grad_slope > 0``: the same forward pass, but gradients pass through an inactive
        ReLU scaled by this slope (as through a leaky ReLU) instead of being cut: a surrogate
        gradient for attacks, which otherwise stall where most ReLUs are off."""
        return NetworkModule(self, relu_grad_slope)

    def describe(self) -> str:
        lines = [f"input {self.sample_shape} ({self.in_dim})"]
        lines += [f"  {i}: {layer.describe()}" for i, layer in enumerate(self.layers)]
        return "\n".join(lines)


class NetworkModule(nn.Module):
    """``nn.Module`` view of a :class:`Network` (weights as float32 buffers, not trained)."""

    def __init__(self, net: Network, relu_grad_slope: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= relu_grad_slope <= 1.0:
            raise ValueError(f"relu_grad_slope must be in [0, 1], got {relu_grad_slope}")
        self.net = net
        self.sample_shape = net.sample_shape
        self.relu_grad_slope = relu_grad_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu_grad_slope == 0.0:
            return self.net.forward(x)
        h = x.reshape(x.shape[0], -1)
        for layer in self.net.layers:
            h = layer.surrogate(h, self.relu_grad_slope) if layer.nonlinear else layer.forward(h)  # type: ignore[attr-defined]
        return h

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def, override]
        """Device/dtype moves (``.to``, ``.cuda``) apply to the layers' weight tensors too."""
        layers = tuple(layer.map_tensors(fn) for layer in self.net.layers)
        self.net = dataclasses.replace(self.net, layers=layers)
        return super()._apply(fn, recurse)


def simplify(layers: list[Layer]) -> list[Layer]:
    """Fold a ``Permute`` into a following ``Dense`` (tf2onnx's NCHW -> NHWC before Flatten): the
    Dense's columns reordered, exactly (a permutation rounds nothing); and merge consecutive
    ``Elementwise`` maps of one float format (:func:`merge_elementwise`).

    An elementwise map before a Dense (input normalization) stays its own layer, so that each
    layer's float model (:mod:`robustkit.bounds.floaterr`) describes the operators onnxruntime runs:
    folded into the weights it would hide the underflow and the range of the values it computes."""
    out: list[Layer] = []
    for layer in layers:
        prev = out[-1] if out else None
        if isinstance(layer, Dense) and isinstance(prev, Permute):
            out[-1] = dataclasses.replace(layer, weight=prev.backward(layer.weight))
        elif isinstance(layer, Elementwise) and isinstance(prev, Elementwise) and layer.fmt == prev.fmt:
            out[-1] = merge_elementwise(prev, layer)
        else:
            out.append(layer)
    return out


def merge_elementwise(first: Elementwise, second: Elementwise) -> Elementwise:
    """``second`` after ``first`` as one map, with the float model of both: ``s2 (s1 x + t1) + t2``
    rounds ``k1 + k2`` times on ``|s1 s2| |x| + |s2| o1 + o2``; its values are those of ``first`` and
    of ``second`` on them; an error in ``first`` grows by ``|s2|`` more."""
    s1, s2 = first.scale.double(), second.scale.double()
    o1, o2 = first.error_offset(torch.float64), second.error_offset(torch.float64)
    ps1 = s1.abs() if first.peak_scale is None else first.peak_scale.double()
    ph1 = o1 if first.peak_shift is None else first.peak_shift.double()
    ps2 = s2.abs() if second.peak_scale is None else second.peak_scale.double()
    ph2 = o2 if second.peak_shift is None else second.peak_shift.double()
    grow = float(s2.abs().max()) if s2.numel() else 0.0
    return Elementwise(
        s1 * s2, first.shift.double() * s2 + second.shift.double(), first.ops + second.ops,
        s2.abs() * o1 + o2, first.fmt,
        peak_scale=torch.maximum(ps1, ps2 * s1.abs()), peak_shift=torch.maximum(ph1, ps2 * o1 + ph2),
        coef=max(first.coef_bound, second.coef_bound),
        amplify=max(second.amplify, first.amplify * max(grow, 1.0)))


def linear_layers(net: Network) -> list[tuple[int, LinearLayer]]:
    """The linear layers of ``net`` with their positions."""
    return [(i, layer) for i, layer in enumerate(net.layers) if not layer.nonlinear]  # type: ignore[misc]
