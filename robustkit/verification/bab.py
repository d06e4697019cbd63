"""Branch and bound over ReLU splits, on top of the bound methods (complete).

A domain is the input box together with a set of ReLU phase decisions ("split constraints").
Its bounds are valid over ``{x in box : every split holds}``. Splitting an unstable ReLU ``z``
gives two children: ``z <= 0`` (its pre-activation upper bound set to 0: the ReLU is exactly 0
there) and ``z >= 0`` (lower bound set to 0: exactly the identity). Their union is the parent,
so a property that holds on every leaf holds on the box. This is the BaB of Xu et al. 2021
("Fast and Complete", Sec. 3.2: split constraints enter through the intermediate bounds) with
the split constraints' Lagrange multipliers of beta-CROWN (Wang et al. 2021, "Beta-CROWN", Sec.
3.1) in the final pass:

* bounding: the layers after the split are recomputed by CROWN from the parent's bounds
  (or kept, where recomputing them decides almost no ReLU: ``BabConfig.intermediate``)
  (intersected with them: the child is a subset, so every parent bound stays valid, including
  the alpha-CROWN or LP bounds the root came with), with the intermediate slopes alpha-CROWN
  optimised at the root when it did (shared by the whole tree: CROWN's adaptive slopes lose
  most of what alpha-CROWN gained on deep nets), then the specification rows still open in some
  domain of the batch are bounded by a backward pass whose lower slopes (alpha) and split
  multipliers (beta) are optimised by a few steps of Adam (``iterations``), started from the
  parent's, over the (domain, row) pairs still open only, a pair leaving the batch once its row
  is proven (:mod:`robustkit.verification.final_pass`); the best value seen per row is kept
  (each is valid; a row keeps its ancestors' bound);
* pruning: a domain is closed when every disjunct of the violation has a row whose lower bound
  exceeds its threshold by the safety margin, or when its bounds are empty (some neuron's lower
  bound above its upper bound by more than that neuron's float error bound: the split
  constraints contradict each other on the box). Every bound holds for the float32 network: the
  backward passes charge each linear layer's rounding and end with the float64 slack of the
  error model (:mod:`robustkit.bounds.floaterr`, computed once over the root box: valid on
  every sub-domain);
* branching (:mod:`robustkit.verification.branching`): the BaBSR-style intercept score (Bunel
  et al. 2020, "Branch and Bound for Piecewise Linear Neural Network Verification", Sec. 5.1):
  the loss the upper relaxation's intercept ``-l u / (u - l)`` causes in the bound of the open
  rows, ``-min(A, 0) * intercept``;
  while the children's intermediate bounds are recomputed and decide at least
  ``auto_stabilised`` ReLUs per child (over the children so far), weighted by ``(1 + the ReLU
  layers after the neuron's) ** depth_weight``: the score sees a split's effect on the final pass only,
  not the unstable ReLUs it decides in every later layer's recomputed bounds, which on the deep
  mnist_fc nets is most of its worth (``verify/results/bab_depth_weight.md``);
* falsification: at every bounded domain the box corner that minimises the linear lower bound of
  its worst row is run through the network; a violating point goes to ``check`` (the pipeline
  re-runs it in onnxruntime), and BaB continues if it is rejected;
* order: the domain pool is a stack of batches (depth first), which keeps its memory at
  about ``depth x batch`` domains; to prove a property every leaf must be closed anyway.

A domain whose ReLUs are all decided but which the bound cannot close (the bound does not see
how the split constraints cut the box) is settled exactly: the network is affine there, and one
LP per disjunct (the box, the decided neurons' sides, the disjunct's rows, each relaxed by the
accumulated float error) closes it, from certificates re-checked in float64
(:mod:`robustkit.verification.leaf_lp`), or gives a candidate. If one remains undecided (LP trouble, or a candidate ``check`` rejects) when the pool is
empty, the answer is ``unknown``, never ``unsat``.

The result's ``stats`` count domains (bounded, closed, infeasible, leaves, candidates; ``recomputed``
children and the ReLUs their recomputed bounds ``stabilised``; ``fixed_from``: the children
bounded when ``auto`` stopped recomputing; ``full_steps_from``: the domains bounded when the
fixed-bound batches went to the full Adam steps; ``adam_steps`` over all batches; ``pairs``: the
(domain, row) pairs optimised; ``splits`` made and ``split_layer_mean``, the mean position of their
ReLU layer among the split-able ones (0: the first); with ``fsb_candidates > 1``, ``fsb_tried`` domains and how often the
filter kept the intercept score's own choice, ``fsb_agree``) and time
each stage of the search (``time_intermediate``, ``time_optimise``, ``time_branching``,
``time_split``, ``time_falsify``, ``time_leaves``; ``domains_per_s`` over the whole search).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from robustkit.bounds.beta_crown import spec_backward
from robustkit.bounds.crown import CrownConfig, crown_bounds, pre_bounds
from robustkit.bounds.floaterr import FloatErrors
from robustkit.bounds.interval import interval_bounds
from robustkit.bounds.types import NetBounds
from robustkit.network import Network
from robustkit.verification.branching import child_bounds, choose, intercept_scores
from robustkit.verification.domains import (Domains, disjunct_rows, merge_params, merge_rows, open_share,
                                            violation_measure)
from robustkit.verification.final_pass import optimise_pairs
from robustkit.verification.leaf_lp import settle_leaf

log = logging.getLogger(__name__)

__all__ = ["BabConfig", "BabResult", "branch_and_bound"]


@dataclass(frozen=True)
class BabConfig:
    """``batch``: parent domains split per step (each gives two children, bounded together);
    ``iterations``: Adam steps (step ``lr``) on the final pass's lower slopes and, with ``beta``,
    on the split constraints' multipliers, per batch (0: CROWN's adaptive slopes alone);
    ``fsb_candidates``: neurons per domain whose split is tried before choosing (1, the
    default: the intercept score alone, which proved as much in less time than 4 or 8 on the
    instances of ``verify/results/bab_branching.md``); ``max_domains``: the most open domains kept (past it: ``unknown``);
    ``optimise_dtype``: the dtype of the Adam steps (``float32``: about half the cost; a float64
    pass with the best slopes found, and the float error model, decides either way);
    ``intermediate``: how a child gets the bounds of the layers after its split: ``recompute``
    (CROWN, with the root's slopes), ``fixed`` (the parent's, the split neuron's clamped: the
    split multipliers carry the constraint into the final pass, as in beta-CROWN), or ``auto``
    (recompute until ``auto_domains`` children have been bounded, then keep recomputing only if
    that decided at least ``auto_stabilised`` unstable ReLUs per child: on the mnist_fc nets it
    decides 3-15 per child, on the oval21 CIFAR conv nets about 0.01, at the cost of about one
    final pass, see ``verify/results/bab_intermediate.md``); ``fixed_iterations``: the Adam steps
    per batch while the children keep their parent's bounds (at most ``iterations``): a child
    then differs from its parent by one split, and its parent's slopes and multipliers start it
    close; 10 proved more per second than 40 on the oval21 nets, ``bab_intermediate.md``) until
    ``leaf_domains`` domains have reached the leaves, then ``iterations`` (on small nets, where the
    tree reaches full depth, 10 steps leave domains open that 40 close higher up, ``bab_levers.md``);
    ``depth_weight``: the exponent of the branching score's weight ``1 + (ReLU layers after the
    neuron's)`` while the children's intermediate bounds are recomputed and decide at least
    ``auto_stabilised`` ReLUs per child (0: the intercept score alone; 3 proves the mnist_fc 256x4/256x6 instances that 0 leaves open,
    ``verify/results/bab_depth_weight.md``)."""

    batch: int = 64
    iterations: int = 40
    lr: float = 0.5
    beta: bool = True
    fsb_candidates: int = 1
    max_domains: int = 100_000
    optimise_dtype: str = "float32"
    intermediate: str = "auto"
    auto_domains: int = 128
    auto_stabilised: float = 0.5
    fixed_iterations: int = 10
    leaf_domains: int = 16
    depth_weight: float = 3.0
    crown: CrownConfig = CrownConfig()

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.iterations < 0 or self.fixed_iterations < 0 or self.leaf_domains < 0 or not self.lr > 0:
            raise ValueError("iterations, fixed_iterations and leaf_domains must be >= 0 and lr > 0")
        if not self.depth_weight >= 0:
            raise ValueError(f"depth_weight must be >= 0, got {self.depth_weight}")
        if self.fsb_candidates < 1:
            raise ValueError(f"fsb_candidates must be >= 1, got {self.fsb_candidates}")
        if self.max_domains < 1:
            raise ValueError(f"max_domains must be >= 1, got {self.max_domains}")
        if self.intermediate not in ("recompute", "fixed", "auto"):
            raise ValueError(f"intermediate must be recompute, fixed or auto, got {self.intermediate!r}")
        if self.optimise_dtype not in ("float32", "float64"):
            raise ValueError(f"optimise_dtype must be float32 or float64, got {self.optimise_dtype!r}")


@dataclass
class BabResult:
    """``status``: ``unsat`` (every domain closed), ``sat`` (``check`` accepted ``witness``),
    ``timeout``, or ``unknown`` (undecided leaves, or too many domains)."""

    status: str
    witness: object | None = None
    stats: dict[str, float | int] = field(default_factory=dict)


class _Search:
    def __init__(self, net: Network, lo: torch.Tensor, hi: torch.Tensor, C: np.ndarray, d: np.ndarray,
                 owner: np.ndarray, margin: float, cfg: BabConfig,
                 check: Callable[[np.ndarray], object | None], deadline: float = float("inf"),
                 errs: FloatErrors | None = None) -> None:
        self.net, self.cfg, self.margin, self.check = net, cfg, margin, check
        self.mode = cfg.intermediate  # "auto" until decided (:meth:`_fixed`)
        if errs is None:  # from interval bounds over the box (looser than the root's, as valid)
            errs = interval_bounds(net, lo.reshape(1, -1), hi.reshape(1, -1)).float_errors(net)
        self.errs = errs  # the float error model over the root box (valid on every sub-domain)
        self.slopes: dict[int, dict[int, torch.Tensor]] | None = None  # the root's optimised intermediate slopes
        self.cleared = float("inf")  # the least amount by which a closed domain cleared the margin
        self.deadline = deadline  # perf_counter() value past which optimisation stops early
        self.lo, self.hi = lo.reshape(1, -1).double(), hi.reshape(1, -1).double()
        self.C = torch.tensor(np.asarray(C, dtype=np.float64))
        self.d = torch.tensor(np.asarray(d, dtype=np.float64))
        groups = sorted(set(int(k) for k in owner))
        self.groups = disjunct_rows(owner)
        self.row_group = torch.as_tensor([groups.index(int(k)) for k in owner])  # each row's disjunct
        self.relus = [r for r in net.split_indices if r >= 1]  # a ReLU on the input is never split
        # the branching weight of each ReLU layer while children are recomputed (:meth:`_choose_splits`)
        self.depth = {r: float(1 + sum(q > r for q in self.relus)) ** cfg.depth_weight for r in self.relus}
        self.stats: dict[str, float | int] = {"domains": 0, "closed": 0, "infeasible": 0, "undecided": 0,
                                              "candidates": 0, "leaves": 0, "max_open": 0, "iterations": 0}

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time of the block to ``stats["time_<stage>"]`` (the shares of the search)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"time_{stage}"
            self.stats[key] = self.stats.get(key, 0.0) + time.perf_counter() - t0

    # -- bounding ---------------------------------------------------------------------------
    def _measure(self, lb: torch.Tensor) -> torch.Tensor:
        """Upper bound ``(n,)`` of the violation measure ``max_k min_{rows of k} (d - C y)``."""
        return violation_measure(self.d - lb, self.groups)

    def _spec_bound(self, nb: NetBounds, dom: Domains, R: torch.Tensor, known: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor, dict[int, torch.Tensor],
                               dict[int, torch.Tensor]]:
        """Widened lower bounds ``(n, |R|)`` of the rows ``R`` (the others are proven in every
        domain of the batch: ``known``, the ``(n, m)`` bounds so far, stand for them): the best
        of CROWN and ``iterations`` steps of Adam on the final pass's slopes and split
        multipliers (started from the parent's); with the coefficients of the CROWN pass (for
        branching and falsification) and each row's best slopes and multipliers (float32, to
        start the children from)."""
        n = nb.lower[0].shape[0]
        lo, hi = self.lo.expand(n, -1), self.hi.expand(n, -1)
        pre = pre_bounds(self.net, nb)
        C = self.C[R].unsqueeze(0).expand(n, -1, -1)
        m = C.shape[1]
        best, coeffs, A_in = spec_backward(self.net, C, lo, hi, pre, errs=self.errs)
        best = best - self.errs.spec_slack(C)
        steps = self.cfg.iterations if self.mode != "fixed" or self._bottomed_out() else \
            min(self.cfg.iterations, self.cfg.fixed_iterations)
        if steps == 0:
            return best, coeffs, A_in, {}, {}
        dtype = torch.float32 if self.cfg.optimise_dtype == "float32" else torch.float64
        alphas0 = {}
        for r in self.net.split_indices:
            start = dom.alphas.get(r)
            alphas0[r] = self.net.layers[r].default_alpha(*pre[r]).unsqueeze(1).expand(-1, m, -1).float() \
                if start is None else start[:, R]  # type: ignore[attr-defined]
        split = {r: t.double() for r, t in dom.signs.items() if bool(t.any())} if self.cfg.beta else {}
        betas0 = {r: torch.zeros(n, m, sg.shape[1]) if dom.betas.get(r) is None else dom.betas[r][:, R]
                  for r, sg in split.items()}
        # Adam over the pairs (domain, row) the CROWN pass left open, a pair leaving the batch once
        # its row (or its disjunct) is proven; one float64 pass with the best parameters decides
        pairs = self._open_pairs(known, R, best, 1.0)
        final, alphas, betas, taken = optimise_pairs(
            self.net, self._net_in(dtype), self.C[R], self.lo, self.hi, pre, alphas0, betas0, split, pairs,
            lambda lb: self._open_pairs(known, R, lb, 4.0), steps, self.cfg.lr, dtype, self.deadline, self.errs)
        self.stats["adam_steps"] = self.stats.get("adam_steps", 0) + taken
        self.stats["pairs"] = self.stats.get("pairs", 0) + int(pairs.sum())
        return torch.fmax(best, final), coeffs, A_in, alphas, betas

    def _open_pairs(self, known: torch.Tensor, R: torch.Tensor, lb_R: torch.Tensor, factor: float) -> torch.Tensor:
        """``(n, |R|)``: the rows ``R`` not proven, by ``factor`` times the margin, in each domain
        (by ``known`` or ``lb_R``), and whose disjunct no other row proved there."""
        merged = merge_rows(known, R, lb_R)
        proven = self.d - merged < -factor * self.margin  # (n, m)
        closed = torch.stack([proven[:, g].any(dim=1) for g in self.groups], dim=1)  # (n, disjuncts)
        return (~proven & ~closed[:, self.row_group])[:, R]

    def _net_in(self, dtype: torch.dtype) -> Network:
        """The network with weights in ``dtype`` (float32 copy cached), for the optimisation passes."""
        if dtype == torch.float64:
            return self.net
        if getattr(self, "_net32_cache", None) is None:
            self._net32_cache = self.net.to_torch().to(torch.float32).net
        return self._net32_cache

    def _intermediate(self, dom: Domains) -> NetBounds:
        """The layers after each domain's split recomputed by CROWN (with the root's slopes),
        grouped by the split's layer: a split in the last hidden layer recomputes the output
        alone, not everything after the earliest split of the batch. Past the deadline the layers
        left keep their parent's bounds (met with one interval step), so the search stops on time."""
        n = len(dom)
        if self._fixed():
            return NetBounds(self.lo.expand(n, -1), self.hi.expand(n, -1), list(dom.lower), list(dom.upper), "bab",
                             self.errs)
        starts = dom.relu.clamp(min=0)  # -1: not split yet (the root): every layer
        lower, upper = [t.clone() for t in dom.lower], [t.clone() for t in dom.upper]
        for start in torch.unique(starts).tolist():
            idx = torch.nonzero(starts == start).flatten()
            k = idx.numel()
            base = NetBounds(self.lo.expand(k, -1), self.hi.expand(k, -1), [t[idx] for t in dom.lower],
                             [t[idx] for t in dom.upper], "bab", self.errs)
            nb, _ = crown_bounds(self.net, base.input_lower, base.input_upper, None, self.cfg.crown, base, int(start),
                                 self.slopes, self.deadline)
            for i in range(len(lower)):
                lower[i][idx], upper[i][idx] = nb.lower[i], nb.upper[i]
        if bool((dom.relu >= 0).any()):  # children: count the ReLUs their recomputed bounds decided
            gained = 0
            for r in self.relus:
                op = self.net.layers[r]
                was = op.unstable(dom.lower[r - 1], dom.upper[r - 1])  # type: ignore[attr-defined]
                now = op.unstable(lower[r - 1], upper[r - 1])  # type: ignore[attr-defined]
                gained += int((was & ~now).sum())
            self.stats["recomputed"] = self.stats.get("recomputed", 0) + int((dom.relu >= 0).sum())
            self.stats["stabilised"] = self.stats.get("stabilised", 0) + gained
        return NetBounds(self.lo.expand(n, -1), self.hi.expand(n, -1), lower, upper, "bab", self.errs)

    def _fixed(self) -> bool:
        """Whether the children keep their parent's intermediate bounds (``intermediate``: fixed,
        or auto once the recomputed ones have shown they decide too few ReLUs to pay)."""
        if self.mode == "auto":
            seen = int(self.stats.get("recomputed", 0))
            if seen < self.cfg.auto_domains:
                return False
            # decided once: the share is measured over the first children, not re-judged deeper
            self.mode = "recompute" if self._recomputing_decides() else "fixed"
            if self.mode == "fixed":
                self.stats["fixed_from"] = seen
        return self.mode == "fixed"

    def _bottomed_out(self) -> bool:
        """Whether ``leaf_domains`` domains have reached the leaves (every ReLU decided, the bound
        still open): the tree goes to full depth, so the bound, not the throughput, is what is
        short, and the batches get the full ``iterations`` from then on (``full_steps_from``)."""
        if self.stats["leaves"] < self.cfg.leaf_domains:
            return False
        self.stats.setdefault("full_steps_from", self.stats["domains"])
        return True

    def _weighted(self) -> bool:
        """Whether branching weights the early layers (``depth_weight``): while the children's
        intermediate bounds are recomputed and, over the children so far, that decided at least
        ``auto_stabilised`` ReLUs per child (a split then also pays through the later layers). The
        root's split is not weighted (no child seen yet): on the oval21 nets, where recomputing
        decides about 0.1 ReLUs per child, weighting it (and the auto stage's splits) lost two
        proofs, ``verify/results/bab_depth_weight.md``."""
        return self.mode != "fixed" and self._recomputing_decides()

    def _recomputing_decides(self) -> bool:
        """Whether the children recomputed so far (at least one) had ``auto_stabilised`` or more
        ReLUs decided each by their recomputed bounds, on average."""
        seen = int(self.stats.get("recomputed", 0))
        return seen > 0 and self.stats.get("stabilised", 0) / seen >= self.cfg.auto_stabilised

    def bound(self, dom: Domains) -> tuple[Domains, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bound ``dom`` (bounds may hold fresh splits): returns the open domains with their
        branching decisions (and their row bounds, ``rows``), and for them the violation-measure
        bound and the input coefficients of the rows bounded here (``R``: the rows open in some
        domain of the batch; a row proven in every one keeps its bounds)."""
        n = len(dom)
        m = self.C.shape[0]
        known = dom.rows if dom.rows is not None else torch.full((n, m), -torch.inf, dtype=torch.float64)
        R = torch.nonzero((~(self.d - known < -self.margin)).any(dim=0)).flatten()
        with self.timed("intermediate"):
            nb = self._intermediate(dom)
        empty = torch.zeros(n, dtype=torch.bool)
        for i, (lo_i, hi_i) in enumerate(zip(nb.lower, nb.upper)):
            # crossing by more than the float error bound of the neuron: no float32 point either
            empty |= (lo_i - hi_i > self.errs.rounding[i] + self.errs.slack[i]).any(dim=1)
        with self.timed("optimise"):
            lb_R, coeffs, A_in, alphas_R, betas_R = self._spec_bound(nb, dom, R, known)
        lb = merge_rows(known, R, lb_R)
        alphas = {r: merge_params(dom.alphas.get(r), R, a, m) for r, a in alphas_R.items()}
        betas = {r: merge_params(dom.betas.get(r), R, b, m) for r, b in betas_R.items()}
        measure = self._measure(lb)
        closed = empty | (measure < -self.margin)
        if bool((~empty & closed).any()):
            self.cleared = min(self.cleared, float(-measure[~empty & closed].max()))
        self.stats["infeasible"] += int(empty.sum())
        self.stats["closed"] += int(closed.sum())
        keep = torch.nonzero(~closed).flatten()
        out = Domains([x[keep] for x in nb.lower], [x[keep] for x in nb.upper],
                       {r: sg[keep] for r, sg in dom.signs.items()},
                       torch.full((keep.numel(),), -1, dtype=torch.long), torch.zeros(keep.numel(), dtype=torch.long),
                       {r: a[keep] for r, a in alphas.items()}, {r: b[keep] for r, b in betas.items()}, lb[keep])
        measure, A_in = measure[keep], A_in[keep]
        coeffs = {r: a[keep] for r, a in coeffs.items()}
        with self.timed("branching"):
            self._choose_splits(out, R, coeffs)
        return out, measure, A_in, R

    # -- branching (:mod:`robustkit.verification.branching`) ------------------------------------
    def _choose_splits(self, dom: Domains, R: torch.Tensor, coeffs: dict[int, torch.Tensor]) -> None:
        """Set ``dom.relu`` / ``dom.neuron`` (``-1`` when no neuron is unstable): the best
        intercept score over the rows not yet proven (``coeffs``: those of the rows ``R``;
        weighted by depth while recomputing the children decides ReLUs, :meth:`_weighted`), or
        with ``fsb_candidates > 1`` the candidate whose worse child is best (:meth:`_worst_child`)."""
        if len(dom) == 0:
            return
        assert dom.rows is not None
        open_rows = (~(self.d[R] - dom.rows[:, R] < -self.margin)).double()  # (n, |R|)
        score, relu_of, neuron_of = intercept_scores(self.net, self.relus, dom.lower, dom.upper, coeffs, open_rows,
                                                     self.depth if self._weighted() else None)

        def worst(top_i: torch.Tensor) -> torch.Tensor:
            return self._worst_child(dom, R, relu_of[top_i], neuron_of[top_i])

        filtered = self.cfg.fsb_candidates > 1
        dom.relu, dom.neuron, pick = choose(score, relu_of, neuron_of, self.cfg.fsb_candidates,
                                            worst if filtered else None)
        if filtered and score.shape[1] > 1:
            self.stats["fsb_tried"] = self.stats.get("fsb_tried", 0) + len(dom)
            self.stats["fsb_agree"] = self.stats.get("fsb_agree", 0) + int((pick == 0).sum())

    def _worst_child(self, dom: Domains, R: torch.Tensor, relu: torch.Tensor, neuron: torch.Tensor) -> torch.Tensor:
        """``(n, k)``: the violation-measure bound of the worse child of each candidate split
        (ReLU ``relu[i, c]``, neuron ``neuron[i, c]``), each child bounded by one final pass with
        its parent's slopes and multipliers."""
        n, k = relu.shape
        lo, hi = self.lo.expand(2 * n, -1), self.hi.expand(2 * n, -1)
        C = self.C[R].unsqueeze(0).expand(2 * n, -1, -1)
        assert dom.rows is not None
        known = dom.rows.repeat(2, 1)
        split = {r: sg.double().repeat(2, 1) for r, sg in dom.signs.items() if bool(sg.any())} if self.cfg.beta else {}
        alphas = {r: a[:, R].double().repeat(2, 1, 1) for r, a in dom.alphas.items()} or None
        betas = {r: b[:, R].double().repeat(2, 1, 1) for r, b in dom.betas.items() if r in split} or None
        worst = torch.full((n, k), torch.inf, dtype=torch.float64)
        for c in range(k):
            pre = child_bounds(self.net, self.lo, self.hi, dom.lower, dom.upper, relu[:, c], neuron[:, c])
            bound, _, _ = spec_backward(self.net, C, lo, hi, pre, alphas, betas, split or None)
            m = self._measure(merge_rows(known, R, bound))
            worst[:, c] = torch.maximum(m[:n], m[n:])
        return worst

    # -- splitting --------------------------------------------------------------------------
    def split(self, dom: Domains) -> Domains:
        """Two children per domain: the chosen unit's neuron below its kink (first half), above it
        (second); for a ReLU, inactive and active."""
        n = len(dom)
        lower = [t.repeat(2, 1) for t in dom.lower]
        upper = [t.repeat(2, 1) for t in dom.upper]
        signs = {r: t.repeat(2, 1) for r, t in dom.signs.items()}
        alphas = {r: a.repeat(2, 1, 1) for r, a in dom.alphas.items()}
        betas = {r: b.repeat(2, 1, 1) for r, b in dom.betas.items()}
        rows = torch.arange(2 * n)
        relu, neuron = dom.relu.repeat(2), dom.neuron.repeat(2)
        self.stats["splits"] = self.stats.get("splits", 0) + n
        self.stats["split_positions"] = self.stats.get("split_positions", 0) + sum(
            self.relus.index(int(r)) for r in dom.relu.tolist())
        for r in set(int(v) for v in dom.relu):
            sel = relu == r
            below = sel & (rows < n)
            above = sel & (rows >= n)
            op = self.net.layers[r]
            op.split_bounds(lower[r - 1], upper[r - 1], rows[below], neuron[below], -1)  # type: ignore[attr-defined]
            op.split_bounds(lower[r - 1], upper[r - 1], rows[above], neuron[above], 1)  # type: ignore[attr-defined]
            signs[r][below, neuron[below]] = -1
            signs[r][above, neuron[above]] = 1
            if r not in betas and alphas:  # the first split in this layer: multipliers start at 0
                betas[r] = torch.zeros(2 * n, *next(iter(alphas.values())).shape[1:2], signs[r].shape[1])
        rows = None if dom.rows is None else dom.rows.repeat(2, 1)
        return Domains(lower, upper, signs, relu, neuron, alphas, betas, rows)

    # -- leaves -----------------------------------------------------------------------------
    def leaves(self, dom: Domains) -> object | None:
        """Settle the open domains with no unstable ReLU left exactly: the network is affine
        there, so one LP per disjunct decides it (:meth:`_leaf_lp`). A witness accepted by
        ``check`` is returned; a domain the LP cannot settle counts as ``undecided``, and one
        reached past the deadline as ``late`` (the search then ends in ``timeout``)."""
        for i in torch.nonzero(dom.relu < 0).flatten().tolist():
            if time.perf_counter() >= self.deadline:
                self.stats["late"] = self.stats.get("late", 0) + 1
                continue
            self.stats["leaves"] += 1
            verdict, x = self._leaf_lp(dom, i)
            if verdict == "closed":
                self.stats["closed"] += 1
                continue
            if verdict == "candidate":
                assert x is not None
                self.stats["candidates"] += 1
                w = self.check(x)
                if w is None:  # the band-relaxed optimum may miss a violation narrower than the band
                    exact, x2 = self._leaf_lp(dom, i, exact=True)  # a candidate only, never a proof
                    w = self.check(x2) if exact == "candidate" and x2 is not None else None
                if w is not None:
                    return w
            self.stats["undecided"] += 1
        return None

    def _leaf_lp(self, dom: Domains, i: int, exact: bool = False) -> tuple[str, np.ndarray | None]:
        """Domain ``i`` with every ReLU decided: settled by :func:`robustkit.verification.leaf_lp.settle_leaf`
        (``closed`` only from certificates, ``candidate`` with its ``x``, else ``undecided``)."""
        verdict, x, value = settle_leaf(self.net, self.errs, [t[i] for t in dom.lower], [t[i] for t in dom.upper],
                                        {r: t[i] for r, t in dom.signs.items()}, self.lo[0], self.hi[0], self.C,
                                        self.d, [g.numpy() for g in self.groups], self.margin, exact)
        if verdict == "closed" and not exact:
            self.cleared = min(self.cleared, value)
        return verdict, x

    # -- falsification ----------------------------------------------------------------------
    def candidates(self, dom: Domains, A_in: torch.Tensor, R: torch.Tensor) -> object | None:
        """Run the box corner minimising the worst open row's linear bound (``A_in``: the input
        coefficients of the rows ``R``) through the network; hand violating points to ``check``."""
        if len(dom) == 0:
            return None
        assert dom.rows is not None
        row = (self.d[R] - dom.rows[:, R]).argmax(dim=1)  # the row the bound leaves most room to violate
        a = A_in[torch.arange(len(dom)), row]  # (n, in_dim)
        x = torch.where(a > 0, self.lo, self.hi)
        with torch.no_grad():
            y = self.net.forward(x)
            measure = self._measure(y @ self.C.T)  # the point's own violation measure
        for i in torch.nonzero(measure >= 0).flatten()[:4].tolist():
            self.stats["candidates"] += 1
            w = self.check(x[i].numpy())
            if w is not None:
                return w
        return None


def branch_and_bound(
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
    cfg: BabConfig = BabConfig(),
) -> BabResult:
    """Decide whether some ``x`` in ``[lower, upper]`` has ``C_k y <= d_k`` for some disjunct
    ``k`` (rows of disjunct ``k``: ``owner == k``), starting from ``root`` (bounds of every layer
    over the box, batch 1). ``deadline``: ``time.perf_counter()`` value to stop at.
    ``check(x)`` returns a witness object if ``x`` really violates, else None."""
    t0 = time.perf_counter()
    lo = torch.tensor(np.asarray(lower, dtype=np.float64))
    hi = torch.tensor(np.asarray(upper, dtype=np.float64))
    search = _Search(net, lo, hi, C, d, owner, margin, cfg, check, deadline, root.float_errors(net))
    search.slopes = root.slopes
    root_dom = Domains([t.clone() for t in root.lower], [t.clone() for t in root.upper],
                        {r: torch.zeros(1, net.layers[r].in_dim * net.layers[r].kinks, dtype=torch.int8)  # type: ignore[attr-defined]
                         for r in search.relus},
                        torch.full((1,), -1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        return _search(search, root_dom, deadline, cfg, t0)


def _search(search: _Search, root_dom: Domains, deadline: float, cfg: BabConfig, t0: float) -> BabResult:
    """The search; a proof also reports the least amount by which a closed domain cleared the margin."""
    result = _run(search, root_dom, deadline, cfg, t0)
    if result.status == "unsat":
        result.stats["cleared"] = search.cleared
    return result


def _run(search: _Search, root_dom: Domains, deadline: float, cfg: BabConfig, t0: float) -> BabResult:
    stats = search.stats
    first, _, A_in, R = search.bound(root_dom)
    stats["domains"] += 1
    w = _settle(search, first, A_in, R)
    if w is not None:
        return _done("sat", w, stats, t0)
    stack: list[Domains] = []
    _push(stack, first)
    while stack:
        open_count = sum(len(block) for block in stack)
        stats["max_open"] = max(int(stats["max_open"]), open_count)
        if open_count > cfg.max_domains:
            stats["open"] = open_count
            log.info("branch and bound: more than %d open domains; giving up", cfg.max_domains)
            return _done("unknown", None, stats, t0)
        if time.perf_counter() >= deadline:
            stats["open"] = open_count
            stats["open_share"] = open_share(stack)
            return _done("timeout", None, stats, t0)
        dom = stack.pop()
        if len(dom) > cfg.batch:
            stack.append(dom.take(slice(cfg.batch, None)))
            dom = dom.take(slice(0, cfg.batch))
        stats["iterations"] += 1
        with search.timed("split"):
            children = search.split(dom)
        stats["domains"] += len(children)
        bounded, _, A_in, R = search.bound(children)
        w = _settle(search, bounded, A_in, R)
        if w is not None:
            return _done("sat", w, stats, t0)
        _push(stack, bounded)
    if stats.get("late"):
        return _done("timeout", None, stats, t0)
    return _done("unknown" if stats["undecided"] else "unsat", None, stats, t0)


def _settle(search: _Search, dom: Domains, A_in: torch.Tensor, R: torch.Tensor) -> object | None:
    """Falsification at the open domains' corners, then the exact LPs of the fully split ones."""
    with search.timed("falsify"):
        w = search.candidates(dom, A_in, R)
    if w is not None:
        return w
    with search.timed("leaves"):
        return search.leaves(dom)


def _push(stack: list[Domains], dom: Domains) -> None:
    """Push the domains that can be split (the others were settled by :meth:`_Search.leaves`)."""
    splittable = dom.relu >= 0
    if bool(splittable.any()):
        stack.append(dom.take(torch.nonzero(splittable).flatten()))


def _done(status: str, witness: object | None, stats: dict[str, float | int], t0: float) -> BabResult:
    stats["time"] = time.perf_counter() - t0
    stats["domains_per_s"] = stats["domains"] / stats["time"] if stats["time"] > 0 else 0.0
    stats.setdefault("cleared", float("nan"))
    positions = stats.pop("split_positions", 0)
    stats["split_layer_mean"] = positions / stats["splits"] if stats.get("splits") else float("nan")
    log.debug("branch and bound: %s %s", status, stats)
    return BabResult(status, witness, dict(stats))
