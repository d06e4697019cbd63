"""The order in which samples go to the workers.

A run's wall time on N workers is at least its longest sample, and a long sample that starts
last leaves the other workers idle while it finishes (with one 60 s timeout among 100 samples of
117 s in all, starting it last costs 2 workers ~25% of their throughput). ``hardest-first`` is the
longest-processing-time-first rule with a cheap estimate of each sample's cost: the number of
ReLUs that interval bounds leave unstable on the sample's eps-box (what the MILP needs binaries
for; 0.1 s for 200 MNIST samples), with misclassified samples, which cost nothing, last. The
order changes only when samples run, never their results; records are stored by sample index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from robustkit.errors import InputError
from robustkit.network import Network

log = logging.getLogger(__name__)

ORDERS = ("hardest-first", "index")
_CHUNK = 512  # samples per batched bound computation (bounded memory on big runs)


class _Sample(Protocol):
    x: np.ndarray
    label: int


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise InputError(f"--order must be one of {list(ORDERS)}, got {order!r}")
    return order


def estimated_cost(net: Network, x: np.ndarray, labels: np.ndarray, eps: float,
                   value_range: tuple[float, float]) -> np.ndarray:
    """Per sample: unstable ReLUs under interval bounds on its eps-box; -1 when misclassified."""
    from robustkit.bounds.interval import interval_bounds
    from robustkit.bounds.stability import relu_stability, total_unstable

    costs = np.zeros(len(x), dtype=np.float64)
    lo_v, hi_v = value_range
    with torch.no_grad():
        for s in range(0, len(x), _CHUNK):
            xb = torch.as_tensor(np.asarray(x[s:s + _CHUNK], dtype=np.float64))
            lo = (xb - eps).clamp(lo_v, hi_v)
            hi = (xb + eps).clamp(lo_v, hi_v)
            unstable = total_unstable(relu_stability(net, interval_bounds(net, lo, hi)))
            pred = net.forward(xb).argmax(dim=1).numpy()
            wrong = pred != np.asarray(labels[s:s + _CHUNK])
            costs[s:s + _CHUNK] = np.where(wrong, -1.0, unstable)
    return costs


def order_tasks(tasks: Sequence[_Sample], net: Network, eps: float, value_range: tuple[float, float],
                order: str = "hardest-first") -> list:
    """``tasks`` in the order they should run (a stable sort: ties keep the index order)."""
    check_order(order)
    tasks = list(tasks)
    if order == "index" or len(tasks) < 2:
        return tasks
    try:
        x = np.stack([t.x for t in tasks])
        y = np.array([t.label for t in tasks])
        cost = estimated_cost(net, x, y, eps, value_range)
    except Exception as exc:  # noqa: BLE001 - an estimate only: never fail a run over it
        log.warning("could not estimate sample costs (%s); running in index order", exc)
        return tasks
    return [tasks[i] for i in np.argsort(-cost, kind="stable")]
