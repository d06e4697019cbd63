"""The model of floating-point error behind every proof (one place, used by every bound method).

What is proven: a property of the network *as onnxruntime runs it* (CPU, in the element types of
its tensors: float32, float16 or float64, :mod:`robustkit.network.floatfmt`) on every input of the
box, not only of the exact real-valued function. Two kinds of error are accounted for; the
assumptions behind them, and what is checked or refused instead, are listed in docs/soundness.md.

1. **The deployed network.** One operation in a format of unit roundoff ``u`` rounds as
   ``|fl(z) - z| <= u |z| + eta`` (``eta``: a result in or below the subnormal range, flushed or
   not). For a linear layer (dot products, bias, elementwise scaling) evaluated in any order, with
   or without fused multiply-add, the classical bound (Higham, *Accuracy and Stability of
   Numerical Algorithms*, Sec. 3.1) with the underflow terms gives, per output,
   ``|fl(W x + b) - (W x + b)| <= gamma_k (|W| |x| + offset) + 2 k A (eta + daz (c + p + 1))``, with
   ``gamma_k = k u / (1 - k u)``, ``k`` the most roundings on the path to the output
   (:attr:`LinearLayer.rounding_ops`: the dot product length plus the bias/scaling steps, more
   for layers folded from several ONNX operators, whose constants enter ``offset`` each on its own),
   ``daz`` the magnitude below which an operand may be read as zero, ``c`` the layer's largest
   coefficient, ``p`` its largest intermediate value and ``A`` how much its later steps can grow an
   absolute error (:meth:`LinearLayer.float_model`). ReLU and the shape operators are exact. So
   the deployed network is one of the *perturbed* networks ``z_i = W_i a_{i-1} + b_i + delta_i``
   with ``|delta_i| <= e_i``, ``e_i`` that bound over valid bounds of the layer's input
   (:attr:`FloatErrors.rounding`). Every bound method bounds all perturbed networks: interval
   arithmetic adds ``+-e_i``, a backward (CROWN) pass that meets a linear layer with coefficients
   ``A`` subtracts ``|A| e_i``, LP/MILP rows become ranges ``b_i - e_i <= z_i - W_i a_{i-1} <= b_i + e_i``.
   Each layer also bounds every value its operations compute (:attr:`FloatErrors.reach`); where
   that can reach the format's largest finite value the float network may compute ``inf`` and no
   proof holds (:meth:`FloatErrors.overflow_note`).

2. **robustkit's own float64 arithmetic** (``u = 2**-53``) while computing a bound. A backward
   pass is a sum of products; with slopes in ``[0, 1]`` the absolute values of all its terms
   add up to at most ``(R + 2) M_i``, where ``R`` is the number of ReLU layers passed and
   ``M_i = |W_i| M_{i-1} + |b_i| + e_i`` (``M_{-1} = max(|lo|, |hi|)`` of the box; 0 behind
   stably inactive ReLUs) is the magnitude of layer ``i`` without cancellation; each term carries
   at most ``K`` roundings (``K``: the roundings of all layers so far). So every computed bound on
   layer ``i`` is moved outward by ``slack_i = 2 gamma_K (R + 2) M_i`` (the factor 2 covers the
   evaluation of the slack itself and the intercepts ``|l|`` of the ReLU relaxations). Split
   multipliers (beta-CROWN) add ``2 gamma_K (R + 2) beta . M`` (:meth:`FloatErrors.spec_slack`).
   The LP dual bound evaluates its own rounding error directly (:mod:`robustkit.bounds.lp`).

``accumulated[i]`` bounds ``|float32 value - exact value|`` of layer ``i``'s output, propagated
forward (``E_i = |W_i| E_{i-1} + e_i``; a ReLU is 1-Lipschitz, and 0 where stably inactive): the
cruder bound that branch and bound's leaf LP uses for neurons decided by their bounds. What a
record reports as ``float_error`` is the charge of a backward pass instead
(:func:`robustkit.bounds.crown.float_charge`), with cancellation.

Solver tolerances are a separate matter: a proof never rests on a solver's tolerance alone
(see :mod:`robustkit.milp.solve` and the leaf LP of :mod:`robustkit.verification.bab`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustkit.network import Layer, LinearLayer, Network

U32 = 2.0**-24  # unit roundoff of the deployed network's float32
U64 = 2.0**-53  # unit roundoff of robustkit's float64 bound arithmetic


def gamma(n: int, unit: float = U32) -> float:
    """``gamma_n = n u / (1 - n u)``: the relative error bound of ``n`` roundings."""
    if n < 0 or n * unit >= 0.5:
        raise ValueError(f"gamma({n}) is outside the error model's range")
    return n * unit / (1 - n * unit)


@dataclass
class FloatErrors:
    """Per layer ``i`` of a network, over one box per sample (``(B, d_i)`` tensors; ``B`` may be 1
    and broadcast): ``rounding[i]``: ``e_i`` (zero for a ReLU); ``slack[i]``: float64 slack of any
    bound computed on layer ``i``; ``magnitude[i]``: ``M_i``; ``accumulated[i]``: ``E_i``;
    ``ops[i]``: roundings ``K`` so far; ``relus[i]``: ReLU layers up to ``i``."""

    rounding: list[torch.Tensor]
    slack: list[torch.Tensor]
    magnitude: list[torch.Tensor]
    accumulated: list[torch.Tensor]
    ops: list[int]
    relus: list[int]
    input_magnitude: torch.Tensor
    # reach[i] (B,): a bound on every value layer i's float evaluation computes; limit[i]: the
    # largest finite value of its format (a proof needs reach < limit everywhere)
    reach: list[torch.Tensor] = field(default_factory=list)
    limit: list[float] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rounding)

    def select(self, index: int) -> "FloatErrors":
        """The errors of one sample (batch 1)."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if t.shape[0] == 1 else t[index : index + 1]

        return FloatErrors([pick(t) for t in self.rounding], [pick(t) for t in self.slack],
                           [pick(t) for t in self.magnitude], [pick(t) for t in self.accumulated],
                           list(self.ops), list(self.relus), pick(self.input_magnitude),
                           [pick(t) for t in self.reach], list(self.limit), list(self.formats))

    def overflow(self) -> torch.Tensor:
        """``(B,)`` bool: the samples where some layer's float evaluation may overflow (no bound
        holds there)."""
        flags = torch.zeros(self.input_magnitude.shape[0], dtype=torch.bool)
        for r, lim in zip(self.reach, self.limit):
            flags = flags | (r.reshape(-1) >= lim)
        return flags

    def overflow_note(self, index: int = 0) -> str | None:
        """Why sample ``index`` may overflow (the first layer that can), or None."""
        for i, (r, lim) in enumerate(zip(self.reach, self.limit)):
            v = float(r[index] if r.shape[0] > 1 else r[0])
            if v >= lim:
                return (f"layer {i} may overflow {self.formats[i]}: its values are bounded only by {v:.3g} "
                        f"(largest finite {lim:.3g})")
        return None

    def spec_slack(self, C: torch.Tensor, betas: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Float64 slack ``(B, m)`` of a backward bound of ``C y`` (``C``: ``(B, m, out)``), with
        split multipliers ``betas[r]`` (``(B, m, d_r)``, on the pre-activation of the ReLU at ``r``)."""
        last = len(self.rounding) - 1
        k = self.ops[last] + C.shape[-1] + 1
        factor = 2 * gamma(k, U64) * (self.relus[last] + 2)
        total = (C.abs() @ self.magnitude[last].unsqueeze(-1)).squeeze(-1)
        for r, b in (betas or {}).items():
            pre = self.input_magnitude if r == 0 else self.magnitude[r - 1]
            total = total + (b.abs() @ pre.unsqueeze(-1)).squeeze(-1)
        return factor * total


class ErrorTracker:
    """Builds :class:`FloatErrors` layer by layer, as a forward bound pass learns each layer's
    input bounds."""

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor) -> None:
        mag = torch.maximum(lower.abs(), upper.abs()).double()
        self._mag = mag
        self._reach = mag.amax(-1)
        self._prev: LinearLayer | None = None  # the linear layer just added (one that may fuse with the next)
        self._acc = torch.zeros_like(mag)
        self._slack = torch.zeros_like(mag)
        self._ops = 0
        self._relus = 0
        self.out = FloatErrors([], [], [], [], [], [], mag)

    def add(self, layer: Layer, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Account for ``layer`` given valid bounds ``[lower, upper]`` of its input; returns its
        ``(rounding, slack)``."""
        if not layer.nonlinear:
            assert isinstance(layer, LinearLayer)
            e, reach = layer.float_model(lower, upper)
            if self._prev is not None:
                # onnxruntime may fuse the layer into the one before it (Conv/Gemm + BatchNormalization,
                # + Mul, + Add): the fused operator's values are the earlier ones scaled, and its error
                # must be within what the two layers are charged
                e = torch.maximum(e, layer.fused_error(self._prev, self.out.rounding[-1], self._reach))
                reach = torch.maximum(reach, layer.fused_reach(self._reach))
            self._ops += layer.rounding_ops
            self._mag = layer.abs_forward(self._mag) + layer.bias_tensor(torch.float64).abs() + e
            self._acc = layer.abs_forward(self._acc) + e
            limit, fmt = layer.fmt.max, layer.fmt.name
            self._prev = layer
        else:  # an elementwise operator: its own error, and how it carries magnitudes and errors
            e, self._mag, self._acc = layer.error_transfer(lower, upper, self._mag, self._acc)  # type: ignore[attr-defined]
            self._relus += 1
            # its values are at most its input's, up to its own rounding: no new overflow
            reach, limit, fmt = torch.zeros_like(self._reach), float("inf"), "exact"
            self._prev = None
        self._reach = reach
        self.out.reach.append(reach)
        self.out.limit.append(limit)
        self.out.formats.append(fmt)
        self._slack = 2 * gamma(self._ops + 2, U64) * (self._relus + 2) * self._mag
        self.out.rounding.append(e)
        self.out.slack.append(self._slack)
        self.out.magnitude.append(self._mag)
        self.out.accumulated.append(self._acc)
        self.out.ops.append(self._ops)
        self.out.relus.append(self._relus)
        return e, self._slack


    def meet(self, prior: FloatErrors) -> None:
        """Take, for the layer just added, the smaller of its errors and ``prior``'s (both valid
        bounds over this box: ``prior`` came from looser bounds or a larger box)."""
        i = len(self.out.rounding) - 1
        for name in ("rounding", "slack", "magnitude", "accumulated", "reach"):
            mine, theirs = getattr(self.out, name), getattr(prior, name)
            mine[i] = torch.minimum(mine[i], theirs[i])
        self._mag = torch.minimum(self._mag, prior.magnitude[i])
        self._acc = torch.minimum(self._acc, prior.accumulated[i])
        self._reach = self.out.reach[i]


def float_errors(net: Network, input_lower: torch.Tensor, input_upper: torch.Tensor,
                 lower: list[torch.Tensor], upper: list[torch.Tensor]) -> FloatErrors:
    """The error model of ``net`` given valid bounds of every layer (``lower[i]``/``upper[i]``:
    output of layer ``i``) over the box."""
    tracker = ErrorTracker(input_lower, input_upper)
    lo, hi = input_lower, input_upper
    for i, layer in enumerate(net.layers):
        tracker.add(layer, lo, hi)
        lo, hi = lower[i], upper[i]
    return tracker.out


def outward(lower: torch.Tensor, upper: torch.Tensor, by: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lower - by, upper + by]``; a NaN (an overflow inside the bound computation) bounds
    nothing: ``-inf`` below, ``inf`` above."""
    lo, hi = lower - by, upper + by
    return torch.nan_to_num(lo, nan=-torch.inf), torch.nan_to_num(hi, nan=torch.inf)
