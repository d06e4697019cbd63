"""Sigmoid and Tanh: smooth S-shaped activations, for bound methods only.

Both are increasing, convex for ``x < 0`` and concave for ``x > 0``, with a derivative that
peaks at 0; the linear bounds over ``[l, u]`` (the CROWN relaxation of Zhang et al. 2018, Sec. 3.3):

* ``u <= 0`` (convex): the chord above, the tangent at the midpoint below;
* ``l >= 0`` (concave): the chord below, the tangent at the midpoint above;
* ``l < 0 < u``: two parallel lines through ``(l, f(l))`` and ``(u, f(u))`` with the slope
  ``min(f'(l), f'(u))``, the least slope on ``[l, u]`` (so ``f`` rises at least that fast);
* a (nearly) degenerate interval: the constants ``f(l)`` and ``f(u)``.

Float32: onnxruntime's Sigmoid and Tanh are within about 3e-7 of the exact function (measured on
a dense grid over [-40, 40]); every bound is moved outward by ``ACT_ERROR`` = 1e-5, plus a
float64 margin for the lines' own rounding. There is no exact MILP encoding, so complete methods
(MILP, branch and bound) do not apply to networks with these layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from robustkit.network.activations import Activation
from robustkit.network.encoding import RowBuilder

ACT_ERROR = 1e-5  # bound on |onnxruntime float32 f(x) - f(x)|, with a wide margin over the 3.1e-7 seen
_F64 = 1e-12  # relative float64 margin for the lines (their slopes and intercepts round)
_DEGENERATE = 1e-7  # narrower intervals get constant bounds


@dataclass(frozen=True, eq=False)
class SCurve(Activation):
    """ONNX ``Sigmoid`` (``kind="sigmoid"``) or ``Tanh`` (``kind="tanh"``), elementwise. Its float
    error (``ACT_ERROR``) is inside its interval and relaxation, not charged by the bound methods."""

    kind: str = "sigmoid"
    piecewise_linear: ClassVar[bool] = False
    kinks: ClassVar[int] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in ("sigmoid", "tanh"):
            raise ValueError(f"SCurve: kind must be 'sigmoid' or 'tanh', got {self.kind!r}")

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) if self.kind == "sigmoid" else torch.tanh(x)

    def df(self, x: torch.Tensor) -> torch.Tensor:
        y = self.f(x)
        return y * (1 - y) if self.kind == "sigmoid" else 1 - y * y

    @property
    def lipschitz(self) -> float:
        return 0.25 if self.kind == "sigmoid" else 1.0

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.f(lower) - ACT_ERROR, self.f(upper) + ACT_ERROR
        return self._carry(lower, lo), self._carry(upper, hi)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        d = self.df(z)
        ident = self._ident(z)
        return d if ident is None else torch.where(ident, torch.ones_like(d), d)

    @property
    def optimisable(self) -> bool:
        return False

    def unstable(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(lower, dtype=torch.bool)  # nothing to split

    def linear_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, alpha: torch.Tensor | None = None,
        parts: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        l, u = lower, torch.maximum(upper, lower)
        fl, fu = self.f(l), self.f(u)
        width = u - l
        flat = width < _DEGENERATE
        w = torch.where(flat, torch.ones_like(width), width)
        chord = (fu - fl) / w
        m = (l + u) / 2
        tan_k = self.df(m)
        tan_c = self.f(m) - tan_k * m
        par = torch.minimum(self.df(l), self.df(u))
        convex, concave = u <= 0, l >= 0
        lam_l = torch.where(convex, tan_k, torch.where(concave, chord, par))
        mu_l = torch.where(convex, tan_c, torch.where(concave, fl - chord * l, fl - par * l))
        lam_u = torch.where(convex, chord, torch.where(concave, tan_k, par))
        mu_u = torch.where(convex, fl - chord * l, torch.where(concave, tan_c, fu - par * u))
        zero = torch.zeros_like(l)
        lam_l, lam_u = torch.where(flat, zero, lam_l), torch.where(flat, zero, lam_u)
        mu_l, mu_u = torch.where(flat, fl, mu_l), torch.where(flat, fu, mu_u)
        margin = ACT_ERROR + _F64 * (1 + torch.maximum(l.abs(), u.abs()))
        lam_l, mu_l, lam_u, mu_u = lam_l, mu_l - margin, lam_u, mu_u + margin
        ident = self._ident(lower)
        if ident is not None:
            one, zero = torch.ones_like(lam_l), torch.zeros_like(mu_l)
            lam_l, mu_l = torch.where(ident, one, lam_l), torch.where(ident, zero, mu_l)
            lam_u, mu_u = torch.where(ident, one, lam_u), torch.where(ident, zero, mu_u)
        return lam_l, mu_l, lam_u, mu_u

    def error_transfer(self, lower: torch.Tensor, upper: torch.Tensor, mag: torch.Tensor, acc: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = torch.full_like(lower, ACT_ERROR)
        out = torch.maximum(self.f(lower).abs(), self.f(upper).abs()) + e
        acc_out = self.lipschitz * acc + e
        ident = self._ident(lower)
        if ident is not None:
            e = torch.where(ident, torch.zeros_like(e), e)
            out = torch.where(ident, mag, out)
            acc_out = torch.where(ident, acc, acc_out)
        return e, out, acc_out

    def torch_modules(self, dtype: torch.dtype = torch.float32) -> list[torch.nn.Module]:
        if self.identity is not None:
            return super().torch_modules(dtype)
        return [torch.nn.Sigmoid() if self.kind == "sigmoid" else torch.nn.Tanh()]

    def encode(self, builder: RowBuilder, z: np.ndarray, lower: np.ndarray, upper: np.ndarray, acc: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        raise TypeError(f"{self.describe()} has no exact MILP or LP encoding")

    def describe(self) -> str:
        name = "Sigmoid" if self.kind == "sigmoid" else "Tanh"
        return f"{name}({self.dim})" if self.identity is None else f"{name}({self.count} of {self.dim})"
