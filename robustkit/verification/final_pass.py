"""The optimised final pass of branch and bound (:mod:`robustkit.verification.bab`), over the open
(domain, specification row) pairs only.

A batch of ``n`` domains and ``|R|`` rows has ``n |R|`` pairs, but a child inherits the rows its
ancestors proved, and a row proven mid-optimisation needs no further steps: on the VNN-COMP
instances about 30% of the pairs are proven before the optimisation starts and a third to a
half of the rest during it. So the pairs still open are laid out as a flat batch of
single-row problems (each with its domain's bounds, split signs, slopes and multipliers), and
after every Adam step (:func:`robustkit.bounds.adam.adam_step`, whose moments are plain tensors)
the pairs whose row is proven (or whose disjunct another row proved) leave the batch, with their
moments and best parameters.

The optimisation runs in ``dtype`` (float32 by default); the float32 network's rounding charge
at the starting parameters (one extra pass) is subtracted from its values, so that they track
the float64 bound that decides when a pair leaves the batch. The optimisation only steers: ONE
float64 pass with each pair's best slopes and multipliers and the full error model gives the
bounds returned (an optimisation value never closes a domain).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

from robustkit.bounds.adam import adam_step
from robustkit.bounds.beta_crown import spec_backward
from robustkit.bounds.floaterr import FloatErrors
from robustkit.network import Network

__all__ = ["optimise_pairs"]

def optimise_pairs(
    net64: Network, net_o: Network, C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]], alphas0: dict[int, torch.Tensor],
    betas0: dict[int, torch.Tensor], split: dict[int, torch.Tensor], pairs: torch.Tensor,
    still_open: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float, dtype: torch.dtype,
    deadline: float, errs: FloatErrors,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor], int]:
    """Optimise the final pass of the open pairs ``pairs`` (``(n, k)`` bool) of rows ``C``
    (``(k, out)`` float64) over the box ``lo``/``hi`` (``(1, in)``, or ``(n, in)``: one box per
    domain, as input splitting has), with the domains' ``pre``
    bounds (``{r: (n, d_r)}`` float64), starting slopes ``alphas0`` and multipliers ``betas0``
    (``{r: (n, k, d_r)}``) and split signs ``split`` (``{r: (n, d_r)}``). ``still_open(lb)``:
    which pairs are still worth steps given the row bounds ``lb`` (``(n, k)``, optimisation
    values).

    Returns the float64 lower bounds ``(n, k)`` (``-inf`` outside ``pairs``; the float error
    model and the float64 slack included), the slopes and multipliers ``(n, k, d_r)`` (float32;
    the best found for the pairs, ``alphas0`` / ``betas0`` elsewhere) and the Adam steps taken."""
    n, k = pairs.shape
    di, rk = torch.nonzero(pairs, as_tuple=True)
    lb = torch.full((n, k), -torch.inf, dtype=torch.float64)
    out_a = {r: a.float().clone() for r, a in alphas0.items()}
    out_b = {r: b.float().clone() for r, b in betas0.items()}
    if di.numel() == 0:
        return lb, out_a, out_b, 0
    P = di.numel()
    C_p = C[rk].unsqueeze(1)  # (P, 1, out)
    cast = {r: (l[di].to(dtype), u[di].to(dtype)) for r, (l, u) in pre.items()}
    sp = {r: s[di].to(dtype) for r, s in split.items()}
    params = {("a", r): a[di, rk].unsqueeze(1).to(dtype).clone() for r, a in alphas0.items()}
    params.update({("b", r): b[di, rk].unsqueeze(1).to(dtype).clone() for r, b in betas0.items() if r in split})
    errs_o = dataclasses.replace(errs, rounding=[e.to(dtype) for e in errs.rounding])
    slack = errs.spec_slack(C_p).squeeze(1).to(dtype)  # (P,): the float64 slack (the betas' share left out)
    best_v = torch.full((P,), -torch.inf, dtype=dtype)
    best_p = {key: p.clone() for key, p in params.items()}
    moments = {key: (torch.zeros_like(p), torch.zeros_like(p)) for key, p in params.items()}
    act = torch.arange(P)  # the pairs still in the batch
    parts = {r: net_o.layers[r].relaxation_parts(l.unsqueeze(1), u.unsqueeze(1)) for r, (l, u) in cast.items()}
    cur = {"C": C_p.to(dtype), "pre": cast, "split": sp, "slack": slack, "parts": parts}
    lo_p, hi_p = lo.expand(n, -1)[di], hi.expand(n, -1)[di]  # (P, in): each pair's box
    lo_o, hi_o = lo_p.to(dtype), hi_p.to(dtype)
    taken = 0
    for it in range(steps + 1):
        leaves = {key: p.requires_grad_(True) for key, p in params.items()}
        with torch.enable_grad():
            a = {r: leaves[("a", r)] for r in alphas0}
            b = {r: leaves[("b", r)] for r in split if ("b", r) in leaves}
            bound, _, _ = spec_backward(net_o, cur["C"], lo_o[act], hi_o[act], cur["pre"], a,
                                        b, cur["split"], parts=cur["parts"])
            bound = bound.squeeze(1)
            loss = -bound.sum()
        with torch.no_grad():
            if it == 0:  # the rounding charge at the starting parameters, held fixed through the steps
                charged, _, _ = spec_backward(net_o, cur["C"], lo_o[act], hi_o[act], cur["pre"],
                                              a, b, cur["split"], errs_o, cur["parts"])
                cur["slack"] = cur["slack"] + bound.detach() - charged.squeeze(1)
            value = bound.detach() - cur["slack"]
            better = value > best_v[act]
            if bool(better.all()):
                best_v[act] = value
                for key, p in params.items():
                    best_p[key][act] = p.detach()
            elif bool(better.any()):
                won = act[better]
                best_v[won] = value[better]
                for key, p in params.items():
                    best_p[key][won] = p.detach()[better]
            view = torch.full((n, k), -torch.inf, dtype=torch.float64)
            view[di, rk] = best_v.double()
            keep = still_open(view)[di[act], rk[act]]
        if it == steps or not bool(keep.any()) or time.perf_counter() >= deadline or not leaves:
            # (no slopes and no multipliers, e.g. a net without ReLUs: the bound is already exact)
            taken = it
            break  # the last evaluation needs no step; nor do pairs all proven, or a late batch
        grads = torch.autograd.grad(loss, list(leaves.values()))
        with torch.no_grad():
            for (key, p), g in zip(leaves.items(), grads):
                p = adam_step(p, g, *moments[key], it + 1, lr)
                params[key] = p.clamp_(0.0, 1.0) if key[0] == "a" else p.clamp_(min=0.0)
            if not bool(keep.all()):  # the proven pairs leave the batch, with their moments
                idx = torch.nonzero(keep).flatten()
                act = act[idx]
                params = {key: p[idx] for key, p in params.items()}
                moments = {key: (m1[idx], m2[idx]) for key, (m1, m2) in moments.items()}
                cur = {"C": cur["C"][idx], "pre": {r: (l[idx], u[idx]) for r, (l, u) in cur["pre"].items()},
                       "split": {r: s[idx] for r, s in cur["split"].items()}, "slack": cur["slack"][idx],
                       "parts": {r: tuple(t[idx] for t in pr) for r, pr in cur["parts"].items()}}
    a64 = {r: best_p[("a", r)].double() for r in alphas0}
    b64 = {r: best_p[("b", r)].double() for r in split if ("b", r) in best_p}
    pre64 = {r: (l[di], u[di]) for r, (l, u) in pre.items()}
    split64 = {r: s[di].double() for r, s in split.items()}
    final, _, _ = spec_backward(net64, C_p, lo_p, hi_p, pre64, a64, b64, split64, errs)
    lb[di, rk] = (final - errs.spec_slack(C_p, b64)).squeeze(1)
    for r in alphas0:
        out_a[r][di, rk] = best_p[("a", r)].squeeze(1).float()
    for r in out_b:
        if ("b", r) in best_p:
            out_b[r][di, rk] = best_p[("b", r)].squeeze(1).float()
    return lb, out_a, out_b, taken
