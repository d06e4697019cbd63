"""ReLU stability loss (Xiao, Tjeng, Shafiullah, Madry 2019, "Training for Faster Adversarial
Robustness Verification via Inducing ReLU Stability"), the verification-friendly baseline that
Jin & Rinard (2020) compare against (Table 1) and whose MILP setup they adopt.

Xiao et al. Sec. 4.2 (RS loss): for a ReLU whose pre-activation lies in ``[l, u]`` over the eps
ball, ``-tanh(1 + l * u)`` is a smooth surrogate of "unstable" (``l < 0 < u`` makes ``l * u``
negative); the loss sums it over all ReLUs of the net (per sample; batch mean here). Xiao et al.
bound ``[l, u]`` with (improved) interval arithmetic; robustkit uses plain interval bound
propagation (IBP) through the ``nn.Sequential`` -- :func:`interval_preactivations`, a small
training-only implementation (center/radius form: ``W c + b``, ``|W| r``). The eps ball is the
L-inf ball of radius ``state.eps`` (unless ``eps`` is set), intersected with the input range.
The default ``weight`` is robustkit's choice (Xiao et al. tune it per dataset and eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import InputError
from robustkit.nets import Activations, Normalize
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_nonneg
from robustkit.regularizers.perturb import clip_to_range


@dataclass(frozen=True)
class ReluStabilityConfig:
    """``weight``: factor of the RS loss; ``eps``: None = the trainer's ``state.eps``."""

    weight: float = 5e-4
    eps: float | None = None

    def __post_init__(self) -> None:
        require_nonneg("relu-stability", weight=self.weight, eps=self.eps)


def interval_preactivations(
    model: nn.Sequential, lower: torch.Tensor, upper: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """IBP through a robustkit Sequential: ``(l, u)`` of every ReLU input, differentiable."""
    return interval_forward(model, lower, upper, "relu-stability")[0]


def interval_forward(
    model: nn.Sequential, lower: torch.Tensor, upper: torch.Tensor, who: str = "interval bounds"
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """IBP through a robustkit Sequential: ``(l, u)`` of every ReLU input, and the center and
    radius of the output box (all differentiable); ``who`` names the caller in the error a layer
    it cannot bound raises."""
    center = (upper + lower) * 0.5
    radius = (upper - lower) * 0.5
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i, layer in enumerate(model):
        if isinstance(layer, Normalize):
            center = (center - layer.mean) / layer.std
            radius = radius / layer.std
        elif isinstance(layer, nn.Flatten):
            center, radius = layer(center), layer(radius)
        elif isinstance(layer, nn.Linear):
            center = F.linear(center, layer.weight, layer.bias)
            radius = F.linear(radius, layer.weight.abs())
        elif isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":
                raise InputError(f"{who}: conv padding_mode {layer.padding_mode!r} unsupported")
            center = F.conv2d(center, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            radius = F.conv2d(radius, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups)
        elif isinstance(layer, nn.ReLU):
            lo, hi = center - radius, center + radius
            bounds.append((lo, hi))
            # relu, not clamp_min(0): the same values, and a cheaper backward (one threshold pass
            # instead of a compare and a where); its subgradient at exactly 0 is 0, as the net's own
            # ReLU. x * 0.5 is x / 2 exactly, and a multiply is cheaper than a divide.
            lo, hi = torch.relu(lo), torch.relu(hi)
            center, radius = (hi + lo) * 0.5, (hi - lo) * 0.5
        else:
            raise InputError(f"{who}: unsupported layer {type(layer).__name__} at position {i}")
    return bounds, center, radius


def rs_loss(bounds: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Xiao et al. RS loss per sample: ``sum over ReLUs of -tanh(1 + l * u)``, shape ``(B,)``.

    Evaluated as ``2 sum sigmoid(-2 (1 + l u)) - n`` (``-tanh(v) = 2 sigmoid(-2v) - 1``; ``n`` ReLUs
    per sample): torch's CPU tanh is ~4x slower than its sigmoid, and the tanh was the largest
    elementwise cost of the step. ``-2 l u - 2`` (one ``addcmul``) is ``-2 (1 + l u)`` exactly (a
    power-of-2 scale commutes with rounding); the sum is rounded differently from the tanh form
    (~1e-7 relative).
    """
    total = None
    for lo, hi in bounds:
        s = torch.sigmoid(torch.addcmul(lo.new_full((), -2.0), lo, hi, value=-2.0)).flatten(1)
        layer = s.sum(dim=1) * 2.0 - s.shape[1]
        total = layer if total is None else total + layer
    if total is None:
        raise ValueError("the RS loss needs a net with ReLU layers")
    return total


def unstable_counts(bounds: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per sample, the number of ReLUs with ``l < 0 < u``, as floats, shape ``(B,)``.

    ``sign(u) - sign(l)`` is 2 exactly then (``l <= u``: otherwise 0 or 1), so ``relu(sign(u) -
    sign(l) - 1)`` is the 0/1 indicator: ~3x cheaper on a CPU than ``(l < 0) & (u > 0)`` (bool
    tensors and their integer sums are slow there); float sums of 0/1 are exact up to 2^24.
    """
    with torch.no_grad():
        return sum(  # type: ignore[return-value]
            torch.relu_(torch.sign(hi) - torch.sign(lo) - 1.0).flatten(1).sum(dim=1) for lo, hi in bounds
        )


class ReluStability(Regularizer):
    """weight * mean_i sum_ReLU -tanh(1 + l u) with IBP bounds on the eps ball."""

    name = "relu-stability"
    paper = "Xiao et al. 2019, Training for Faster Adversarial Robustness Verification via Inducing ReLU Stability, Sec. 4.2 (RS loss)"

    def __init__(self, config: ReluStabilityConfig | None = None) -> None:
        self.config = config or ReluStabilityConfig()

    def __call__(
        self,
        model: nn.Sequential,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        cfg = self.config
        eps = state.eps if cfg.eps is None else cfg.eps
        x0 = x.detach()
        bounds = interval_preactivations(
            model, clip_to_range(x0 - eps, state.input_range), clip_to_range(x0 + eps, state.input_range)
        )
        out = RegOutput()
        if not bounds:
            return out
        loss = rs_loss(bounds).mean()
        out.terms["relu_stability"] = cfg.weight * loss
        unstable = unstable_counts(bounds)
        total = sum(lo[0].numel() for lo, _ in bounds)
        out.metrics["rs_loss_raw"] = float(loss.detach())
        out.metrics["unstable_relus"] = float(unstable.mean())
        out.metrics["unstable_fraction"] = float(unstable.mean()) / total
        return out
