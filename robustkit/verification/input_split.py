"""Branch and bound over the input box (input splitting), for low-dimensional inputs.

Where the input has few dimensions (ACAS Xu's 5, control and tabular nets), halving the input
box tightens every layer's bounds at once, while a ReLU split changes one neuron. Each domain is
a sub-box; it is bounded by CROWN over the sub-box (every intermediate layer recomputed, float
error charged as everywhere in :mod:`robustkit.bounds`), closed when every disjunct has a row
proven by more than the safety margin, and otherwise halved along the dimension where the
worst open row's linear bound gains most (``|A_in| * width``, the smart input branching of
alpha-beta-CROWN's input split), many boxes per batch. Sub-boxes cover their parent exactly
(both halves keep the midpoint), so an ``unsat`` rests on closed boxes covering the input box.
Falsification: each open box's center and the corner minimising its worst row's linear bound
run through the network; points that violate go to ``check`` (the caller replays them in
onnxruntime: a ``sat`` is never the bound's word).

The search ends ``unsat`` (every box closed), ``sat`` (``check`` accepted a point), ``timeout``,
or ``unknown`` (a box too narrow to halve further still open, or more than ``max_domains`` open).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from robustkit.bounds.beta_crown import spec_backward
from robustkit.bounds.crown import crown_bounds, pre_bounds
from robustkit.bounds.types import NetBounds
from robustkit.network import Network
from robustkit.verification.bab import BabResult
from robustkit.verification.domains import disjunct_rows, violation_measure
from robustkit.verification.final_pass import optimise_pairs

log = logging.getLogger(__name__)

# ``bab_split="auto"`` splits the input box of inputs with at most this many dimensions: on the
# random nets of ``verify/bench_bab_vs_milp.py`` (2-10 inputs) input splitting decided 184 of 185
# properties where ReLU splitting decided 173; with 11-30 inputs ReLU splitting decided all 60 and
# input splitting 53 (``verify/results/bab_input_split.md``)
AUTO_MAX_DIM = 10


@dataclass(frozen=True)
class InputSplitConfig:
    """``batch``: parent boxes halved per step; ``max_domains``: open boxes before giving up
    (``unknown``); ``min_width``: a dimension narrower than this share of its width in the input
    box is not halved again (a box with every dimension that narrow and still open ends the
    search ``unknown``); ``candidates``: violating points handed to ``check`` per step;
    ``iterations``: Adam steps (rate ``lr``) on the final pass's ReLU slopes of the rows CROWN
    leaves open in each box (alpha-CROWN's final pass, :func:`optimise_pairs`; float32 steps,
    one float64 pass decides), 0 for CROWN alone; ``stop_when_stuck``: end ``unknown`` as soon
    as a box is too narrow to halve (the search could then end ``unknown`` at best; a caller with
    another method left, as ``bab_split="auto"``, hands it the time instead) (on the random nets of
    ``verify/bench_bab_vs_milp.py`` 3 steps decided the same 65 properties in 18.2 s against
    17.3 s without)."""

    batch: int = 512
    max_domains: int = 1_000_000
    min_width: float = 1e-6
    candidates: int = 4
    iterations: int = 0
    lr: float = 0.25
    stop_when_stuck: bool = False

    def __post_init__(self) -> None:
        if self.batch < 1 or self.max_domains < 1 or self.candidates < 0 or self.iterations < 0:
            raise ValueError("batch and max_domains must be >= 1, candidates and iterations >= 0")
        if not 0 < self.min_width < 1:
            raise ValueError(f"min_width must be in (0, 1), got {self.min_width}")


class _Boxes:
    """Open sub-boxes: ``lo``, ``hi`` ``(n, in_dim)`` and ``depth`` ``(n,)`` (halvings so far)."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, depth: torch.Tensor) -> None:
        self.lo, self.hi, self.depth = lo, hi, depth

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def take(self, idx: torch.Tensor | slice) -> "_Boxes":
        return _Boxes(self.lo[idx], self.hi[idx], self.depth[idx])

    def share(self) -> float:
        """The share of the input box these boxes cover (each halving halves it)."""
        return float(torch.pow(2.0, -self.depth.double()).sum())


