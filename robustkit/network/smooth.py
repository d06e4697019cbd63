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

import torch

from robustkit.network.layers import Activation

ACT_ERROR = 1e-5  # bound on |onnxruntime float32 f(x) - f(x)|, with a wide margin over the 3.1e-7 seen
_F64 = 1e-12  # relative float64 margin for the lines (their slopes and intercepts round)
_DEGENERATE = 1e-7  # narrower intervals get constant bounds


@dataclass(frozen=True, eq=False)
class SCurve(Activation):
    """ONNX ``Sigmoid`` (``kind="sigmoid"``) or ``Tanh`` (``kind="tanh"``), elementwise."""

    dim: int
    kind: str = "sigmoid"
    piecewise_linear = False

    def __post_init__(self) -> None:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.f(lower) - ACT_ERROR, self.f(upper) + ACT_ERROR

    def linear_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, alpha: torch.Tensor | None = None
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
        return lam_l, mu_l - margin, lam_u, mu_u + margin

    def error_transfer(self, lower: torch.Tensor, upper: torch.Tensor, mag: torch.Tensor, acc: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = torch.full_like(lower, ACT_ERROR)
        out = torch.maximum(self.f(lower).abs(), self.f(upper).abs()) + e
        return e, out, self.lipschitz * acc + e

    def describe(self) -> str:
        return f"{'Sigmoid' if self.kind == 'sigmoid' else 'Tanh'}({self.dim})"
