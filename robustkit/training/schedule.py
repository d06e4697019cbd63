"""Schedules over (fractional) epochs: piecewise-linear learning rate and the eps ramp.

The eps ramp follows the usual certified-training practice (Wong & Kolter 2018; Xiao et al.
2019, Sec. 4): eps grows linearly from ``eps_start`` to its final value between two epochs.
"""

from __future__ import annotations

import numpy as np

from robustkit.errors import InputError
from robustkit.numbers import parse_number

LrKnots = tuple[tuple[float, float], ...]


def validate_knots(knots: LrKnots) -> None:
    """Knots are ``(epoch, lr)`` pairs with strictly increasing epochs >= 0 and lr >= 0."""
    if not knots:
        raise InputError("the learning-rate schedule needs at least one (epoch, lr) knot")
    epochs = [e for e, _ in knots]
    if any(e < 0 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise InputError(f"learning-rate knots need strictly increasing epochs >= 0, got {epochs}")
    if any(lr < 0 for _, lr in knots):
        raise InputError(f"learning rates must be >= 0, got {[lr for _, lr in knots]}")


def lr_at(knots: LrKnots, epoch: float) -> float:
    """Learning rate at fractional ``epoch``: linear between knots, constant outside them."""
    xs = [float(e) for e, _ in knots]
    ys = [float(lr) for _, lr in knots]
    return float(np.interp(epoch, xs, ys))


def parse_lr_schedule(text: str) -> LrKnots:
    """Parse ``"1e-3"`` (constant) or ``"0:1e-3,10:1e-3,20:1e-4"`` (epoch:lr knots)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise InputError("empty learning-rate schedule; examples: 1e-3 or 0:1e-3,10:1e-4")
    if len(parts) == 1 and ":" not in parts[0]:
        knots: LrKnots = ((0.0, parse_number(parts[0], "learning rate")),)
    else:
        pairs = []
        for part in parts:
            if part.count(":") != 1:
                raise InputError(f"learning-rate knot {part!r} must be EPOCH:LR (e.g. 10:1e-4)")
            e, lr = part.split(":")
            pairs.append((parse_number(e, "epoch"), parse_number(lr, "learning rate")))
        knots = tuple(pairs)
    validate_knots(knots)
    return knots


def eps_at(eps: float, eps_start: float, ramp: tuple[float, float], epoch: float) -> float:
    """eps at fractional ``epoch``: ``eps_start`` before ``ramp[0]``, ``eps`` after ``ramp[1]``,
    linear in between; with ``ramp[1] <= ramp[0]`` (no ramp) always ``eps``."""
    begin, end = ramp
    if end <= begin:
        return float(eps)
    t = min(max((epoch - begin) / (end - begin), 0.0), 1.0)
    return float(eps_start + t * (eps - eps_start))


def parse_ramp(text: str) -> tuple[float, float]:
    """Parse an eps ramp ``"START:END"`` (epochs), e.g. ``"1:10"``."""
    if str(text).count(":") != 1:
        raise InputError(f"eps ramp {text!r} must be START:END in epochs (e.g. 1:10)")
    a, b = str(text).split(":")
    begin, end = parse_number(a, "ramp start epoch"), parse_number(b, "ramp end epoch")
    if begin < 0 or end < begin:
        raise InputError(f"eps ramp {text!r} needs 0 <= START <= END")
    return (begin, end)
