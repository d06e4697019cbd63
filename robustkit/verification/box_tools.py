"""What input splitting (:mod:`robustkit.verification.input_split`) does to a box besides bounding
it: shrinking it in closed form to the part that can violate, and looking inside it for a
counterexample by gradient steps.

**Shrinking.** A bounded box comes with, per specification row ``r``, a linear lower bound
``C_r y(x) >= a_r . x + c_r`` valid at every ``x`` of the box, and its minimum over the box
``lb_r`` (both for the float32 network, the float error charged). A point can only violate the
disjunct ``k`` (``C_r y <= d_r`` for every row ``r`` of ``k``) where ``a_r . x + c_r <= d_r``;
the search only ever closes a region whose bound clears ``d_r`` by the safety margin, so the box
keeps every point with ``a_r . x - min_box(a_r . x) <= d_r + margin - lb_r`` (the room ``s_r``).
One such half-space cuts the box in closed form: for ``a_rj > 0``, ``x_j <= lo_j + s_r / a_rj``;
for ``a_rj < 0``, ``x_j >= hi_j - s_r / |a_rj|``. A disjunct keeps the intersection of its rows'
cuts (empty if some ``s_r < 0``), the box the hull of its disjuncts' parts, and a box with every
part empty is dropped (it holds no violation: the same test that closes a box by its bound).
The room is widened by the float64 slack of the row (the error model's bound on the rounding of
a sum of the row's terms; ``a_r . x - min_box a_r . x`` is a sum of those terms) and the cut by
the rounding of the few operations that compute it, so the shrunk box contains every point that
can violate.

**Falsification.** Projected gradient steps (the float32 torch network, sign steps of a shrinking
share of the box's width) on the violation measure ``max_k min_{rows of k} (d - C y)``, from a
few starting points per box, the boxes chosen by the caller (the most promising by their bound).
A point is only a candidate: the caller replays it in onnxruntime before any ``sat``.

**Combined rows.** A disjunct of several rows (``C_r y <= d_r`` for every ``r``: ACAS Xu's "COC
is minimal") is refuted on a box when some row fails at each point, which needs no row to fail on
the whole box: for weights ``lambda_r >= 0``, ``sum_r lambda_r (C_r y - d_r) > 0`` everywhere
refutes it. Any weights are sound (the caller bounds the combined row ``sum_r lambda_r C_r`` by
its own backward pass); :func:`combine_weights` picks them where the rows' linear lower bounds
``a_r . x + c_r`` combine best: it maximises ``min_box sum_r lambda_r (a_r . x + c_r - d_r)`` over
the simplex, a concave function (exponentiated-gradient steps, batched over boxes).
"""

from __future__ import annotations

import torch

from robustkit.bounds.floaterr import U64, gamma
from robustkit.verification.domains import violation_measure

__all__ = ["shrink_boxes", "gradient_search", "combine_weights"]


