"""Bounds on every layer of a network over an input region, and the safety margin that makes
them valid for the float network."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustkit.network import Network, ReLU

# Bounds used for proofs or big-M constants are widened outward by
# ``abs_margin + rel_margin * |bound|``: float32 evaluation of the real network differs from
# the exact real-arithmetic function by far less than this for the nets robustkit handles.
FLOAT_ABS_MARGIN = 1e-6
FLOAT_REL_MARGIN = 1e-6


def widen(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen ``[lower, upper]`` outward by the floating-point safety margin."""
    lo = lower - FLOAT_ABS_MARGIN - FLOAT_REL_MARGIN * lower.abs()
    hi = upper + FLOAT_ABS_MARGIN + FLOAT_REL_MARGIN * upper.abs()
    return lo, hi


@dataclass
class NetBounds:
    """``lower[i]``, ``upper[i]``: float64 bounds ``(B, out_dim_i)`` on the output of layer ``i``
    (so the pre-activation bounds of a ReLU at position ``i`` are those of layer ``i - 1``);
    ``input_lower``/``input_upper`` are the input region itself. ``method`` names what produced them."""

    input_lower: torch.Tensor
    input_upper: torch.Tensor
    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    method: str = "interval"

    def pre_activation(self, net: Network, relu_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds on the input of the ReLU at layer position ``relu_pos``."""
        if not isinstance(net.layers[relu_pos], ReLU):
            raise ValueError(f"layer {relu_pos} is not a ReLU")
        if relu_pos == 0:
            return self.input_lower, self.input_upper
        return self.lower[relu_pos - 1], self.upper[relu_pos - 1]

    def output(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lower[-1], self.upper[-1]

    def select(self, index: int) -> "NetBounds":
        """The bounds of one sample of the batch (keeping a batch dimension of 1)."""
        sl = slice(index, index + 1)
        return NetBounds(
            self.input_lower[sl], self.input_upper[sl],
            [t[sl] for t in self.lower], [t[sl] for t in self.upper], self.method,
        )