class _InputSearch:
    def __init__(self, net: Network, lo: torch.Tensor, hi: torch.Tensor, C: np.ndarray, d: np.ndarray,
                 owner: np.ndarray, margin: float, cfg: InputSplitConfig,
                 check: Callable[[np.ndarray], object | None], deadline: float, root: NetBounds) -> None:
        self.net, self.cfg, self.margin, self.check, self.deadline = net, cfg, margin, check, deadline
        self.C = torch.tensor(np.asarray(C, dtype=np.float64))
        self.d = torch.tensor(np.asarray(d, dtype=np.float64))
        self.groups = disjunct_rows(owner)
        self.errs = root.float_errors(net)  # valid on every sub-box of the root's box
        self.width0 = (hi - lo).reshape(-1)
        self.cleared = math.inf
        self._net32: Network | None = None
        self.stats: dict[str, float | int] = {"domains": 0, "closed": 0, "undecided": 0, "candidates": 0,
                                              "max_open": 0, "iterations": 0}

    def bound(self, boxes: _Boxes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per box: the violation measure's upper bound ``(n,)`` (``max_k min_{rows of k} d - C y``;
        below ``-margin``: closed), the worst open row ``(n,)`` and the input coefficients of
        every row's linear lower bound ``(n, m, in_dim)``."""
        n = len(boxes)
        nb, _ = crown_bounds(self.net, boxes.lo, boxes.hi)
        C = self.C.unsqueeze(0).expand(n, -1, -1)
        lb, _, A_in = spec_backward(self.net, C, boxes.lo, boxes.hi, pre_bounds(self.net, nb), errs=self.errs)
        lb = lb - self.errs.spec_slack(C)
        if self.cfg.iterations:
            lb = torch.fmax(lb, self._optimised(boxes, nb, lb))
        slack = self.d - lb  # (n, m): a row with slack < -margin is proven
        per_group = [slack[:, g].min(dim=1) for g in self.groups]
        mins = torch.stack([v.values for v in per_group], dim=1)  # (n, groups)
        measure, worst_group = mins.max(dim=1)
        rows = torch.stack([g[v.indices] for g, v in zip(self.groups, per_group)], dim=1)  # (n, groups)
        worst_row = rows[torch.arange(n), worst_group]
        return measure, worst_row, A_in

    def _optimised(self, boxes: _Boxes, nb: NetBounds, lb: torch.Tensor) -> torch.Tensor:
        """Lower bounds ``(n, m)`` of the rows from ``iterations`` Adam steps on the final pass's
        slopes, for the rows left open by ``lb`` (``-inf`` elsewhere)."""
        pre = pre_bounds(self.net, nb)
        m = self.C.shape[0]

        def still_open(bound: torch.Tensor) -> torch.Tensor:
            return ~(self.d - bound < -self.margin)  # NaN: open

        alphas0 = {r: (u >= -l).unsqueeze(1).expand(-1, m, -1).float() for r, (l, u) in pre.items()
                   if r in self.net.relu_indices}
        if self._net32 is None:
            self._net32 = self.net.to_torch().to(torch.float32).net
        out, _, _, _ = optimise_pairs(self.net, self._net32, self.C, boxes.lo, boxes.hi, pre, alphas0, {}, {},
                                      still_open(lb), still_open, self.cfg.iterations, self.cfg.lr, torch.float32,
                                      self.deadline, self.errs)
        return out

    def falsify(self, boxes: _Boxes, row: torch.Tensor, A_in: torch.Tensor) -> object | None:
        """The center and the worst row's minimising corner of each box through the network;
        up to ``candidates`` violating points go to ``check``."""
        if len(boxes) == 0 or self.cfg.candidates == 0:
            return None
        a = A_in[torch.arange(len(boxes)), row]
        corner = torch.where(a > 0, boxes.lo, boxes.hi)
        x = torch.cat([corner, (boxes.lo + boxes.hi) / 2])
        y = self.net.forward(x) @ self.C.T
        measure = violation_measure(self.d - y, self.groups)  # each point's own; >= 0: it violates
        for i in torch.argsort(measure, descending=True)[: self.cfg.candidates].tolist():
            if float(measure[i]) < 0:
                break
            self.stats["candidates"] += 1
            w = self.check(x[i].numpy())
            if w is not None:
                return w
        return None

    def split(self, boxes: _Boxes, A_in: torch.Tensor, row: torch.Tensor) -> tuple[_Boxes, int]:
        """Halve each box along ``argmax |A_in[row]| * width`` among the dimensions still wider
        than ``min_width`` of the input box's; returns the halves and how many boxes could not
        be halved (dropped: each one left open makes the search ``unknown``)."""
        n = len(boxes)
        width = boxes.hi - boxes.lo
        a = A_in[torch.arange(n), row].abs()
        # a dimension the final pass's coefficients leave out (a = 0) still widens the
        # intermediate layers' bounds: each dimension also scores a thousandth of the mean |a|,
        # so a wide one is halved once the others are a thousand times narrower
        score = (a + 1e-3 * a.mean(dim=1, keepdim=True) + 1e-300) * width
        splittable = width > self.cfg.min_width * self.width0
        score = torch.where(splittable, score, torch.full_like(score, -1.0))
        dim = score.argmax(dim=1)
        ok = splittable.any(dim=1)
        stuck = int((~ok).sum())
        idx = torch.nonzero(ok).flatten()
        lo, hi, dim = boxes.lo[idx], boxes.hi[idx], dim[idx]
        ar = torch.arange(idx.numel())
        mid = (lo[ar, dim] + hi[ar, dim]) / 2
        hi_left, lo_right = hi.clone(), lo.clone()
        hi_left[ar, dim] = mid
        lo_right[ar, dim] = mid
        depth = boxes.depth[idx] + 1
        return _Boxes(torch.cat([lo, lo_right]), torch.cat([hi_left, hi]), torch.cat([depth, depth])), stuck


