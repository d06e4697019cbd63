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


def format_eps(value: float, max_denominator: int = 1024) -> str:
    """``value`` as it was most likely written: a short decimal as such (``0.1``), a fraction
    ``k/d`` with ``d <= max_denominator`` whose float is exactly ``value`` as that fraction
    (``8/255``, what :func:`parse_eps` turns ``"8/255"`` into), else ``{:g}``."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    short = f"{value:g}"
    if value == 0 or (float(short) == value and len(short) <= 6):
        return short
    for den in range(2, max_denominator + 1):
        num = round(value * den)
        if num and float(Fraction(num, den)) == value and math.gcd(num, den) == 1:
            return f"{num}/{den}"
    return short if float(short) == value else repr(value)
