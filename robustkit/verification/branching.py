"""Branching of branch and bound (:mod:`robustkit.verification.bab`): which undecided kink of which
piecewise-linear operator each open domain splits next.

* :func:`intercept_scores`: the BaBSR-style score (Bunel et al. 2020, "Branch and Bound for
  Piecewise Linear Neural Network Verification", Sec. 5.1), the loss the relaxation's intercept
  over a kink ``-(l - b)(u - b) / (u - l)`` causes in the bound of the open rows (for a ReLU:
  ``-min(A, 0) * intercept``), optionally scaled per layer (the search's depth weight);
* :func:`child_bounds`: the pre-activation bounds of the two children a candidate split gives
  (for filtered smart branching, De Palma et al. 2021, Sec. 4.2: the search bounds them and
  :func:`choose` keeps the candidate whose worse child is best).

Branching only picks a neuron: both children of any split together cover the parent, so no
choice made here can change a verdict, only how soon it comes.
"""

from __future__ import annotations

from typing import Callable

import torch

from robustkit.network import Network

__all__ = ["intercept_scores", "child_bounds", "choose"]


def intercept_scores(
    net: Network, relus: list[int], lower: list[torch.Tensor], upper: list[torch.Tensor],
    coeffs: dict[int, torch.Tensor], open_rows: torch.Tensor, weights: dict[int, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores ``(n, N)`` of the ``N`` split units (neuron and kink,
    :mod:`robustkit.network.activations`) of the operators at ``relus`` (in that order), with each
    column's operator position and unit (``(N,)`` each). ``lower``/``upper``: the domains' bounds of
    every layer (the operator at ``r`` reads layer ``r - 1``); ``coeffs[r]``: the rows' coefficients
    on the operator's output (``(n, k, d_r)``); ``open_rows``: ``(n, k)``, 1.0 where the row is still
    open; ``weights[r]``: a factor on layer ``r``'s scores. A unit's score is the loss its chord's
    intercept causes in the open rows' bound (coefficients of the sign that uses that chord: negative
    for a convex kink, positive for a concave one); an undecided unit scores ``>= 0`` (a tiny multiple
    of its intercept when it does not touch the open rows, so it still ranks above a decided one), a
    decided one ``-1``."""
    scores, relu_of, neuron_of = [], [], []
    for r in relus:
        op = net.layers[r]
        l, u = lower[r - 1], upper[r - 1]
        undecided, intercept = op.intercepts(l, u)  # type: ignore[attr-defined]
        losses = []
        for convex in op.kink_convexity():  # type: ignore[attr-defined]
            side = coeffs[r].clamp(max=0) if convex else -coeffs[r].clamp(min=0)
            losses.append((-side * open_rows.unsqueeze(-1)).sum(1))  # (n, d_r)
        loss = torch.stack(losses, dim=-1).reshape(l.shape[0], -1) * intercept  # (n, units)
        if weights is not None:
            loss = loss * weights[r]
        scores.append(torch.where(undecided, loss + 1e-12 * intercept, torch.full_like(loss, -1.0)))
        relu_of.append(torch.full((loss.shape[1],), r, dtype=torch.long))
        neuron_of.append(torch.arange(loss.shape[1]))
    if not scores:
        empty = torch.zeros(0, dtype=torch.long)
        return torch.zeros(len(open_rows), 0, dtype=torch.float64), empty, empty
    return torch.cat(scores, dim=1), torch.cat(relu_of), torch.cat(neuron_of)


def child_bounds(
    net: Network, lo: torch.Tensor, hi: torch.Tensor, lower: list[torch.Tensor], upper: list[torch.Tensor],
    relu: torch.Tensor, unit: torch.Tensor,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Pre-activation bounds ``{r: (l, u)}`` (``(2n, d_r)``) of every operator (``r = 0`` reads the
    box ``lo``/``hi``) for the children of splitting unit ``unit[i]`` of the operator at ``relu[i]``
    in domain ``i``: the first ``n`` rows the children below the kink, the last ``n`` above it
    (:meth:`~robustkit.network.activations.Activation.split_bounds`)."""
    n = relu.numel()
    rows = torch.arange(n)
    pre = {}
    for r in net.split_indices:
        l, u = (lo.expand(n, -1), hi.expand(n, -1)) if r == 0 else (lower[r - 1], upper[r - 1])
        l, u = l.repeat(2, 1), u.repeat(2, 1)
        sel = relu == r
        if bool(sel.any()):
            op = net.layers[r]
            op.split_bounds(l, u, rows[sel], unit[sel], -1)  # type: ignore[attr-defined]
            op.split_bounds(l, u, n + rows[sel], unit[sel], 1)  # type: ignore[attr-defined]
        pre[r] = (l, u)
    return pre


def choose(
    score: torch.Tensor, relu_of: torch.Tensor, neuron_of: torch.Tensor, candidates: int,
    worst_child: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each domain's split ``(relu, neuron)`` (``(n,)`` each; relu ``-1``: no unstable neuron
    left) from the ``candidates`` best-scored neurons: the best one, or with more than one and a
    ``worst_child`` (column indices ``(n, k)`` -> ``(n, k)`` violation-measure bounds of each
    candidate's worse child) the candidate whose worse child is best. Also returns which
    candidate was picked (``(n,)``, 0: the best score's)."""
    n = score.shape[0]
    k = min(candidates, score.shape[1])
    if k == 0:
        none = torch.full((n,), -1, dtype=torch.long)
        return none, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    top_s, top_i = score.topk(k, dim=1)
    pick = torch.zeros(n, dtype=torch.long)
    if k > 1 and worst_child is not None:
        worst = worst_child(top_i)
        pick = torch.where(top_s >= 0, worst, torch.full_like(worst, torch.inf)).argmin(dim=1)
    choice = top_i.gather(1, pick.unsqueeze(1)).squeeze(1)
    valid = score.gather(1, choice.unsqueeze(1)).squeeze(1) >= 0
    relu = torch.where(valid, relu_of[choice], torch.full_like(choice, -1))
    neuron = torch.where(valid, neuron_of[choice], torch.zeros_like(choice))
    return relu, neuron, pick
