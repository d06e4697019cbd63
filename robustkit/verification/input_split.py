"""Branch and bound over the input box (input splitting), for low-dimensional inputs.

Where the input has few dimensions (ACAS Xu's 5, control and tabular nets), halving the input
box tightens every layer's bounds at once, while a ReLU split changes one neuron. Each domain is
a sub-box, bounded in a batch with many others (float error charged as everywhere in
:mod:`robustkit.bounds`, from the root box's error model, valid on every sub-box):

* first by forward symbolic bounds (:mod:`robustkit.bounds.symbolic`: every neuron's bounds as
  linear functions of the inputs in one forward pass, met with the parent's bounds) and one
  backward pass of the specification rows (the forward functions' own bound of ``C y`` where
  higher); the boxes these leave open again, with every intermediate layer's unstable neurons
  bounded by backward passes to the input (CROWN's tightness, at CROWN's cost, only where the
  cheap pass did not close) (``refine``); ``bounds="crown"``: CROWN alone, as before;
* a box is closed when every disjunct has a row proven by more than the safety margin; an open
  one is shrunk in closed form to the part that can violate (:func:`box_tools.shrink_boxes`;
  one with no such part is dropped) and halved along the dimension chosen by a look-ahead: both
  halves of every dimension are bounded (fully for at most ``lookahead_refined`` halves,
  symbolically up to ``lookahead``) and the split whose worse half has the lower bound wins
  (on ACAS Xu property 1 the gradient score ``|A_in| * width`` kept halving one dimension a
  thousand times narrower than the others); past ``lookahead`` halves, that gradient score.

Sub-boxes cover their parent exactly (both halves keep the midpoint; shrinking drops only points
that cannot violate), so an ``unsat`` rests on closed boxes covering the input box.
Falsification: each open box's center and the corner minimising its worst row's linear bound
run through the network, and every ``attack_every`` batches sign-gradient steps from the
``attack_boxes`` boxes with the highest violation bound (:func:`box_tools.gradient_search`);
points that violate go to ``check`` (the caller replays them in onnxruntime: a ``sat`` is never
the bound's word).

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
from robustkit.bounds.symbolic import SymbolicBounds, concretize, dense_maps, symbolic_bounds
from robustkit.bounds.types import NetBounds
from robustkit.network import Network
from robustkit.verification.bab import BabResult
from robustkit.verification.box_tools import gradient_search, shrink_boxes
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
    17.3 s without; with ``bounds="crown"`` only). ``bounds``: ``symbolic`` or ``crown`` (module
    docstring); ``refine``: bound the boxes the symbolic pass leaves open again with backward
    passes; ``keep_parent``: children meet their parent's intermediate bounds; ``shrink``: cut
    open boxes to the part that can violate; ``lookahead``/``lookahead_refined``: the most halves
    the split look-ahead bounds per batch (symbolically / fully); ``attack_every``,
    ``attack_boxes``, ``attack_steps``: gradient falsification every that many batches, from
    that many boxes, that many steps (0: none)."""

    batch: int = 512
    max_domains: int = 1_000_000
    min_width: float = 1e-6
    candidates: int = 4
    iterations: int = 0
    lr: float = 0.25
    stop_when_stuck: bool = False
    bounds: str = "symbolic"
    refine: bool = True
    keep_parent: bool = True
    shrink: bool = True
    lookahead: int = 8192
    lookahead_refined: int = 128
    attack_every: int = 4
    attack_boxes: int = 16
    attack_steps: int = 8

    def __post_init__(self) -> None:
        if self.batch < 1 or self.max_domains < 1 or self.candidates < 0 or self.iterations < 0:
            raise ValueError("batch and max_domains must be >= 1, candidates and iterations >= 0")
        if not 0 < self.min_width < 1:
            raise ValueError(f"min_width must be in (0, 1), got {self.min_width}")
        if self.bounds not in ("symbolic", "crown"):
            raise ValueError(f"bounds must be symbolic or crown, got {self.bounds!r}")
        if self.attack_every < 0 or self.attack_boxes < 0 or self.attack_steps < 0:
            raise ValueError("attack_every, attack_boxes and attack_steps must be >= 0")


