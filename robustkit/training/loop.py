"""The training loop: seeded mini-batch training with regularizers, per-epoch metrics,
checkpoints and resumption.

Per batch: ``clean`` = the forward pass through the model's captured layers (the verifier's operator
classes over the model's parameters, :mod:`robustkit.network.torch_capture`; without regularizers,
the module's own forward, which keeps no activations); the loss is the cross-entropy of
``clean.logits`` (unless a regularizer replaces it, e.g. adversarial training) plus the sum
of all regularizer ``terms`` (see :mod:`robustkit.regularizers.base`). The learning rate and
eps follow their schedules per batch (:mod:`robustkit.training.schedule`).

Shuffling and all other randomness are re-seeded at the start of every epoch from
``(seed, epoch)``, so a run resumed from its checkpoint gives the same weights as a run that
was never interrupted.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from robustkit.data import Dataset, load_dataset
from robustkit.errors import InputError
from robustkit.network.torch_capture import Captured, capture
from robustkit.nets import NetConfig, build_net
from robustkit.regularizers.base import Regularizer, ScheduleState
from robustkit.subnormal import flush_subnormals
from robustkit.training import artifacts
from robustkit.training.config import RESUMABLE_CHANGES, TrainConfig
from robustkit.training.evaluate import accuracy
from robustkit.training.schedule import eps_at, lr_at

logger = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], None]


class TrainingDivergedError(InputError):
    """The loss became NaN or infinite (usually a too large learning rate or eps)."""


@dataclass(frozen=True)
class TrainResult:
    """The trained model (eval mode, CPU or ``config.device``) and the run's record."""

    run_dir: Path
    model: nn.Module
    net_config: NetConfig
    config: TrainConfig
    epochs_done: int
    history: list[dict[str, Any]]
    wall_time_s: float  # of this call (a resumed run counts only the resumed part)

    @property
    def test_acc(self) -> float:
        """Accuracy on the held-out test subset after the last epoch."""
        return float(self.history[-1]["test_acc"]) if self.history else float("nan")


def build_regularizers(specs: Sequence[str]) -> list[Regularizer]:
    """Regularizers from spec strings (``"none"`` entries are dropped)."""
    active = [s for s in specs if s.strip().lower() != "none"]
    if not active:
        return []
    try:
        from robustkit.regularizers.registry import build_regularizers as _build
    except ModuleNotFoundError as exc:
        if exc.name != "robustkit.regularizers.registry":
            raise
        raise InputError(
            f"regularizers {active} are not available in this build (only 'none' is)"
        ) from exc
    return list(_build(active))


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr0 = lr_at(config.lr, 0.0)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr0, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=lr0, weight_decay=config.weight_decay)


def _progress(quiet: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
        disable=quiet or not sys.stderr.isatty(),
    )


