"""Files of a run directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``model.pt``.

``.pt`` files hold only tensors and plain values (configs as JSON strings), so they load with
``torch.load(weights_only=True)``. Writes go to a temporary file that replaces the target,
so an interrupted run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustkit.errors import ModelFormatError
from robustkit.nets import NetConfig, build_net
from robustkit.training.config import TrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_config(run_dir: Path, config: TrainConfig) -> None:
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    os.replace(tmp, run_dir / CONFIG_FILE)


def read_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"cannot read the run's config {path}: {exc}") from exc


def net_config_to_json(cfg: NetConfig) -> str:
    return json.dumps(asdict(cfg))


def net_config_from_json(text: str) -> NetConfig:
    d = json.loads(text)
    return NetConfig(
        name=d["name"],
        input_shape=tuple(d["input_shape"]),
        num_classes=int(d["num_classes"]),
        hidden=tuple(d.get("hidden") or ()),
        mean=tuple(d["mean"]) if d.get("mean") is not None else None,
        std=tuple(d["std"]) if d.get("std") is not None else None,
    )


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    config: TrainConfig,
    net_config: NetConfig,
) -> None:
    """Everything needed to continue after ``epoch`` completed epochs."""
    _atomic_torch_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": int(epoch),
            "step": int(step),
            "config": json.dumps(config.to_dict()),
            "net_config": net_config_to_json(net_config),
        },
        run_dir / CHECKPOINT_FILE,
    )


def load_checkpoint(run_dir: Path, device: str = "cpu") -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_FILE
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ModelFormatError(f"cannot read checkpoint {path}: {exc}") from exc
    missing = {"model", "optimizer", "epoch", "step", "config", "net_config"} - set(ckpt)
    if missing:
        raise ModelFormatError(f"checkpoint {path} lacks {sorted(missing)}")
    ckpt["config"] = TrainConfig.from_dict(json.loads(ckpt["config"]))
    ckpt["net_config"] = net_config_from_json(ckpt["net_config"])
    return ckpt


def save_model(
    run_dir: Path, model: nn.Module, config: TrainConfig, net_config: NetConfig, metrics: dict[str, Any]
) -> Path:
    """The final trained model with what is needed to rebuild and describe it."""
    path = run_dir / MODEL_FILE
    _atomic_torch_save(
        {
            "state_dict": model.state_dict(),
            "net_config": net_config_to_json(net_config),
            "config": json.dumps(config.to_dict()),
            "metrics": json.dumps(metrics),
        },
        path,
    )
    return path


@dataclass(frozen=True)
class TrainedModel:
    """A model loaded from a run directory, with its configs and final metrics."""

    model: nn.Module
    net_config: NetConfig
    config: TrainConfig
    metrics: dict[str, Any]
    path: Path


def load_trained(run_dir: Path | str, device: str = "cpu") -> TrainedModel:
    """Rebuild the final model of a run directory (``model.pt``) in eval mode."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ModelFormatError(
            f"{path} not found: is {run_dir} a finished `robustkit train` run? "
            f"(an unfinished run has only {CHECKPOINT_FILE}; continue it with --resume)"
        )
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        net_config = net_config_from_json(blob["net_config"])
        config = TrainConfig.from_dict(json.loads(blob["config"]))
        metrics = json.loads(blob["metrics"])
    except (OSError, RuntimeError, EOFError, KeyError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc
    model = build_net(net_config)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise ModelFormatError(f"{path}: weights do not fit the {net_config.name} net: {exc}") from exc
    model.to(device).eval()
    return TrainedModel(model, net_config, config, metrics, path)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """Per-epoch records of a run (empty if none yet)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """Drop records of epochs after ``epochs_done`` (written before an interruption)."""
    records = [r for r in read_metrics(run_dir) if int(r.get("epoch", 0)) <= epochs_done]
    tmp = run_dir / (METRICS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, run_dir / METRICS_FILE)
