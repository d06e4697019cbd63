"""The ``none`` baseline: plain cross-entropy training, no extra term."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustkit.network.passes import Activations
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState


@dataclass(frozen=True)
class NoneConfig:
    """No options (``weight`` is accepted and ignored so that ``none=1`` parses)."""

    weight: float = 0.0


class NoRegularizer(Regularizer):
    """Adds nothing: the trainer's loss is the clean cross-entropy alone."""

    name = "none"
    paper = "baseline: standard back-propagation on the clean cross-entropy"
    summary = "plain cross-entropy, no extra term"
    terms = ()
    config_cls = NoneConfig
    uses_activations = False
    config: NoneConfig

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations | None,
    ) -> RegOutput:
        return RegOutput()
