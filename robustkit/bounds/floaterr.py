"""The model of floating-point error behind every proof (one place, used by every bound method).

What is proven: a property of the network *as onnxruntime runs it in float32* on every input of
the box, not only of the exact real-valued function. Two kinds of error are accounted for.

1. **The deployed float32 network** (unit roundoff ``u = 2**-24``). For a linear layer (dot
   products, bias, elementwise scaling) evaluated in any order, with or without fused
   multiply-add, the classical bound (Higham, *Accuracy and Stability of Numerical Algorithms*,
   Sec. 3.1) gives ``|fl(W x + b) - (W x + b)| <= gamma_k (|W| |x| + |b|)`` per output, with
   ``gamma_k = k u / (1 - k u)`` and ``k`` the most roundings on the path to the output
   (:attr:`LinearLayer.rounding_ops`: the dot product length plus the bias/scaling steps, more
   for layers folded from several ONNX operators, whose constants enter ``error_offset``).
   ReLU and the shape operators are exact. So the float32 network is one of the *perturbed*
   networks ``z_i = W_i a_{i-1} + b_i + delta_i`` with ``|delta_i| <= e_i``, where
   ``e_i = gamma_k (|W_i| m_{i-1} + offset_i)`` and ``m_{i-1} = max(|l|, |u|)`` from valid bounds
   of the layer's input (:attr:`FloatErrors.rounding`). Every bound method bounds all perturbed
   networks: interval arithmetic adds ``+-e_i``, a backward (CROWN) pass that meets a linear
   layer with coefficients ``A`` subtracts ``|A| e_i``, LP/MILP rows become ranges
   ``b_i - e_i <= z_i - W_i a_{i-1} <= b_i + e_i``. Assumed of the runtime: IEEE float32
   round-to-nearest, dot products as sums of products (no Winograd/FFT convolution, no reduced
   precision such as TF32 or bfloat16), no flush of subnormal results.

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

from dataclasses import dataclass

import torch

from robustkit.network import Activation, Layer, LinearLayer, Network

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

    def __len__(self) -> int:
        return len(self.rounding)

    def select(self, index: int) -> "FloatErrors":
        """The errors of one sample (batch 1)."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if t.shape[0] == 1 else t[index : index + 1]

        return FloatErrors([pick(t) for t in self.rounding], [pick(t) for t in self.slack],
                           [pick(t) for t in self.magnitude], [pick(t) for t in self.accumulated],
                           list(self.ops), list(self.relus), pick(self.input_magnitude))

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
        self._acc = torch.zeros_like(mag)
        self._slack = torch.zeros_like(mag)
        self._ops = 0
        self._relus = 0
        self.out = FloatErrors([], [], [], [], [], [], mag)

    def add(self, layer: Layer, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Account for ``layer`` given valid bounds ``[lower, upper]`` of its input; returns its
        ``(rounding, slack)``."""
        if isinstance(layer, LinearLayer):
            e = layer.rounding_error(lower, upper, U32)
            self._ops += layer.rounding_ops
            self._mag = layer.abs_forward(self._mag) + layer.bias_tensor(torch.float64).abs() + e
            self._acc = layer.abs_forward(self._acc) + e
        elif isinstance(layer, Activation):
            e, self._mag, self._acc = layer.error_transfer(lower, upper, self._mag, self._acc)
            self._relus += 1
        else:  # pragma: no cover - the loader only produces linear layers and ReLUs
            raise TypeError(f"no float error model for layer {layer.describe()}")
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
        for name in ("rounding", "slack", "magnitude", "accumulated"):
            mine, theirs = getattr(self.out, name), getattr(prior, name)
            mine[i] = torch.minimum(mine[i], theirs[i])
        self._mag = torch.minimum(self._mag, prior.magnitude[i])
        self._acc = torch.minimum(self._acc, prior.accumulated[i])


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
    """``[lower - by, upper + by]``."""
    return lower - by, upper + by
