"""``robustkit train``: train a net (robustkit's or the user's ``MODULE:FUNCTION``) on MNIST, CIFAR-10 or
the user's data (``.npz``, ImageFolder) with optional regularizers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer

from robustkit.cli.common import EXAMPLES, finish_run
from robustkit.cli.options import opt, settings
from robustkit.config.resolve import Settings
from robustkit.errors import InputError
from robustkit.numbers import format_eps, parse_eps, parse_number
from robustkit.training import TrainConfig, parse_lr_schedule, parse_ramp, train
from robustkit.training.artifacts import CHECKPOINT_FILE, load_checkpoint

C = "train"


def _hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError as exc:
        raise InputError(f"--hidden {text!r} must be comma-separated integers, e.g. 100,100") from exc


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(parse_number(v, flag) for v in text.split(",") if v.strip())
    except InputError as exc:
        raise InputError(f"{flag} {text!r} must be comma-separated numbers, e.g. 0.4914,0.4822,0.4465") from exc
    if not values:
        raise InputError(f"{flag} needs at least one number")
    return values


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
    mean: str | None = None,
    std: str | None = None,
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
        "mean": _floats(mean, "--mean") if mean is not None else None,
        "std": _floats(std, "--std") if std is not None else None,
    }
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def config_from_settings(base: TrainConfig, s: Settings) -> TrainConfig:
    """``base`` with the options given on the command line or in ``--config`` (a resumed run
    takes the others from its checkpoint)."""
    def given(name: str) -> Any:
        value = s[name] if s.given(name) else None
        return None if value in ((), []) else value

    number = {k: (repr(s[k]) if s.given(k) else None) for k in ("weight_decay",)}
    return build_config(
        base, dataset=given("dataset"), net=given("net"), hidden=given("hidden"), epochs=given("epochs"),
        batch_size=given("train_batch_size"), optimizer=given("optimizer"), lr=given("lr"),
        momentum=given("momentum"), weight_decay=number["weight_decay"], eps=given("train_eps"),
        eps_start=given("eps_start"), eps_ramp=given("eps_ramp"),
        regularizers=list(s["regularizer"]) if s.given("regularizer") and s["regularizer"] else None,
        seed=given("seed"), n_train=given("n_train"), n_eval=given("n_eval"), data_dir=given("data_dir"),
        device=given("device"), mean=given("mean"), std=given("std"),
    )


def settings_of(config: TrainConfig, s: Settings) -> Settings:
    """``s`` with the values the run actually used (what reproduces it, checkpoint values included)."""
    lr = (repr(config.lr[0][1]) if len(config.lr) == 1 and config.lr[0][0] == 0
          else ",".join(f"{e!r}:{v!r}" for e, v in config.lr))
    ramp = None if config.eps_ramp[1] <= config.eps_ramp[0] else f"{config.eps_ramp[0]!r}:{config.eps_ramp[1]!r}"
    return s.replace(
        dataset=config.dataset, net=config.net, hidden=",".join(map(str, config.hidden)) or None,
        epochs=config.epochs, train_batch_size=config.batch_size, optimizer=config.optimizer, lr=lr,
        momentum=float(config.momentum), weight_decay=float(config.weight_decay), train_eps=format_eps(config.eps),
        eps_start=format_eps(config.eps_start), eps_ramp=ramp, regularizer=tuple(config.regularizers),
        seed=config.seed, n_train=config.n_train, n_eval=config.n_eval,
        data_dir=Path(config.data_dir) if config.data_dir else None, device=config.device,
        mean=None if config.mean is None else ",".join(repr(v) for v in config.mean),
        std=None if config.std is None else ",".join(repr(v) for v in config.std),
    )


def register(app: typer.Typer) -> None:
    app.command(C, epilog=EXAMPLES[C])(train_cmd)


def train_cmd(
    ctx: typer.Context,
    out: Optional[Path] = opt(C, "out"),
    dataset: str = opt(C, "dataset"),
    net: str = opt(C, "net"),
    hidden: Optional[str] = opt(C, "hidden"),
    mean: Optional[str] = opt(C, "mean"),
    std: Optional[str] = opt(C, "std"),
    epochs: int = opt(C, "epochs"),
    train_batch_size: int = opt(C, "train_batch_size"),
    optimizer: str = opt(C, "optimizer"),
    lr: str = opt(C, "lr"),
    momentum: str = opt(C, "momentum"),
    weight_decay: str = opt(C, "weight_decay"),
    train_eps: str = opt(C, "train_eps"),
    eps_start: str = opt(C, "eps_start"),
    eps_ramp: Optional[str] = opt(C, "eps_ramp"),
    regularizer: list[str] = opt(C, "regularizer"),
    seed: int = opt(C, "seed"),
    n_train: Optional[int] = opt(C, "n_train"),
    n_eval: int = opt(C, "n_eval"),
    data_dir: Optional[Path] = opt(C, "data_dir"),
    device: str = opt(C, "device"),
    threads: Optional[int] = opt(C, "threads"),
    resume: bool = opt(C, "resume"),
    quiet: bool = opt(C, "quiet"),
    config: Optional[Path] = opt(C, "config"),
) -> None:
    """Train a net and keep its run folder (config, metrics, checkpoint, model); with --resume,
    options not given are taken from the run's checkpoint."""
    import torch

    s = settings(ctx, C)
    if s["threads"] is not None:
        torch.set_num_threads(s["threads"])
    run_dir: Path = s["out"]
    base = TrainConfig()
    if s["resume"] and (run_dir / CHECKPOINT_FILE).is_file():
        base = load_checkpoint(run_dir)["config"]
    cfg = config_from_settings(base, s)

    def show(record: dict[str, Any]) -> None:
        typer.echo(
            f"epoch {record['epoch']}/{cfg.epochs}  loss {record['loss']:.4f}  "
            f"train acc {record['train_acc']:.4f}  test acc {record['test_acc']:.4f}  "
            f"lr {record['lr']:.3g}  eps {record['eps']:.4g}  {record['time_s']:.1f}s"
        )

    result = train(cfg, run_dir, resume=s["resume"], quiet=s["quiet"], on_epoch=None if s["quiet"] else show)
    saved = finish_run(settings_of(cfg, s), C, run_dir, None, {"epochs_done": result.epochs_done,
                                                              "test_acc": result.test_acc})
    typer.echo(
        f"trained {cfg.net} on {cfg.dataset}: {result.epochs_done} epochs, "
        f"test acc {result.test_acc:.4f} (first {cfg.n_eval} test images); model in {run_dir}; config {saved}"
    )
