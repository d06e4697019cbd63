"""Interval bound propagation (IBP): each layer's ``interval`` applied in turn."""

from __future__ import annotations

import torch

from robustkit.bounds.types import NetBounds, widen
from robustkit.network import Network, ReLU


def interval_bounds(net: Network, lower: torch.Tensor, upper: torch.Tensor, safe: bool = True) -> NetBounds:
    """Bounds of every layer over the box ``[lower, upper]`` (flat, ``(B, in_dim)``), in float64.

    With ``safe`` the bounds after each linear layer are widened by the float safety margin,
    so that they hold for the float32 network, not only for exact arithmetic.
    """
    lo = lower.reshape(lower.shape[0], -1).double()
    hi = upper.reshape(upper.shape[0], -1).double()
    if bool((lo > hi).any()):
        raise ValueError("input lower bound exceeds upper bound")
    out = NetBounds(lo, hi, [], [], "interval")
    for layer in net.layers:
        lo, hi = layer.interval(lo, hi)
        if safe and not isinstance(layer, ReLU):
            lo, hi = widen(lo, hi)
        out.lower.append(lo)
        out.upper.append(hi)
    return out
