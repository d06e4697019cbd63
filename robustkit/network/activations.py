"""Elementwise nonlinear operators: the contract each one implements, and what it shares.

An :class:`Activation` maps ``dim`` values to ``dim`` values, one function per coordinate. It owns
every meaning robustkit gives it, so that the bound methods, the MILP and LP encoders, branch and
bound, its leaf LPs and the float model iterate over a network's layers and call these, never
asking which operator they hold:

* on numbers: :meth:`forward` (torch, any dtype, differentiable), :meth:`interval`;
* for bound propagation: :meth:`linear_bounds`, the linear relaxation over ``[l, u]`` with an
  optimisable parameter ``alpha`` in ``[0, 1]`` (:meth:`default_alpha`: CROWN's choice), and
  :meth:`backward_step`, a backward (CROWN) pass through the operator;
* for the float model (:mod:`robustkit.bounds.floaterr`): :meth:`error_transfer` (its own
  rounding, and how it carries magnitudes and accumulated errors);
* piecewise-linear ones (:attr:`kinks` > 0 breakpoints per neuron, :meth:`breakpoints`): which
  kinks ``[l, u]`` leaves undecided (:meth:`undecided`, :meth:`unstable`), the affine piece where
  none is (:meth:`piece`), branching (a split of neuron ``j`` at kink ``k`` with breakpoint ``b``
  gives the children ``z <= b`` and ``z >= b``: :meth:`split_bounds`; their constraints
  ``sign (z - b) >= 0`` enter a backward pass with multipliers, :meth:`split_terms`; a score per
  kink, :meth:`intercepts`), and the MILP/LP encoding (:meth:`encode`, over a
  :class:`~robustkit.network.encoding.RowBuilder`); stability statistics (:meth:`phases`).

Split constraints and their multipliers are indexed by *unit*: ``unit = neuron * kinks + kink``
(for one kink per neuron, the neuron itself).

``identity`` (bool, ``(dim,)``) marks coordinates that carry a value past the operator unchanged:
a network graph with branches becomes a chain whose activation holds every live tensor side by
side (:mod:`robustkit.network.graph_ops`), and an operator acts on its own tensor's coordinates
only. Identity coordinates are no neurons: no relaxation, no kink, no split, no binary variable.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from robustkit.network.encoding import RowBuilder
from robustkit.network.layers import Layer


@dataclass(frozen=True, eq=False)
class Activation(Layer):
    """Base of every elementwise nonlinear operator (module docstring)."""

    dim: int
    identity: torch.Tensor | None = None
    # the larger operator this one lowers (``"MaxPool"``: a tournament's ReLUs); ``None`` for an
    # activation of the model itself. Bound methods treat both alike; the training quantities
    # that speak of "the net's activations" (Jin & Rinard's Hamming distance, MRnet's and MAT's
    # last hidden layer) use the model's own only.
    part_of: str | None = None

    piecewise_linear: ClassVar[bool] = True
    kinks: ClassVar[int] = 1  # breakpoints per neuron (0: smooth)
    rounds: ClassVar[bool] = False  # the bound methods charge its own float error (errs.rounding)
    nonlinear: ClassVar[bool] = True
    is_relu: ClassVar[bool] = False  # max(z, 0) exactly (fused kernels elsewhere may rely on it)

    def __post_init__(self) -> None:
        if self.identity is not None:
            if self.identity.dtype != torch.bool or self.identity.shape != (self.dim,):
                raise ValueError(f"{type(self).__name__}: identity mask must be bool of shape ({self.dim},)")
            if not bool(self.identity.any()):
                object.__setattr__(self, "identity", None)

    # -- shape -------------------------------------------------------------------------------
    @property
    def in_dim(self) -> int:
        return self.dim

    @property
    def out_dim(self) -> int:
        return self.dim

    @property
    def count(self) -> int:
        """The number of neurons (not identity coordinates)."""
        return self.dim if self.identity is None else int((~self.identity).sum())

    @property
    def relu_mask(self) -> torch.Tensor:
        """Bool ``(dim,)``: the coordinates that are neurons of this operator."""
        return torch.ones(self.dim, dtype=torch.bool) if self.identity is None else ~self.identity.cpu()

    def with_identity(self, identity: torch.Tensor) -> "Activation":
        """The same operator over a longer activation: its neurons where ``identity`` is False
        (in order), carried coordinates elsewhere."""
        return dataclasses.replace(self, dim=int(identity.shape[0]), identity=identity)

    def _ident(self, like: torch.Tensor) -> torch.Tensor | None:
        return None if self.identity is None else self.identity.to(like.device)

    def _carry(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` with the identity coordinates taken from ``x``."""
        ident = self._ident(x)
        return y if ident is None else torch.where(ident, x, y)

    # -- numbers -----------------------------------------------------------------------------
    @abstractmethod
    def f(self, x: torch.Tensor) -> torch.Tensor:
        """The function on every coordinate (identity coordinates are handled by :meth:`forward`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._carry(x, self.f(x))

    def surrogate(self, x: torch.Tensor, slope: float) -> torch.Tensor:
        """:meth:`forward` with a gradient of at least ``slope`` where the operator's own is
        smaller (for attacks, which stall where it is 0); default: the true gradient."""
        return self.forward(x)

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Monotone (non-decreasing) operators: the images of the ends."""
        return self._carry(lower, self.f(lower)), self._carry(upper, self.f(upper))

    # -- pieces (piecewise-linear operators) ----------------------------------------------------
    def breakpoints(self, like: torch.Tensor) -> torch.Tensor:
        """``(kinks,)``: where the pieces meet (the same for every neuron)."""
        return torch.zeros(self.kinks, dtype=like.dtype, device=like.device)

    def undecided(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """``(..., dim, kinks)`` bool: kinks strictly inside ``(lower, upper)`` of a neuron."""
        b = self.breakpoints(lower)
        out = (lower.unsqueeze(-1) < b) & (upper.unsqueeze(-1) > b)
        ident = self._ident(lower)
        return out if ident is None else out & ~ident.unsqueeze(-1)

    def unstable(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` bool: neurons with an undecided kink (a relaxation, a split, a binary)."""
        return self.undecided(lower, upper).any(-1)

    def piece(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(slope, intercept)`` (``(..., dim)``): the affine piece ``f(z) = slope z + intercept``
        on ``[lower, upper]``, where no kink is undecided (elsewhere: some value; identity
        coordinates: 1, 0)."""
        raise NotImplementedError(f"{type(self).__name__} is not piecewise linear")

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """``f'(z)`` (identity coordinates: 1), the slope of the piece ``z`` lies in."""
        return self.piece(z, z)[0]

    def phases(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(active, inactive, unstable)`` masks for stability statistics and encodings: active
        = a decided piece of slope 1 (or an identity coordinate: the value passes unchanged),
        inactive = another decided piece, unstable = some kink undecided."""
        unstable = self.unstable(lower, upper)
        slope, _ = self.piece(lower, upper)
        active = ~unstable & (slope == 1)
        ident = self._ident(lower)
        if ident is not None:
            active = active | ident
        return active, ~unstable & ~active, unstable

    # -- bound propagation -----------------------------------------------------------------------
    @abstractmethod
    def linear_bounds(
        self, lower: torch.Tensor, upper: torch.Tensor, alpha: torch.Tensor | None = None,
        parts: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lam_l, mu_l, lam_u, mu_u)`` with ``lam_l x + mu_l <= f(x) <= lam_u x + mu_u`` on
        ``[lower, upper]`` (exact ``f``; identity coordinates: 1, 0, 1, 0). ``alpha`` in ``[0, 1]``
        (broadcastable) picks among valid relaxations (:meth:`default_alpha` if None); ``parts``:
        :meth:`relaxation_parts` of these bounds, computed once by a caller that tries many."""

    def relaxation_parts(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What :meth:`linear_bounds` needs of the bounds whatever ``alpha`` (cacheable)."""
        return (lower, upper)

    def default_alpha(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """CROWN's (adaptive) choice of the relaxation parameter, in ``[0, 1]``."""
        return (upper >= -lower).to(upper.dtype)

    @property
    def optimisable(self) -> bool:
        """Whether :meth:`linear_bounds` depends on ``alpha`` (alpha-CROWN optimises it)."""
        return True

    def backward_step(self, A: torch.Tensor, c: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                      alpha: torch.Tensor | None = None, parts: tuple[torch.Tensor, ...] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """A lower bound of ``A h + c`` (``h``: this operator's output, ``A``: ``(B, m, dim)``) as a
        linear function of its input: the lower relaxation where a coefficient is positive, the
        upper where negative. ``lower``/``upper``: ``(B, 1, dim)``-broadcastable input bounds."""
        lam_l, mu_l, lam_u, mu_u = self.linear_bounds(lower, upper, alpha, parts)
        neg = A.clamp(max=0)
        pos = A.clamp(min=0)
        c = c + (neg * mu_u).sum(-1) + (pos * mu_l).sum(-1)
        return pos * lam_l + neg * lam_u, c

    def symbolic_step(self, mid: torch.Tensor, rad: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                      min_u: torch.Tensor, max_l: torch.Tensor, lower_slope: str = "adaptive"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward symbolic bounds (:mod:`robustkit.bounds.symbolic`) through the operator: the
        input's lower and upper functions ``L = mid - rad``, ``U = mid + rad`` (``(B, n + 1, dim)``,
        the last row the constant; ``lower``/``upper``: concrete bounds ``(B, dim)``; ``min_u``,
        ``max_l``: bounds on ``min U`` and ``max L``) to the output's middle and half-width. For a
        non-decreasing operator with non-negative relaxation slopes, ``f(z) >= f(L) >= lam_l L + mu_l``
        and ``f(z) <= lam_u U + mu_u`` hold over the box even where ``L`` or ``U`` leave ``[l, u]``."""
        lam_l, mu_l, lam_u, mu_u = self.linear_bounds(lower, upper)
        new_lo = (mid - rad) * lam_l.unsqueeze(1)
        new_up = (mid + rad) * lam_u.unsqueeze(1)
        new_lo[:, -1] = new_lo[:, -1] + mu_l
        new_up[:, -1] = new_up[:, -1] + mu_u
        return (new_up + new_lo) / 2, (new_up - new_lo) / 2

    # -- branching -----------------------------------------------------------------------------
    def split_terms(self, A: torch.Tensor, c: torch.Tensor, betas: torch.Tensor, signs: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the split constraints' Lagrangian terms ``-beta sign (z - b)`` to the linear
        function ``A z + c`` of the pre-activation (``A``: ``(B, m, dim)``; ``betas``:
        ``(B, m, units)`` >= 0; ``signs``: ``(B, units)``, +1 for ``z >= b``, -1 for ``z <= b``, 0
        unsplit): valid on the domain, where every ``sign (z - b) >= 0`` (beta-CROWN)."""
        bs = betas * signs.unsqueeze(1).to(betas.dtype)  # (B, m, units)
        if self.kinks == 1:
            b = self.breakpoints(A)
            if bool((b == 0).all()):
                return A - bs, c
            return A - bs, c + (bs * b[0]).sum(-1)
        bs = bs.reshape(*bs.shape[:-1], self.dim, self.kinks)
        return A - bs.sum(-1), c + (bs * self.breakpoints(A)).sum((-1, -2))

    def split_bounds(self, lower: torch.Tensor, upper: torch.Tensor, rows: torch.Tensor, units: torch.Tensor,
                     side: int) -> None:
        """Clamp in place the bounds of the children ``rows`` (of ``(n, dim)`` pre-activation
        bounds) that split ``units``: ``side`` -1: ``z <= b``, +1: ``z >= b``."""
        neuron = units // self.kinks
        b = self.breakpoints(lower)[units % self.kinks]
        if side < 0:
            upper[rows, neuron] = torch.minimum(upper[rows, neuron], b)
        else:
            lower[rows, neuron] = torch.maximum(lower[rows, neuron], b)

    def intercepts(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(undecided, intercept)`` ``(n, units)``: the kinks a split can decide and, for
        BaBSR's score (Bunel et al. 2020, Sec. 5.1), the intercept ``-(l - b)(u - b) / (u - l)``
        of the chord over the kink (what the relaxation loses there)."""
        und = self.undecided(lower, upper)  # (n, dim, kinks)
        b = self.breakpoints(lower)
        l, u = lower.unsqueeze(-1), upper.unsqueeze(-1)
        width = torch.where(und, u - l, torch.ones_like(u))
        icpt = torch.where(und, -(l - b) * (u - b) / width, torch.zeros_like(width))
        n = lower.shape[0]
        return und.reshape(n, -1), icpt.reshape(n, -1)

    def kink_convexity(self) -> tuple[bool, ...]:
        """Per kink: True where the function turns up (convex: the chord is the upper relaxation,
        which negative coefficients use), False where it turns down (concave)."""
        return (True,) * self.kinks

    def unit_neurons(self) -> torch.Tensor:
        """``(units,)``: the neuron of each unit."""
        return torch.arange(self.dim * self.kinks) // self.kinks

    # -- float model -----------------------------------------------------------------------------
    def error_transfer(self, lower: torch.Tensor, upper: torch.Tensor, mag: torch.Tensor, acc: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For inputs in ``[lower, upper]`` of magnitude ``mag`` off the exact network's by at
        most ``acc``: ``(e, mag_out, acc_out)``: the operator's own float error (0 where exact),
        the output magnitude bound and the accumulated error bound after it. Default, for
        1-Lipschitz exact operators: ``(0, mag, acc)``, 0 where the output is constant."""
        const = self._constant(lower, upper).to(mag.dtype)
        return torch.zeros_like(lower), mag * (1 - const), acc * (1 - const)

    def _constant(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """Bool ``(..., dim)``: neurons whose output is constant on ``[lower, upper]``."""
        unstable = self.unstable(lower, upper)
        slope, _ = self.piece(lower, upper)
        return ~unstable & (slope == 0)

    # -- encodings (MILP and LP) ------------------------------------------------------------------
    def needs_input(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Bool ``(dim,)``: neurons whose output depends on their input over ``[lower, upper]``
        (the others need no column for it)."""
        return ~self._constant(torch.from_numpy(lower), torch.from_numpy(upper)).numpy()

    @abstractmethod
    def encode(self, builder: RowBuilder, z: np.ndarray, lower: np.ndarray, upper: np.ndarray, acc: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Add this operator to a MILP or LP (``builder.integer``: binaries for the undecided kinks;
        else their convex hull). ``z``: the column of each input (``ZERO`` for the constant 0),
        standing for a float value within ``acc`` of it; ``lower``/``upper``: the input's bounds.
        Returns the output columns (the input's column where the output equals it, ``ZERO`` for 0)
        and their ``acc``."""

    def describe(self) -> str:
        name = type(self).__name__
        if self.identity is None:
            return f"{name}({self.dim})"
        return f"{name}({self.count} of {self.dim}; {self.dim - self.count} carried)"
