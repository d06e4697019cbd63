"""alpha-CROWN: CROWN with optimised ReLU lower slopes (Xu et al. 2021, "Fast and Complete:
Enabling Complete Neural Network Verification with Rapid and Massively Parallel Incomplete
Verifiers", Sec. 3.1; the slopes are the ``alpha`` of their Eq. 4).

For an unstable ReLU, ``relu(z) >= alpha z`` holds for every ``alpha`` in [0, 1], so a CROWN
bound computed with any such slopes is valid, and the bound is a differentiable function of the
slopes. The slopes are optimised by projected gradient ascent (Adam, projection = clipping to
[0, 1]) from CROWN's adaptive choice, and the best value seen for each bounded quantity is kept
(each one valid, so the element-wise best is valid too).

Slopes:

* final bound (rows ``[C; -C]``, i.e. lower and upper bounds of ``C y``): one slope per
  (sample, specification row, ReLU neuron), as in Xu et al.;
* intermediate bounds: ``intermediate="per-row"``: one slope per (sample, target neuron,
  side (lower/upper), ReLU neuron), as auto_LiRPA does; ``"shared"``: one slope per (sample,
  target layer, side, ReLU neuron), shared by the neurons of the target layer (far less memory);
  ``"auto"`` (default): per target layer, per-row when one sample's slopes for all its neurons
  would fit ``alpha_memory_mb``, else shared (only the unstable ones are allocated);
  ``"fixed"``: CROWN's intermediate bounds are kept (cheapest).
  Only target neurons unstable after CROWN (in some sample of the batch) are re-bounded: the
  relaxation of a stable neuron does not depend on its bounds. The intermediate bounds are
  recomputed at every iteration (so the final bound sees the tightened pre-activation bounds)
  and optimised only through the final objective, as in auto_LiRPA.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch

from robustkit.bounds.adam import adam_step
from robustkit.bounds.crown import (
    CrownConfig,
    SpecBounds,
    as_box,
    check_spec,
    crown_bounds,
    intersect,
    interval_spec,
    layer_bounds,
    needs_backward,
    pre_bounds,
    refresh,
    spec_bounds_from,
    spec_lower,
)
from robustkit.bounds.floaterr import FloatErrors, outward
from robustkit.bounds.types import NetBounds
from robustkit.network import Network

logger = logging.getLogger(__name__)

INTERMEDIATE_MODES = ("auto", "per-row", "shared", "fixed")


@dataclass(frozen=True)
class AlphaCrownConfig:
    """Optimiser settings: ``iterations`` Adam steps of size ``lr`` (multiplied by ``lr_decay``
    after each step); ``intermediate``: one of ``INTERMEDIATE_MODES`` (see the module docstring);
    ``alpha_memory_mb``: in ``"auto"`` mode, the most that the per-row slopes of one target layer
    may take for one sample if all its neurons were unstable; ``optimise_dtype``: the arithmetic of
    the Adam steps. ``float32`` (about half the time of ``float64`` on the CIFAR conv nets) only
    steers the slopes: one float64 pass with the last slopes gives every bound returned, and the
    float32 values are never used as bounds; ``float64`` keeps the best value of each bound over
    all the steps."""

    iterations: int = 30
    lr: float = 0.1
    lr_decay: float = 0.98
    intermediate: str = "auto"
    alpha_memory_mb: float = 512.0
    optimise_dtype: str = "float32"
    crown: CrownConfig = CrownConfig()

    def __post_init__(self) -> None:
        if self.optimise_dtype not in ("float32", "float64"):
            raise ValueError(f"optimise_dtype must be float32 or float64, got {self.optimise_dtype!r}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ValueError(f"need lr > 0 and 0 < lr_decay <= 1, got {self.lr}, {self.lr_decay}")
        if self.intermediate not in INTERMEDIATE_MODES:
            raise ValueError(f"intermediate must be one of {INTERMEDIATE_MODES}, got {self.intermediate!r}")


def alpha_crown_bounds(
    net: Network,
    lower: torch.Tensor,
    upper: torch.Tensor,
    C: torch.Tensor | None = None,
    config: AlphaCrownConfig = AlphaCrownConfig(),
    base: NetBounds | None = None,
    time_budget: float | None = None,
    crown_result: tuple[NetBounds, SpecBounds | None] | None = None,
) -> tuple[NetBounds, SpecBounds | None]:
    """alpha-CROWN bounds of every layer and of ``C y`` (or of the output, without ``C``).

    Starts from CROWN (intersected with ``base`` when given; ``crown_result``: CROWN's bounds for
    this same box and ``C`` when already computed), so every bound is at least as tight as
    CROWN's; stops early when ``time_budget`` seconds are spent. Valid for the float32 network
    like CROWN's (the same error model)."""
    start = time.perf_counter()
    lo, hi = as_box(lower, upper)
    batch = lo.shape[0]
    C = check_spec(net, C, batch)
    if crown_result is None:
        crown_result = crown_bounds(net, lo, hi, C, config.crown, base)
    crown_nb, crown_spec = crown_result
    if (crown_spec is None) != (C is None):
        raise ValueError("crown_result must have spec bounds exactly when C is given")
    eye = torch.eye(net.out_dim, dtype=torch.float64).unsqueeze(0).expand(batch, -1, -1)
    spec = C if C is not None else eye
    k = spec.shape[1]
    rows = torch.cat([spec, -spec], dim=1)  # lower bounds of these = [lower of C y; -upper of C y]

    optim = _Optimiser(net, lo, hi, crown_nb, rows, config)
    best = optim.run(start, time_budget)
    with torch.no_grad():
        return _finish(net, optim.bounds(), best, k, C, crown_nb, crown_spec)


