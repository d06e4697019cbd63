"""Figures of the reports, drawn with matplotlib's Agg canvas (no display, no pyplot state):
ReLU stability per layer and verified vs PGD accuracy across models and eps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from robustkit.errors import InputError

if TYPE_CHECKING:
    from robustkit.report.stats import StabilityReport

logger = logging.getLogger(__name__)

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
#: Okabe & Ito's palette, told apart with every common form of colour blindness (black first
#: left out: it is kept for text and reference lines).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
#: The palette's colours for lines and markers: its yellow is too light on white for a thin line.
LINE_COLOURS = tuple(c for c in OKABE_ITO if c != "#F0E442")
#: Markers cycled beside the 7 line colours; 8 is prime to 7, so the first 56 models all get a
#: different (colour, marker) pair and neighbours differ in both.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
COLORS = {"active": OKABE_ITO[2], "inactive": "#999999", "unstable": OKABE_ITO[5],
          "clean": "#BBBBBB", "pgd": OKABE_ITO[0], "verified": OKABE_ITO[4], "bounds": OKABE_ITO[1]}
HATCHES = {"clean": "", "pgd": "//", "bounds": "..", "verified": ""}


def model_style(i: int) -> tuple[str, str]:
    """The colour and marker of the ``i``-th model: colour-blind-safe, distinct for 56 models."""
    return LINE_COLOURS[i % len(LINE_COLOURS)], MARKERS[i % len(MARKERS)]


def _caption(fig: Figure, note: str | None) -> None:
    """``note`` (n, time limit, method) as a caption under the axes."""
    if note:
        fig.text(0.01, -0.02, note, ha="left", va="top", fontsize=8, wrap=True)


def check_plot_path(path: Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"plot file {path} must end in one of {', '.join(PLOT_SUFFIXES)}")
    return path


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    logger.info("wrote %s", path)
    return path


def plot_stability(report: "StabilityReport", path: Path) -> Path:
    """Left: per ReLU layer, mean stably active / stably inactive / unstable neurons as stacked
    bars (fractions of the layer); right: histogram of unstable ReLUs per sample (all layers)."""
    path = check_plot_path(path)
    summaries = report.layer_summaries()
    fig = Figure(figsize=(10, 4))
    ax, hx = fig.subplots(1, 2)
    names = [f"{s.layer}\n({s.dim})" for s in summaries]
    xs = np.arange(len(summaries))
    bottom = np.zeros(len(summaries))
    for key in ("active", "inactive", "unstable"):
        frac = np.array([getattr(s, f"{key}_mean") / max(s.dim, 1) for s in summaries])
        ax.bar(xs, frac, bottom=bottom, color=COLORS[key], label=f"stably {key}" if key != "unstable" else key)
        bottom += frac
    for x, s in zip(xs, summaries):
        ax.annotate(f"{s.unstable_mean:.1f}", (x, 1.0), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, names)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("ReLU layer (neurons)")
    ax.set_ylabel("fraction of the layer (mean over samples)")
    from robustkit.numbers import format_eps

    ax.set_title(f"{report.config.method} bounds, eps {format_eps(report.config.eps)}; numbers: mean unstable")
    ax.legend(loc="lower right", fontsize=8)
    unstable = report.unstable_per_sample
    bins = min(30, max(1, int(np.unique(unstable).size)))
    hx.hist(unstable, bins=bins, color=COLORS["unstable"])
    hx.set_xlabel("unstable ReLUs per sample (all layers)")
    hx.set_ylabel("samples")
    hx.set_title(f"{report.model}: {report.n} samples, mean {float(np.mean(unstable)):.1f}")
    return _save(fig, path)


def plot_accuracy(rows: Sequence[Any], path: Path, note: str | None = None) -> Path:
    """Verified vs PGD accuracy across eps and models (``rows``: :class:`robustkit.report.tables.TableRow`
    or their dicts). With two or more eps: accuracy against eps, one colour and marker per model
    (:func:`model_style`), verified solid, PGD dashed, verified by bounds alone dotted. With one
    eps: grouped bars per model (clean, PGD, verified by bounds, verified), hatched so that they
    read in grey too, with the verified accuracy's Wilson 95% interval as an error bar. ``note``
    (n, time limit) is printed under the figure; without it the samples per point are stated."""
    from robustkit.numbers import format_eps

    path = check_plot_path(path)
    dicts = [r if isinstance(r, dict) else r.to_dict() for r in rows]
    if not dicts:
        raise InputError("no table rows to plot")
    eps_values = sorted({float(r["eps"]) for r in dicts})
    models = list(dict.fromkeys(r["model"] for r in dicts))
    labels = [m.removesuffix(".onnx") for m in models]
    ns = sorted({int(r["n"]) for r in dicts})
    note = note or f"n = {ns[0] if len(ns) == 1 else f'{ns[0]}-{ns[-1]}'} test images per point."
    if len(eps_values) >= 2:
        fig = Figure(figsize=(8, 4.5))
        ax = fig.subplots()
        for i, (model, label) in enumerate(zip(models, labels)):
            color, marker = model_style(i)
            pts = sorted((float(r["eps"]), r) for r in dicts if r["model"] == model)
            xs = [e for e, _ in pts]
            ax.plot(xs, [r["verified_accuracy"] for _, r in pts], "-", marker=marker, color=color, label=label)
            ax.plot(xs, [r["pgd_accuracy"] for _, r in pts], "--", marker=marker, mfc="none", color=color, alpha=0.8)
            ax.plot(xs, [r["bounds_verified_accuracy"] for _, r in pts], ":", color=color, alpha=0.6)
        ax.set_xticks(eps_values, [format_eps(e) for e in eps_values])
        ax.set_xlabel("eps (L-inf)")
        ax.set_ylabel("accuracy %")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title("verified (solid, filled) vs PGD (dashed, hollow); dotted: verified by bounds alone")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        _caption(fig, note)
        return _save(fig, path)
    fig = Figure(figsize=(max(5.0, 1.1 * len(models) + 2), 4.0))
    ax = fig.subplots()
    by_model = {r["model"]: r for r in dicts}
    series = (("clean_accuracy", "clean", "clean"), ("pgd_accuracy", "PGD", "pgd"),
              ("bounds_verified_accuracy", "verified by bounds", "bounds"),
              ("verified_accuracy", "verified", "verified"))
    width = 0.8 / len(series)
    xs = np.arange(len(models))
    for j, (key, label, color) in enumerate(series):
        vals = [float(by_model[m][key]) for m in models]
        err = None
        if key == "verified_accuracy" and all("verified_ci_low" in by_model[m] for m in models):
            err = np.array([[v - float(by_model[m]["verified_ci_low"]), float(by_model[m]["verified_ci_high"]) - v]
                            for v, m in zip(vals, models)]).T
        ax.bar(xs + (j - (len(series) - 1) / 2) * width, vals, width, label=label, color=COLORS[color],
               hatch=HATCHES[color], edgecolor="#333333", linewidth=0.5, yerr=err, capsize=2 if err is not None else 0)
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy %")
    ax.set_title(f"eps {format_eps(eps_values[0])}; error bars: Wilson 95% interval of the verified accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _caption(fig, note)
    return _save(fig, path)
