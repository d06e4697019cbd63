"""The boxes of input splitting (:mod:`robustkit.verification.input_split`) and what is done to
each: bounding it (forward symbolic bounds with the box's own float error model, the parent's
affine bounds minimised over it, backward passes where they pay, the specification rows and one
combined row per multi-row disjunct), shrinking it, handing its corners and gradient steps to the
witness check, and settling it by ReLU splits.

**Bounds of a box** (:meth:`BoxBounds.bound`): first forward symbolic bounds
(:mod:`robustkit.bounds.symbolic`, met with the parent's bounds and with the parent's affine
bounds minimised over the box, :func:`~robustkit.bounds.symbolic.relinearize`) and one backward
pass of the specification rows (the forward functions' own bound of ``C y`` where higher); the
boxes these leave open again, with every intermediate layer's unstable neurons bounded by backward
passes to the input (CROWN's tightness, at CROWN's cost, only where the cheap pass did not close:
``refine``); ``bounds="crown"``: CROWN alone. The float error model is built per box as the pass
learns each layer's input bounds (``box_errors``; each term the smaller of that and the root
box's): on ACAS Xu property 10 the root's model charges 0.0075 to the rows while the true margin
near the closest point is 0.0016 and the boxes around it are charged 0 (the network is constant
there), so no box could close with the root's model.

**Combined rows** (``combine``): a disjunct of several rows gets one row more, the backward bound
of ``sum_r lambda_r C_r y`` against ``sum_r lambda_r d_r`` (weights from the rows' linear bounds,
:func:`~robustkit.verification.box_tools.combine_weights`): a box where each point fails some
row, but no row fails on all of it, closes (ACAS Xu properties 2, 3, 4, 7, 8).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from robustkit.bounds.beta_crown import spec_backward
from robustkit.bounds.crown import crown_bounds, pre_bounds
from robustkit.bounds.floaterr import U64, FloatErrors, gamma
from robustkit.bounds.symbolic import SymbolicBounds, concretize, dense_maps, symbolic_bounds
from robustkit.bounds.types import NetBounds
from robustkit.network import Network
from robustkit.verification.box_tools import combine_weights, gradient_search, shrink_boxes
from robustkit.verification.domains import disjunct_rows, violation_measure
from robustkit.verification.final_pass import optimise_pairs

if TYPE_CHECKING:
    from robustkit.verification.input_split import InputSplitConfig

log = logging.getLogger(__name__)

__all__ = ["Boxes", "Bounded", "BoxBounds", "pick_errors"]


Known = dict[int, tuple[torch.Tensor, torch.Tensor]]
Lin = dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class Boxes:
    """Open sub-boxes: ``lo``, ``hi`` ``(n, in_dim)``, ``depth`` ``(n,)`` (halvings so far) and
    ``known``: valid bounds ``(n, d_i)`` of layers ``i`` over each box (its parent's), or None."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, depth: torch.Tensor, known: Known | None = None,
                 bounded: "Bounded | None" = None) -> None:
        self.lo, self.hi, self.depth, self.known, self.bounded = lo, hi, depth, known, bounded

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    def take(self, idx: torch.Tensor | slice) -> "Boxes":
        known = None if self.known is None else {i: (l[idx], u[idx]) for i, (l, u) in self.known.items()}
        bounded = None if self.bounded is None else self.bounded.take(idx)
        return Boxes(self.lo[idx], self.hi[idx], self.depth[idx], known, bounded)

    def share(self) -> float:
        """The share of the input box these boxes cover (each halving halves it)."""
        return float(torch.pow(2.0, -self.depth.double()).sum())


