"""Manifold regularized networks, MRnet (Lee, Choi, Yoon 2015, "Manifold Regularized Deep
Neural Networks using Adversarial Examples").

Sec. 3, Eq. (3)-(5) and (10): the objective is ``CE(x) + lambda * L_M`` with the manifold loss
``L_M = || phi(x) - phi(x_adv) ||_2^2`` (squared error, Eq. 10), ``phi`` the activations of the
last hidden layer, and ``x_adv`` the adversarial example of Eq. (5). The Appendix uses the
*constant-norm* perturbation ``x_adv = x + eps * g / ||g||_2`` with ``g = grad_x CE(x, y)``
(``norm="l2"``, default); the max-norm (sign) variant ``x + eps * sign(g)`` is ``norm="linf"``.
``x_adv`` is clipped to the valid input range. Gradients flow through *both* embeddings, as in
the back-propagation rules Eq. (11)-(17) (errors ``delta`` for ``phi(x)`` and ``phi(x_adv)``).

Sec. 4.2: "an adversarial perturbation at the beginning of training is meaningless. Thus, we
applied L_M after pre-training a vanilla neural network" -- ``warmup_epochs`` (the term is 0
before that fractional epoch). Appendix: ``eps = 2`` for MNIST (the default here, inputs in
[0, 1]); ``lambda`` is not recoverable from the text, the default 0.1 is robustkit's choice.
The batch mean over samples is used (the paper's loss is per sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from robustkit.network.passes import Activations, forward_with_activations
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_choice, require_nonneg
from robustkit.regularizers.perturb import input_gradient, l2_step, sign_step


@dataclass(frozen=True)
class MRnetConfig:
    """``weight``: lambda of Eq. (3). ``eps``: perturbation size (L2 norm for ``norm="l2"``,
    per-coordinate for ``"linf"``). ``warmup_epochs``: epochs of plain training first."""

    weight: float = 0.1
    eps: float = 2.0
    norm: Literal["l2", "linf"] = "l2"
    warmup_epochs: float = 1.0

    def __post_init__(self) -> None:
        require_nonneg("mrnet", weight=self.weight, eps=self.eps, warmup_epochs=self.warmup_epochs)
        require_choice("mrnet", "norm", self.norm, ("l2", "linf"))


def mrnet_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    input_range: tuple[float, float],
) -> torch.Tensor:
    """Eq. (5) with the Appendix's constant-norm step (or the sign step), clipped, detached."""
    grad = input_gradient(model, x, y)
    if norm == "l2":
        return l2_step(x, grad, eps, input_range)
    return sign_step(x, grad, eps, input_range)


def manifold_loss(phi_clean: torch.Tensor, phi_adv: torch.Tensor) -> torch.Tensor:
    """Eq. (10): per-sample squared L2 distance of the embeddings, shape ``(B,)``."""
    return (phi_clean.flatten(1) - phi_adv.flatten(1)).pow(2).sum(dim=1)


class MRnet(Regularizer):
    """lambda * mean_i ||phi(x_i) - phi(x_i^adv)||^2 on the last hidden layer, after a warm-up."""

    name = "mrnet"
    paper = "Lee, Choi, Yoon 2015, Manifold Regularized Deep Neural Networks using Adversarial Examples, Sec. 3 Eq. (3)-(5),(10); Appendix (MNIST eps = 2)"
    summary = "lambda * ||phi(x) - phi(x + eps g/||g||)||^2 on the last hidden layer, after a warm-up"
    terms = ("mrnet",)
    config_cls = MRnetConfig
    config: MRnetConfig

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        cfg = self.config
        out = RegOutput()
        if state.epoch < cfg.warmup_epochs or cfg.weight == 0:
            out.metrics["mrnet_active"] = 0.0
            return out
        x_adv = mrnet_adversarial(model, x, y, cfg.eps, cfg.norm, state.input_range)
        phi_adv = forward_with_activations(clean.network, x_adv).last_hidden
        dist = manifold_loss(clean.last_hidden, phi_adv).mean()
        out.terms["mrnet"] = cfg.weight * dist
        out.metrics["mrnet_active"] = 1.0
        out.metrics["mrnet_distance"] = float(dist.detach())
        return out
