"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards Deep
Learning Models Resistant to Adversarial Attacks"), the baseline of Xiao et al. (2019) and
Jin & Rinard (2020, Table 1).

Min-max objective (Madry et al. Eq. 2.1): the clean loss is *replaced* by
``CE(f(x_adv), y)`` where ``x_adv`` approximately maximizes the loss over the L-inf ball of
radius eps (the trainer's current ``state.eps`` unless ``eps`` is given), found by ``steps``
projected signed-gradient ascent steps from a uniformly random start in the ball; every iterate
is projected onto the ball and the valid input range. Step size defaults to
``2.5 * eps / steps`` (Madry et al.'s rule of thumb: the iterates can reach the boundary from any
start). This is a training-time attack only; evaluation attacks live in ``robustkit.attacks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import InputError
from robustkit.network.passes import Activations
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_nonneg
from robustkit.regularizers.perturb import clip_to_range, input_gradient


@dataclass(frozen=True)
class PGDConfig:
    """``weight``: factor on the adversarial CE. ``eps``: None = ``state.eps``. ``step_size``:
    None = ``2.5 * eps / steps``. ``random_start``: uniform start in the ball."""

    weight: float = 1.0
    eps: float | None = None
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        require_nonneg("pgd", weight=self.weight, eps=self.eps, step_size=self.step_size)
        if self.steps < 1:
            raise InputError(f"pgd: steps must be >= 1, got {self.steps}")


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    input_range: tuple[float, float],
    random_start: bool = True,
) -> torch.Tensor:
    """k-step L-inf PGD on the cross-entropy; returns a detached point in ball and range."""
    x0 = x.detach()
    lo = clip_to_range(x0 - eps, input_range)
    hi = clip_to_range(x0 + eps, input_range)
    x_adv = x0
    if random_start and eps > 0:
        x_adv = x0 + torch.empty_like(x0).uniform_(-eps, eps)
    x_adv = torch.minimum(torch.maximum(x_adv, lo), hi)
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y)
        x_adv = torch.minimum(torch.maximum(x_adv + step_size * grad.sign(), lo), hi)
    return x_adv.detach()


class PGDTraining(Regularizer):
    """Replace the clean CE by the CE at a k-step PGD point (Madry et al. 2018)."""

    name = "pgd"
    paper = "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks, Eq. (2.1), Sec. 4; baseline of Xiao et al. 2019 / Jin & Rinard 2020 Table 1"
    summary = "train on a k-step L-inf PGD point with random start (eps = trainer's eps)"
    terms = ("pgd",)
    config_cls = PGDConfig
    replaces_clean_loss = True
    config: PGDConfig

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
        step = cfg.step_size if cfg.step_size is not None else 2.5 * eps / cfg.steps
        x_adv = pgd_linf(model, x, y, eps, cfg.steps, step, state.input_range, cfg.random_start)
        adv_loss = F.cross_entropy(model(x_adv), y)
        out = RegOutput(replaces_clean_loss=True)
        out.terms["pgd"] = cfg.weight * adv_loss
        out.metrics["pgd_adv_ce"] = float(adv_loss.detach())
        return out
