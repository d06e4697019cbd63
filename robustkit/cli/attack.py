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

from robustkit.cli.common import EXAMPLES
from robustkit.cli.options import alias, opt, settings
from robustkit.errors import InputError
from robustkit.metadata import dataset_of, value_range_of
from robustkit.numbers import format_eps, parse_eps

C = "attack"

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
    restarts: int = 4,
    loss: str = "ce",
    n: int = 100,
    dataset: str | None = None,
    data_dir: Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    batch_size: int = 100,
    inputs: Path | None = None,
) -> AttackSummary:
    """Load the model and the first ``n`` test images (or samples of ``inputs``, an .npz with x and y);
    return clean and PGD accuracy."""
    from robustkit.attacks import PGD
    from robustkit.data import load_dataset, load_inputs
    from robustkit.network import load_onnx

    if n <= 0:
        raise InputError(f"--n must be positive, got {n}")
    attack = PGD(norm=norm, steps=steps, restarts=restarts, loss=loss, seed=seed,  # type: ignore[arg-type]
                 device=device, batch_size=batch_size)
    net = load_onnx(model_path)
    if inputs is not None:
        name, ds = Path(inputs).name, load_inputs(inputs).head(n)
    else:
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
        f"| {s.model} | {s.dataset} | {s.n} | {format_eps(s.eps)} | {s.norm} | {100 * s.clean_accuracy:.1f} "
        f"| {100 * s.pgd_accuracy:.1f} | {s.seconds:.2f} |",
    ])


def register(app: typer.Typer) -> None:
    app.command(C, epilog=EXAMPLES[C])(attack)


def attack(
    ctx: typer.Context,
    model: Optional[Path] = opt(C, "model"),
    eps: Optional[str] = opt(C, "eps"),
    n: int = opt(C, "n"),
    dataset: Optional[str] = opt(C, "dataset"),
    data_dir: Optional[Path] = opt(C, "data_dir"),
    inputs: Optional[Path] = opt(C, "inputs"),
    attack_steps: int = opt(C, "attack_steps"),
    attack_restarts: int = opt(C, "attack_restarts"),
    norm: str = opt(C, "norm"),
    loss: str = opt(C, "loss"),
    device: str = opt(C, "device"),
    seed: int = opt(C, "seed"),
    format: str = opt(C, "format"),  # noqa: A002 - the option's registry name
    steps: Optional[int] = alias(C, "--steps"),
    restarts: Optional[int] = alias(C, "--restarts"),
) -> None:
    """Clean and PGD accuracy of MODEL on the first N test images."""
    s = settings(ctx, C)
    summary = evaluate_attack(s["model"], parse_eps(s["eps"]), norm=s["norm"], steps=s["attack_steps"],
                              restarts=s["attack_restarts"], loss=s["loss"], n=s["n"], dataset=s["dataset"],
                              data_dir=s["data_dir"], device=s["device"], seed=s["seed"],
                              inputs=s["inputs"])
    typer.echo(format_summary(summary, s["format"]))
