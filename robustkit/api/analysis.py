"""``rk.bounds``, ``rk.attack``, ``rk.stability``: bound propagation, PGD and ReLU-stability
statistics on a model and a batch, the library functions behind ``robustkit bounds``, ``attack``
and ``stats``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustkit.api.models import ArrayLike, ModelLike, check_eps, labels_of, model_and_samples, model_name
from robustkit.errors import InputError


@dataclass(frozen=True)
class LayerBounds:
    """Bounds ``(N, neurons)`` on the input of one nonlinear operator (a ReLU's pre-activation), at
    ``position`` in the verifier's layer list; ``kind`` the operator (``ReLU``, ...)."""

    position: int
    kind: str
    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def unstable(self) -> torch.Tensor:
        """Per sample, the neurons whose sign the bounds leave open (``lower < 0 < upper``)."""
        return ((self.lower < 0) & (self.upper > 0)).sum(dim=1)


@dataclass(frozen=True)
class BoundsResult:
    """What ``rk.bounds`` returns: ``layers`` (the pre-activation bounds of every nonlinear
    operator, in order), ``output_lower``/``output_upper`` ``(N, classes)``, and with labels
    ``margin_lower`` ``(N, classes - 1)``: lower bounds of ``logit[y] - logit[j]`` for every other
    class ``j`` (all > 0: robust). Bounds are of the network's real-arithmetic function over the
    box; ``rk.verify`` adds the float32 rounding terms before it claims a proof."""

    method: str
    eps: float
    layers: tuple[LayerBounds, ...]
    output_lower: torch.Tensor
    output_upper: torch.Tensor
    margin_lower: torch.Tensor | None = None

    @property
    def certified(self) -> torch.Tensor | None:
        """Per sample, whether every margin lower bound is positive (None without labels)."""
        return None if self.margin_lower is None else (self.margin_lower > 0).all(dim=1)


def bounds(
    model: ModelLike,
    x: ArrayLike,
    eps: float | str,
    method: str = "crown",
    *,
    y: ArrayLike | None = None,
    value_range: tuple[float, float] | None = None,
    time_budget: float | None = None,
) -> BoundsResult:
    """Bounds of ``model`` over the L-inf boxes ``[x - eps, x + eps] ∩ value_range``, by ``method``:
    ``interval``, ``crown``, ``alpha-crown``, ``lp`` (or ``milp``), each including the ones before it.

    ``model`` as for :func:`robustkit.verify` (a module is exported to ONNX in memory and the
    bounds are those of that graph). With labels ``y`` the margins are bounded too.
    ``time_budget``: seconds for the optimising stages (alpha-CROWN, LP)."""
    from robustkit.bounds.methods import BoundMethod, margin_matrix, run_bounds

    bound_method = BoundMethod.parse(method)
    e = check_eps(eps)
    ctx, _, flat, (lo_v, hi_v) = model_and_samples(model, x, value_range)
    net = ctx.net
    xd = torch.from_numpy(flat).double()
    C = None
    if y is not None:
        C = margin_matrix(torch.from_numpy(labels_of(y, flat.shape[0], net.out_dim)), net.out_dim)
    result = run_bounds(net, (xd - e).clamp(lo_v, hi_v), (xd + e).clamp(lo_v, hi_v), bound_method, C, time_budget)
    nb = result.bounds
    layers = []
    for pos, layer in enumerate(net.layers):
        if layer.nonlinear and getattr(layer, "part_of", None) is None:
            lo, hi = nb.pre_activation(net, pos)
            ident = getattr(layer, "identity", None)
            keep = slice(None) if ident is None else ~ident
            layers.append(LayerBounds(pos, type(layer).__name__, lo.detach()[:, keep], hi.detach()[:, keep]))
    out_lo, out_hi = nb.output()
    margin = None if result.spec is None else result.spec.lower.detach()
    return BoundsResult(bound_method.value, e, tuple(layers), out_lo.detach(), out_hi.detach(), margin)


@dataclass(frozen=True)
class AttackResult:
    """What ``rk.attack`` returns: ``x_adv`` (shaped like ``x``, inside the eps-box), ``clean_correct``
    (onnxruntime classifies the clean sample right), ``success`` (onnxruntime classifies ``x_adv``
    otherwise than ``y`` while the clean sample was right: a replayed counterexample),
    ``clean_accuracy`` and ``pgd_accuracy`` as fractions."""

    x_adv: torch.Tensor
    clean_correct: torch.Tensor
    success: torch.Tensor
    eps: float

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def pgd_accuracy(self) -> float:
        return float((self.clean_correct & ~self.success).float().mean())


def attack(
    model: ModelLike,
    x: ArrayLike,
    y: ArrayLike,
    eps: float | str,
    *,
    norm: str = "linf",
    steps: int = 50,
    restarts: int = 4,
    loss: str = "ce",
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
) -> AttackResult:
    """PGD on ``model`` at the samples ``x`` (labels ``y``) within radius ``eps`` (``norm``: linf or
    l2) clipped to ``value_range``; every adversarial point is replayed in onnxruntime, and only
    those it misclassifies count as a success."""
    from robustkit.attacks import PGD

    e = check_eps(eps)
    ctx, xt, flat, (lo, hi) = model_and_samples(model, x, value_range)
    labels = torch.from_numpy(labels_of(y, flat.shape[0], ctx.net.out_dim))
    pgd = PGD(norm=norm, steps=steps, restarts=restarts, loss=loss, seed=seed, device="cpu")  # type: ignore[arg-type]
    shaped = torch.from_numpy(flat).reshape(flat.shape[0], *ctx.net.sample_shape)
    result = pgd.run(ctx.module, shaped, labels, e, lo, hi)
    adv = result.x_adv.detach().reshape(flat.shape[0], -1).numpy().astype(np.float32)
    clean_pred = ctx.ort(flat).argmax(axis=1)
    adv_pred = ctx.ort(adv).argmax(axis=1)
    correct = torch.from_numpy(clean_pred == labels.numpy())
    success = correct & torch.from_numpy(adv_pred != labels.numpy())
    return AttackResult(torch.from_numpy(adv).reshape(xt.shape), correct, success, e)


def stability(
    model: ModelLike,
    x: ArrayLike,
    eps: float | str,
    *,
    y: ArrayLike | None = None,
    method: str = "crown",
    value_range: tuple[float, float] | None = None,
    **options: Any,
) -> Any:
    """The ReLU-stability statistics of ``robustkit stats`` for the samples ``x``: per ReLU layer the
    stably active, stably inactive and unstable neurons under ``method``'s bounds, the Hamming
    distances between opposite corners and to the PGD point, and the distinct activation patterns
    in each box. Labels ``y`` default to the model's predictions. ``options``: the other fields of
    :class:`~robustkit.report.stats.StatsConfig` (``corner_pairs``, ``region_samples``,
    ``pgd_steps``, ...). Returns a :class:`~robustkit.report.stats.StabilityReport`;
    ``robustkit.report.stats.format_stats(report)`` prints the table of ``robustkit stats``."""
    from robustkit.report.stats import StatsConfig, stability_statistics

    e = check_eps(eps)
    ctx, _, flat, vr = model_and_samples(model, x, value_range)
    if y is None:
        labels = ctx.ort(flat).argmax(axis=1).astype(np.int64)
    else:
        labels = labels_of(y, flat.shape[0], ctx.net.out_dim)
    try:
        cfg = StatsConfig(eps=e, n=flat.shape[0], method=method, **options)
    except TypeError as exc:
        raise InputError(f"unknown stability option: {exc}") from exc
    return stability_statistics(ctx.net, torch.from_numpy(flat), torch.from_numpy(labels), cfg, vr,
                                model_name(model))
