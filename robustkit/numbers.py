"""Parsing of user-given numbers such as eps values ("0.1", "8/255", "2e-3")."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from robustkit.errors import InputError

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_FRACTION = re.compile(rf"^\s*({_NUMBER})\s*/\s*({_NUMBER})\s*$")
_PLAIN = re.compile(rf"^\s*({_NUMBER})\s*$")


def parse_number(text: str, what: str = "value") -> float:
    """Parse a finite decimal number or a fraction ``a/b`` (no expressions, no ``eval``)."""
    text = str(text)
    m = _FRACTION.match(text)
    try:
        if m:
            num, den = Fraction(m.group(1)), Fraction(m.group(2))
            if den == 0:
                raise InputError(f"{what} {text!r}: division by zero")
            value = float(num / den)
        elif _PLAIN.match(text):
            value = float(text)
        else:
            raise InputError(
                f"{what} {text!r} is not a number (examples: 0.1, 8/255, 2e-3)"
            )
    except (ValueError, ZeroDivisionError, OverflowError) as exc:
        raise InputError(f"{what} {text!r} is not a number: {exc}") from exc
    if not math.isfinite(value):
        raise InputError(f"{what} {text!r} is not finite")
    return value


def parse_eps(text: str) -> float:
    """Parse a perturbation radius: a non-negative finite number or fraction."""
    value = parse_number(text, "eps")
    if value < 0:
        raise InputError(f"eps {text!r} is negative; it must be >= 0")
    return value
