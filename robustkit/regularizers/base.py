"""The protocol every training regularizer follows.

A regularizer sees the model, the batch, the labels, the current schedule state and the clean
forward pass (with hidden pre-/post-activations), and returns weighted loss terms to add to
the training loss plus metrics to log. Adversarial-training style methods (PGD, adversarial
back-propagation) may *replace* the clean cross-entropy instead of adding to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
    """Base class; it owns the contract. A subclass declares, once:

    * ``name`` (the ``-r NAME`` of ``robustkit train``), ``paper`` (the reference, with the
      sections it follows), ``summary`` (one line of what it adds to the loss);
    * ``terms``: the names of the loss terms it returns (two regularizers may not share one);
    * ``config_cls``: a frozen dataclass of its options (``NAME=WEIGHT`` sets ``weight_field``);
    * ``replaces_clean_loss`` when it trains on another point instead of the clean one;
    * ``uses_activations = False`` when it reads nothing of the clean pass (the trainer then runs
      the module's own forward and keeps no activations);

    and implements ``__call__``. ``registry.register`` (which checks these declarations) then
    makes it a spec name, listed by ``robustkit regularizers``, with its options checked and
    typed. An instance passed to the trainer directly needs only ``name`` and ``__call__``."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    terms: ClassVar[tuple[str, ...]] = ()
    config_cls: ClassVar[type]
    weight_field: ClassVar[str] = "weight"
    replaces_clean_loss: ClassVar[bool] = False
    uses_activations: ClassVar[bool] = True

    def __init__(self, config: Any = None) -> None:
        self.config = self.config_cls() if config is None else config
        if not isinstance(self.config, self.config_cls):
            raise TypeError(f"{type(self).__name__} takes a {self.config_cls.__name__}, "
                            f"got {type(self.config).__name__}")

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
