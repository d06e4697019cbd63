"""The protocol every training regularizer follows.

A regularizer sees the model, the batch, the labels, the current schedule state and the clean
forward pass (with hidden pre-/post-activations), and returns weighted loss terms to add to
the training loss plus metrics to log. Adversarial-training style methods (PGD, adversarial
back-propagation) may *replace* the clean cross-entropy instead of adding to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from robustkit.network.passes import Activations


@dataclass(frozen=True)
class ScheduleState:
    """Where training is: fractional epoch, global step, current eps (after any ramp)."""

    epoch: float
    step: int
    eps: float
    total_epochs: int
    input_range: tuple[float, float] = (0.0, 1.0)


@dataclass
class RegOutput:
    """Weighted loss terms (tensors, added to the loss) and metrics (floats, logged)."""

    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    replaces_clean_loss: bool = False


class Regularizer(ABC):
    """Base class: subclasses set ``name`` and ``paper`` and implement ``__call__``."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""

    @abstractmethod
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        """Return the loss terms for this batch."""
