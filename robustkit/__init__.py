"""robustkit: train small ReLU networks to be verifiably robust, then prove it.

``import robustkit as rk`` gives the public API (:mod:`robustkit.api`): ``rk.verify``,
``rk.bounds``, ``rk.attack``, ``rk.stability``, ``rk.export``, ``rk.regularizer``. They are imported
on first use, so that ``import robustkit`` itself stays light.

``rk.bounds`` is also the name of the package :mod:`robustkit.bounds`: the package object is made
callable, so ``rk.bounds(model, x, eps)`` calls :func:`robustkit.api.bounds` and
``from robustkit.bounds import ...`` imports from the package as before.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("AttackResult", "BoundsResult", "DropInRegularizer", "LayerBounds", "RegularizerTerms", "SampleResult",
        "VerifyResult", "attack", "bounds", "export", "regularizer", "stability", "verify")

if TYPE_CHECKING:
    from robustkit.api import (  # noqa: F401
        AttackResult, BoundsResult, DropInRegularizer, LayerBounds, RegularizerTerms, SampleResult, VerifyResult,
        attack, bounds, export, regularizer, stability, verify,
    )


class _CallableBounds(types.ModuleType):
    """The package :mod:`robustkit.bounds`, callable as :func:`robustkit.api.bounds`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from robustkit.api import bounds

        return bounds(*args, **kwargs)


def _callable(module: types.ModuleType) -> types.ModuleType:
    if type(module) is types.ModuleType:
        module.__class__ = _CallableBounds
    return module


class _Robustkit(types.ModuleType):
    """This package: ``bounds`` is the subpackage made callable (the import system sets it, the
    public API reads it)."""

    @property
    def bounds(self) -> Any:
        mod = sys.modules.get("robustkit.bounds")
        if mod is None:
            import importlib

            mod = importlib.import_module("robustkit.bounds")
        return _callable(mod)

    @bounds.setter
    def bounds(self, module: types.ModuleType) -> None:
        _callable(module)


def __getattr__(name: str) -> Any:
    if name in _API:
        import robustkit.api as api

        return getattr(api, name)
    raise AttributeError(f"module 'robustkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(["__version__", *_API, *(n for n in globals() if n.startswith("__"))])


__all__ = ["__version__", *_API]

sys.modules[__name__].__class__ = _Robustkit
