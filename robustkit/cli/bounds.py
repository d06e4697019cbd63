"""``robustkit bounds``: ReLU stability and margin lower bounds of an ONNX model over eps-boxes
around the first N test images, by interval arithmetic, CROWN, alpha-CROWN, LP or MILP."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from robustkit.bounds.alpha_crown import AlphaCrownConfig
from robustkit.bounds.crown import CrownConfig
from robustkit.bounds.lp import LpConfig
from robustkit.bounds.methods import BoundMethod, BoundsConfig
from robustkit.bounds.stability import BoundStatistics, dataset_bound_statistics
from robustkit.errors import InputError
from robustkit.metadata import dataset_of, value_range_of
from robustkit.numbers import parse_eps

logger = logging.getLogger(__name__)


def model_bound_statistics(
    model: Path,
    eps: float,
    method: str = "crown",
    n: int = 100,
    dataset: str | None = None,
    data_dir: Path | None = None,
    time_budget: float | None = None,
    batch_size: int = 32,
    refine_stable: bool = False,
) -> BoundStatistics:
    """Load ``model`` and the first ``n`` test images of its dataset; bound every eps-box.
    ``refine_stable``: CROWN bounds also for neurons interval arithmetic proves stable (slower;
    only their widths change)."""
    from robustkit.data import dataset_info, load_dataset
    from robustkit.network import load_onnx

    if n <= 0:
        raise InputError(f"--n must be positive, got {n}")
    bound_method = BoundMethod.parse(method)
    net = load_onnx(model)
    name = dataset_of(net.metadata, dataset, model)
    info = dataset_info(name)
    ds = load_dataset(name, "test", data_dir).head(n)
    crown = CrownConfig(refine_stable=refine_stable)
    config = BoundsConfig(crown=crown, alpha=AlphaCrownConfig(crown=crown), lp=LpConfig(crown=crown))
    return dataset_bound_statistics(
        net, ds.images, ds.labels, eps, bound_method, value_range_of(net.metadata, info.value_range),
        time_budget, batch_size, config,
    )


def format_statistics(stats: BoundStatistics, fmt: str = "md") -> str:
    """The per-layer table (means over samples) and the margin summary, as markdown or JSON."""
    if fmt == "json":
        return json.dumps(stats.summary(), indent=2)
    if fmt != "md":
        raise InputError(f"unknown --format {fmt!r}; choose md or json")
    lines = [
        f"method {stats.method}, eps {stats.eps:g}, {stats.n} samples, "
        f"{stats.seconds / max(stats.n, 1):.4f} s per sample",
        "",
        "| ReLU layer | neurons | stably active | stably inactive | unstable | mean pre-activation width* |",
        "|---|---|---|---|---|---|",
    ]
    for k, layer in enumerate(stats.layers):
        s = layer.summary()
        lines.append(
            f"| {k} (position {layer.position}) | {layer.dim} | {s['active']:.2f} | {s['inactive']:.2f} "
            f"| {s['unstable']:.2f} | {s['mean_width']:.4g} |"
        )
    total = sum(layer.unstable.mean() for layer in stats.layers) if stats.layers else 0.0
    margins = stats.margin_lower
    lines += [
        "",
        f"unstable ReLUs per sample (all layers): {total:.2f}",
        f"margin lower bound min_j (y_label - y_j): mean {margins.mean():.4g}, median {float(np.median(margins)):.4g}, "
        f"min {margins.min():.4g}, max {margins.max():.4g}",
        f"clean accuracy {100 * stats.correct.mean():.1f}%; certified by these bounds: "
        f"{int(stats.certified.sum())}/{stats.n} ({100 * stats.certified.mean():.1f}%)",
        "",
        "*means per sample; the widths of neurons that interval arithmetic proves stable are interval "
        "widths unless --refine-stable",
    ]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("bounds")(bounds)


def bounds(
    model: Path = typer.Argument(..., help="ONNX model file."),
    eps: str = typer.Option(..., "--eps", help="L-inf radius in input units, e.g. 0.1 or 8/255."),
    method: str = typer.Option("crown", "--method", help="ibp|interval, crown, alpha-crown, lp or milp."),
    n: int = typer.Option(100, "--n", help="Number of test images (the first N)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="mnist or cifar10 (default: from the model's metadata; required for models without it, e.g. VNN-COMP nets)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset directory (default: $ROBUSTKIT_DATA, else the embedded test subset)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Seconds per batch for alpha-CROWN/LP/MILP."),
    batch_size: int = typer.Option(32, "--batch-size", help="Samples bounded together."),
    refine_stable: bool = typer.Option(False, "--refine-stable", help="CROWN bounds also for neurons interval arithmetic already proves stable (slower; tighter widths for them)."),
    fmt: str = typer.Option("md", "--format", help="md or json."),
) -> None:
    """Per ReLU layer: stably active / inactive / unstable counts and mean bound width; margin lower bounds."""
    stats = model_bound_statistics(model, parse_eps(eps), method, n, dataset, data_dir, time_budget, batch_size,
                                   refine_stable)
    typer.echo(format_statistics(stats, fmt))
