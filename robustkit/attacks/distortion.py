"""Minimal adversarial distortion: the smallest radius at which an attack breaks each sample.

Gu & Rigazio (2015, Sec. 2 and Table 1) compare networks by the average distortion of the
*smallest* adversarial example an attack finds; a more robust net needs a larger one. Here the
radius is searched per sample by bisection on ``eps`` with a norm-bounded attack (PGD, L2 or
L-inf): ``hi`` is always a radius at which the attack succeeded (with the point found there kept
as the witness), ``lo`` one at which it failed, so the result is an *upper bound* on the true
minimal distortion (an attack, not a proof), within ``rel_tol`` of the attack's own threshold.
Misclassified samples have distortion 0; samples the attack cannot break at ``max_eps`` are
reported as censored (``inf``), never silently as ``max_eps``. Gu & Rigazio's averages are over the
adversarial examples of correctly classified samples: :meth:`DistortionResult.summary` gives the
median over those (``median_correct``) beside the median over all (which is 0 as soon as half the
samples are misclassified, e.g. on CIFAR-10 at 30-45% clean accuracy).

Gu & Rigazio report ``sqrt(mean_i (x'_i - x_i)^2)``, the L2 norm divided by ``sqrt(n)``;
:attr:`DistortionResult.rms` gives it, ``radius`` the plain norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from robustkit.attacks.base import Attack, distance
from robustkit.errors import InputError


@dataclass(frozen=True)
class DistortionResult:
    """Per sample: ``radius`` (the attack norm of ``x_adv - x``; 0 if misclassified, ``inf`` if
    never broken up to ``max_eps``), ``x_adv`` (the witness, = ``x`` when not broken),
    ``misclassified`` (the clean prediction was already wrong: no attack needed)."""

    radius: torch.Tensor  # (B,) float64
    x_adv: torch.Tensor
    norm: str
    misclassified: torch.Tensor  # (B,) bool

    @property
    def broken(self) -> torch.Tensor:
        return torch.isfinite(self.radius)

    @property
    def rms(self) -> torch.Tensor:
        """Gu & Rigazio's distortion ``sqrt(mean((x' - x)^2))``: the L2 radius over sqrt(n)."""
        n = self.x_adv[0].numel() if self.x_adv.shape[0] else 1
        if self.norm != "l2":
            raise ValueError("rms distortion is defined for L2 radii")
        return self.radius / math.sqrt(n)

    def summary(self) -> dict[str, float]:
        """Median radius over all samples and over the correctly classified ones (censored ones
        count as larger than any; nan when there are none), mean over the broken ones, and how
        many were not broken."""
        r = self.radius
        finite = r[torch.isfinite(r)]
        correct = r[~self.misclassified]
        return {
            "n": int(r.numel()),
            "median": float(r.median()) if r.numel() else float("nan"),
            "n_correct": int(correct.numel()),
            "median_correct": median_or_nan(correct),
            "mean_broken": float(finite.mean()) if finite.numel() else float("nan"),
            "not_broken": int((~torch.isfinite(r)).sum()),
        }


def median_or_nan(values: torch.Tensor) -> float:
    """The median (torch's: the lower of the two middle values for an even count), nan if empty."""
    return float(values.median()) if values.numel() else float("nan")


def minimal_distortion(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_eps: float,
                       lower: float = 0.0, upper: float = 1.0, iterations: int = 10) -> DistortionResult:
    """Bisection on the attack radius in ``[0, max_eps]``, ``iterations`` halvings per sample."""
    if not (max_eps > 0 and math.isfinite(max_eps)):
        raise InputError(f"max_eps must be positive and finite, got {max_eps}")
    if iterations < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    x = x.detach().float()
    b = x.shape[0]
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    best = x.clone()
    lo = torch.zeros(b, dtype=torch.float64)
    hi = torch.full((b,), math.inf, dtype=torch.float64)
    hi[wrong] = 0.0
    # first probe: can the attack break the sample at all within max_eps?
    todo = (~wrong).nonzero().flatten()
    if todo.numel():
        res = attack.run(model, x[todo], y[todo], max_eps, lower, upper)
        ok = todo[res.success]
        hi[ok] = max_eps
        best[ok] = res.x_adv[res.success]
        lo[todo[~res.success]] = max_eps
    for _ in range(iterations):
        active = (torch.isfinite(hi) & (hi > 0)).nonzero().flatten()
        if not active.numel():
            break
        mids = (lo[active] + hi[active]) / 2
        # the radii are dyadic fractions of max_eps, shared by many samples: one attack call per
        # distinct radius (at most 2^k after k halvings, and at most the number of samples)
        for eps_val in torch.unique(mids):
            sel = active[mids == eps_val]
            res = attack.run(model, x[sel], y[sel], float(eps_val), lower, upper)
            won, lost = sel[res.success], sel[~res.success]
            hi[won] = float(eps_val)
            best[won] = res.x_adv[res.success]
            lo[lost] = float(eps_val)
    radius = torch.where(torch.isfinite(hi), distance(best, x, attack.norm).double().cpu(), hi)
    return DistortionResult(radius=radius, x_adv=best, norm=attack.norm, misclassified=wrong)
