"""Interval bound propagation (IBP): each layer's ``interval`` applied in turn."""

from __future__ import annotations

import torch

from robustkit.bounds.floaterr import ErrorTracker
from robustkit.bounds.types import NetBounds
from robustkit.network import Network


def interval_bounds(net: Network, lower: torch.Tensor, upper: torch.Tensor, safe: bool = True) -> NetBounds:
    """Bounds of every layer over the box ``[lower, upper]`` (flat, ``(B, in_dim)``), in float64.

    With ``safe`` the bounds after each linear layer are moved outward by the layer's float32
    rounding error and the float64 slack (:mod:`robustkit.bounds.floaterr`), so that they hold
    for the float32 network, not only for exact arithmetic.
    """
    lo = lower.reshape(lower.shape[0], -1).double()
    hi = upper.reshape(upper.shape[0], -1).double()
    if bool((lo > hi).any()):
        raise ValueError("input lower bound exceeds upper bound")
    out = NetBounds(lo, hi, [], [], "interval")
    tracker = ErrorTracker(lo, hi)
    for layer in net.layers:
        e, s = tracker.add(layer, lo, hi)
        lo, hi = layer.interval(lo, hi)
        if safe and (not layer.nonlinear or layer.rounds):  # crown.charged (not imported: a lower module)
            lo, hi = lo - e - s, hi + e + s
        out.lower.append(lo)
        out.upper.append(hi)
    if safe:
        out.errors = tracker.out
    return out
