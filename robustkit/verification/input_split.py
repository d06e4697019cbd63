"""Branch and bound over the input box (input splitting), for low-dimensional inputs.

Where the input has few dimensions (ACAS Xu's 5, control and tabular nets), halving the input
box tightens every layer's bounds at once, while a ReLU split changes one neuron. Each domain is
a sub-box, bounded in a batch with many others, the float error charged as everywhere in
:mod:`robustkit.bounds` (per box: each box's own error model, no larger than the root box's):

* bounding (:mod:`robustkit.verification.box_search`): forward symbolic bounds met with the
  parent's bounds and with the parent's affine bounds minimised over the box, backward passes
  for the neurons they leave unstable where the cheap pass did not close the box, the
  specification rows and one combined row per multi-row disjunct;
* a box is closed when every disjunct has a row proven by more than the safety margin; an open
  one is shrunk in closed form to the part that can violate (:func:`box_tools.shrink_boxes`;
  one with no such part is dropped), its corners, center and gradient steps from it go to the
  witness check, one with at most ``relu_max`` unstable ReLUs may go to branch and bound over
  ReLU splits, and the rest are halved along the dimension a look-ahead chooses
  (:mod:`robustkit.verification.box_split`), the children keeping the bounds the look-ahead
  computed for them.

Sub-boxes cover their parent exactly (both halves keep the midpoint; shrinking drops only points
that cannot violate), so an ``unsat`` rests on closed boxes covering the input box. Points that
violate go to ``check`` (the caller replays them in onnxruntime: a ``sat`` is never the bound's
word).

The search ends ``unsat`` (every box closed), ``sat`` (``check`` accepted a point), ``timeout``,
or ``unknown`` (a box too narrow to halve further still open, or more than ``max_domains`` open).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from robustkit.bounds.types import NetBounds
from robustkit.network import Network
from robustkit.verification.bab import BabResult
from robustkit.verification.box_search import Boxes
from robustkit.verification.box_split import BoxSplitter

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
    ``iterations``: Adam steps (rate ``lr``) on the final pass's ReLU slopes of the rows left
    open in each box (alpha-CROWN's final pass, :func:`optimise_pairs`; float32 steps, one
    float64 pass decides), 0 for none (with ``bounds="crown"``, on the random nets of
    ``verify/bench_bab_vs_milp.py`` 3 steps decided the same 65 properties in 18.2 s against
    17.3 s without); ``stop_when_stuck``: end ``unknown`` as soon as a box is too narrow to halve
    (the search could then end ``unknown`` at best; a caller with another method left, as
    ``bab_split="auto"``, hands it the time instead). ``bounds``: ``symbolic`` or ``crown``
    (CROWN per box, no look-ahead); ``refine``: bound the boxes the symbolic pass leaves open
    again with backward passes (``refine_window`` ReLU layers deep, 0: to the input);
    ``keep_parent``: children meet their parent's bounds and affine bounds; ``keep_root``: the
    root box meets the caller's bounds (alpha-CROWN's at the root make the look-ahead's first
    choices worse on ACAS Xu: 4_3 property 3 took 6,629 boxes with them, 107 without);
    ``box_errors``: each box's own float error model; ``combine``: a combined row per disjunct
    of several rows; ``shrink``: cut open boxes to the part that can violate;
    ``lookahead``: the most halves per batch the look-ahead bounds (past it, the gradient
    score); ``lookahead_refined``: the most halves per batch it bounds in full (past it, cheaply,
    then the ``lookahead_top`` best dimensions in full); ``attack_every``, ``attack_boxes``,
    ``attack_steps``: gradient falsification every that many batches, from that many boxes,
    that many steps (0: none); ``corners_dim``: inputs up to which every corner of an open box
    goes to the check; ``relu_max``, ``relu_time``: open boxes with at most that many unstable
    ReLUs go to branch and bound over ReLU splits for at most that many seconds each (0: none)."""

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
    # halves bounded in full while a batch has at most 40 of them (with 5 inputs: the first levels,
    # at most 4 boxes), cheaply past that (ACAS Xu, in process, one thread, boxes to decide: 128 led
    # 3_9 and 4_9 property 1 astray, 20,000 boxes and a timeout against 603 and 5,103 with 40; 0,
    # cheap from the root, took 6,935 and 5,675 boxes on 2_1 and 3_2 property 3 against 133 and 45)
    lookahead_refined: int = 40
    attack_every: int = 1
    attack_boxes: int = 64
    attack_steps: int = 8
    box_errors: bool = True
    refine_window: int = 0
    lookahead_top: int = 0
    keep_root: bool = False
    combine: bool = True
    relu_max: int = 0
    corners_dim: int = 6
    relu_time: float = 0.3

    def __post_init__(self) -> None:
        if self.batch < 1 or self.max_domains < 1 or self.candidates < 0 or self.iterations < 0:
            raise ValueError("batch and max_domains must be >= 1, candidates and iterations >= 0")
        if not 0 < self.min_width < 1:
            raise ValueError(f"min_width must be in (0, 1), got {self.min_width}")
        if self.bounds not in ("symbolic", "crown"):
            raise ValueError(f"bounds must be symbolic or crown, got {self.bounds!r}")
        if self.attack_every < 0 or self.attack_boxes < 0 or self.attack_steps < 0:
            raise ValueError("attack_every, attack_boxes and attack_steps must be >= 0")


_Boxes = Boxes  # the names the tests use


class _InputSearch(BoxSplitter):
    """One search's state and steps (:class:`BoxSplitter`: bounding, shrinking, falsifying,
    settling and splitting boxes)."""


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
    if search.maps is not None and cfg.keep_parent and cfg.keep_root:  # the root's bounds (e.g. alpha-CROWN's) hold on every box
        known = {i: (root.lower[i], root.upper[i]) for i in range(len(net.layers) - 1)}
    with torch.no_grad():
        status, witness = _run(search, _Boxes(lo, hi, torch.zeros(1, dtype=torch.long), known), deadline)
    stats["time"] = time.perf_counter() - t0
    stats["domains_per_s"] = stats["domains"] / stats["time"] if stats["time"] > 0 else 0.0
    # every box bounded once per bound computed for it (the search's boxes and the look-ahead's
    # halves, in full or cheaply; a box bounded a second time by the refinement is not counted again)
    stats["boxes_per_s"] = (stats["bounded"] + stats["bounded_cheap"]) / stats["time"] if stats["time"] > 0 else 0.0
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
            b = todo.bounded if todo.bounded is not None else search.bound(todo)
            todo.bounded = None
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
            if cfg.relu_max and len(todo):
                todo, b, w = search.settle(todo, b)
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
