"""ReLU and LeakyReLU: one kink at 0 (:mod:`robustkit.network.activations` states the contract).

ReLU ``max(z, 0)`` is exact in float arithmetic. Over pre-activation bounds ``[l, u]`` a neuron
is stably active (``l >= 0``: ``relu(z) = z``), stably inactive (``u <= 0``: 0) or unstable:
CROWN's relaxation (Zhang et al. 2018) ``alpha z <= relu(z) <= u (z - l) / (u - l)`` with
``alpha`` in [0, 1]; the MILP of Tjeng, Xiao & Tedrake (2019, Eq. 5) ``a >= 0, a >= z,
a <= u d, a <= z - l (1 - d)`` with ``d`` binary; the LP the triangle (Ehlers 2017).

LeakyReLU ``z`` for ``z >= 0``, ``alpha z`` below (ONNX ``LeakyRelu``, ``0 <= alpha <= 1``): the
same shape with slope ``alpha`` on the left: lower lines ``s z`` for any ``s`` in
``[alpha, 1]``, the upper chord through ``(l, alpha l)`` and ``(u, u)``; one binary per unstable
neuron. Its negative piece rounds (``fl(alpha z)``): its float error is charged like a linear
layer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from robustkit.network.activations import Activation
from robustkit.network.encoding import ZERO, RowBuilder, chord_slack
from robustkit.network.floatfmt import FLOAT32, FloatFormat


@dataclass(frozen=True, eq=False)
class ReLU(Activation):
    """Elementwise ``max(x, 0)``; where ``identity`` (bool, ``(dim,)``) is set, ``x`` itself."""

    is_relu: ClassVar[bool] = True

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity is None:
            return torch.relu(x)
        return torch.where(self.identity.to(x.device), x, torch.relu(x))

    def surrogate(self, x: torch.Tensor, slope: float) -> torch.Tensor:
        leaky = _LeakyGradReLU.apply(x, slope)
        return leaky if self.identity is None else torch.where(self.identity.to(x.device), x, leaky)

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.identity is None:
            return torch.relu(lower), torch.relu(upper)
        ident = self.identity.to(lower.device)
        return torch.where(ident, lower, torch.relu(lower)), torch.where(ident, upper, torch.relu(upper))

    # -- pieces --------------------------------------------------------------------------------
    def phases(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(active, inactive, unstable)``: ``active`` includes the identity coordinates (output =
        input), ``inactive`` means output 0, ``unstable`` the ReLUs that need a relaxation or a
        split. Use ``active & relu_mask`` where a constraint ``x >= 0`` is meant."""
        active = lower >= 0
        inactive = upper <= 0
        if self.identity is not None:
            ident = self.identity.to(lower.device)
            active = active | ident
            inactive = inactive & ~ident
        inactive = inactive & ~active
        return active, inactive, ~(active | inactive)

    def unstable(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        return self.phases(lower, upper)[2]

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        d = (z > 0).to(z.dtype)  # 0 at the kink, as torch's relu
        return d if self.identity is None else torch.where(self.identity.to(z.device), torch.ones_like(d), d)

    def undecided(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        return self.unstable(lower, upper).unsqueeze(-1)

    def piece(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        active = self.phases(lower, upper)[0]
        return active.to(lower.dtype), torch.zeros_like(lower)

    def _constant(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        return self.phases(lower, upper)[1]

    def needs_input(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        return (upper > 0) | ~self.relu_mask.numpy()

    # -- relaxation ------------------------------------------------------------------------------
    def relaxation(
        self, lower: torch.Tensor, upper: torch.Tensor, alpha: torch.Tensor | None = None,
        parts: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slopes ``(lam_lower, lam_upper, mu_upper)``: ``lam_lower z <= relu(z) <= lam_upper z +
        mu_upper``. Unstable: the upper chord ``u (z - l) / (u - l)`` and lower slope ``alpha``
        (default CROWN's adaptive 1 if ``u >= -l`` else 0); active and identity coordinates: 1, 1,
        0; inactive: 0, 0, 0."""
        unstable, fixed, lam_u, mu_u = self.relaxation_parts(lower, upper) if parts is None else parts
        if alpha is None:
            alpha = (upper >= -lower).to(upper.dtype)
        return torch.where(unstable, alpha, fixed), lam_u, mu_u

    def relaxation_parts(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The unstable mask, the lower slope of the others (1 active, 0 inactive), ``lam_upper``
        and ``mu_upper``."""
        active, _, unstable = self.phases(lower, upper)
        width = torch.where(unstable, upper - lower, torch.ones_like(upper))
        lam_u = torch.where(unstable, upper / width, active.to(upper.dtype))
        mu_u = torch.where(unstable, -lam_u * lower, torch.zeros_like(lower))
        return unstable, active.to(upper.dtype), lam_u, mu_u

    def linear_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, alpha: torch.Tensor | None = None,
        parts: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        lam_l, lam_u, mu_u = self.relaxation(lower, upper, alpha, parts)
        return lam_l, torch.zeros_like(mu_u), lam_u, mu_u

    def backward_step(self, A: torch.Tensor, c: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                      alpha: torch.Tensor | None = None, parts: tuple[torch.Tensor, ...] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        lam_l, lam_u, mu_u = self.relaxation(lower, upper, alpha, parts)
        neg = A.clamp(max=0)
        return A.clamp(min=0) * lam_l + neg * lam_u, c + (neg * mu_u).sum(-1)  # no lower intercept

    def split_terms(self, A: torch.Tensor, c: torch.Tensor, betas: torch.Tensor, signs: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        return A - betas * signs.unsqueeze(1), c  # the breakpoint is 0

    def torch_modules(self, dtype: torch.dtype = torch.float32) -> list[torch.nn.Module]:
        if self.identity is not None:
            return super().torch_modules(dtype)
        return [torch.nn.ReLU()]

    def symbolic_step(self, mid: torch.Tensor, rad: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                      min_u: torch.Tensor, max_l: torch.Tensor, lower_slope: str = "adaptive"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Neurify's tighter upper relaxation: ``relu(z) <= relu(U)``, and ``U >= p = max(l, min U)``
        on the box, so the chord over ``[p, u]`` bounds it (``U`` itself where ``p >= 0``); lower
        ``alpha L`` with ``alpha`` adaptive on ``L``'s range (``lower_slope``: ``adaptive``,
        ``crown``: CROWN's on ``[l, u]``, ``parallel``: the chord's slope of ``L``'s range)."""
        active, _, unstable = self.phases(lower, upper)
        l, u = lower, upper
        lo_f, up_f = mid - rad, mid + rad
        p = torch.maximum(l, min_u)
        keep_u = unstable & (p >= 0)  # U >= 0 on the box: relu(z) <= U itself
        chord = unstable & ~keep_u
        width = torch.where(chord, u - p, torch.ones_like(u))
        lam_u = torch.where(chord, u / width, (active | keep_u).to(u.dtype))
        mu_u = torch.where(chord, -lam_u * p, torch.zeros_like(p))
        if lower_slope == "parallel":
            span = torch.where(unstable & (max_l > 0), max_l - l, torch.ones_like(l))
            alpha = torch.where(max_l > 0, (max_l / span).clamp(0.0, 1.0), torch.zeros_like(l))
        elif lower_slope == "crown":
            alpha = (u >= -l).to(l.dtype)
        else:
            alpha = ((max_l > 0) & (max_l >= -l)).to(l.dtype)
        lam_l = torch.where(unstable, alpha, active.to(l.dtype))
        new_lo = lo_f * lam_l.unsqueeze(1)
        new_up = up_f * lam_u.unsqueeze(1)
        new_up[:, -1] = new_up[:, -1] + mu_u
        return (new_up + new_lo) / 2, (new_up - new_lo) / 2

    # -- encodings -------------------------------------------------------------------------------
    def encode(self, builder: RowBuilder, z: np.ndarray, lower: np.ndarray, upper: np.ndarray, acc: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        act, inact, _ = (m.numpy() for m in self.phases(torch.from_numpy(lower), torch.from_numpy(upper)))
        inactive = inact | (z == ZERO)
        active = act & ~inactive  # includes the identity (carried) coordinates: the same column
        unstable = np.flatnonzero(~inactive & ~active)
        out = np.where(inactive, ZERO, z).astype(np.int64)
        out_acc = np.where(inactive, 0.0, acc)
        k = unstable.size
        if k:
            l, u, zc, acc_z = lower[unstable], upper[unstable], z[unstable], acc[unstable]
            a = builder.add_cols(np.zeros(k), u, scale=u)
            relu_rows(builder, a, zc, l, u, acc_z, 0.0)
            out[unstable] = a
            out_acc[unstable] = 0.0  # their own columns are the float ReLU outputs
        return out, out_acc


def relu_rows(builder: RowBuilder, a: np.ndarray, z: np.ndarray, l: np.ndarray, u: np.ndarray, acc: np.ndarray,
              shift: np.ndarray | float) -> None:
    """Rows making ``a = relu(z' - shift)`` for the columns ``z`` (``z'`` their float values, within
    ``acc``; ``l``/``u``: bounds of ``z'``, with ``l < shift < u``): Tjeng et al.'s
    ``a >= z - shift``, ``a <= (u - shift) d``, ``a <= z - shift - (l - shift)(1 - d)`` with ``d``
    binary (``a >= 0`` is the column's bound), or the triangle's chord when the builder is not
    integer."""
    k = a.size
    r = np.arange(k)
    lo_s, up_s = l - shift, u - shift
    scale = np.maximum(-lo_s, up_s)
    if builder.integer:
        d = builder.add_cols(np.zeros(k), np.ones(k), integer=True)
        # a - z >= -acc - shift ; a - u' d <= 0 ; a - z - l' d <= acc - l' - shift
        rows = np.concatenate([r, r, k + r, k + r, 2 * k + r, 2 * k + r, 2 * k + r])
        cols = np.concatenate([a, z, a, d, a, z, d])
        vals = np.concatenate([np.ones(k), -np.ones(k), np.ones(k), -up_s, np.ones(k), -np.ones(k), -lo_s])
        lower = np.concatenate([-acc - shift, np.full(k, -np.inf), np.full(k, -np.inf)])
        upper = np.concatenate([np.full(k, np.inf), np.zeros(k), acc - lo_s - shift])
        builder.add_rows(rows, cols, vals, lower, upper, np.tile(scale, 3))
        return
    s = up_s / (up_s - lo_s)  # the chord a <= s (z' - l), z' <= z + acc
    rows = np.concatenate([r, r, k + r, k + r])
    cols = np.concatenate([a, z, a, z])
    vals = np.concatenate([np.ones(k), -np.ones(k), np.ones(k), -s])
    lower = np.concatenate([-acc - shift, np.full(k, -np.inf)])
    upper = np.concatenate([np.full(k, np.inf), s * (acc - l) + chord_slack(s, up_s - lo_s, up_s + s * np.abs(shift))])
    builder.add_rows(rows, cols, vals, lower, upper, np.tile(scale, 2))


@dataclass(frozen=True, eq=False)
class LeakyReLU(Activation):
    """``z`` for ``z >= 0``, ``alpha z`` below (ONNX ``LeakyRelu``), ``0 <= alpha <= 1``."""

    slope: float = 0.01
    fmt: FloatFormat = FLOAT32
    rounds: ClassVar[bool] = True  # fl(alpha z) rounds: charged like a linear layer's rounding

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.slope <= 1.0:
            raise ValueError(f"LeakyReLU: slope must lie in [0, 1], got {self.slope}")

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)

    def torch_modules(self, dtype: torch.dtype = torch.float32) -> list[torch.nn.Module]:
        if self.identity is not None:
            return super().torch_modules(dtype)
        return [torch.nn.LeakyReLU(self.slope)]

    def piece(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slope = torch.where(lower >= 0, torch.ones_like(lower), torch.full_like(lower, self.slope))
        ident = self._ident(lower)
        if ident is not None:
            slope = torch.where(ident, torch.ones_like(slope), slope)
        return slope, torch.zeros_like(lower)

    def linear_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, alpha: torch.Tensor | None = None,
        parts: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.slope
        unstable = self.unstable(lower, upper)
        fixed, _ = self.piece(lower, upper)
        width = torch.where(unstable, upper - lower, torch.ones_like(upper))
        chord = (upper - a * lower) / width  # through (l, a l) and (u, u)
        lam_u = torch.where(unstable, chord, fixed)
        mu_u = torch.where(unstable, a * lower - chord * lower, torch.zeros_like(lower))
        if alpha is None:
            alpha = self.default_alpha(lower, upper)
        lam_l = torch.where(unstable, a + alpha * (1 - a), fixed)  # any line s z, a <= s <= 1
        return lam_l, torch.zeros_like(lower), lam_u, mu_u

    def error_transfer(self, lower: torch.Tensor, upper: torch.Tensor, mag: torch.Tensor, acc: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # the negative piece rounds a z once, and may see z (below daz) as 0
        neg = torch.clamp(-lower, min=0)
        fmt = self.fmt
        e = torch.where(lower < 0, fmt.unit * self.slope * neg + fmt.eta + self.slope * fmt.daz, torch.zeros_like(lower))
        ident = self._ident(lower)
        if ident is not None:
            e = torch.where(ident, torch.zeros_like(e), e)
        return e, mag + e, acc + e  # 1-Lipschitz (slope <= 1)

    def encode(self, builder: RowBuilder, z: np.ndarray, lower: np.ndarray, upper: np.ndarray, acc: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        a = self.slope
        real = self.relu_mask.numpy()
        t_lo, t_up = torch.from_numpy(lower), torch.from_numpy(upper)
        e = self.error_transfer(t_lo, t_up, t_lo.abs(), torch.zeros_like(t_lo))[0].numpy()
        unstable = self.unstable(t_lo, t_up).numpy() & (z != ZERO)
        negative = real & (upper <= 0) & ~unstable & (z != ZERO)
        out = z.astype(np.int64).copy()
        out_acc = acc.copy()
        for idx, kind in ((np.flatnonzero(negative), "negative"), (np.flatnonzero(unstable), "unstable")):
            k = idx.size
            if not k:
                continue
            l, u, zc, acc_z = lower[idx], upper[idx], z[idx], acc[idx]
            y = builder.add_cols(np.minimum(a * l, l), np.maximum(u, a * u), scale=np.maximum(-l, u))
            r = np.arange(k)
            if kind == "negative":  # y = a z' (exact; its rounding e goes into out_acc)
                builder.add_rows(np.concatenate([r, r]), np.concatenate([y, zc]),
                                 np.concatenate([np.ones(k), np.full(k, -a)]), -a * acc_z, a * acc_z, np.abs(l))
            else:
                _leaky_rows(builder, y, zc, l, u, acc_z, a)
            out[idx] = y
            out_acc[idx] = e[idx]
        return out, out_acc


def _leaky_rows(builder: RowBuilder, y: np.ndarray, z: np.ndarray, l: np.ndarray, u: np.ndarray, acc: np.ndarray,
                a: float) -> None:
    """``y = max(z', a z')`` (``z'`` within ``acc`` of the columns ``z``, in ``[l, u]``, ``l < 0 < u``):
    ``y >= z'``, ``y >= a z'``, and with ``d`` binary ``y <= z' - (1 - a) l (1 - d)``,
    ``y <= a z' + (1 - a) u d``; or the chord ``y <= a l + c (z' - l)`` when not integer."""
    k = y.size
    r = np.arange(k)
    scale = np.maximum(-l, u)
    base_rows = np.concatenate([r, r, k + r, k + r])
    base_cols = np.concatenate([y, z, y, z])
    base_vals = np.concatenate([np.ones(k), -np.ones(k), np.ones(k), np.full(k, -a)])
    base_lo = np.concatenate([-acc, -a * acc])
    base_up = np.full(2 * k, np.inf)
    if builder.integer:
        d = builder.add_cols(np.zeros(k), np.ones(k), integer=True)
        rows = np.concatenate([base_rows, 2 * k + r, 2 * k + r, 2 * k + r, 3 * k + r, 3 * k + r, 3 * k + r])
        cols = np.concatenate([base_cols, y, z, d, y, z, d])
        vals = np.concatenate([base_vals, np.ones(k), -np.ones(k), -(1 - a) * l, np.ones(k), np.full(k, -a),
                               -(1 - a) * u])
        lower = np.concatenate([base_lo, np.full(2 * k, -np.inf)])
        upper = np.concatenate([base_up, acc - (1 - a) * l, a * acc])
        builder.add_rows(rows, cols, vals, lower, upper, np.tile(scale, 4))
        return
    c = (u - a * l) / (u - l)
    rows = np.concatenate([base_rows, 2 * k + r, 2 * k + r])
    cols = np.concatenate([base_cols, y, z])
    vals = np.concatenate([base_vals, np.ones(k), -c])
    lower = np.concatenate([base_lo, np.full(k, -np.inf)])
    upper = np.concatenate([base_up, a * l - c * l + c * acc + chord_slack(c, u - l, u + np.abs(a * l))])
    builder.add_rows(rows, cols, vals, lower, upper, np.tile(scale, 3))


class _LeakyGradReLU(torch.autograd.Function):
    """``relu(x)`` forward; backward scales the gradient by 1 where ``x > 0``, else by ``slope``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        ctx.slope = slope
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        scale = torch.where(x > 0, torch.ones_like(x), torch.full_like(x, ctx.slope))
        return grad * scale, None
