"""``robustkit attack``: clean and PGD accuracy of an ONNX model on the first N test images."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from robustkit.errors import InputError
from robustkit.metadata import dataset_of, value_range_of
from robustkit.numbers import parse_eps

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackSummary:
    """Accuracies are fractions in [0, 1]; ``pgd_accuracy`` counts samples the attack did not break."""

    model: str
    dataset: str
    source: str
    n: int
    eps: float
    norm: str
    clean_accuracy: float
    pgd_accuracy: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_attack(
    model_path: Path,
    eps: float,
    norm: str = "linf",
    steps: int = 50,
    restarts: int = 10,
    loss: str = "ce",
    n: int = 100,
    dataset: str | None = None,
    data_dir: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 100,
) -> AttackSummary:
    """Load the model and the first ``n`` test images; return clean and PGD accuracy."""
    from robustkit.attacks import PGD
    from robustkit.data import load_dataset
    from robustkit.network import load_onnx

    if n <= 0:
        raise InputError(f"--n must be positive, got {n}")
    attack = PGD(norm=norm, steps=steps, restarts=restarts, loss=loss, seed=seed,  # type: ignore[arg-type]
                 device=device, batch_size=batch_size)
    net = load_onnx(model_path)
    name = dataset_of(net.metadata, dataset, model_path)
    ds = load_dataset(name, "test", data_dir).head(n)
    images = ds.images
    if images[0].numel() != net.in_dim:
        raise InputError(f"{model_path} takes {net.in_dim} inputs {net.sample_shape}, but {name} "
                         f"images have {images[0].numel()} {tuple(images.shape[1:])}")
    x = images.reshape(images.shape[0], *net.sample_shape)
    lo, hi = value_range_of(net.metadata)
    module = net.to_torch().eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        clean = sum(int((module(x[s:s + batch_size]).argmax(1) == ds.labels[s:s + batch_size]).sum())
                    for s in range(0, len(ds), batch_size))
    result = attack.run(module, x, ds.labels, eps, lo, hi)
    return AttackSummary(
        model=model_path.name, dataset=name, source=ds.source, n=len(ds), eps=eps, norm=norm,
        clean_accuracy=clean / len(ds), pgd_accuracy=result.robust_accuracy,
        seconds=time.perf_counter() - t0,
    )


def format_summary(s: AttackSummary, fmt: str) -> str:
    """Markdown table row or JSON."""
    if fmt == "json":
        return json.dumps(s.to_dict(), indent=2)
    if fmt != "md":
        raise InputError(f"unknown --format {fmt!r}; choose md or json")
    return "\n".join([
        "| model | dataset | n | eps | norm | clean % | PGD % | time (s) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s.model} | {s.dataset} | {s.n} | {s.eps:g} | {s.norm} | {100 * s.clean_accuracy:.1f} "
        f"| {100 * s.pgd_accuracy:.1f} | {s.seconds:.2f} |",
    ])


def register(app: typer.Typer) -> None:
    app.command("attack")(attack)


def attack(
    model: Path = typer.Argument(..., help="ONNX model file."),
    eps: str = typer.Option(..., "--eps", help="Radius in input units, e.g. 0.1 or 8/255."),
    norm: str = typer.Option("linf", "--norm", help="linf or l2."),
    steps: int = typer.Option(50, "--steps", help="PGD steps per restart."),
    restarts: int = typer.Option(10, "--restarts", help="Random restarts (best per sample kept)."),
    loss: str = typer.Option("ce", "--loss", help="ce (cross-entropy) or margin (CW)."),
    n: int = typer.Option(100, "--n", help="Number of test images (the first N)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="mnist or cifar10 (default: from the model's metadata)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset directory (default: $ROBUSTKIT_DATA, else the embedded test subset)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto (cuda when available)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random starts."),
    fmt: str = typer.Option("md", "--format", help="md or json."),
) -> None:
    """Clean and PGD accuracy of MODEL on the first N test images."""
    summary = evaluate_attack(model, parse_eps(eps), norm=norm, steps=steps, restarts=restarts,
                              loss=loss, n=n, dataset=dataset, data_dir=data_dir, device=device,
                              seed=seed)
    typer.echo(format_summary(summary, fmt))