def input_split(
    net: Network,
    lower: np.ndarray,
    upper: np.ndarray,
    C: np.ndarray,
    d: np.ndarray,
    owner: np.ndarray,
    root: NetBounds,
    deadline: float,
    check: Callable[[np.ndarray], object | None],
    margin: float = 1e-4,
    cfg: InputSplitConfig = InputSplitConfig(),
) -> BabResult:
    """Decide whether some ``x`` in ``[lower, upper]`` has ``C_k y <= d_k`` for some disjunct ``k``
    (rows of disjunct ``k``: ``owner == k``) by halving the input box (the module docstring);
    the same contract as :func:`robustkit.verification.bab.branch_and_bound`. ``root``: bounds
    over the whole box (its float error model covers every sub-box)."""
    t0 = time.perf_counter()
    lo = torch.tensor(np.asarray(lower, dtype=np.float64)).reshape(1, -1)
    hi = torch.tensor(np.asarray(upper, dtype=np.float64)).reshape(1, -1)
    search = _InputSearch(net, lo, hi, C, d, owner, margin, cfg, check, deadline, root)
    stats = search.stats
    with torch.no_grad():
        status, witness = _run(search, _Boxes(lo, hi, torch.zeros(1, dtype=torch.long)), deadline)
    stats["time"] = time.perf_counter() - t0
    stats["domains_per_s"] = stats["domains"] / stats["time"] if stats["time"] > 0 else 0.0
    stats["cleared"] = search.cleared if status == "unsat" else float("nan")
    stats["split"] = "input"
    log.debug("input split: %s %s", status, stats)
    return BabResult(status, witness, dict(stats))


def _run(search: _InputSearch, root: _Boxes, deadline: float) -> tuple[str, object | None]:
    stats, cfg = search.stats, search.cfg
    stack: list[_Boxes] = []
    todo: _Boxes | None = root
    while True:
        if todo is not None and len(todo):
            stats["domains"] += len(todo)
            measure, row, A_in = search.bound(todo)
            closed = measure < -search.margin
            stats["closed"] += int(closed.sum())
            if bool(closed.any()):
                search.cleared = min(search.cleared, float(-measure[closed].max()))
            keep = torch.nonzero(~closed).flatten()
            todo, row, A_in = todo.take(keep), row[keep], A_in[keep]
            w = search.falsify(todo, row, A_in)
            if w is not None:
                return "sat", w
            if len(todo):
                halves, stuck = search.split(todo, A_in, row)
                stats["undecided"] += stuck
                if stuck and cfg.stop_when_stuck:
                    stats["open"] = sum(len(b) for b in stack) + len(halves)
                    return "unknown", None
                stack.append(halves)
        open_count = sum(len(b) for b in stack)
        stats["max_open"] = max(int(stats["max_open"]), open_count)
        if not stack:
            return ("unknown" if stats["undecided"] else "unsat"), None
        if open_count > cfg.max_domains:
            stats["open"], stats["open_share"] = open_count, sum(b.share() for b in stack)
            return "unknown", None
        if time.perf_counter() >= deadline:
            stats["open"], stats["open_share"] = open_count, sum(b.share() for b in stack)
            return "timeout", None
        block = stack.pop()
        if len(block) > 2 * cfg.batch:
            stack.append(block.take(slice(2 * cfg.batch, None)))
            block = block.take(slice(0, 2 * cfg.batch))
        stats["iterations"] += 1
        todo = block
