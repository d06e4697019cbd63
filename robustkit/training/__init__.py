"""Training: the run configuration, schedules, the loop with checkpoints, and run artifacts."""

from robustkit.training.artifacts import TrainedModel, load_trained, read_metrics
from robustkit.training.config import TrainConfig
from robustkit.training.evaluate import accuracy, predict
from robustkit.training.loop import TrainingDivergedError, TrainResult, build_regularizers, train
from robustkit.training.schedule import eps_at, lr_at, parse_lr_schedule, parse_ramp

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "TrainingDivergedError",
    "accuracy",
    "build_regularizers",
    "eps_at",
    "load_trained",
    "lr_at",
    "parse_lr_schedule",
    "parse_ramp",
    "predict",
    "read_metrics",
    "train",
]
