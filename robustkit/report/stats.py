"""ReLU-stability statistics of a model over eps-boxes around test samples.

For every sample ``x`` and the box ``B = [x - eps, x + eps] ∩ value_range``:

* per ReLU layer, how many neurons are stably active / stably inactive / unstable under the
  chosen bound method (:func:`robustkit.bounds.stability.dataset_bound_statistics`); unstable
  ReLUs are the binary variables of the MILP (Xiao et al. 2019, Sec. 4);
* the *empirical Hamming distance* between the activation patterns of random opposite corners
  ``x+ = x + rho`` and ``x- = x - rho``, ``rho ∈ {±eps}^d`` (clipped to the valid range):
  the quantity Jin & Rinard's Hamming regularizer drives to zero (Jin & Rinard, "Manifold
  Regularization for Locally Stable Deep Neural Networks", Sec. 5.3: ``H(x, x') = 0`` for all
  ``x'`` in the neighbourhood iff it is one linear piece; pairs of opposite corners because a
  bound on ``H`` over points bounds it over their convex hull);
* the Hamming distance between the patterns of ``x`` and of its PGD point (Madry et al. 2018);
* the number of distinct activation patterns among ``K`` points drawn uniformly from ``B``, a
  lower bound on the number of linear pieces of the network inside the box.

An activation pattern is the vector of ``[z > 0]`` over all ReLU pre-activations ``z``.
Empirical distances are lower bounds of what the box can reach; the bound-based counts are
upper bounds (a neuron whose pattern differs between two points of ``B`` is unstable for any
sound bounds), so ``hamming <= unstable`` per layer.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustkit.bounds.methods import BoundMethod
from robustkit.bounds.stability import LayerStability, dataset_bound_statistics, total_unstable
from robustkit.errors import InputError
from robustkit.metadata import dataset_of, value_range_of
from robustkit.network import Network

logger = logging.getLogger(__name__)

STATS_FORMATS = ("md", "json")


# -- the model's dataset and value range from its metadata -------------------------------------------
# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatsConfig:
    """What to measure: ``n`` samples, eps-boxes, the bound method; ``corner_pairs`` random pairs
    of opposite corners per sample, ``region_samples`` uniform points per box for the distinct
    patterns, a PGD attack of ``pgd_steps`` x ``pgd_restarts`` (margin loss); ``seed`` fixes
    every random draw."""

    eps: float
    n: int = 500
    method: str = "crown"
    corner_pairs: int = 8
    region_samples: int = 64
    pgd_steps: int = 20
    pgd_restarts: int = 1
    seed: int = 0
    batch_size: int = 32
    time_budget: float | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.eps) and self.eps >= 0):
            raise InputError(f"eps must be a finite number >= 0, got {self.eps}")
        if self.n < 1:
            raise InputError(f"--n must be positive, got {self.n}")
        object.__setattr__(self, "method", BoundMethod.parse(self.method).value)
        if self.corner_pairs < 1 or self.region_samples < 1:
            raise InputError("corner pairs and region samples must be >= 1")
        if self.pgd_steps < 1 or self.pgd_restarts < 1:
            raise InputError("PGD steps and restarts must be >= 1")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.time_budget is not None and self.time_budget < 0:
            raise InputError(f"time budget must be >= 0 seconds, got {self.time_budget}")


# -- activation patterns ---------------------------------------------------------------------------
def relu_patterns(net: Network, x: torch.Tensor) -> list[torch.Tensor]:
    """Per ReLU layer of ``net``, the bool pattern ``pre-activation > 0`` (``(B, count)``) at the
    points ``x`` (``(B, in_dim)`` or ``(B, *sample_shape)``), evaluated in float64."""
    h = x.reshape(x.shape[0], -1).double()
    relus = set(net.split_indices)
    out = []
    with torch.no_grad():
        for i, layer in enumerate(net.layers):
            if i in relus:
                out.append((h > 0)[:, layer.relu_mask])  # not the identity (carried) coordinates
            h = layer.forward(h)
    return out


def hamming(p: list[torch.Tensor], q: list[torch.Tensor]) -> np.ndarray:
    """Per sample and ReLU layer, the number of neurons whose pattern differs: ``(B, layers)``."""
    if not p:
        return np.zeros((0, 0), dtype=np.int64)
    return torch.stack([(a != b).sum(1) for a, b in zip(p, q)], dim=1).numpy().astype(np.int64)


def _box(x: torch.Tensor, eps: float, value_range: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    lo_v, hi_v = value_range
    return (x - eps).clamp(lo_v, hi_v), (x + eps).clamp(lo_v, hi_v)


def corner_hamming(net: Network, x: torch.Tensor, eps: float, value_range: tuple[float, float], pairs: int,
                   gen: torch.Generator) -> np.ndarray:
    """Jin & Rinard's opposite corners (Sec. 5.3): for ``pairs`` random ``rho ∈ {±eps}^d`` the
    per-layer Hamming distance of ``clip(x + rho)`` and ``clip(x - rho)``; ``(B, pairs, layers)``."""
    x = x.reshape(x.shape[0], -1).double()
    lo_v, hi_v = value_range
    out = []
    for _ in range(pairs):
        signs = torch.randint(0, 2, x.shape, generator=gen, dtype=torch.int64).double() * 2 - 1
        rho = eps * signs
        plus = relu_patterns(net, (x + rho).clamp(lo_v, hi_v))
        minus = relu_patterns(net, (x - rho).clamp(lo_v, hi_v))
        out.append(hamming(plus, minus))
    return np.stack(out, axis=1)


def pgd_points(net: Network, x: torch.Tensor, labels: torch.Tensor, eps: float, value_range: tuple[float, float],
               steps: int, restarts: int, seed: int) -> torch.Tensor:
    """The PGD points (L-inf, margin loss, full budget for every sample) inside the clipped box."""
    from robustkit.attacks import PGD

    if eps == 0:
        return x.reshape(x.shape[0], -1).float().clone()
    attack = PGD(norm="linf", steps=steps, restarts=restarts, loss="margin", seed=seed, early_stop=False,
                 device="cpu")
    xf = x.reshape(x.shape[0], -1).float()
    return attack.run(net.to_torch().eval(), xf, labels, eps, *value_range).x_adv


def distinct_patterns(net: Network, x: torch.Tensor, eps: float, value_range: tuple[float, float], k: int,
                      gen: torch.Generator) -> np.ndarray:
    """Per sample, the number of distinct activation patterns among ``k`` points drawn uniformly
    from its box (a lower bound on the linear pieces met in the box); ``(B,)``."""
    x = x.reshape(x.shape[0], -1).double()
    lo, hi = _box(x, eps, value_range)
    u = torch.rand((x.shape[0], k, x.shape[1]), generator=gen, dtype=torch.float64)
    points = lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)
    pats = relu_patterns(net, points.reshape(-1, x.shape[1]))
    if not pats:
        return np.ones(x.shape[0], dtype=np.int64)
    flat = torch.cat(pats, dim=1).reshape(x.shape[0], k, -1)
    return np.array([int(torch.unique(flat[b], dim=0).shape[0]) for b in range(x.shape[0])], dtype=np.int64)


# -- the report ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSummary:
    """One ReLU layer: mean and median over samples of the bound-based counts and the empirical
    Hamming distances (corner pairs averaged per sample first)."""

    layer: int
    position: int
    dim: int
    active_mean: float
    active_median: float
    inactive_mean: float
    inactive_median: float
    unstable_mean: float
    unstable_median: float
    corner_hamming_mean: float
    corner_hamming_median: float
    pgd_hamming_mean: float
    pgd_hamming_median: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _mm(a: np.ndarray) -> tuple[float, float]:
    return (float(np.mean(a)), float(np.median(a))) if a.size else (0.0, 0.0)


def summarize_layers(layers: list[LayerStability], corner: np.ndarray | None = None,
                     pgd: np.ndarray | None = None) -> list[LayerSummary]:
    """Mean/median over samples per layer; ``corner`` ``(n, pairs, layers)`` and ``pgd``
    ``(n, layers)`` are the Hamming distances (zeros when not given)."""
    n = int(layers[0].active.size) if layers else 0
    corner_ps = corner.mean(axis=1) if corner is not None and corner.size else np.zeros((n, len(layers)))
    pgd_ps = pgd if pgd is not None and pgd.size else np.zeros((n, len(layers)))
    out = []
    for k, layer in enumerate(layers):
        out.append(LayerSummary(
            k, layer.position, layer.dim,
            *_mm(layer.active), *_mm(layer.inactive), *_mm(layer.unstable),
            *_mm(corner_ps[:, k]), *_mm(pgd_ps[:, k]),
        ))
    return out


@dataclass
class StabilityReport:
    """Per-sample arrays (``n`` samples, ``L`` ReLU layers): bound-based ``layers`` (see
    :class:`LayerStability`), ``corner_hamming`` ``(n, pairs, L)``, ``pgd_hamming`` ``(n, L)``,
    ``patterns`` ``(n,)``, ``correct``/``certified`` ``(n,)`` bool, and seconds per part."""

    model: str
    config: StatsConfig
    value_range: tuple[float, float]
    layers: list[LayerStability]
    corner_hamming: np.ndarray
    pgd_hamming: np.ndarray
    patterns: np.ndarray
    correct: np.ndarray
    certified: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.patterns.size)

    @property
    def unstable_per_sample(self) -> np.ndarray:
        """Unstable ReLUs per sample over all layers."""
        return total_unstable(self.layers)

    def layer_summaries(self) -> list[LayerSummary]:
        return summarize_layers(self.layers, self.corner_hamming, self.pgd_hamming)

    def totals(self) -> dict[str, float]:
        """Mean/median over samples of the all-layer totals."""
        unstable = self.unstable_per_sample.astype(np.float64)
        corner = self.corner_hamming.sum(axis=2).mean(axis=1) if self.corner_hamming.size else np.zeros(self.n)
        pgd = self.pgd_hamming.sum(axis=1) if self.pgd_hamming.size else np.zeros(self.n)
        out: dict[str, float] = {}
        for name, arr in (("unstable", unstable), ("corner_hamming", corner), ("pgd_hamming", pgd),
                          ("patterns", self.patterns.astype(np.float64))):
            out[f"{name}_mean"], out[f"{name}_median"] = _mm(arr)
        out["patterns_max"] = float(self.patterns.max()) if self.n else 0.0
        out["single_region_fraction"] = float((self.patterns == 1).mean()) if self.n else 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "model": self.model, "eps": cfg.eps, "method": cfg.method, "n": self.n,
            "value_range": list(self.value_range), "corner_pairs": cfg.corner_pairs,
            "region_samples": cfg.region_samples, "pgd_steps": cfg.pgd_steps, "pgd_restarts": cfg.pgd_restarts,
            "seed": cfg.seed,
            "clean_accuracy": float(self.correct.mean()) if self.n else 0.0,
            "certified": int(self.certified.sum()),
            "layers": [s.to_dict() for s in self.layer_summaries()],
            "totals": self.totals(),
            "unstable_per_sample": self.unstable_per_sample.tolist(),
            "patterns_per_sample": self.patterns.tolist(),
            "seconds": dict(self.seconds),
        }


def stability_statistics(net: Network, images: torch.Tensor, labels: torch.Tensor, cfg: StatsConfig,
                         value_range: tuple[float, float] = (0.0, 1.0), model: str = "<network>") -> StabilityReport:
    """Every statistic of the module docstring for the given samples (all of them; ``cfg.n`` is
    applied by :func:`model_stability_report`)."""
    x = images.reshape(images.shape[0], -1).double()
    if x.shape[0] == 0:
        raise InputError("no samples to compute statistics on")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if x.min() < value_range[0] or x.max() > value_range[1]:
        raise InputError(f"the samples lie outside the valid range {list(value_range)} of the model")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    bounds = dataset_bound_statistics(net, x, labels, cfg.eps, cfg.method, value_range, cfg.time_budget,
                                      cfg.batch_size)
    seconds["bounds"] = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(cfg.seed)
    corner, pgd, patterns = [], [], []
    t_corner = t_pgd = t_regions = 0.0
    for s in range(0, x.shape[0], cfg.batch_size):
        xb, yb = x[s:s + cfg.batch_size], labels[s:s + cfg.batch_size]
        t = time.perf_counter()
        corner.append(corner_hamming(net, xb, cfg.eps, value_range, cfg.corner_pairs, gen))
        t_corner += time.perf_counter() - t
        t = time.perf_counter()
        adv = pgd_points(net, xb, yb, cfg.eps, value_range, cfg.pgd_steps, cfg.pgd_restarts, cfg.seed + s)
        pgd.append(hamming(relu_patterns(net, xb), relu_patterns(net, adv)))
        t_pgd += time.perf_counter() - t
        t = time.perf_counter()
        patterns.append(distinct_patterns(net, xb, cfg.eps, value_range, cfg.region_samples, gen))
        t_regions += time.perf_counter() - t
    seconds.update(corners=t_corner, pgd=t_pgd, regions=t_regions)
    logger.info("stats of %s: %d samples, %s", model, x.shape[0],
                ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()))
    return StabilityReport(model, cfg, value_range, bounds.layers, np.concatenate(corner), np.concatenate(pgd),
                           np.concatenate(patterns), bounds.correct, bounds.certified, seconds)


def model_stability_report(model_path: Path, cfg: StatsConfig, dataset: str | None = None,
                           data_dir: Path | None = None, inputs: Path | None = None) -> StabilityReport:
    """Load the ONNX model and the first ``cfg.n`` test images of its dataset (the embedded
    subset when no data directory is given; the samples of ``inputs``, an .npz with x and y, when
    given) and compute :func:`stability_statistics`."""
    from robustkit.data import dataset_info, load_dataset, load_inputs
    from robustkit.network import load_onnx

    net = load_onnx(model_path)
    if inputs is not None:
        ds = load_inputs(inputs).head(cfg.n)
        name, info = Path(inputs).name, ds.info
    else:
        name = dataset_of(net.metadata, dataset, model_path)
        info = dataset_info(name)
        ds = load_dataset(name, "test", data_dir).head(cfg.n)
    if len(ds) < cfg.n:
        logger.warning("only %d test images available from %s (asked for %d)", len(ds), ds.source, cfg.n)
    if ds.images[0].numel() != net.in_dim:
        raise InputError(f"{model_path} takes {net.in_dim} inputs {net.sample_shape}, but {name} images have "
                         f"{ds.images[0].numel()}; wrong --dataset?")
    return stability_statistics(net, ds.images, ds.labels, cfg, value_range_of(net.metadata, info.value_range),
                                Path(model_path).name)


def format_stats(report: StabilityReport, fmt: str = "md") -> str:
    """The per-layer table and the totals as Markdown, or everything as JSON."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2)
    if fmt != "md":
        raise InputError(f"unknown --format {fmt!r}; choose one of {', '.join(STATS_FORMATS)}")
    cfg = report.config
    t = report.totals()
    lines = [
        f"{report.model}: eps {cfg.eps:g}, {cfg.method} bounds, {report.n} samples "
        f"(clean accuracy {100 * report.correct.mean():.1f}%, certified by the bounds {int(report.certified.sum())})",
        "",
        "mean / median over samples:",
        "",
        "| ReLU layer | neurons | stably active | stably inactive | unstable | Hamming x+ vs x- | Hamming x vs PGD |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in report.layer_summaries():
        lines.append(
            f"| {s.layer} (position {s.position}) | {s.dim} | {s.active_mean:.2f} / {s.active_median:.1f} "
            f"| {s.inactive_mean:.2f} / {s.inactive_median:.1f} | {s.unstable_mean:.2f} / {s.unstable_median:.1f} "
            f"| {s.corner_hamming_mean:.2f} / {s.corner_hamming_median:.1f} "
            f"| {s.pgd_hamming_mean:.2f} / {s.pgd_hamming_median:.1f} |"
        )
    lines += [
        f"| all | {sum(layer.dim for layer in report.layers)} | | | {t['unstable_mean']:.2f} / "
        f"{t['unstable_median']:.1f} | {t['corner_hamming_mean']:.2f} / {t['corner_hamming_median']:.1f} "
        f"| {t['pgd_hamming_mean']:.2f} / {t['pgd_hamming_median']:.1f} |",
        "",
        f"distinct activation patterns among {cfg.region_samples} uniform points per box: mean "
        f"{t['patterns_mean']:.2f}, median {t['patterns_median']:.1f}, max {t['patterns_max']:.0f}; "
        f"one pattern only in {100 * t['single_region_fraction']:.1f}% of the boxes",
        f"Hamming x+ vs x-: {cfg.corner_pairs} random opposite-corner pairs per sample (Jin & Rinard, Sec. 5.3); "
        f"PGD: {cfg.pgd_steps} steps x {cfg.pgd_restarts} restart(s), margin loss",
        "time: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.seconds.items()),
    ]
    return "\n".join(lines)
