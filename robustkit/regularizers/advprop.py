"""Adversarial back-propagation (Nokland 2015, "Improving Back-Propagation by Adding an
Adversarial Gradient").

Sec. 2, Eq. (1)-(2) and Algorithm 1: the network is trained on ``x + mu`` with
``mu = eps * sign(grad_x J(theta, x, y))`` -- the fast gradient sign perturbation of the
cross-entropy ``J`` -- *instead of* the clean sample (steps 3-5: "use z instead of x as input").
The clean loss is therefore replaced; ``clean_weight > 0`` adds ``clean_weight * J(x)`` back
(a common variant, Goodfellow et al. 2015). The perturbed input is clipped to the valid range.
Default ``eps = 0.08``: the MNIST setting of Sec. 3 (inputs scaled to [0, 1]).
Cost: one extra forward/backward pass to the input, plus the forward of the perturbed batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.network.passes import Activations
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_nonneg
from robustkit.regularizers.perturb import input_gradient, sign_step


@dataclass(frozen=True)
class AdvPropConfig:
    """``weight``: factor on J(x + mu) (paper: 1). ``eps``: perturbation size; ``None`` means
    the trainer's current eps (``state.eps``). ``clean_weight``: factor on the clean J (paper: 0)."""

    weight: float = 1.0
    eps: float | None = 0.08
    clean_weight: float = 0.0

    def __post_init__(self) -> None:
        require_nonneg("advprop", weight=self.weight, eps=self.eps, clean_weight=self.clean_weight)


def advprop_input(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, input_range: tuple[float, float]
) -> torch.Tensor:
    """Nokland Eq. (2) / Algorithm 1 step 3: ``clip(x + eps * sign(grad_x J(x, y)))``."""
    return sign_step(x, input_gradient(model, x, y), eps, input_range)


class AdvProp(Regularizer):
    """Train on the FGSM point instead of the clean point (replaces the clean loss)."""

    name = "advprop"
    paper = "Nokland 2015, Improving Back-Propagation by Adding an Adversarial Gradient, Sec. 2 Eq. (1)-(2), Alg. 1; Sec. 3 (MNIST eps = 0.08)"
    summary = "train on clip(x + eps sign(grad_x CE)) instead of x"
    terms = ("advprop", "advprop_clean")
    config_cls = AdvPropConfig
    replaces_clean_loss = True
    config: AdvPropConfig

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
        x_adv = advprop_input(model, x, y, eps, state.input_range)
        adv_loss = F.cross_entropy(model(x_adv), y)
        out = RegOutput(replaces_clean_loss=True)
        out.terms["advprop"] = cfg.weight * adv_loss
        out.metrics["advprop_adv_ce"] = float(adv_loss.detach())
        if cfg.clean_weight > 0:
            out.terms["advprop_clean"] = cfg.clean_weight * F.cross_entropy(clean.logits, y)
        return out
