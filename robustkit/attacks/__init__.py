"""Adversarial attacks: PGD (L-inf, L2), FGSM, and a general box attack for verification specs."""

from robustkit.attacks.base import (
    NORMS,
    Attack,
    AttackResult,
    distance,
    margins,
    project,
    resolve_device,
)
from robustkit.attacks.pgd import ATTACKS, LOSSES, PGD, attack_box, fgsm, make_attack

__all__ = [
    "ATTACKS",
    "LOSSES",
    "NORMS",
    "PGD",
    "Attack",
    "AttackResult",
    "attack_box",
    "distance",
    "fgsm",
    "make_attack",
    "margins",
    "project",
    "resolve_device",
]
