"""Reading what a model says about itself: robustkit's ONNX metadata (written by ``export``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from robustkit.errors import InputError

logger = logging.getLogger(__name__)


def metadata_text(meta: dict[str, str], key: str) -> str | None:
    """A string metadata value, JSON-decoded when it was stored as a JSON string."""
    raw = meta.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def dataset_of(meta: dict[str, str], override: str | None, source: str | Path) -> str:
    """``override``, else the model's ``robustkit.dataset`` metadata, else an :class:`InputError`."""
    name = override or metadata_text(meta, "robustkit.dataset")
    if not name:
        raise InputError(f"{source} carries no robustkit metadata naming its dataset (models written by "
                         "`robustkit export` do; VNN-COMP models do not): pass --dataset (mnist, cifar10, a .npz file or a folder) or --inputs FILE.npz")
    return name


def value_range_of(meta: dict[str, str], default: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """The valid input range from ``robustkit.value_range`` (``[lo, hi]``), else ``default``."""
    raw = meta.get("robustkit.value_range")
    if raw:
        try:
            lo, hi = json.loads(raw)
            return float(lo), float(hi)
        except (ValueError, TypeError):
            logger.warning("ignoring unreadable robustkit.value_range metadata %r", raw)
    return default
