"""``robustkit train``: train a net on MNIST or CIFAR-10 with optional regularizers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from robustkit.errors import InputError
from robustkit.numbers import parse_eps, parse_number
from robustkit.training import TrainConfig, parse_lr_schedule, parse_ramp, train
from robustkit.training.artifacts import CHECKPOINT_FILE, load_checkpoint


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError as exc:
        raise InputError(f"--hidden {text!r} must be comma-separated integers, e.g. 100,100") from exc


def build_config(
    base: TrainConfig,
    *,
    dataset: str | None = None,
    net: str | None = None,
    hidden: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    lr: str | None = None,
    momentum: float | None = None,
    weight_decay: str | None = None,
    eps: str | None = None,
    eps_start: str | None = None,
    eps_ramp: str | None = None,
    regularizers: list[str] | None = None,
    seed: int | None = None,
    n_train: int | None = None,
    n_eval: int | None = None,
    data_dir: Path | None = None,
    device: str | None = None,
) -> TrainConfig:
    """``base`` with every option the user gave (not None) replaced."""
    changes: dict[str, Any] = {
        "dataset": dataset,
        "net": net,
        "hidden": _hidden(hidden) if hidden is not None else None,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": parse_lr_schedule(lr) if lr is not None else None,
        "momentum": momentum,
        "weight_decay": parse_number(weight_decay, "weight decay") if weight_decay is not None else None,
        "eps": parse_eps(eps) if eps is not None else None,
        "eps_start": parse_eps(eps_start) if eps_start is not None else None,
        "eps_ramp": parse_ramp(eps_ramp) if eps_ramp is not None else None,
        "regularizers": tuple(regularizers) if regularizers else None,
        "seed": seed,
        "n_train": n_train,
        "n_eval": n_eval,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "device": device,
    }
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        out: Path = typer.Option(..., "--out", help="Run directory (config, metrics, checkpoint, model)."),
        dataset: Optional[str] = typer.Option(None, help="mnist or cifar10 [default: mnist]."),
        net: Optional[str] = typer.Option(None, help="mlp, small, large, maxpool (LeNet-like with MaxPool) or resnet (2 residual blocks) [default: small]."),
        hidden: Optional[str] = typer.Option(None, help="mlp hidden widths, e.g. 100,100."),
        epochs: Optional[int] = typer.Option(None, help="Number of epochs [default: 20]."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="[default: 50]"),
        optimizer: Optional[str] = typer.Option(None, help="adam or sgd [default: adam]."),
        lr: Optional[str] = typer.Option(
            None, help="Learning rate: 1e-3, or EPOCH:LR knots of a piecewise-linear schedule, e.g. 0:1e-3,10:1e-4."
        ),
        momentum: Optional[float] = typer.Option(None, help="SGD momentum [default: 0.9]."),
        weight_decay: Optional[str] = typer.Option(None, "--weight-decay", help="L2 weight decay of the optimizer [default: 0]; Jin & Rinard's Hamming term needs it (paper: 5e-4)."),
        eps: Optional[str] = typer.Option(None, help="Training eps (L-inf), e.g. 0.1 or 8/255 [default: 0]."),
        eps_start: Optional[str] = typer.Option(None, "--eps-start", help="eps at the start of the ramp [default: 0]."),
        eps_ramp: Optional[str] = typer.Option(None, "--eps-ramp", help="Ramp eps over epochs START:END, e.g. 1:10."),
        regularizer: Optional[list[str]] = typer.Option(
            None, "--regularizer", "-r", help="Regularizer spec (repeatable), see `robustkit regularizers`."
        ),
        seed: Optional[int] = typer.Option(None, help="Random seed [default: 0]."),
        n_train: Optional[int] = typer.Option(None, "--n-train", help="Use only the first N training images."),
        n_eval: Optional[int] = typer.Option(None, "--n-eval", help="Test images evaluated per epoch [default: 1000]."),
        data_dir: Optional[Path] = typer.Option(
            None, "--data-dir", help="Folder with mnist/ or cifar10/ (or torchvision layouts); else $ROBUSTKIT_DATA."
        ),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:0 [default: cpu]."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-epoch lines."),
        threads: Optional[int] = typer.Option(
            None, "--threads", help="CPU threads for torch (1 is fastest on a busy machine)."
        ),
    ) -> None:
        """Train a net; with --resume, options not given are taken from the run's checkpoint."""
        if threads is not None:
            if threads < 1:
                raise InputError(f"--threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        base = TrainConfig()
        if resume and (out / CHECKPOINT_FILE).is_file():
            base = load_checkpoint(out)["config"]
        config = build_config(
            base, dataset=dataset, net=net, hidden=hidden, epochs=epochs, batch_size=batch_size,
            optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps,
            eps_start=eps_start, eps_ramp=eps_ramp, regularizers=regularizer, seed=seed, n_train=n_train,
            n_eval=n_eval, data_dir=data_dir, device=device,
        )

        def show(record: dict[str, Any]) -> None:
            typer.echo(
                f"epoch {record['epoch']}/{config.epochs}  loss {record['loss']:.4f}  "
                f"train acc {record['train_acc']:.4f}  test acc {record['test_acc']:.4f}  "
                f"lr {record['lr']:.3g}  eps {record['eps']:.4g}  {record['time_s']:.1f}s"
            )

        result = train(config, out, resume=resume, quiet=quiet, on_epoch=None if quiet else show)
        typer.echo(
            f"trained {config.net} on {config.dataset}: {result.epochs_done} epochs, "
            f"test acc {result.test_acc:.4f} (first {config.n_eval} test images); model in {out}"
        )