def _finish(
    net: Network, out: NetBounds, best: torch.Tensor, k: int, C: torch.Tensor | None, crown_nb: NetBounds,
    crown_spec: SpecBounds | None,
) -> tuple[NetBounds, SpecBounds | None]:
    """Move the best bounds of the rows ``[C; -C]`` outward by the float64 slack and intersect
    everything with CROWN's."""
    eye = torch.eye(net.out_dim, dtype=torch.float64).unsqueeze(0).expand(best.shape[0], -1, -1)
    errs = crown_nb.float_errors(net)
    half = eye if C is None else C
    slack = errs.spec_slack(half)
    low, up = outward(best[:, :k], -best[:, k:], slack)
    if C is None:
        low, up = intersect(low, up, crown_nb.lower[-1], crown_nb.upper[-1])
        out.lower[-1], out.upper[-1] = intersect(out.lower[-1], out.upper[-1], low, up)
        return out, None
    final = spec_bounds_from(net, out, eye, "alpha-crown")
    out.lower[-1], out.upper[-1] = intersect(out.lower[-1], out.upper[-1], final.lower, final.upper)
    assert crown_spec is not None
    low, up = intersect(low, up, crown_spec.lower, crown_spec.upper)
    low, up = intersect(low, up, *interval_spec(net, out, C))
    return out, SpecBounds(low, up, "alpha-crown")


@dataclass(frozen=True)
class _Arith:
    """Everything a bound computation reads, in one dtype: the network, the box, the fixed
    pre-activation bounds, the float error model, the reference bounds and the rows."""

    net: Network
    lo: torch.Tensor
    hi: torch.Tensor
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]]
    errs: FloatErrors
    base_lower: list[torch.Tensor]
    base_upper: list[torch.Tensor]
    rows: torch.Tensor

    def cast(self, dtype: torch.dtype) -> "_Arith":
        """The same in ``dtype`` (the float32 network: a copy with float32 weights)."""
        if dtype == self.lo.dtype:
            return self
        net = self.net.to_torch().to(dtype).net

        def to(ts: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.to(dtype) for t in ts]

        errs = replace(self.errs, rounding=to(self.errs.rounding), slack=to(self.errs.slack))
        pre = {r: (l.to(dtype), u.to(dtype)) for r, (l, u) in self.pre.items()}
        return _Arith(net, self.lo.to(dtype), self.hi.to(dtype), pre, errs, to(self.base_lower),
                      to(self.base_upper), self.rows.to(dtype))


