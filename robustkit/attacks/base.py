"""The attack contract: the base class owns projection, clipping and the success check.

Modelled on Foolbox 3 (Rauber et al., 2020): a concrete attack only proposes candidate points;
:meth:`Attack.run` validates the inputs, projects every candidate onto the intersection of the
eps-ball (L-inf or L2) around ``x`` and the valid input box ``[lower, upper]`` (scalars or
per-element tensors, e.g. from a VNN-LIB property), and decides success with a *fresh* forward
pass on the returned points. Success is strict: some other logit is strictly larger than the true
logit (untargeted), or the target logit is strictly larger than every other logit (targeted).

The guarantee ``dist(x_adv, x) <= eps`` holds exactly when the distance is computed in float64
from the float32 tensors (rounding is repaired by shrinking the perturbation), and
``lower <= x_adv <= upper`` holds exactly.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from robustkit.errors import InputError
from robustkit.subnormal import flush_subnormals

logger = logging.getLogger(__name__)

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
Bound = torch.Tensor | float


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns for a batch of B samples.

    ``x_adv``: the returned points (same shape and device as the input ``x``), always inside the
    eps-ball and the valid box. ``success``: bool (B,), recomputed from a fresh forward pass on
    ``x_adv``. ``best_margin``: float (B,), the margin at ``x_adv``: untargeted
    ``max_{j != y} z_j - z_y``, targeted ``z_t - max_{j != t} z_j``; ``success == best_margin > 0``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    best_margin: torch.Tensor

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples the attack did not break."""
        return float((~self.success).float().mean().item()) if self.success.numel() else float("nan")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); cpu for a stateless module."""
    for t in list(model.parameters())[:1] + list(model.buffers())[:1]:
        return t.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, model: nn.Module | None = None) -> torch.device:
    """Where to attack.

    ``None``: where ``model`` lives (cpu without a model); ``"auto"``: cuda when available, else
    cpu; otherwise the named device (``"cuda"`` without a GPU -> InputError).
    """
    if device is None:
        return model_device(model) if model is not None else torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def model_on(model: nn.Module, dev: torch.device) -> nn.Module:
    """``model`` itself when it already lives on ``dev``, else a copy moved there (the caller's
    model is never moved)."""
    if model_device(model) == dev:
        return model
    return copy.deepcopy(model).to(dev)


def margins(logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Per-sample margin (B,): untargeted ``max_{j!=y} z_j - z_y``; targeted ``z_y - max_{j!=y} z_j``.

    For the targeted case ``y`` holds the target classes. Positive margin = attack success.
    """
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise InputError(
            f"labels/targets must be class indices in [0, {logits.shape[1] - 1}], "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf")).amax(dim=1)
    return true - others if targeted else others - true


def distance(x_adv: torch.Tensor, x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-sample distance (B,) in float64 (exact differences of float32 values)."""
    d = (x_adv.double() - x.double()).flatten(1)
    if norm == "linf":
        return d.abs().amax(dim=1) if d.shape[1] else d.new_zeros(d.shape[0])
    return d.norm(p=2, dim=1)


def broadcast_bound(bound: Bound, x: torch.Tensor, name: str) -> torch.Tensor:
    """Turn a scalar or a tensor broadcastable to ``x`` into a tensor of x's shape/dtype/device."""
    if isinstance(bound, torch.Tensor):
        b = bound.to(device=x.device, dtype=x.dtype)
    else:
        b = torch.tensor(float(bound), device=x.device, dtype=x.dtype)
    try:
        b = torch.broadcast_to(b, x.shape)
    except RuntimeError as exc:
        raise InputError(
            f"{name} of shape {tuple(b.shape)} does not broadcast to the input shape {tuple(x.shape)}"
        ) from exc
    if not torch.isfinite(b).all():
        raise InputError(f"{name} contains NaN or infinite values; give a finite box")
    return b


def project(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    eps: float,
    norm: Norm,
    lower: torch.Tensor,
    upper: torch.Tensor,
) -> torch.Tensor:
    """Project onto {eps-ball around x} intersected with [lower, upper] (``x`` must lie in the box).

    L-inf: exact projection (per-coordinate clamp to the intersection of the two intervals).
    L2: radial projection onto the ball, then clamp to the box; since ``x`` is in the box, the
    clamp never increases the distance to ``x``, so the result is feasible (not necessarily the
    Euclidean projection onto the intersection). Float rounding is then repaired so that the
    float64 distance of the returned float32 point is ``<= eps`` exactly.
    """
    x_adv = x_adv.detach()
    if norm == "linf":
        lo = torch.maximum(x - eps, lower)
        hi = torch.minimum(x + eps, upper)
        x_adv = torch.minimum(torch.maximum(x_adv, lo), hi)
    else:
        delta = (x_adv - x).flatten(1)
        n = delta.norm(p=2, dim=1, keepdim=True)
        factor = torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
        x_adv = x + (delta * factor).view_as(x)
        x_adv = torch.minimum(torch.maximum(x_adv, lower), upper)
    return _repair(x_adv, x, eps, norm, lower, upper)


def _repair(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    eps: float,
    norm: Norm,
    lower: torch.Tensor,
    upper: torch.Tensor,
) -> torch.Tensor:
    """Shrink perturbations that exceed eps by float rounding (a few ulps) until they do not."""
    shrink = 1e-7
    for _ in range(64):
        bad = distance(x_adv, x, norm) > eps
        if not bad.any():
            return x_adv
        idx = bad.nonzero().squeeze(1)
        xb = x[idx]
        fixed = xb + (x_adv[idx] - xb) * (1.0 - shrink)
        x_adv = x_adv.clone()
        x_adv[idx] = torch.minimum(torch.maximum(fixed, lower[idx]), upper[idx])
        shrink = min(shrink * 4.0, 1.0)
    x_adv = x_adv.clone()
    bad = distance(x_adv, x, norm) > eps
    x_adv[bad] = x[bad]  # unreachable in practice: fall back to the clean point
    return x_adv


class Attack(ABC):
    """Base class of all attacks. Subclasses implement :meth:`_perturb` only.

    Subclasses set ``norm`` (``"linf"`` or ``"l2"``) and ``device`` (``None`` = where the model
    lives, ``"auto"`` = cuda when available else cpu, or a device name); a model elsewhere is
    copied there, never moved. Results come back on the device of the input ``x``.
    """

    norm: Norm
    device: str | None
    batch_size: int | None = None

    @abstractmethod
    def _perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        lower: torch.Tensor,
        upper: torch.Tensor,
        targeted: bool,
    ) -> torch.Tensor:
        """Return candidate points (B, ...) for one chunk; ``y`` is the target if ``targeted``.

        Candidates need not be feasible: :meth:`run` projects them.
        """

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        lower: Bound = 0.0,
        upper: Bound = 1.0,
        target: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` at the points ``x`` (B, ...) with labels ``y`` (B,).

        ``target`` (B,) makes the attack targeted: success means the target class wins.
        ``x`` must lie in ``[lower, upper]``; ``eps`` must be finite and >= 0.
        """
        x, y, target, eps = _validate(x, y, target, eps, self.norm)
        dev = resolve_device(self.device, model)
        out_device = x.device
        model = model_on(model, dev)
        xd = x.detach().to(dev, torch.float32)
        lo = broadcast_bound(lower, xd, "lower")
        hi = broadcast_bound(upper, xd, "upper")
        if (lo > hi).any():
            raise InputError("the valid input box is empty somewhere: lower > upper")
        if ((xd < lo) | (xd > hi)).any():
            raise InputError(
                "some input values lie outside the valid range [lower, upper]; "
                "pass the data's own range (e.g. 0 and 1 for images scaled to [0, 1])"
            )
        labels = (target if target is not None else y).to(dev)
        targeted = target is not None
        if xd.shape[0]:
            _check_labels(labels, model, xd[:1])
        chunk = self.batch_size or max(1, xd.shape[0])
        xs, succ, marg = [], [], []
        for s in range(0, xd.shape[0], chunk):
            sl = slice(s, s + chunk)
            # the search only proposes points: subnormal weights may be flushed there (6x faster on a
            # weight-decayed model); projection and the success check below run in the caller's mode
            with flush_subnormals(dev.type == "cpu"):
                cand = self._perturb(model, xd[sl], labels[sl], eps, lo[sl], hi[sl], targeted)
            x_adv = project(cand, xd[sl], eps, self.norm, lo[sl], hi[sl])
            with torch.no_grad():
                m = margins(model(x_adv), labels[sl], targeted)
            xs.append(x_adv)
            marg.append(m)
            succ.append(m > 0)
        if xd.shape[0] == 0:
            empty = torch.zeros(0, device=out_device)
            return AttackResult(x.clone(), empty.bool(), empty)
        return AttackResult(
            x_adv=torch.cat(xs).to(out_device, x.dtype),
            success=torch.cat(succ).to(out_device),
            best_margin=torch.cat(marg).to(out_device),
        )


def _check_labels(labels: torch.Tensor, model: nn.Module, x1: torch.Tensor) -> None:
    with torch.no_grad():
        classes = model(x1).shape[1]
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise InputError(
            f"labels/targets must be class indices in [0, {classes - 1}], "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def _validate(
    x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, eps: float, norm: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    if norm not in NORMS:
        raise InputError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise InputError("x must be a tensor of shape (B, ...) with a batch dimension")
    if not torch.isfinite(x).all():
        raise InputError("x contains NaN or infinite values")
    y = torch.as_tensor(y).long().flatten()
    if y.shape[0] != x.shape[0]:
        raise InputError(f"got {x.shape[0]} inputs but {y.shape[0]} labels")
    if target is not None:
        target = torch.as_tensor(target).long().flatten()
        if target.shape[0] != x.shape[0]:
            raise InputError(f"got {x.shape[0]} inputs but {target.shape[0]} targets")
    eps = float(eps)
    if not (eps >= 0.0) or eps == float("inf"):
        raise InputError(f"eps must be finite and >= 0, got {eps}")
    return x, y, target, eps
