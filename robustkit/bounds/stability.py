"""ReLU stability statistics: per ReLU layer and per sample, how many neurons are stably active
(``l >= 0``), stably inactive (``u <= 0``) or unstable (``l < 0 < u``) over an input region, and
the mean width ``u - l`` of their pre-activation bounds. Unstable ReLUs are what makes exact
verification expensive (each is a binary variable of the MILP; Xiao et al. 2019, "Training for
Faster Adversarial Robustness Verification via Inducing ReLU Stability", Sec. 4)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from robustkit.bounds.methods import BoundMethod, BoundsConfig, StageReport, margin_matrix, run_bounds
from robustkit.bounds.types import NetBounds
from robustkit.errors import InputError
from robustkit.network import Network


@dataclass(frozen=True)
class LayerStability:
    """One ReLU layer (at ``position`` in ``net.layers``, ``dim`` neurons); arrays have one
    entry per sample."""

    position: int
    dim: int
    active: np.ndarray
    inactive: np.ndarray
    unstable: np.ndarray
    mean_width: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means over the samples (JSON-ready)."""
        return {
            "position": self.position,
            "dim": self.dim,
            "active": float(self.active.mean()),
            "inactive": float(self.inactive.mean()),
            "unstable": float(self.unstable.mean()),
            "mean_width": float(self.mean_width.mean()),
        }


def relu_stability(net: Network, bounds: NetBounds) -> list[LayerStability]:
    """Stability of every ReLU layer of ``net`` under ``bounds``."""
    out = []
    for r in net.split_indices:
        layer = net.layers[r]
        lo, hi = bounds.pre_activation(net, r)
        lo, hi = lo.detach().double(), hi.detach().double()
        real = layer.relu_mask  # identity coordinates (carried tensors of a graph) are no ReLUs
        active, inactive, unstable = (m[:, real] for m in layer.phases(lo, hi))
        out.append(LayerStability(
            position=r,
            dim=layer.count,
            active=active.sum(1).numpy(),
            inactive=inactive.sum(1).numpy(),
            unstable=unstable.sum(1).numpy(),
            mean_width=(hi - lo)[:, real].mean(1).numpy() if layer.count else np.zeros(lo.shape[0]),
        ))
    return out


def total_unstable(layers: list[LayerStability]) -> np.ndarray:
    """Unstable ReLUs per sample, over all layers."""
    if not layers:
        return np.zeros(0, dtype=np.int64)
    return np.sum([layer.unstable for layer in layers], axis=0)


CERTIFY_MARGIN = 1e-4  # = VerifyConfig.safety_margin's default: a bound must clear it to count


@dataclass
class BoundStatistics:
    """Bounds over eps-boxes around ``n`` samples: per-layer stability, the lowest margin lower
    bound ``min_j (y_label - y_j)`` per sample, the prediction's correctness, and the time taken.
    ``certified``: correct and margin lower bound > ``CERTIFY_MARGIN`` (robust on the whole box,
    with the same safety margin that ``verify`` asks of a proof)."""

    method: str
    eps: float
    layers: list[LayerStability]
    margin_lower: np.ndarray
    correct: np.ndarray
    seconds: float
    stages: list[StageReport] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.margin_lower.size)

    @property
    def certified(self) -> np.ndarray:
        return self.correct & (self.margin_lower > CERTIFY_MARGIN)

    def summary(self) -> dict[str, object]:
        return {
            "method": self.method,
            "eps": self.eps,
            "n": self.n,
            "seconds_per_sample": self.seconds / max(self.n, 1),
            "clean_accuracy": float(self.correct.mean()) if self.n else 0.0,
            "certified": int(self.certified.sum()),
            "mean_margin_lower": float(self.margin_lower.mean()) if self.n else 0.0,
            "layers": [layer.summary() for layer in self.layers],
        }


def dataset_bound_statistics(
    net: Network,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    method: "str | BoundMethod",
    value_range: tuple[float, float] = (0.0, 1.0),
    time_budget: float | None = None,
    batch_size: int = 32,
    config: BoundsConfig = BoundsConfig(),
) -> BoundStatistics:
    """Bound the network over ``[x - eps, x + eps] ∩ value_range`` for every image and collect
    stability and margin statistics (``time_budget``: seconds per batch for the optimising stages)."""
    method = BoundMethod.parse(method)
    if not np.isfinite(eps) or eps < 0:
        raise InputError(f"eps must be a finite number >= 0, got {eps}")
    if net.out_dim < 2:
        raise InputError(f"margins need a classifier with >= 2 outputs; the network has {net.out_dim}")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    x = images.reshape(images.shape[0], -1).double()
    if x.shape[1] != net.in_dim:
        raise InputError(
            f"the images have {x.shape[1]} values each, the network takes {net.in_dim} inputs "
            f"(shape {net.sample_shape}); is the dataset the right one?"
        )
    labels = torch.as_tensor(labels).long().reshape(-1)
    lo_v, hi_v = value_range
    start = time.perf_counter()
    layer_parts: list[list[LayerStability]] = []
    margins, correct = [], []
    stages: list[StageReport] = []
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s : s + batch_size], labels[s : s + batch_size]
        lower, upper = (xb - eps).clamp(lo_v, hi_v), (xb + eps).clamp(lo_v, hi_v)
        C = margin_matrix(yb, net.out_dim)
        result = run_bounds(net, lower, upper, method, C, time_budget, config)
        assert result.spec is not None
        layer_parts.append(relu_stability(net, result.bounds))
        margin = result.spec.lower.min(dim=1).values
        # where the float network may overflow, its bounds prove nothing
        margins.append(torch.where(result.bounds.float_errors(net).overflow(), -torch.inf, margin).numpy())
        with torch.no_grad():
            correct.append((net.forward(xb).argmax(dim=1) == yb).numpy())
        stages = _merge_stages(stages, result.stages)
    layers = [
        LayerStability(
            parts[0].position, parts[0].dim,
            *(np.concatenate([getattr(p, name) for p in parts]) for name in ("active", "inactive", "unstable", "mean_width")),
        )
        for parts in zip(*layer_parts)
    ]
    return BoundStatistics(
        method.value, float(eps), layers, np.concatenate(margins), np.concatenate(correct),
        time.perf_counter() - start, stages,
    )


def _merge_stages(acc: list[StageReport], new: list[StageReport]) -> list[StageReport]:
    if not acc:
        return [StageReport(s.method, s.seconds, s.unstable, s.removed) for s in new]
    return [
        StageReport(a.method, a.seconds + s.seconds, a.unstable + s.unstable, a.removed + s.removed)
        for a, s in zip(acc, new)
    ]