class _Optimiser:
    """The slopes, one optimisation run, and the best bounds seen."""

    def __init__(
        self, net: Network, lo: torch.Tensor, hi: torch.Tensor, base: NetBounds, rows: torch.Tensor,
        config: AlphaCrownConfig,
    ) -> None:
        self.net, self.lo, self.hi, self.base, self.rows, self.config = net, lo, hi, base, rows, config
        self.fixed_pre = pre_bounds(net, base)
        self.errs = base.float_errors(net)
        self.exact = _Arith(net, lo, hi, self.fixed_pre, self.errs, list(base.lower), list(base.upper), rows)
        # the operators whose relaxation has a parameter (not Sigmoid/Tanh)
        self.relus = [r for r in net.activation_indices if net.layers[r].optimisable]  # type: ignore[attr-defined]
        # targets: linear layers feeding a ReLU whose bounds come from a backward pass, with the
        # neurons unstable in some sample (``rows``) and where (``mask``)
        self.targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for r in self.relus:
            if r >= 1 and needs_backward(net, r - 1) and config.intermediate != "fixed":
                l, u = self.fixed_pre[r]
                _, _, unstable = net.layers[r].phases(l, u)
                cols = torch.nonzero(unstable.any(dim=0)).flatten()
                if cols.numel():
                    self.targets[r - 1] = (cols, unstable[:, cols])
        self.best_inter = {t: (base.lower[t].clone(), base.upper[t].clone()) for t in self.targets}
        m = rows.shape[1]
        self.final_alpha = {
            r: self._alpha0(r).unsqueeze(1).expand(-1, m, -1).clone().requires_grad_(True)
            for r in self.relus
        }
        self.inter_alpha: dict[int, dict[int, torch.Tensor]] = {}
        for t, (cols, _) in self.targets.items():
            per_row = self._per_row(t)
            group = {}
            for r in self.relus:
                if r < t:
                    a = self._alpha0(r).unsqueeze(1)
                    a = a.unsqueeze(2).expand(-1, 2, cols.numel(), -1) if per_row else a.expand(-1, 2, -1)
                    group[r] = a.clone().requires_grad_(True)
            self.inter_alpha[t] = group
        logger.debug("alpha-CROWN intermediate slopes (target: rows, per-row): %s",
                     {t: (int(c.numel()), self._per_row(t)) for t, (c, _) in self.targets.items()})
        self.best = torch.full(rows.shape[:2], -torch.inf, dtype=torch.float64)

    def _alpha0(self, r: int) -> torch.Tensor:
        """CROWN's choice of the operator at ``r``'s relaxation parameters, where the steps start."""
        return self.net.layers[r].default_alpha(*self.fixed_pre[r])  # type: ignore[attr-defined]

    def _per_row(self, t: int) -> bool:
        """Per-row slopes for target layer ``t``? In ``"auto"`` mode decided from the layer sizes
        alone (so that a box gets the same slopes alone or in any batch)."""
        mode = self.config.intermediate
        if mode != "auto":
            return mode == "per-row"
        dims = sum(self.net.layers[r].in_dim for r in self.relus if r < t)
        size = 2 * self.net.layers[t].out_dim * dims * 8 * 4  # slopes, gradient, 2 Adam moments
        return size <= self.config.alpha_memory_mb * 2**20

    def parameters(self) -> list[torch.Tensor]:
        params = list(self.final_alpha.values())
        for group in self.inter_alpha.values():
            params += list(group.values())
        return params

    def _forward(self, ar: _Arith, track: bool = True) -> torch.Tensor:
        """One bound computation with the current slopes in the arithmetic ``ar``; with
        ``track``, the best intermediate bounds are updated (float64 passes only)."""
        pre = dict(ar.pre)
        for r in self.relus:
            t = r - 1
            if t not in self.targets:
                continue
            cols, mask = self.targets[t]
            alphas = {q: a.to(ar.lo.dtype) for q, a in self.inter_alpha[t].items()}
            l, u = layer_bounds(ar.net, t, cols, ar.lo, ar.hi, pre, self.config.crown.memory_mb, alphas, ar.errs)
            l, u = outward(l, u, ar.errs.slack[t][:, cols])
            # The value used is the intersection with CROWN's bounds (which may come from interval
            # arithmetic), the gradient the one of the new bound (straight through): a bound worse
            # than the reference would pass no gradient to its slopes, which could never catch up.
            cl, cu = ar.base_lower[t], ar.base_upper[t]
            il, iu = intersect(l, u, cl[:, cols], cu[:, cols])
            l = l + (il - l).detach()
            u = u + (iu - u).detach()
            l = torch.where(mask, l, cl[:, cols])  # neurons stable in a sample keep their bounds there
            u = torch.where(mask, u, cu[:, cols])
            full_l = cl.index_copy(1, cols, l)
            full_u = cu.index_copy(1, cols, u)
            if track:
                bl, bu = self.best_inter[t]
                self.best_inter[t] = intersect(bl, bu, full_l.detach(), full_u.detach())
            pre[r] = (full_l, full_u)
        final = {q: a.to(ar.lo.dtype) for q, a in self.final_alpha.items()}
        return spec_lower(ar.net, ar.rows, ar.lo, ar.hi, pre, final, ar.errs)

    def run(self, start: float, time_budget: float | None) -> torch.Tensor:
        """Optimise the slopes (in ``optimise_dtype``); returns the best float64 bounds of the rows."""
        params = self.parameters()
        if self.config.iterations == 0 or not params:
            with torch.no_grad():
                self.best = self._forward(self.exact)
            return self.best
        exact = self.config.optimise_dtype == "float64"
        ar = self.exact if exact else self.exact.cast(torch.float32)
        if not exact:  # the slopes themselves in float32: no cast in the steps
            for p in params:
                p.data = p.data.float()
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        for it in range(self.config.iterations):
            bound = self._forward(ar, track=exact)
            if exact:
                self.best = torch.fmax(self.best, bound.detach())
            if time_budget is not None and time.perf_counter() - start > time_budget:
                logger.info("alpha-CROWN: time budget reached after %d iterations", it + 1)
                break
            if it == self.config.iterations - 1 and exact:
                break  # the last evaluation needs no step
            grads = torch.autograd.grad(-bound.sum(), params, allow_unused=True)
            lr = self.config.lr * self.config.lr_decay ** it
            with torch.no_grad():
                for p, g, (m1, m2) in zip(params, grads, moments):
                    if g is not None:  # in place: the slope dicts hold these tensors
                        p.copy_(adam_step(p, g, m1, m2, it + 1, lr).clamp_(0.0, 1.0))
        if not exact:  # the bounds: one float64 pass with the slopes reached
            for p in params:
                p.data = p.data.double()
            with torch.no_grad():
                self.best = torch.fmax(self.best, self._forward(self.exact))
        return self.best

    def bounds(self) -> NetBounds:
        """``base`` with the best intermediate bounds, refreshed by interval arithmetic."""
        out = NetBounds(
            self.base.input_lower, self.base.input_upper, list(self.base.lower), list(self.base.upper), "alpha-crown",
            self.errs,
        )
        for t, (l, u) in self.best_inter.items():
            out.lower[t], out.upper[t] = l, u
        out = refresh(self.net, out)
        out.slopes = self.slopes()
        return out

    def slopes(self) -> dict[int, dict[int, torch.Tensor]]:
        """The current intermediate slopes, per target layer at full size (per-row slopes of the
        target neurons that were stable are 0: they are never bounded again)."""
        out: dict[int, dict[int, torch.Tensor]] = {}
        for t, group in self.inter_alpha.items():
            cols, _ = self.targets[t]
            full = {}
            for r, a in group.items():
                a = a.detach()
                if a.dim() == 4:
                    z = torch.zeros(a.shape[0], 2, self.net.layers[t].out_dim, a.shape[-1], dtype=a.dtype)
                    z[:, :, cols] = a
                    a = z
                full[r] = a.clone()
            out[t] = full
        return out
