"""The domains of branch and bound (:mod:`robustkit.verification.bab`): a batch of sub-domains of
the input box with their split constraints, bounds and optimised parameters, and the row-wise
bookkeeping that lets a child keep what its ancestors proved."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Domains", "merge_rows", "merge_params", "open_share", "disjunct_rows", "violation_measure"]


def disjunct_rows(owner: np.ndarray) -> list[torch.Tensor]:
    """The specification rows of each disjunct (``owner[i]``: row ``i``'s disjunct), in order."""
    return [torch.as_tensor(np.flatnonzero(owner == k)) for k in sorted(set(int(k) for k in owner))]


def violation_measure(slack: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """``max_k min_{rows of k} slack`` per domain (``slack``: ``(n, m)``, ``d - C y`` or ``d`` less
    a lower bound of ``C y``): negative exactly where every disjunct has a row it cannot meet,
    so a domain whose upper bound of it is below ``-margin`` is closed (and a point with it >= 0
    violates the property)."""
    return torch.stack([slack[:, g].min(dim=1).values for g in groups], dim=1).max(dim=1).values


@dataclass
class Domains:
    """A batch of domains: per-layer bounds ``(n, d_i)``, the split constraints so far (per
    piecewise-linear operator at position ``r``: ``(n, units_r)`` signs per unit, a neuron's kink
    (:mod:`robustkit.network.activations`; for a ReLU the neuron): +1 above the kink (active), -1
    below (inactive), 0 not split), the final pass's slopes and multipliers last optimised for it
    (``(n, m, d_r)`` and ``(n, m, units_r)`` float32, to start its children from; empty before the
    first optimisation), the best lower bounds of the specification rows found for it or an
    ancestor (``(n, m)`` float64, valid for it: a child is a subset of its parent; ``None``: none
    yet) and, once bounded, the split chosen next (``relu``: the operator's position, -1: none
    left; ``neuron``: the unit)."""

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    signs: dict[int, torch.Tensor]
    relu: torch.Tensor
    neuron: torch.Tensor
    alphas: dict[int, torch.Tensor] = field(default_factory=dict)
    betas: dict[int, torch.Tensor] = field(default_factory=dict)
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.relu.numel())

    def take(self, idx: torch.Tensor | slice) -> "Domains":
        return Domains([t[idx] for t in self.lower], [t[idx] for t in self.upper],
                        {r: t[idx] for r, t in self.signs.items()}, self.relu[idx], self.neuron[idx],
                        {r: t[idx] for r, t in self.alphas.items()}, {r: t[idx] for r, t in self.betas.items()},
                        None if self.rows is None else self.rows[idx])


def merge_rows(known: torch.Tensor, R: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``known`` (``(n, m)`` row bounds) with the rows ``R`` raised to ``new`` (``(n, |R|)``)
    where that is higher (both are valid)."""
    out = known.clone()
    out[:, R] = torch.fmax(known[:, R], new.to(known.dtype))
    return out


def merge_params(old: torch.Tensor | None, R: torch.Tensor, new: torch.Tensor, m: int) -> torch.Tensor:
    """Per-row parameters ``(n, m, d)``: ``old`` with the rows ``R`` replaced by ``new``
    (``(n, |R|, d)``). The rows outside ``R`` are proven in every domain of the batch, hence in
    all their descendants, and their parameters are never used again (zeros when ``old`` is None)."""
    if old is None:
        old = torch.zeros(new.shape[0], m, new.shape[2], dtype=new.dtype)
    out = old.clone()
    out[:, R] = new.to(old.dtype)
    return out


def open_share(stack: list[Domains]) -> float:
    """The share of the search tree still open: each open domain at depth ``k`` (``k`` splits)
    counts ``2**-k`` (1.0 before the first split; 0 when every leaf is closed)."""
    share = 0.0
    for block in stack:
        depth = sum((sg != 0).sum(dim=1).double() for sg in block.signs.values())
        share += float(torch.pow(2.0, -torch.as_tensor(depth, dtype=torch.float64)).sum())
    return share
