"""Bounds on every layer of a network over an input region, valid for the float32 network as
onnxruntime runs it (the error model of :mod:`robustkit.bounds.floaterr` travels with them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustkit.bounds.floaterr import FloatErrors, float_errors
from robustkit.network import Network

@dataclass
class NetBounds:
    """``lower[i]``, ``upper[i]``: float64 bounds ``(B, out_dim_i)`` on the output of layer ``i``
    (so the pre-activation bounds of a ReLU at position ``i`` are those of layer ``i - 1``);
    ``input_lower``/``input_upper`` are the input region itself. ``method`` names what produced them.
    ``errors``: the float error model over this region (or a larger one: it stays valid on
    sub-regions), set by the bound methods; :meth:`float_errors` derives it when absent.
    ``slopes``: the lower slopes of the ReLUs that alpha-CROWN optimised for the backward pass of
    each target layer ``t`` (``{t: {r: (B, 2, d_t, d_r)}}`` per target neuron and side, or
    ``(B, 2, d_r)`` shared by the layer), to bound sub-regions with (any slope in [0, 1] is valid
    anywhere); ``None`` when not optimised."""

    input_lower: torch.Tensor
    input_upper: torch.Tensor
    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    method: str = "interval"
    errors: FloatErrors | None = None
    slopes: dict[int, dict[int, torch.Tensor]] | None = None

    def float_errors(self, net: Network) -> FloatErrors:
        """The float error model over these bounds (computed from them if not already known)."""
        if self.errors is None:
            self.errors = float_errors(net, self.input_lower, self.input_upper, self.lower, self.upper)
        return self.errors

    def pre_activation(self, net: Network, relu_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds on the input of the ReLU at layer position ``relu_pos``."""
        if not net.layers[relu_pos].nonlinear:
            raise ValueError(f"layer {relu_pos} is not a nonlinear operator")
        if relu_pos == 0:
            return self.input_lower, self.input_upper
        return self.lower[relu_pos - 1], self.upper[relu_pos - 1]

    def phases(self, net: Network, relu_pos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(active, inactive, unstable)`` masks ``(B, dim)`` of the ReLU at ``relu_pos`` under
        these bounds (:meth:`ReLU.phases`: identity coordinates count as active)."""
        lo, hi = self.pre_activation(net, relu_pos)
        return net.layers[relu_pos].phases(lo, hi)  # type: ignore[union-attr]

    def output(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lower[-1], self.upper[-1]

    def select(self, index: int) -> "NetBounds":
        """The bounds of one sample of the batch (keeping a batch dimension of 1)."""
        sl = slice(index, index + 1)
        return NetBounds(
            self.input_lower[sl], self.input_upper[sl],
            [t[sl] for t in self.lower], [t[sl] for t in self.upper], self.method,
            None if self.errors is None else self.errors.select(index),
        )