def shrink_boxes(lo: torch.Tensor, hi: torch.Tensor, A: torch.Tensor, lb: torch.Tensor, d: torch.Tensor,
                 groups: list[torch.Tensor], margin: float, slack: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The boxes ``[lo, hi]`` (``(B, n)``) shrunk to the points that can violate (module
    docstring), given each row's linear lower bound: coefficients ``A`` (``(B, m, n)``) and
    minimum over the box ``lb`` (``(B, m)``), the thresholds ``d`` (``(m,)``), the disjuncts'
    rows ``groups`` and the float64 slack of the rows ``slack`` (broadcastable to ``(B, m)``).
    Returns ``(lo, hi, alive)``: ``alive`` ``(B,)`` is False where no point can violate."""
    B, m, n = A.shape
    room = d + margin - lb + slack
    room = room + gamma(3, U64) * (d.abs() + margin + lb.abs() + slack)  # the rounding of ``room``
    room = torch.nan_to_num(room, nan=torch.inf)  # a NaN bound (an overflow inside it) cuts nothing
    ok_row = room >= 0
    mag = A.abs()
    with torch.no_grad():
        step = torch.where(mag > 0, room.clamp(min=0).unsqueeze(-1) / mag, torch.full_like(mag, torch.inf))
        step = torch.nan_to_num(step, nan=torch.inf)
        step = step * (1 + gamma(2, U64))  # the division's rounding, and the product's
        lo3, hi3 = lo.unsqueeze(1), hi.unsqueeze(1)
        cut_hi = torch.nextafter(lo3 + step, torch.full_like(step, torch.inf))
        cut_lo = torch.nextafter(hi3 - step, torch.full_like(step, -torch.inf))
        row_hi = torch.where(A > 0, torch.minimum(hi3, cut_hi), hi3.expand(B, m, n))  # (B, m, n)
        row_lo = torch.where(A < 0, torch.maximum(lo3, cut_lo), lo3.expand(B, m, n))
        new_lo = torch.full_like(lo, torch.inf)
        new_hi = torch.full_like(hi, -torch.inf)
        alive = torch.zeros(B, dtype=torch.bool)
        for g in groups:
            part_ok = ok_row[:, g].all(dim=1)  # (B,)
            part_lo = row_lo[:, g].max(dim=1).values
            part_hi = row_hi[:, g].min(dim=1).values
            part_ok = part_ok & (part_lo <= part_hi).all(dim=1)
            new_lo = torch.where(part_ok.unsqueeze(1), torch.minimum(new_lo, part_lo), new_lo)
            new_hi = torch.where(part_ok.unsqueeze(1), torch.maximum(new_hi, part_hi), new_hi)
            alive = alive | part_ok
        new_lo = torch.where(alive.unsqueeze(1), new_lo, lo)
        new_hi = torch.where(alive.unsqueeze(1), new_hi, hi)
    return new_lo, new_hi, alive


def gradient_search(module: torch.nn.Module, lo: torch.Tensor, hi: torch.Tensor, starts: torch.Tensor,
                    C: torch.Tensor, d: torch.Tensor, groups: list[torch.Tensor], steps: int,
                    first_step: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-gradient ascent of the violation measure from ``starts`` (``(k, n)``) in the boxes
    ``[lo, hi]`` (``(k, n)``, one per start), float32, ``steps`` steps of ``first_step`` of the
    box's width halving every third step. Returns the best point of each start (float64,
    inside its box) and its measure (float32 network; ``>= 0``: a candidate)."""
    lo32, hi32 = lo.float(), hi.float()
    width = hi32 - lo32
    C32, d32 = C.float(), d.float()
    x = starts.float().clamp(lo32, hi32)
    best_x, best_v = x.clone(), torch.full((x.shape[0],), -torch.inf)
    size = first_step
    for it in range(steps + 1):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value = violation_measure(d32 - module(x) @ C32.T, groups)
            grad = torch.autograd.grad(value.sum(), x)[0] if it < steps else None
        with torch.no_grad():
            better = value > best_v
            best_v = torch.where(better, value.detach(), best_v)
            best_x = torch.where(better.unsqueeze(1), x.detach(), best_x)
            if grad is None:
                break
            x = torch.minimum(torch.maximum(x + size * width * grad.sign(), lo32), hi32)
            if it % 3 == 2:
                size /= 2
    return torch.minimum(torch.maximum(best_x.double(), lo), hi), best_v


def combine_weights(A: torch.Tensor, lb: torch.Tensor, d: torch.Tensor, groups: list[torch.Tensor],
                    radius: torch.Tensor, steps: int = 24) -> torch.Tensor:
    """Weights ``(B, K, m)`` (zero off each group's rows, each group's summing to 1) for the
    groups of at least two rows (``K`` of them, in order), from the rows' linear lower bounds
    (coefficients ``A`` ``(B, m, n)``, minimum over the box ``lb`` ``(B, m)``, thresholds ``d``
    ``(m,)``) on boxes of half-widths ``radius`` ``(B, n)`` (module docstring). Heuristic: any
    weights are sound."""
    B, m, n = A.shape
    multi = [g for g in groups if g.numel() >= 2]
    out = torch.zeros(B, len(multi), m, dtype=A.dtype)
    r = radius.unsqueeze(1)  # (B, 1, n)
    for k, g in enumerate(multi):
        a, gap = A[:, g], torch.nan_to_num(lb[:, g] - d[g], nan=-1e30, neginf=-1e30, posinf=1e30)  # (B, q, n), (B, q)
        a = torch.nan_to_num(a)
        q = g.numel()
        lam = torch.full((B, q), 1.0 / q, dtype=A.dtype)

        def value(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            comb = (lam.unsqueeze(-1) * a).sum(dim=1)  # (B, n)
            gain = ((lam.unsqueeze(-1) * a.abs()).sum(dim=1) - comb.abs()) * radius
            v = (lam * gap).sum(dim=1) + gain.sum(dim=1)
            grad = gap + ((a.abs() - comb.sign().unsqueeze(1) * a) * r).sum(dim=2)
            return v, grad

        best_v, grad = value(lam)
        best = lam
        for _ in range(steps):
            scale = grad.abs().amax(dim=1, keepdim=True).clamp(min=1e-300)
            lam = lam * torch.exp(2.0 * grad / scale)
            lam = lam / lam.sum(dim=1, keepdim=True)
            v, grad = value(lam)
            better = v > best_v
            best = torch.where(better.unsqueeze(1), lam, best)
            best_v = torch.where(better, v, best_v)
        out[:, k, g] = torch.nan_to_num(best, nan=1.0 / q)
    return out