Known = dict[int, tuple[torch.Tensor, torch.Tensor]]


class _Boxes:
    """Open sub-boxes: ``lo``, ``hi`` ``(n, in_dim)``, ``depth`` ``(n,)`` (halvings so far) and
    ``known``: valid bounds ``(n, d_i)`` of layers ``i`` over each box (its parent's), or None."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, depth: torch.Tensor, known: Known | None = None) -> None:
        self.lo, self.hi, self.depth, self.known = lo, hi, depth, known

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def take(self, idx: torch.Tensor | slice) -> "_Boxes":
        known = None if self.known is None else {i: (l[idx], u[idx]) for i, (l, u) in self.known.items()}
        return _Boxes(self.lo[idx], self.hi[idx], self.depth[idx], known)

    def share(self) -> float:
        """The share of the input box these boxes cover (each halving halves it)."""
        return float(torch.pow(2.0, -self.depth.double()).sum())


@dataclass
class _Bounded:
    """A bounded batch: per box the violation measure's upper bound ``measure`` ``(n,)`` (below
    ``-margin``: closed), the worst open ``row`` ``(n,)``, each row's linear lower bound of
    ``C y`` (input coefficients ``A`` ``(n, m, in_dim)``, minimum over the box ``lb`` ``(n, m)``),
    the unstable ReLUs per box ``unstable`` ``(n,)`` (-1: not counted) and the bounds its
    children may keep (``known``)."""

    measure: torch.Tensor
    row: torch.Tensor
    A: torch.Tensor
    lb: torch.Tensor
    unstable: torch.Tensor
    known: Known | None = None

    def take(self, idx: torch.Tensor) -> "_Bounded":
        known = None if self.known is None else {i: (l[idx], u[idx]) for i, (l, u) in self.known.items()}
        return _Bounded(self.measure[idx], self.row[idx], self.A[idx], self.lb[idx], self.unstable[idx], known)

    def put(self, idx: torch.Tensor, other: "_Bounded") -> "_Bounded":
        """These bounds with the boxes ``idx`` replaced by ``other``'s (bounds of the same boxes)."""
        def at(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            out = mine.clone()
            out[idx] = theirs
            return out

        known = None
        if self.known is not None and other.known is not None:
            known = {i: (at(l, other.known[i][0]), at(u, other.known[i][1])) for i, (l, u) in self.known.items()}
        return _Bounded(at(self.measure, other.measure), at(self.row, other.row), at(self.A, other.A),
                        at(self.lb, other.lb), at(self.unstable, other.unstable), known)


class _InputSearch:
    def __init__(self, net: Network, lo: torch.Tensor, hi: torch.Tensor, C: np.ndarray, d: np.ndarray,
                 owner: np.ndarray, margin: float, cfg: InputSplitConfig,
                 check: Callable[[np.ndarray], object | None], deadline: float, root: NetBounds) -> None:
        self.net, self.cfg, self.margin, self.check, self.deadline = net, cfg, margin, check, deadline
        self.C = torch.tensor(np.asarray(C, dtype=np.float64))
        self.d = torch.tensor(np.asarray(d, dtype=np.float64))
        self.groups = disjunct_rows(owner)
        self.errs = root.float_errors(net)  # valid on every sub-box of the root's box
        self.spec_slack = self.errs.spec_slack(self.C.unsqueeze(0))  # (1, m)
        self.width0 = (hi - lo).reshape(-1)
        self.cleared = math.inf
        self._net32: Network | None = None
        self._module32: torch.nn.Module | None = None
        self.maps = dense_maps(net) if cfg.bounds == "symbolic" else None
        self.stats: dict[str, float | int] = {"domains": 0, "closed": 0, "undecided": 0, "candidates": 0,
                                              "max_open": 0, "iterations": 0, "refined": 0, "looked_ahead": 0, "shrunk": 0, "emptied": 0,
                                              "attacks": 0}

    def bound(self, boxes: _Boxes) -> _Bounded:
        """Bound every box of the batch: symbolic forward bounds and one backward pass of the
        specification rows; the boxes those leave open again with the intermediate layers'
        bounds by backward passes (``refine``); or CROWN alone with ``bounds="crown"``."""
        if self.maps is None:
            nb, _ = crown_bounds(self.net, boxes.lo, boxes.hi)
            b = self._spec(boxes, pre_bounds(self.net, nb), None, None)
            if self.cfg.iterations:
                b.lb = torch.fmax(b.lb, self._optimised(boxes, nb, b.lb))
                b = self._measured(b)
            return b
        sb = symbolic_bounds(self.net, self.maps, boxes.lo, boxes.hi, self.errs, boxes.known)
        b = self._spec(boxes, sb.pre, sb, sb.unstable)
        if self.cfg.refine:
            still = torch.nonzero(~(b.measure < -self.margin)).flatten()
            if still.numel():
                sub = boxes.take(still)
                assert b.known is not None
                known = {i: (l[still], u[still]) for i, (l, u) in b.known.items()}
                sb2 = symbolic_bounds(self.net, self.maps, sub.lo, sub.hi, self.errs, known,
                                      window=len(self.net.layers))
                b2 = self._spec(sub, sb2.pre, sb2, sb2.unstable)
                self.stats["refined"] += int(still.numel())
                b = b.put(still, b2)
        return b

    def _spec(self, boxes: _Boxes, pre: dict[int, tuple[torch.Tensor, torch.Tensor]], sb: SymbolicBounds | None,
              unstable: torch.Tensor | None) -> _Bounded:
        """The specification rows' bounds given the boxes' intermediate bounds ``pre`` (and the
        forward functions ``sb``, whose own bound of ``C y`` is taken where it is higher)."""
        n = len(boxes)
        C = self.C.unsqueeze(0).expand(n, -1, -1)
        lb, _, A = spec_backward(self.net, C, boxes.lo, boxes.hi, pre, errs=self.errs)
        lb = lb - self.spec_slack
        known = None
        if sb is not None:
            f = torch.matmul(sb.mid, self.C.T) - torch.matmul(sb.rad, self.C.abs().T)  # (n, in + 1, m)
            lb_f = concretize(f, (boxes.lo + boxes.hi) / 2, (boxes.hi - boxes.lo) / 2)[0] - self.spec_slack
            higher = lb_f > lb
            if bool(higher.any()):
                A = torch.where(higher.unsqueeze(-1), f[:, :-1].transpose(1, 2), A)
                lb = torch.where(higher, lb_f, lb)
            if self.cfg.keep_parent:
                known = {r - 1: sb.pre[r] for r in sb.pre if r >= 1}
        if unstable is None:
            unstable = torch.full((n,), -1, dtype=torch.long)
        return self._measured(_Bounded(lb, lb, A, lb, unstable, known))

    def _measured(self, b: _Bounded) -> _Bounded:
        """``b`` with its measure and worst row computed from its row bounds ``lb``."""
        n = b.lb.shape[0]
        slack = self.d - b.lb  # (n, m): a row with slack < -margin is proven
        per_group = [slack[:, g].min(dim=1) for g in self.groups]
        mins = torch.stack([v.values for v in per_group], dim=1)  # (n, groups)
        b.measure, worst_group = mins.max(dim=1)
        rows = torch.stack([g[v.indices] for g, v in zip(self.groups, per_group)], dim=1)  # (n, groups)
        b.row = rows[torch.arange(n), worst_group]
        return b

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

    def shrink(self, boxes: _Boxes, b: _Bounded) -> tuple[_Boxes, torch.Tensor]:
        """The boxes cut to the part that can violate (:func:`shrink_boxes`); also which survive."""
        lo, hi, alive = shrink_boxes(boxes.lo, boxes.hi, b.A, b.lb, self.d, self.groups, self.margin,
                                     self.spec_slack)
        self.stats["shrunk"] += int(((lo != boxes.lo) | (hi != boxes.hi)).any(dim=1).sum())
        self.stats["emptied"] += int((~alive).sum())
        return _Boxes(lo, hi, boxes.depth, boxes.known), alive

    def _points(self, x: torch.Tensor) -> object | None:
        """Up to ``candidates`` of the points ``x`` that violate in the float64 network, most
        violating first, to ``check``."""
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

    def falsify(self, boxes: _Boxes, b: _Bounded) -> object | None:
        """The center and the worst row's minimising corner of each box through the network;
        up to ``candidates`` violating points go to ``check``."""
        if len(boxes) == 0 or self.cfg.candidates == 0:
            return None
        a = b.A[torch.arange(len(boxes)), b.row]
        corner = torch.where(a > 0, boxes.lo, boxes.hi)
        return self._points(torch.cat([corner, (boxes.lo + boxes.hi) / 2]))

    def attack(self, boxes: _Boxes, b: _Bounded) -> object | None:
        """Gradient steps from the center and worst corner of the ``attack_boxes`` boxes with
        the highest bound of the violation measure; violating points go to ``check``."""
        k = min(len(boxes), self.cfg.attack_boxes)
        if k == 0 or self.cfg.attack_steps == 0 or self.cfg.candidates == 0:
            return None
        self.stats["attacks"] += 1
        top = torch.topk(b.measure, k).indices
        lo, hi = boxes.lo[top], boxes.hi[top]
        a = b.A[top, b.row[top]]
        starts = torch.cat([torch.where(a > 0, lo, hi), (lo + hi) / 2])
        if self._module32 is None:
            self._module32 = self.net.to_torch().to(torch.float32)
        x, _ = gradient_search(self._module32, torch.cat([lo, lo]), torch.cat([hi, hi]), starts, self.C, self.d,
                               self.groups, self.cfg.attack_steps)
        return self._points(x)

    def _look_ahead(self, boxes: _Boxes, b: _Bounded) -> torch.Tensor:
        """``(n, in_dim)``: per box and dimension, the higher of the two halves' violation bounds
        (symbolic forward bounds and the specification's backward pass, no refinement), less a
        thousandth of their sum (ties go to the split that helps both halves)."""
        n, k = boxes.lo.shape
        lo = boxes.lo.repeat_interleave(k, dim=0)  # (n k, k): box i, dimension j at row i k + j
        hi = boxes.hi.repeat_interleave(k, dim=0)
        j = torch.arange(k).repeat(n)
        ar = torch.arange(n * k)
        mid = (lo[ar, j] + hi[ar, j]) / 2
        hi_left, lo_right = hi.clone(), lo.clone()
        hi_left[ar, j] = mid
        lo_right[ar, j] = mid
        known = None
        if b.known is not None:
            known = {i: (l.repeat_interleave(k, dim=0).repeat(2, 1), u.repeat_interleave(k, dim=0).repeat(2, 1))
                     for i, (l, u) in b.known.items()}
        both = _Boxes(torch.cat([lo, lo_right]), torch.cat([hi_left, hi]), torch.zeros(2 * n * k, dtype=torch.long),
                      known)
        assert self.maps is not None
        if 2 * n * k <= self.cfg.lookahead_refined:  # few: the halves' full bounds
            m = self.bound(both).measure
        else:
            sb = symbolic_bounds(self.net, self.maps, both.lo, both.hi, self.errs, both.known)
            m = self._spec(both, sb.pre, sb, sb.unstable).measure
        m = m.clamp(min=-self.margin)
        self.stats["looked_ahead"] += 2 * n * k
        left, right = m[: n * k].reshape(n, k), m[n * k:].reshape(n, k)
        return torch.maximum(left, right) + 1e-3 * (left + right)

    def split(self, boxes: _Boxes, b: _Bounded) -> tuple[_Boxes, int]:
        """Halve each box along ``argmax |A[row]| * width`` among the dimensions still wider
        than ``min_width`` of the input box's; returns the halves and how many boxes could not
        be halved (dropped: each one left open makes the search ``unknown``)."""
        n = len(boxes)
        width = boxes.hi - boxes.lo
        splittable = width > self.cfg.min_width * self.width0
        if self.maps is not None and 0 < n * 2 * width.shape[1] <= self.cfg.lookahead:
            score = -self._look_ahead(boxes, b)
        else:
            a = b.A[torch.arange(n), b.row].abs()
            # a dimension the final pass's coefficients leave out (a = 0) still widens the
            # intermediate layers' bounds: each dimension also scores a thousandth of the mean |a|,
            # so a wide one is halved once the others are a thousand times narrower
            score = (a + 1e-3 * a.mean(dim=1, keepdim=True) + 1e-300) * width
        score = torch.where(splittable, score, torch.full_like(score, -torch.inf))
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
        known = None
        if b.known is not None:
            known = {i: (torch.cat([l[idx], l[idx]]), torch.cat([u[idx], u[idx]])) for i, (l, u) in b.known.items()}
        return _Boxes(torch.cat([lo, lo_right]), torch.cat([hi_left, hi]), torch.cat([depth, depth]), known), stuck


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
    known = None
    if search.maps is not None and cfg.keep_parent:  # the root's bounds (e.g. alpha-CROWN's) hold on every box
        known = {i: (root.lower[i], root.upper[i]) for i in range(len(net.layers) - 1)}
    with torch.no_grad():
        status, witness = _run(search, _Boxes(lo, hi, torch.zeros(1, dtype=torch.long), known), deadline)
    stats["time"] = time.perf_counter() - t0
    stats["domains_per_s"] = stats["domains"] / stats["time"] if stats["time"] > 0 else 0.0
    # every box bounded, the look-ahead's halves and the refined second passes included
    stats["boxes_per_s"] = (stats["domains"] + stats["looked_ahead"] + stats["refined"]) / stats["time"] \
        if stats["time"] > 0 else 0.0
    stats["cleared"] = search.cleared if status == "unsat" else float("nan")
    stats["split"] = "input"
    stats["bounds"] = "symbolic" if search.maps is not None else "crown"
    log.debug("input split: %s %s", status, stats)
    return BabResult(status, witness, dict(stats))


def _run(search: _InputSearch, root: _Boxes, deadline: float) -> tuple[str, object | None]:
    stats, cfg = search.stats, search.cfg
    stack: list[_Boxes] = []
    todo: _Boxes | None = root
    while True:
        if todo is not None and len(todo):
            stats["domains"] += len(todo)
            b = search.bound(todo)
            closed = b.measure < -search.margin
            stats["closed"] += int(closed.sum())
            if bool(closed.any()):
                search.cleared = min(search.cleared, float(-b.measure[closed].max()))
            keep = torch.nonzero(~closed).flatten()
            todo, b = todo.take(keep), b.take(keep)
            if cfg.shrink and len(todo):
                todo, alive = search.shrink(todo, b)
                if not bool(alive.all()):
                    search.cleared = min(search.cleared, search.margin)
                    keep = torch.nonzero(alive).flatten()
                    todo, b = todo.take(keep), b.take(keep)
            w = search.falsify(todo, b)
            if w is None and cfg.attack_every and stats["iterations"] % cfg.attack_every == 0:
                w = search.attack(todo, b)
            if w is not None:
                return "sat", w
            if len(todo):
                halves, stuck = search.split(todo, b)
                stats["undecided"] += stuck
                if stuck and cfg.stop_when_stuck:
                    stats["open"] = sum(len(x) for x in stack) + len(halves)
                    return "unknown", None
                stack.append(halves)
        open_count = sum(len(x) for x in stack)
        stats["max_open"] = max(int(stats["max_open"]), open_count)
        if not stack:
            return ("unknown" if stats["undecided"] else "unsat"), None
        if open_count > cfg.max_domains:
            stats["open"], stats["open_share"] = open_count, sum(x.share() for x in stack)
            return "unknown", None
        if time.perf_counter() >= deadline:
            stats["open"], stats["open_share"] = open_count, sum(x.share() for x in stack)
            return "timeout", None
        block = stack.pop()
        if len(block) > 2 * cfg.batch:
            stack.append(block.take(slice(2 * cfg.batch, None)))
            block = block.take(slice(0, 2 * cfg.batch))
        stats["iterations"] += 1
        todo = block