@dataclass
class Bounded:
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
    slack: torch.Tensor
    known: Known | None = None
    lin: Lin | None = None

    def take(self, idx: torch.Tensor | slice) -> "Bounded":
        known = None if self.known is None else {i: (l[idx], u[idx]) for i, (l, u) in self.known.items()}
        lin = None if self.lin is None else {i: (fl[idx], fu[idx], sl if sl.shape[0] == 1 else sl[idx])
                                             for i, (fl, fu, sl) in self.lin.items()}
        return Bounded(self.measure[idx], self.row[idx], self.A[idx], self.lb[idx], self.unstable[idx],
                        self.slack[idx], known, lin)

    def put(self, idx: torch.Tensor, other: "Bounded") -> "Bounded":
        """These bounds with the boxes ``idx`` replaced by ``other``'s (bounds of the same boxes)."""
        def at(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            out = mine.clone()
            out[idx] = theirs
            return out

        known = None
        if self.known is not None and other.known is not None:
            known = {i: (at(l, other.known[i][0]), at(u, other.known[i][1])) for i, (l, u) in self.known.items()}
        lin = None
        if self.lin is not None and other.lin is not None:
            def at_slack(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
                n = self.measure.shape[0]
                return at(mine.expand(n, -1), theirs.expand(len(idx), -1))

            lin = {i: (at(fl, other.lin[i][0]), at(fu, other.lin[i][1]), at_slack(sl, other.lin[i][2]))
                   for i, (fl, fu, sl) in self.lin.items()}
        return Bounded(at(self.measure, other.measure), at(self.row, other.row), at(self.A, other.A),
                        at(self.lb, other.lb), at(self.unstable, other.unstable), at(self.slack, other.slack), known,
                        lin)


def pick_errors(errs: FloatErrors, idx: torch.Tensor) -> FloatErrors:
    """The error model of the boxes ``idx`` (rows of a model with one row per box)."""
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[0] == 1 else t[idx]

    return FloatErrors([pick(t) for t in errs.rounding], [pick(t) for t in errs.slack],
                       [pick(t) for t in errs.magnitude], [pick(t) for t in errs.accumulated], list(errs.ops),
                       list(errs.relus), pick(errs.input_magnitude), [pick(t) for t in errs.reach], list(errs.limit),
                       list(errs.formats))


class BoxBounds:
    """Bounding, shrinking, falsifying and settling the boxes of one search (the state they share:
    the rows, the root's error model, the statistics)."""

    def __init__(self, net: Network, lo: torch.Tensor, hi: torch.Tensor, C: np.ndarray, d: np.ndarray,
                 owner: np.ndarray, margin: float, cfg: "InputSplitConfig",
                 check: Callable[[np.ndarray], object | None], deadline: float, root: NetBounds) -> None:
        self.net, self.cfg, self.margin, self.check, self.deadline = net, cfg, margin, check, deadline
        self.C = torch.tensor(np.asarray(C, dtype=np.float64))
        self.d = torch.tensor(np.asarray(d, dtype=np.float64))
        self.groups = disjunct_rows(owner)
        # each disjunct of several rows gets one combined row more (``combine``), after the m rows:
        # its bound is that of sum_r lambda_r (C_r y - d_r), threshold 0
        m = self.C.shape[0]
        multi = [k for k, g in enumerate(self.groups) if g.numel() >= 2] if cfg.combine else []
        self.combined = len(multi)
        extra = {k: m + j for j, k in enumerate(multi)}
        self.rows = [torch.cat([g, torch.tensor([extra[k]])]) if k in extra else g for k, g in enumerate(self.groups)]
        self.d_rows = torch.cat([self.d, torch.zeros(self.combined, dtype=torch.float64)])
        self.errs = root.float_errors(net)  # valid on every sub-box of the root's box
        self.spec_slack = self.errs.spec_slack(self.C.unsqueeze(0))  # (1, m)
        self.width0 = (hi - lo).reshape(-1)
        self.cleared = math.inf
        self._net32: Network | None = None
        self._module32: torch.nn.Module | None = None
        self.maps = dense_maps(net) if cfg.bounds == "symbolic" else None
        self.stats: dict[str, float | int] = dict.fromkeys(
            ("domains", "bounded", "bounded_cheap", "closed", "undecided", "candidates", "max_open", "iterations",
             "refined", "looked_ahead", "shrunk", "emptied", "attacks", "optimised", "relu_settled", "relu_closed"), 0)

    def bound(self, boxes: Boxes) -> Bounded:
        """Bound every box of the batch: symbolic forward bounds and one backward pass of the
        specification rows; the boxes those leave open again with the intermediate layers'
        bounds by backward passes (``refine``); or CROWN alone with ``bounds="crown"``."""
        if self.maps is None:
            self.stats["bounded"] += len(boxes)
            nb, _ = crown_bounds(self.net, boxes.lo, boxes.hi)
            b = self._spec(boxes, pre_bounds(self.net, nb), None, None,
                           nb.float_errors(self.net) if self.cfg.box_errors else None)
            if self.cfg.iterations:
                m = self.C.shape[0]
                b.lb = torch.cat([torch.fmax(b.lb[:, :m], self._optimised(boxes, nb, b.lb[:, :m])), b.lb[:, m:]], dim=1)
                b = self._measured(b)
            return b
        self.stats["bounded"] += len(boxes)
        linear = self.cfg.keep_parent
        sb = symbolic_bounds(self.net, self.maps, boxes.lo, boxes.hi, self.errs, boxes.known, track=self.cfg.box_errors,
                             linear=linear)
        b = self._spec(boxes, sb.pre, sb, sb.unstable)
        if self.cfg.refine:
            still = torch.nonzero(~(b.measure < -self.margin)).flatten()
            if still.numel():
                sub = boxes.take(still)
                known = None if b.known is None else {i: (l[still], u[still]) for i, (l, u) in b.known.items()}
                sb2 = symbolic_bounds(self.net, self.maps, sub.lo, sub.hi, self.errs, known,
                                      window=self.cfg.refine_window or len(self.net.layers), track=self.cfg.box_errors,
                                      linear=linear)
                b2 = self._spec(sub, sb2.pre, sb2, sb2.unstable)
                self.stats["refined"] += int(still.numel())
                if self.cfg.iterations:
                    b2 = self._alpha(sub, sb2, b2)
                b = b.put(still, b2)
        return b

    def _alpha(self, boxes: Boxes, sb: SymbolicBounds, b: Bounded) -> Bounded:
        """``b`` with the rows of the boxes still open bounded again by ``iterations`` Adam steps
        on the final pass's slopes (alpha-CROWN's final pass at the boxes' bounds)."""
        still = torch.nonzero(~(b.measure < -self.margin)).flatten()
        if still.numel() == 0:
            return b
        m = self.C.shape[0]
        pre = {r: (l[still], u[still]) for r, (l, u) in sb.pre.items()}
        errs = sb.errs if sb.errs.rounding[0].shape[0] == 1 else pick_errors(sb.errs, still)
        opt = self._optimised(boxes.take(still), pre, b.lb[still, :m], errs)
        lb = b.lb.clone()
        lb[still, :m] = torch.fmax(lb[still, :m], opt)
        self.stats["optimised"] += int(still.numel())
        return self._measured(Bounded(b.measure, b.row, b.A, lb, b.unstable, b.slack, b.known, b.lin))

    def _spec(self, boxes: Boxes, pre: dict[int, tuple[torch.Tensor, torch.Tensor]], sb: SymbolicBounds | None,
              unstable: torch.Tensor | None, errs: FloatErrors | None = None) -> Bounded:
        """The specification rows' bounds given the boxes' intermediate bounds ``pre`` (and the
        forward functions ``sb``, whose own bound of ``C y`` is taken where it is higher)."""
        n = len(boxes)
        C = self.C.unsqueeze(0).expand(n, -1, -1)
        if errs is None:
            errs = self.errs if sb is None else sb.errs
        slack = self.spec_slack.expand(n, -1) if errs is self.errs else errs.spec_slack(C)
        lb, _, A = spec_backward(self.net, C, boxes.lo, boxes.hi, pre, errs=errs)
        lb = lb - slack
        known = None
        if sb is not None:
            f = torch.matmul(sb.mid, self.C.T) - torch.matmul(sb.rad, self.C.abs().T)  # (n, in + 1, m)
            lb_f = concretize(f, (boxes.lo + boxes.hi) / 2, (boxes.hi - boxes.lo) / 2)[0] - slack
            higher = lb_f > lb
            if bool(higher.any()):
                A = torch.where(higher.unsqueeze(-1), f[:, :-1].transpose(1, 2), A)
                lb = torch.where(higher, lb_f, lb)
            if self.cfg.keep_parent:
                known = {r - 1: sb.pre[r] for r in sb.pre if r >= 1}
        if self.combined:
            lb, A, slack = self._combine(boxes, pre, errs, lb, A, slack)
        if unstable is None:
            unstable = torch.full((n,), -1, dtype=torch.long)
        return self._measured(Bounded(lb, lb, A, lb, unstable, slack, known, None if sb is None else sb.lin))

    def _combine(self, boxes: Boxes, pre: dict[int, tuple[torch.Tensor, torch.Tensor]], errs: FloatErrors,
                 lb: torch.Tensor, A: torch.Tensor, slack: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows' bounds with one combined row per disjunct of several rows appended
        (:func:`combine_weights`): the backward pass's lower bound of ``C' y`` with ``C'`` the
        computed ``sum_r lambda_r C_r``, less its float64 slack, less what the rounding of ``C'``
        can move ``C' y`` by (``gamma_{m+1} (lambda |C|) |y|``, ``|y|`` by the error model's
        magnitude), less ``sum_r lambda_r d_r`` and its rounding: at a point of the disjunct,
        ``C' y <= sum_r lambda_r d_r`` up to those, so a bound above it (threshold 0) refutes it."""
        n = len(boxes)
        m = self.C.shape[0]
        lam = combine_weights(A, lb, self.d, self.groups, (boxes.hi - boxes.lo) / 2)  # (n, K, m)
        Cl = lam @ self.C  # (n, K, out)
        g = gamma(m + 1, U64)
        y_mag = errs.magnitude[-1].unsqueeze(-1)  # (n or 1, out, 1)
        rounding = g * (lam @ self.d.abs()) + g * ((lam @ self.C.abs()) @ y_mag).squeeze(-1)
        dl = lam @ self.d + rounding  # the threshold, moved up by every rounding of the combination
        sl = errs.spec_slack(Cl)
        lbl, _, Al = spec_backward(self.net, Cl, boxes.lo, boxes.hi, pre, errs=errs)
        return (torch.cat([lb, lbl - sl - dl], dim=1), torch.cat([A, Al], dim=1),
                torch.cat([slack.expand(n, -1), sl + rounding], dim=1))

    def _measured(self, b: Bounded) -> Bounded:
        """``b`` with its measure and worst row computed from its row bounds ``lb``."""
        n = b.lb.shape[0]
        slack = self.d_rows - b.lb  # (n, m + combined): a row with slack < -margin is proven
        per_group = [slack[:, g].min(dim=1) for g in self.rows]
        mins = torch.stack([v.values for v in per_group], dim=1)  # (n, groups)
        b.measure, worst_group = mins.max(dim=1)
        rows = torch.stack([g[v.indices] for g, v in zip(self.rows, per_group)], dim=1)  # (n, groups)
        b.row = rows[torch.arange(n), worst_group]
        return b

    def _optimised(self, boxes: Boxes, pre: dict[int, tuple[torch.Tensor, torch.Tensor]] | NetBounds,
                   lb: torch.Tensor, errs: FloatErrors | None = None) -> torch.Tensor:
        """Lower bounds ``(n, m)`` of the rows from ``iterations`` Adam steps on the final pass's
        slopes, for the rows left open by ``lb`` (``-inf`` elsewhere); ``pre``: the boxes'
        pre-activation bounds (or their :class:`NetBounds`), ``errs``: their error model (one
        per box, or the root's)."""
        if isinstance(pre, NetBounds):
            pre = pre_bounds(self.net, pre)
        errs = self.errs if errs is None else errs
        m = self.C.shape[0]

        def still_open(bound: torch.Tensor) -> torch.Tensor:
            return ~(self.d - bound < -self.margin)  # NaN: open

        pairs = still_open(lb)
        if errs.rounding[0].shape[0] > 1:  # one model per box: one per (box, row) pair, in optimise_pairs' order
            di = torch.nonzero(pairs, as_tuple=True)[0]
            errs = pick_errors(errs, di)
        alphas0 = {r: self.net.layers[r].default_alpha(l, u).unsqueeze(1).expand(-1, m, -1).float()  # type: ignore[attr-defined]
                   for r, (l, u) in pre.items() if r in self.net.split_indices}
        if self._net32 is None:
            self._net32 = self.net.to_torch().to(torch.float32).net
        out, _, _, _ = optimise_pairs(self.net, self._net32, self.C, boxes.lo, boxes.hi, pre, alphas0, {}, {},
                                      pairs, still_open, self.cfg.iterations, self.cfg.lr, torch.float32,
                                      self.deadline, errs)
        return out

    def settle(self, boxes: Boxes, b: Bounded) -> tuple[Boxes, Bounded, object | None]:
        """The open boxes with at most ``relu_max`` unstable ReLUs handed to branch and bound over
        ReLU splits (:func:`robustkit.verification.bab.branch_and_bound`, at most ``relu_time``
        seconds each): those it proves leave, a witness it finds ends the search."""
        pick = torch.nonzero((b.unstable >= 0) & (b.unstable <= self.cfg.relu_max)).flatten()
        if pick.numel() == 0:
            return boxes, b, None
        from robustkit.bounds.crown import crown_bounds
        from robustkit.verification.bab import branch_and_bound

        done = torch.zeros(len(boxes), dtype=torch.bool)
        owner = np.concatenate([np.full(g.numel(), k) for k, g in enumerate(self.groups)])
        order = torch.cat(self.groups)
        C, d = self.C[order].numpy(), self.d[order].numpy()
        for i in pick.tolist():
            now = time.perf_counter()
            if now >= self.deadline:
                break
            lo, hi = boxes.lo[i:i + 1], boxes.hi[i:i + 1]
            nb, _ = crown_bounds(self.net, lo, hi)
            res = branch_and_bound(self.net, lo[0].numpy(), hi[0].numpy(), C, d, owner, nb,
                                   min(self.deadline, now + self.cfg.relu_time), self.check, self.margin)
            self.stats["relu_settled"] += 1
            if res.status == "sat":
                return boxes, b, res.witness
            if res.status == "unsat":
                done[i] = True
                self.stats["relu_closed"] += 1
                self.cleared = min(self.cleared, float(res.stats.get("cleared", self.margin)))
        keep = torch.nonzero(~done).flatten()
        return boxes.take(keep), b.take(keep), None

    def shrink(self, boxes: Boxes, b: Bounded) -> tuple[Boxes, torch.Tensor]:
        """The boxes cut to the part that can violate (:func:`shrink_boxes`); also which survive."""
        lo, hi, alive = shrink_boxes(boxes.lo, boxes.hi, b.A, b.lb, self.d_rows, self.rows, self.margin, b.slack)
        self.stats["shrunk"] += int(((lo != boxes.lo) | (hi != boxes.hi)).any(dim=1).sum())
        self.stats["emptied"] += int((~alive).sum())
        return Boxes(lo, hi, boxes.depth, boxes.known), alive

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

    def falsify(self, boxes: Boxes, b: Bounded) -> object | None:
        """The center and the worst row's minimising corner of each box through the network, and
        with at most ``corners_dim`` inputs every corner (the search's boxes then test a grid
        whose resolution follows the splits: on ACAS Xu property 7 the violations lie on a face
        of the input box, where a 3^5 grid has one and 20,000 random points none); up to
        ``candidates`` violating points go to ``check``."""
        if len(boxes) == 0 or self.cfg.candidates == 0:
            return None
        a = b.A[torch.arange(len(boxes)), b.row]
        corner = torch.where(a > 0, boxes.lo, boxes.hi)
        points = [corner, (boxes.lo + boxes.hi) / 2]
        n = boxes.lo.shape[1]
        if n <= self.cfg.corners_dim:
            up = torch.tensor(list(itertools.product((False, True), repeat=n)))  # (2^n, n)
            points.append(torch.where(up.unsqueeze(0), boxes.hi.unsqueeze(1), boxes.lo.unsqueeze(1)).reshape(-1, n))
        return self._points(torch.cat(points))

    def attack(self, boxes: Boxes, b: Bounded) -> object | None:
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
