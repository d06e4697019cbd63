"""Projected gradient descent (PGD) under L-inf and L2, FGSM, and a general box attack.

PGD follows Madry et al. (2018), "Towards Deep Learning Models Resistant to Adversarial
Attacks", Sec. 2.1: ``x_{t+1} = Proj_{B(x, eps)}(x_t + alpha * step(grad L(x_t)))`` with
``step = sign`` for L-inf and ``step = g / ||g||_2`` for L2, from a uniformly random start in
the ball, with random restarts keeping the best point per sample. FGSM (Goodfellow et al., 2015)
is one step of size eps from the clean point. The margin loss is the Carlini & Wagner (2017)
objective ``max_{j != y} z_j - z_y`` (their f_6 without the confidence clamp).

:func:`attack_box` maximizes an arbitrary differentiable objective of the logits over a general
input box (e.g. a VNN-LIB input region) with sign-gradient steps scaled to the box width.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from robustkit.attacks.base import NORMS, Attack, Norm, model_on, project, resolve_device
from robustkit.errors import InputError

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def _margin_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """CW margin per sample, larger = closer to success (see :func:`robustkit.attacks.base.margins`)."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return true - others if targeted else others - true


def _ce_loss(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Cross-entropy per sample; the targeted attack maximizes minus the CE of the target."""
    ce = nn.functional.cross_entropy(logits, labels, reduction="none")
    return -ce if targeted else ce


LOSSES: dict[str, LossFn] = {"ce": _ce_loss, "margin": _margin_loss}


@dataclass(frozen=True)
class PGD(Attack):
    """PGD attack configuration (L-inf or L2 in one loop); run it with :meth:`Attack.run`.

    ``step_size`` is relative to eps (``alpha = step_size * eps``); ``None`` means
    ``2.5 / steps`` (Madry et al.'s heuristic, so that the iterate can cross the ball).
    With ``random_start=False`` the first restart starts at the clean point and later restarts
    start at random points. ``early_stop`` ends the run once every sample of the chunk succeeds.
    ``seed`` makes the random starts reproducible (a private generator; global RNG untouched).
    ``device``: None = where the model lives, ``"auto"`` = cuda when available, else a name.
    """

    norm: Norm = "linf"
    steps: int = 50
    restarts: int = 1
    step_size: float | None = None
    loss: str = "ce"
    random_start: bool = True
    early_stop: bool = True
    seed: int = 0
    device: str | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; choose one of {list(NORMS)}")
        if self.loss not in LOSSES:
            raise InputError(f"unknown attack loss {self.loss!r}; choose one of {sorted(LOSSES)}")
        if self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise InputError(f"restarts must be >= 1, got {self.restarts}")
        if self.step_size is not None and not (0 < self.step_size < math.inf):
            raise InputError(f"step_size must be positive and finite, got {self.step_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def alpha(self) -> float:
        """Step size relative to eps."""
        return self.step_size if self.step_size is not None else 2.5 / self.steps

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
        loss_fn = LOSSES[self.loss]
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            best_x = x.clone()
            best_m = _margin_loss(model(x), y, targeted)
        if eps == 0.0:
            return best_x
        alpha = self.alpha * eps
        for r in range(self.restarts):
            if self.early_stop and bool((best_m > 0).all()):
                break
            if r == 0 and not self.random_start:
                x_cur = x.clone()
            else:
                x_cur = project(
                    x + _random_in_ball(x.shape, eps, self.norm, gen).to(x.device),
                    x, eps, self.norm, lower, upper,
                )
            for t in range(self.steps + 1):
                with torch.enable_grad():
                    x_cur.requires_grad_(True)
                    logits = model(x_cur)
                    m = _margin_loss(logits.detach(), y, targeted)
                    better = m > best_m
                    best_m = torch.where(better, m, best_m)
                    best_x[better] = x_cur.detach()[better]
                    if t == self.steps or (self.early_stop and bool((best_m > 0).all())):
                        break
                    (grad,) = torch.autograd.grad(loss_fn(logits, y, targeted).sum(), x_cur)
                x_cur = project(x_cur.detach() + alpha * _direction(grad, self.norm), x, eps,
                                self.norm, lower, upper)
        return best_x


def _direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest ascent direction of unit norm: sign (L-inf) or normalized gradient (L2)."""
    if norm == "linf":
        return grad.sign()
    n = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    return grad / n.view(-1, *([1] * (grad.dim() - 1)))


def _random_in_ball(shape: torch.Size, eps: float, norm: Norm, gen: torch.Generator) -> torch.Tensor:
    """A uniform sample from the eps-ball (on cpu, from the private generator)."""
    if norm == "linf":
        return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * eps
    b, d = shape[0], int(math.prod(shape[1:]))
    g = torch.randn((b, d), generator=gen)
    g = g / g.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)
    radius = eps * torch.rand((b, 1), generator=gen) ** (1.0 / max(d, 1))
    return (g * radius).view(shape)


def fgsm(norm: Norm = "linf", loss: str = "ce", device: str | None = None,
         batch_size: int | None = None) -> PGD:
    """FGSM (Goodfellow et al., 2015) / FGM for L2: one step of size eps from the clean point."""
    return PGD(norm=norm, steps=1, restarts=1, step_size=1.0, loss=loss, random_start=False,
               early_stop=False, device=device, batch_size=batch_size)


ATTACKS: dict[str, Callable[..., Attack]] = {"pgd": PGD, "fgsm": fgsm}


def make_attack(name: str, **options: object) -> Attack:
    """Build a registered attack by name (``pgd`` or ``fgsm``) with keyword options."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    try:
        return ATTACKS[name](**options)
    except TypeError as exc:
        raise InputError(f"bad options for attack {name!r}: {exc}") from exc


def attack_box(
    model: nn.Module,
    lower: torch.Tensor,
    upper: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    steps: int = 100,
    restarts: int = 5,
    seed: int = 0,
    device: str | None = None,
    step_fraction: float | Sequence[float] = 0.1,
    stop_above: float | None = None,
    surrogates: Sequence[nn.Module | None] = (None,),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximize ``objective(model(x))`` (B,) over the box ``lower <= x <= upper`` (B, ...).

    Sign-gradient ascent with per-element step ``step_fraction * (upper - lower)`` decayed by a
    cosine schedule to 1% of that over ``steps``; the first restart starts at the box centre,
    later ones at uniform random points (private generator seeded with ``seed``). Every iterate
    stays inside the box; the best iterate per sample is kept. ``stop_above``: stop once every
    sample's best objective exceeds it (e.g. 0 for "a counterexample was found").
    A sequence of step fractions is cycled over the restarts (restart ``r`` uses entry
    ``r % len``): large steps (1.0: corner to corner) cross the flat regions where most ReLUs are
    off, in which small steps stall. ``surrogates`` are cycled the same way: restart ``r`` takes
    its gradients from ``surrogates[r % len]`` (None: ``model`` itself), a module that must
    compute the same function as ``model`` (e.g. ``Network.to_torch(relu_grad_slope=...)``,
    whose gradients also flow through inactive ReLUs); the kept iterate is re-evaluated on
    ``model``.

    ``device``: None = where the model lives, ``"auto"`` = cuda when available, else a name.
    Returns ``(x_best, best_objective)`` on the device of ``lower``; ``best_objective`` is
    recomputed with a fresh forward pass at ``x_best``.
    """
    if not isinstance(lower, torch.Tensor) or not isinstance(upper, torch.Tensor):
        raise InputError("lower and upper must be tensors of shape (B, ...)")
    if lower.shape != upper.shape or lower.dim() < 2:
        raise InputError(
            f"lower and upper must have the same shape (B, ...), got {tuple(lower.shape)} "
            f"and {tuple(upper.shape)}"
        )
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise InputError("the input box must be finite (no NaN/inf bounds)")
    if (lower > upper).any():
        raise InputError("the input box is empty somewhere: lower > upper")
    fractions = [float(step_fraction)] if isinstance(step_fraction, (int, float)) else [float(f) for f in step_fraction]
    if steps < 0 or restarts < 1 or not fractions or not all(f > 0 for f in fractions):
        raise InputError("attack_box needs steps >= 0, restarts >= 1 and step fractions > 0")
    if not surrogates:
        raise InputError("surrogates must name at least one model (None: the model itself)")
    dev = resolve_device(device, model)
    model = model_on(model, dev)
    grad_models = [model if m is None else model_on(m, dev) for m in surrogates]
    out_device = lower.device
    lo = lower.detach().to(dev, torch.float32)
    hi = upper.detach().to(dev, torch.float32)
    width = hi - lo
    gen = torch.Generator().manual_seed(seed)

    def evaluate(z: torch.Tensor, net: nn.Module = model) -> torch.Tensor:
        val = objective(net(z))
        if val.shape != (z.shape[0],):
            raise InputError(f"the objective must return shape (B,) = ({z.shape[0]},), "
                             f"got {tuple(val.shape)}")
        return val

    best_x = (lo + hi) / 2
    with torch.no_grad():
        best_v = evaluate(best_x).detach()
    for r in range(restarts):
        if r == 0:
            x_cur = best_x.clone()
        else:
            u = torch.rand(lo.shape, generator=gen).to(dev)
            x_cur = torch.minimum(torch.maximum(lo + u * width, lo), hi)
        for t in range(steps + 1):
            with torch.enable_grad():
                x_cur.requires_grad_(True)
                val = evaluate(x_cur, grad_models[r % len(grad_models)])
                better = val.detach() > best_v
                best_v = torch.where(better, val.detach(), best_v)
                best_x[better] = x_cur.detach()[better]
                if t == steps:
                    break
                if stop_above is not None and bool((best_v > stop_above).all()):
                    break
                if not val.requires_grad:  # objective independent of the input
                    break
                (grad,) = torch.autograd.grad(val.sum(), x_cur)
            scale = fractions[r % len(fractions)] * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t / max(steps, 1))))
            x_cur = x_cur.detach() + scale * width * grad.sign()
            x_cur = torch.minimum(torch.maximum(x_cur, lo), hi)
        if stop_above is not None and bool((best_v > stop_above).all()):
            break
    with torch.no_grad():
        final = evaluate(best_x).detach()
    return best_x.to(out_device), final.to(out_device)
