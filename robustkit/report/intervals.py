"""Confidence intervals of accuracies measured on a sample of test images."""

from __future__ import annotations

import math

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``, in percent ``(low, high)``
    (95% by default). Unlike the normal approximation it stays inside [0, 100] and is not empty
    at 0 or n successes, which matters for accuracies measured on 20-200 images. ``n == 0`` gives
    the uninformative ``(0, 100)``."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 100.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else 100.0 * max(0.0, centre - half)  # exact at the ends
    high = 100.0 if successes == n else 100.0 * min(1.0, centre + half)
    return low, high
