"""HardTanh / Clip: ``min(max(z, lo), hi)``, two kinks per neuron, exact in float arithmetic
(:mod:`robustkit.network.activations` states the contract).

Over pre-activation bounds ``[l, u]``:

* one piece (``u <= lo``: ``lo``; ``l >= hi``: ``hi``; ``lo <= l, u <= hi``: ``z``): exact;
* the kink at ``lo`` only (``l < lo < u <= hi``, convex): upper chord through ``(l, lo)`` and
  ``(u, u)``; lower lines ``lo + s (z - lo)``, ``s = alpha`` in ``[0, 1]``;
* the kink at ``hi`` only (``lo <= l < hi < u``, concave): lower chord through ``(l, l)`` and
  ``(u, hi)``; upper lines ``hi + s (z - hi)``, ``s = alpha``;
* both (``l < lo``, ``u > hi``): lower ``lo + s (z - lo)`` with ``0 <= s <= (hi - lo) / (u - lo)``
  (below ``lo`` on the left, below the concave right part at its ends), upper ``hi + s' (z - hi)``
  with ``0 <= s' <= (hi - lo) / (hi - l)``; ``alpha`` scales both slopes.

MILP/LP: ``clip(z) = lo + relu(z - lo) - relu(z - hi)``: one ReLU encoding (a binary, or the
triangle) per undecided kink, and the output column tied to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robustkit.network.activations import Activation
from robustkit.network.encoding import ZERO, RowBuilder
from robustkit.network.relu import relu_rows


@dataclass(frozen=True, eq=False)
class HardTanh(Activation):
    """``min(max(z, lo), hi)`` (ONNX Clip with constant bounds, HardTanh, ReLU6), ``lo < hi``."""

    lo: float = -1.0
    hi: float = 1.0
    kinks = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"HardTanh: needs finite lo < hi, got [{self.lo}, {self.hi}]")

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.lo, self.hi)

    def torch_modules(self, dtype: torch.dtype = torch.float32) -> list[torch.nn.Module]:
        if self.identity is not None:
            return super().torch_modules(dtype)
        return [torch.nn.Hardtanh(self.lo, self.hi)]

    def kink_convexity(self) -> tuple[bool, ...]:
        return (True, False)  # turns up at lo, down at hi

    def breakpoints(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.lo, self.hi], dtype=like.dtype, device=like.device)

    def piece(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = upper <= self.lo
        high = lower >= self.hi
        slope = torch.where(low | high, torch.zeros_like(lower), torch.ones_like(lower))
        icpt = torch.where(low, torch.full_like(lower, self.lo),
                           torch.where(high, torch.full_like(lower, self.hi), torch.zeros_like(lower)))
        ident = self._ident(lower)
        if ident is not None:
            slope = torch.where(ident, torch.ones_like(slope), slope)
            icpt = torch.where(ident, torch.zeros_like(icpt), icpt)
        return slope, icpt

    def default_alpha(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        # the side of the interval in the linear piece is the longer: slope 1, else 0 (CROWN's choice)
        left = (upper - self.lo) >= (self.lo - lower)  # the kink at lo
        right = (self.hi - lower) >= (upper - self.hi)  # the kink at hi
        both = (lower < self.lo) & (upper > self.hi)
        return torch.where(both, torch.ones_like(lower), torch.where(lower < self.lo, left, right).to(lower.dtype))

    def linear_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, alpha: torch.Tensor | None = None,
        parts: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        lo, hi = self.lo, self.hi
        if alpha is None:
            alpha = self.default_alpha(lower, upper)
        alpha = torch.broadcast_to(alpha, torch.broadcast_shapes(alpha.shape, lower.shape))
        und = self.undecided(lower, upper)
        left, right = und[..., 0], und[..., 1]
        both = left & right
        slope, icpt = self.piece(lower, upper)
        lam_l, mu_l, lam_u, mu_u = slope.clone(), icpt.clone(), slope.clone(), icpt.clone()
        one = torch.ones_like(lower)
        # the kink at lo only (convex): upper chord (l, lo)-(u, u); lower lo + s (z - lo)
        w = torch.where(left, upper - lower, one)
        ch = (upper - lo) / w
        only_l = left & ~right
        lam_u = torch.where(only_l, ch, lam_u)
        mu_u = torch.where(only_l, lo - ch * lower, mu_u)
        lam_l = torch.where(only_l, alpha, lam_l)
        mu_l = torch.where(only_l, lo - alpha * lo, mu_l)
        # the kink at hi only (concave): lower chord (l, l)-(u, hi); upper hi + s (z - hi)
        w = torch.where(right, upper - lower, one)
        ch = (hi - lower) / w
        only_r = right & ~left
        lam_l = torch.where(only_r, ch, lam_l)
        mu_l = torch.where(only_r, lower - ch * lower, mu_l)
        lam_u = torch.where(only_r, alpha, lam_u)
        mu_u = torch.where(only_r, hi - alpha * hi, mu_u)
        # both kinks: lines through (lo, lo) and (hi, hi) with their largest valid slopes scaled
        s_l = alpha * (hi - lo) / torch.where(both, upper - lo, one)
        s_u = alpha * (hi - lo) / torch.where(both, hi - lower, one)
        lam_l = torch.where(both, s_l, lam_l)
        mu_l = torch.where(both, lo - s_l * lo, mu_l)
        lam_u = torch.where(both, s_u, lam_u)
        mu_u = torch.where(both, hi - s_u * hi, mu_u)
        return lam_l, mu_l, lam_u, mu_u

    def encode(self, builder: RowBuilder, z: np.ndarray, lower: np.ndarray, upper: np.ndarray, acc: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.lo, self.hi
        t_lo, t_up = torch.from_numpy(lower), torch.from_numpy(upper)
        und = self.undecided(t_lo, t_up).numpy()
        slope, icpt = (t.numpy() for t in self.piece(t_lo, t_up))
        out = z.astype(np.int64).copy()
        out_acc = acc.copy()
        zero_in = z == ZERO
        # decided flat pieces (and a constant 0 input): a fixed column at the constant
        const = ~und.any(-1) & ((slope == 0) | zero_in) & self.relu_mask.numpy()
        if const.any():
            idx = np.flatnonzero(const)
            value = np.where(zero_in[idx], np.clip(0.0, lo, hi), icpt[idx])
            out[idx] = builder.add_cols(value, value)
            out_acc[idx] = 0.0
        live = und.any(-1) & ~zero_in
        idx = np.flatnonzero(live)
        if idx.size:
            l, u, zc, acc_z = lower[idx], upper[idx], z[idx], acc[idx]
            k = idx.size
            y = builder.add_cols(np.full(k, lo), np.full(k, hi), scale=np.maximum(np.abs(l), np.abs(u)))
            # y = lo + r1 - r2 (r_i = relu(z' - b_i), a constant 0 or z' - b_i where decided)
            r = np.arange(k)
            rows, cols, vals = [r], [y], [np.ones(k)]
            rhs = np.full(k, lo)
            tol = np.zeros(k)
            for kink, b in ((0, lo), (1, hi)):
                sign = -1.0 if kink == 0 else 1.0  # y - r1 + r2 = lo
                open_ = und[idx, kink]
                above = ~open_ & (l >= b)  # r = z' - b: the column z, within acc
                if open_.any():
                    j = np.flatnonzero(open_)
                    a = builder.add_cols(np.zeros(j.size), u[j] - b, scale=u[j] - b)
                    relu_rows(builder, a, zc[j], l[j], u[j], acc_z[j], b)
                    col = np.full(k, ZERO, dtype=np.int64)
                    col[j] = a
                    rows.append(r[j]), cols.append(col[j]), vals.append(np.full(j.size, sign))
                if above.any():
                    j = np.flatnonzero(above)
                    rows.append(r[j]), cols.append(zc[j]), vals.append(np.full(j.size, sign))
                    rhs[j] += sign * b
                    tol[j] += acc_z[j]
            builder.add_rows(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), rhs - tol, rhs + tol,
                             np.maximum(np.abs(l), np.abs(u)))
            out[idx] = y
            out_acc[idx] = 0.0
        return out, out_acc
