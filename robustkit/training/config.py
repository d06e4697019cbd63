"""The frozen, validated description of one training run (stored as ``config.json``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

from robustkit.data import DatasetInfo, dataset_info, dataset_name
from robustkit.errors import InputError
from robustkit.nets import NetConfig, check_net_name
from robustkit.training.schedule import LrKnots, validate_knots

OPTIMIZERS = ("adam", "sgd")

# Fields that may change when a run is resumed (everything else must match the checkpoint).
RESUMABLE_CHANGES = frozenset({"epochs", "data_dir", "device"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run.

    ``lr`` is a piecewise-linear schedule of ``(epoch, lr)`` knots over fractional epochs;
    ``eps`` ramps linearly from ``eps_start`` to ``eps`` between the epochs ``eps_ramp``
    (``(0, 0)``: no ramp). ``regularizers`` are spec strings for
    ``robustkit.regularizers.registry.build_regularizers`` (empty or ``"none"``: plain
    cross-entropy). ``normalize=None`` uses the dataset's default (CIFAR-10: yes, MNIST: no);
    ``mean``/``std`` (per channel, or one value for all) normalize with these statistics instead.
    ``dataset``: ``mnist``, ``cifar10``, an ``.npz`` file or an ImageFolder folder
    (:mod:`robustkit.data.files`); ``net``: a registered net or a user's factory
    ``MODULE:FUNCTION`` / ``FILE.py:FUNCTION`` (:func:`robustkit.nets.build_net`).
    ``n_train`` keeps only the first training images (quick runs); ``n_eval`` is the size of
    the held-out test subset evaluated after every epoch.
    """

    dataset: str = "mnist"
    net: str = "small"
    hidden: tuple[int, ...] = ()
    epochs: int = 20
    batch_size: int = 50
    optimizer: str = "adam"
    lr: LrKnots = ((0.0, 1e-3),)
    momentum: float = 0.9
    weight_decay: float = 0.0
    eps: float = 0.0
    eps_start: float = 0.0
    eps_ramp: tuple[float, float] = (0.0, 0.0)
    regularizers: tuple[str, ...] = ()
    seed: int = 0
    n_train: int | None = None
    n_eval: int = 1000
    normalize: bool | None = None
    data_dir: str | None = None
    device: str = "cpu"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Normalize containers (JSON gives lists) and names, then validate.
        set_ = object.__setattr__
        set_(self, "dataset", dataset_name(self.dataset))
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                set_(self, name, tuple(float(v) for v in getattr(self, name)))
        set_(self, "hidden", tuple(int(h) for h in self.hidden))
        set_(self, "lr", tuple((float(e), float(v)) for e, v in self.lr))
        set_(self, "eps_ramp", tuple(float(v) for v in self.eps_ramp))
        set_(self, "regularizers", tuple(str(s).strip() for s in self.regularizers if str(s).strip()))
        set_(self, "optimizer", str(self.optimizer).lower())
        if self.data_dir is not None:
            set_(self, "data_dir", str(self.data_dir))
        self._validate()

    def _validate(self) -> None:
        check_net_name(self.net)
        if (self.mean is None) != (self.std is None):
            raise InputError("give both --mean and --std, or neither")
        if self.std is not None and (not self.std or any(not (v > 0 and math.isfinite(v)) for v in self.std)):
            raise InputError(f"--std values must be positive, got {self.std}")
        if self.mean is not None and (not self.mean or not all(math.isfinite(v) for v in self.mean)):
            raise InputError(f"--mean values must be finite numbers, got {self.mean}")
        if self.hidden and self.net != "mlp":
            raise InputError(f"hidden widths apply only to the mlp net, not {self.net!r}")
        if any(h <= 0 for h in self.hidden):
            raise InputError(f"hidden widths must be positive, got {self.hidden}")
        for name in ("epochs", "batch_size", "n_eval"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_train is not None and self.n_train < 1:
            raise InputError(f"n_train must be at least 1, got {self.n_train}")
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}")
        validate_knots(self.lr)
        if not 0.0 <= self.momentum < 1.0:
            raise InputError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("eps", "eps_start"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {v}")
        if len(self.eps_ramp) != 2 or self.eps_ramp[0] < 0 or self.eps_ramp[1] < self.eps_ramp[0]:
            raise InputError(f"eps_ramp must be (start, end) epochs with 0 <= start <= end, got {self.eps_ramp}")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"invalid device {self.device!r} (examples: cpu, cuda, cuda:0)") from exc

    @property
    def dataset_info(self) -> DatasetInfo:
        return dataset_info(self.dataset)

    def net_config(self) -> NetConfig:
        """The architecture this run trains (with the dataset's normalization if enabled, or
        ``mean``/``std``)."""
        info = self.dataset_info
        channels = info.input_shape[0]
        if self.mean is not None and self.std is not None:
            if len(self.mean) not in (1, channels) or len(self.std) not in (1, channels):
                raise InputError(f"--mean/--std need 1 or {channels} values (one per channel), got "
                                 f"{len(self.mean)} and {len(self.std)}")
            mean = self.mean * (channels // len(self.mean))
            std = self.std * (channels // len(self.std))
            return NetConfig(name=self.net, input_shape=info.input_shape, num_classes=info.num_classes,
                             hidden=self.hidden, mean=mean, std=std)
        use_norm = info.mean is not None if self.normalize is None else self.normalize
        if use_norm and info.mean is None:
            # Datasets without published statistics: MNIST's standard mean/std.
            mean, std = (0.1307,) * info.input_shape[0], (0.3081,) * info.input_shape[0]
        else:
            mean, std = info.mean, info.std
        return NetConfig(
            name=self.net,
            input_shape=info.input_shape,
            num_classes=info.num_classes,
            hidden=self.hidden,
            mean=mean if use_norm else None,
            std=std if use_norm else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["lr"] = [list(k) for k in self.lr]
        d["eps_ramp"] = list(self.eps_ramp)
        d["regularizers"] = list(self.regularizers)
        for name in ("mean", "std"):  # absent when unset: configs of runs before these options read the same
            if d[name] is None:
                del d[name]
            else:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as exc:
            raise InputError(f"invalid training config: {exc}") from exc

    def differences(self, other: "TrainConfig") -> list[str]:
        """Names of fields that differ from ``other``."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in {**a, **b} if a.get(k) != b.get(k)]