def _prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Create the run directory; return the checkpoint to resume from (or None)."""
    has_ckpt = (run_dir / artifacts.CHECKPOINT_FILE).is_file()
    if has_ckpt and not resume:
        raise InputError(
            f"{run_dir} already holds a training run ({artifacts.CHECKPOINT_FILE}); "
            "continue it with --resume or choose another --out directory"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not has_ckpt:
        if resume:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
        for name in (artifacts.METRICS_FILE, artifacts.MODEL_FILE):
            (run_dir / name).unlink(missing_ok=True)
        return None
    ckpt = artifacts.load_checkpoint(run_dir, config.device)
    changed = [k for k in ckpt["config"].differences(config) if k not in RESUMABLE_CHANGES]
    if changed:
        old, new = ckpt["config"].to_dict(), config.to_dict()
        detail = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed)
        raise InputError(
            f"cannot resume {run_dir}: the settings differ from its checkpoint ({detail}); "
            f"only {sorted(RESUMABLE_CHANGES)} may change"
        )
    return ckpt


def warn_scale_sensitive(regs: Sequence[Regularizer], weight_decay: float) -> bool:
    """Warn (and return True) when a scale-sensitive term trains without weight decay."""
    names = [getattr(r, "name", type(r).__name__) for r in regs if getattr(r, "scale_sensitive", False)]
    if not names or weight_decay > 0:
        return False
    logger.warning(
        "%s without weight decay: the tanh-relaxed Hamming term can be lowered by rescaling layers "
        "instead of stabilizing ReLUs (a 20-epoch MNIST run shrank conv1 to norm 0.1 and ended more brittle "
        "than plain training); Jin & Rinard use --weight-decay 5e-4", ", ".join(names))
    return True


def train(
    config: TrainConfig,
    out_dir: Path | str,
    *,
    resume: bool = False,
    quiet: bool = False,
    on_epoch: EpochCallback | None = None,
    regularizers: Sequence[Regularizer] | None = None,
) -> TrainResult:
    """Train ``config`` into ``out_dir`` (``config.json``, ``metrics.jsonl``, ``checkpoint.pt``
    after every epoch, ``model.pt`` at the end). With ``resume`` a checkpoint in ``out_dir`` is
    continued at its next epoch. ``on_epoch`` receives every epoch's metrics record.

    ``regularizers`` (library use) overrides the ones built from ``config.regularizers``,
    which then only documents them."""
    run_dir = Path(out_dir)
    started = time.perf_counter()
    ckpt = _prepare_run_dir(config, run_dir, resume)
    train_set = load_dataset(config.dataset, "train", config.data_dir, allow_embedded=False).head(config.n_train)
    eval_set = load_dataset(config.dataset, "test", config.data_dir, allow_embedded=False).head(config.n_eval)
    regs = list(regularizers) if regularizers is not None else build_regularizers(config.regularizers)
    warn_scale_sensitive(regs, config.weight_decay)
    device = torch.device(config.device)

    torch.manual_seed(config.seed)
    net_config = config.net_config()
    model = build_net(net_config).to(device)
    # the regularizers' passes run through the verifier's operator classes, over these parameters
    captured = capture(model, train_set.images[:1].to(device))
    optimizer = _make_optimizer(config, model)
    start_epoch, step = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        artifacts.truncate_metrics(run_dir, start_epoch)
        logger.info("resuming %s after epoch %d", run_dir, start_epoch)
    artifacts.write_config(run_dir, config)

    # weight decay drives unused weights into the subnormal range, 10-100x slower on x86 (robustkit.subnormal)
    with flush_subnormals(device.type == "cpu"):
        for epoch in range(start_epoch, config.epochs):
            record, step = _train_epoch(model, captured, optimizer, train_set, regs, config, epoch, step, quiet)
            record["test_acc"] = accuracy(model, eval_set)
            record["n_eval"] = len(eval_set)
            artifacts.save_checkpoint(run_dir, model, optimizer, epoch + 1, step, config, net_config)
            artifacts.append_metrics(run_dir, record)
            logger.info(
                "epoch %d/%d loss %.4f train acc %.4f test acc %.4f (%.1fs)",
                epoch + 1, config.epochs, record["loss"], record["train_acc"], record["test_acc"], record["time_s"],
            )
            if on_epoch is not None:
                on_epoch(record)

    history = artifacts.read_metrics(run_dir)
    model.eval()
    artifacts.save_model(run_dir, model, config, net_config, history[-1] if history else {})
    return TrainResult(
        run_dir=run_dir,
        model=model,
        net_config=net_config,
        config=config,
        epochs_done=max(start_epoch, config.epochs),
        history=history,
        wall_time_s=time.perf_counter() - started,
    )


def _train_epoch(
    model: nn.Module,
    captured: Captured,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    regularizers: list[Regularizer],
    config: TrainConfig,
    epoch: int,
    step: int,
    quiet: bool,
) -> tuple[dict[str, Any], int]:
    """One pass over ``data``; returns the epoch's metrics record and the new global step."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    torch.manual_seed(_epoch_seed(config.seed, epoch))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(_epoch_seed(config.seed, epoch)))
    n_batches = (len(data) + config.batch_size - 1) // config.batch_size
    sums: dict[str, float] = defaultdict(float)
    term_sums: dict[str, float] = defaultdict(float)
    metric_sums: dict[str, float] = defaultdict(float)
    correct, seen = 0, 0
    lr = eps = 0.0
    model.train()
    with _progress(quiet) as progress:
        task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=n_batches, status="")
        for b in range(n_batches):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            x, y = data.images[idx].to(device), data.labels[idx].to(device)
            frac = epoch + b / n_batches
            lr = lr_at(config.lr, frac)
            eps = eps_at(config.eps, config.eps_start, config.eps_ramp, frac)
            for group in optimizer.param_groups:
                group["lr"] = lr
            state = ScheduleState(
                epoch=frac, step=step, eps=eps, total_epochs=config.epochs,
                input_range=data.info.value_range,
            )
            if any(getattr(reg, "uses_activations", True) for reg in regularizers):
                clean = captured.forward_with_activations(x)
                logits = clean.logits
                outputs = [(reg.name, reg(model, x, y, state, clean)) for reg in regularizers]
            else:  # plain training keeps no activations: the module's own forward (the same values)
                logits = model(x)
                outputs = [(reg.name, reg(model, x, y, state, None)) for reg in regularizers]  # type: ignore[arg-type]
            ce = F.cross_entropy(logits, y)
            replaced = any(out.replaces_clean_loss for _, out in outputs)
            loss = torch.zeros((), device=device) if replaced else ce
            for reg_name, out in outputs:
                for key, term in out.terms.items():
                    loss = loss + term
                    term_sums[f"{reg_name}.{key}"] += float(term.detach()) * len(y)
                for key, value in out.metrics.items():
                    metric_sums[f"{reg_name}.{key}"] += float(value) * len(y)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {float(loss.detach())} at epoch {frac:.2f} (step {step}, lr {lr:g}, eps {eps:g}); "
                    "lower the learning rate or the regularizer weights"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sums["loss"] += float(loss.detach()) * len(y)
            sums["ce"] += float(ce.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            progress.update(task, advance=1, status=f"loss {sums['loss'] / seen:.4f} acc {correct / seen:.3f}")
    return (
        {
            "epoch": epoch + 1,
            "loss": sums["loss"] / seen,
            "ce": sums["ce"] / seen,
            "terms": {k: v / seen for k, v in term_sums.items()},
            "metrics": {k: v / seen for k, v in metric_sums.items()},
            "train_acc": correct / seen,
            "lr": lr,
            "eps": eps,
            "steps": step,
            "n_train": seen,
            "time_s": time.perf_counter() - t0,
        },
        step,
    )
