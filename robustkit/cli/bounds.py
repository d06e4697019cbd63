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
from robustkit.cli.common import EXAMPLES
from robustkit.cli.options import alias, opt, settings
from robustkit.bounds.crown import CrownConfig
from robustkit.bounds.lp import LpConfig
from robustkit.bounds.methods import BoundMethod, BoundsConfig
from robustkit.bounds.stability import BoundStatistics, dataset_bound_statistics
from robustkit.errors import InputError
from robustkit.metadata import dataset_of, value_range_of
from robustkit.numbers import format_eps, parse_eps

logger = logging.getLogger(__name__)
C = "bounds"


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
    inputs: Path | None = None,
) -> BoundStatistics:
    """Load ``model`` and the first ``n`` test images of its dataset; bound every eps-box.
    ``refine_stable``: CROWN bounds also for neurons interval arithmetic proves stable (slower;
    only their widths change)."""
    from robustkit.data import dataset_info, load_dataset, load_inputs
    from robustkit.network import load_onnx

    if n <= 0:
        raise InputError(f"--n must be positive, got {n}")
    bound_method = BoundMethod.parse(method)
    net = load_onnx(model)
    if inputs is not None:
        ds = load_inputs(inputs).head(n)
        info = ds.info
    else:
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
        f"method {stats.method}, eps {format_eps(stats.eps)}, {stats.n} samples, "
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
    app.command(C, epilog=EXAMPLES[C])(bounds)


def bounds(
    ctx: typer.Context,
    model: Optional[Path] = opt(C, "model"),
    eps: Optional[str] = opt(C, "eps"),
    n: int = opt(C, "n"),
    dataset: Optional[str] = opt(C, "dataset"),
    data_dir: Optional[Path] = opt(C, "data_dir"),
    inputs: Optional[Path] = opt(C, "inputs"),
    bounds: str = opt(C, "bounds"),
    timeout: Optional[str] = opt(C, "timeout"),
    batch_size: int = opt(C, "batch_size"),
    refine_stable: bool = opt(C, "refine_stable"),
    format: str = opt(C, "format"),  # noqa: A002 - the option's registry name
    method: Optional[str] = alias(C, "--method"),
    time_budget: Optional[str] = alias(C, "--time-budget"),
) -> None:
    """Per ReLU layer: stably active / inactive / unstable counts and mean bound width; margin lower bounds."""
    s = settings(ctx, C)
    stats = model_bound_statistics(s["model"], parse_eps(s["eps"]), s["bounds"], s["n"], s["dataset"], s["data_dir"],
                                   s["timeout"], s["batch_size"], s["refine_stable"], s["inputs"])
    typer.echo(format_statistics(stats, s["format"]))
