"""Validation of regularizer configs and parsing of option strings into config fields.

Every regularizer has a frozen config dataclass whose ``__post_init__`` calls the checks below,
so a bad value raises :class:`~robustkit.errors.InputError` whether it came from the command line
or from Python. :func:`coerce_options` turns ``{"eps": "8/255", "steps": "7"}`` into typed
values using the dataclass's annotations (no ``eval``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping

from robustkit.errors import InputError
from robustkit.numbers import parse_number

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "auto", "null", ""}


def require_nonneg(owner: str, **values: float | None) -> None:
    """Every given value must be finite and ``>= 0`` (``None`` passes)."""
    for key, value in values.items():
        if value is None:
            continue
        if not math.isfinite(float(value)) or float(value) < 0:
            raise InputError(f"{owner}: {key} must be a finite number >= 0, got {value}")


def require_positive(owner: str, **values: float | None) -> None:
    """Every given value must be finite and ``> 0`` (``None`` passes)."""
    for key, value in values.items():
        if value is None:
            continue
        if not math.isfinite(float(value)) or float(value) <= 0:
            raise InputError(f"{owner}: {key} must be a finite number > 0, got {value}")


def require_choice(owner: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise InputError(f"{owner}: {key} must be one of {list(choices)}, got {value!r}")


def field_names(config_cls: type) -> list[str]:
    """The option names a config dataclass accepts."""
    return [f.name for f in dataclasses.fields(config_cls)]


def _coerce(owner: str, key: str, text: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if text.strip().lower() in _NONE:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(owner, key, text, inner[0])
    if origin is Literal:
        if text not in args:
            raise InputError(f"{owner}: {key} must be one of {list(args)}, got {text!r}")
        return text
    if origin is tuple:
        parts = [p for p in text.split(",") if p.strip()]
        return tuple(_coerce(owner, key, p, args[0]) for p in parts)
    if hint is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InputError(f"{owner}: {key} must be true or false, got {text!r}")
    if hint is int:
        value = parse_number(text, f"{owner} {key}")
        if value != int(value):
            raise InputError(f"{owner}: {key} must be an integer, got {text!r}")
        return int(value)
    if hint is float:
        return parse_number(text, f"{owner} {key}")
    if hint is str:
        return text
    raise InputError(f"{owner}: option {key} cannot be set from text")


def coerce_options(owner: str, config_cls: type, options: Mapping[str, str]) -> dict[str, Any]:
    """Convert text options to the types of ``config_cls``'s fields; unknown keys -> InputError."""
    hints = typing.get_type_hints(config_cls)
    valid = field_names(config_cls)
    out: dict[str, Any] = {}
    for key, text in options.items():
        if key not in valid:
            raise InputError(f"{owner}: unknown option {key!r}; valid options: {', '.join(valid)}")
        out[key] = _coerce(owner, key, text, hints[key])
    return out
