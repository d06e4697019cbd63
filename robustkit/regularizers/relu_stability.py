"""ReLU stability loss (Xiao, Tjeng, Shafiullah, Madry 2019, "Training for Faster Adversarial
Robustness Verification via Inducing ReLU Stability"), the verification-friendly baseline that
Jin & Rinard (2020) compare against (Table 1) and whose MILP setup they adopt.

Xiao et al. Sec. 4.2 (RS loss): for a ReLU whose pre-activation lies in ``[l, u]`` over the eps
ball, ``-tanh(1 + l * u)`` is a smooth surrogate of "unstable" (``l < 0 < u`` makes ``l * u``
negative); the loss sums it over all ReLUs of the net (per sample; batch mean here). Xiao et al.
bound ``[l, u]`` with (improved) interval arithmetic; robustkit uses plain interval bound
propagation (IBP) through the network's operators, the verifier's own classes
(:func:`robustkit.network.passes.interval_pass`, differentiable in the parameters of the captured
module), so MaxPool and residual nets count their ReLUs as the verifier does; an operator with
kinks elsewhere (HardTanh) counts each kink ``b`` with ``(l - b)(u - b)``. The eps ball is the
L-inf ball of radius ``state.eps`` (unless ``eps`` is set), intersected with the input range.
The default ``weight`` is robustkit's choice (Xiao et al. tune it per dataset and eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustkit.network import Network
from robustkit.network.passes import Activations, interval_pass
from robustkit.network.torch_capture import network_of
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
    net: Network | nn.Module, lower: torch.Tensor, upper: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """IBP through the network's operators (a module: its captured layers): ``(l - b, u - b)``
    around every kink ``b`` of every piecewise-linear operator's neurons (for a ReLU its input
    bounds), differentiable."""
    net = network_of(net, lower)
    bounds, _, _ = interval_pass(net, lower, upper)
    return kink_bounds(net, bounds)


def kink_bounds(net: Network, bounds: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The bounds of each nonlinear operator's input (from :func:`interval_pass`) around its kinks:
    one pair per kink (a ReLU's: the bounds themselves; Sigmoid/Tanh: none)."""
    out = []
    for pos, (lo, hi) in zip(net.activation_indices, bounds):
        layer = net.layers[pos]
        if not layer.piecewise_linear:  # type: ignore[attr-defined]
            continue
        for b in layer.breakpoints(lo).tolist():  # type: ignore[attr-defined]
            out.append((lo, hi) if b == 0 else (lo - b, hi - b))
    return out


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
    paper = "Xiao et al. 2019, Training for Faster Adversarial Robustness Verification via Inducing ReLU Stability, Sec. 4.2 (RS loss); interval bounds"
    summary = "sum over the kinks of every piecewise-linear operator of -tanh(1 + l*u) with interval bounds on the eps-box"
    terms = ("relu_stability",)
    config_cls = ReluStabilityConfig
    config: ReluStabilityConfig

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        cfg = self.config
        eps = state.eps if cfg.eps is None else cfg.eps
        x0 = x.detach()
        bounds = interval_preactivations(
            clean.network, clip_to_range(x0 - eps, state.input_range), clip_to_range(x0 + eps, state.input_range)
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
