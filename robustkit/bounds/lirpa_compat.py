"""Optional auto_LiRPA backend (Xu et al. 2020, "Automatic Perturbation Analysis for Scalable
Certified Robustness and Beyond"), used to cross-check robustkit's own IBP/CROWN/alpha-CROWN.

auto_LiRPA is **not** a dependency. Install the tested release without its (old) pins::

    pip install --no-deps auto-lirpa==0.3 tqdm

Release 0.3 declares ``torch<1.13`` and does not import on current torch/numpy as is. This
module (and only this module) applies the small compatibility shims it needs, right before the
first import:

* ``numpy.lib.arraysetops`` (removed in numpy 2) is aliased to a module exporting ``isin``;
* ``torch.onnx.symbolic_helper._set_opset_version`` (removed) is re-created on top of the
  TorchScript exporter's globals;
* ``torch._C.Node.__getitem__`` (attribute access by name, formerly installed by
  ``torch.onnx.utils``) is re-created from ``kindOf``;
* ``BoundedModule._named_members`` gets torch 2.x's ``remove_duplicate`` keyword (patched on
  the class after import; only auto_LiRPA's own class is touched);
* ``appdirs`` (an undeclared import, only used for ``user_data_dir``), when not installed, is
  replaced by a module giving the same Linux default (``$XDG_DATA_HOME`` or ``~/.local/share``).

Alpha-CROWN on conv nets additionally needs ``bound_opts={"sparse_features_alpha": False}``.
Importing auto_LiRPA changes torch's JIT profiling flags process-wide (auto_LiRPA's doing).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from robustkit.bounds.methods import BoundMethod
from robustkit.network import Network
from robustkit.network.torch_modules import Flat, Unflat

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps auto-lirpa==0.3 tqdm"
LIRPA_METHODS = {name: m.lirpa for m in BoundMethod if m.lirpa for name in (m.value, *m.aliases)}


def _node_getitem(node: Any, name: str) -> Any:
    """``node[name]``: a TorchScript node attribute by name (its kind picks the accessor)."""
    return getattr(node, node.kindOf(name))(name)


def _user_data_dir(appname: str | None = None, *args: Any, **kwargs: Any) -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, appname) if appname else base


def _install_shims() -> None:
    """Make auto_LiRPA 0.3 importable on numpy 2 / torch 2.x (idempotent)."""
    import numpy as np

    if "numpy.lib.arraysetops" not in sys.modules:
        try:
            importlib.import_module("numpy.lib.arraysetops")
        except ImportError:
            shim = types.ModuleType("numpy.lib.arraysetops")
            shim.isin = np.isin  # type: ignore[attr-defined]
            sys.modules["numpy.lib.arraysetops"] = shim

    try:
        importlib.import_module("appdirs")
    except ImportError:
        appdirs = types.ModuleType("appdirs")
        appdirs.user_data_dir = _user_data_dir  # type: ignore[attr-defined]
        sys.modules["appdirs"] = appdirs

    import torch.onnx.symbolic_helper as symbolic_helper

    if not hasattr(symbolic_helper, "_set_opset_version"):
        try:
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
        except ImportError:  # older torch: the helper exists, or nothing we can do
            GLOBALS = None

        def _set_opset_version(opset_version: int) -> None:
            if GLOBALS is not None:
                GLOBALS.export_onnx_opset_version = opset_version

        symbolic_helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]

    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = _node_getitem  # type: ignore[attr-defined]


def import_auto_lirpa() -> types.ModuleType:
    """Import auto_LiRPA with the shims; ``ImportError`` (with the install hint) if unavailable."""
    try:
        importlib.import_module("tqdm")
    except ImportError as exc:
        raise ImportError(f"auto_LiRPA needs tqdm; install both with `{INSTALL_HINT}`") from exc
    try:
        # auto_LiRPA 0.3 calls the deprecated torch.jit.script at import and resets the warning
        # filters itself, so record its import-time warnings and drop the deprecation notices.
        with warnings.catch_warnings(record=True) as caught:
            _install_shims()
            module = importlib.import_module("auto_LiRPA")
    except ImportError as exc:
        raise ImportError(f"auto_LiRPA is not importable ({exc}); install it with `{INSTALL_HINT}`") from exc
    for w in caught:
        if not issubclass(w.category, DeprecationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _patch_named_members(module.BoundedModule)
    return module


def _patch_named_members(cls: type) -> None:
    """``BoundedModule._named_members`` overrides torch's without the ``remove_duplicate``
    keyword torch >= 2.0 passes (``parameters()`` fails): accept and drop it."""
    original = cls._named_members  # type: ignore[attr-defined]
    if getattr(original, "_robustkit_shim", False):
        return

    def _named_members(self: Any, get_members_fn: Any, prefix: str = "", recurse: bool = True, **_: Any) -> Any:
        return original(self, get_members_fn, prefix=prefix, recurse=recurse)

    _named_members._robustkit_shim = True  # type: ignore[attr-defined]
    cls._named_members = _named_members  # type: ignore[attr-defined]


def lirpa_available() -> tuple[bool, str]:
    """Whether auto_LiRPA can be used here, and why not."""
    try:
        import_auto_lirpa()
    except Exception as exc:  # any import-time failure of the optional package
        return False, str(exc)
    return True, ""


def _pad_as_linear(shape: tuple[int, int, int], padding: tuple[int, int, int, int], dtype: torch.dtype) -> nn.Linear:
    """Zero padding (top, left, bottom, right) of a flat ``(C, H, W)`` activation as a linear map."""
    c, h, w = shape
    pt, pl, pb, pr = padding
    hp, wp = h + pt + pb, w + pl + pr
    src = torch.arange(c * h * w).reshape(c, h, w)
    dst = torch.arange(c * hp * wp).reshape(c, hp, wp)[:, pt : pt + h, pl : pl + w]
    lin = nn.Linear(c * h * w, c * hp * wp, bias=False)
    weight = torch.zeros(c * hp * wp, c * h * w, dtype=dtype)
    weight[dst.reshape(-1), src.reshape(-1)] = 1.0
    lin.weight.data = weight
    return lin


def to_sequential(net: Network, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """An ``nn.Sequential`` computing ``net`` on flat inputs ``(B, in_dim)`` (for auto_LiRPA tracing).

    Convolutions reshape to ``(C, H, W)`` around ``nn.Conv2d``; asymmetric padding becomes a dense
    0/1 ``nn.Linear`` (auto_LiRPA 0.3 cannot bound ``nn.ZeroPad2d``), fine for small nets only.
    """
    mods: list[nn.Module] = []
    for layer in net.layers:
        try:
            parts = layer.torch_modules(dtype)
        except NotImplementedError as exc:
            raise TypeError(f"no auto_LiRPA equivalent for {layer.describe()}") from exc
        for m in parts:
            if isinstance(m, nn.ZeroPad2d):  # auto_LiRPA 0.3 cannot bound it: the same as a 0/1 matrix
                c, h, w = layer.in_shape  # type: ignore[attr-defined]
                pl, pr, pt, pb = m.padding
                mods += [Flat(), _pad_as_linear((c, h, w), (pt, pl, pb, pr), dtype),
                         Unflat((c, h + pt + pb, w + pl + pr))]
            else:
                mods.append(m)
    return nn.Sequential(*mods).to(dtype).eval()


@dataclass(frozen=True)
class LirpaResult:
    """Bounds from auto_LiRPA: on ``C y`` (``(B, k)``) or on the output when no ``C`` was given."""

    lower: torch.Tensor
    upper: torch.Tensor
    method: str


@contextmanager
def _float64_default() -> Iterator[None]:
    """auto_LiRPA 0.3 allocates its alpha-CROWN buffers in torch's default dtype: run in float64."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


class LirpaNetwork:
    """A :class:`Network` traced once by auto_LiRPA (``BoundedModule``), then bounded on any boxes.

    ``bound_opts`` are added to auto_LiRPA's options (``sparse_features_alpha`` is always off,
    which alpha-CROWN on conv nets needs in 0.3)."""

    def __init__(self, net: Network, bound_opts: Mapping[str, Any] | None = None) -> None:
        self.net = net
        self.lirpa = import_auto_lirpa()
        with _float64_default():
            self.module = self.lirpa.BoundedModule(
                to_sequential(net), torch.zeros(1, net.in_dim, dtype=torch.float64),
                bound_opts={**(bound_opts or {}), "sparse_features_alpha": False}, device="cpu", verbose=False,
            )

    def bounds(
        self,
        lower: torch.Tensor,
        upper: torch.Tensor,
        method: str,
        C: torch.Tensor | None = None,
        alpha_iterations: int = 30,
        alpha_lr: float = 0.1,
    ) -> LirpaResult:
        """Bounds on ``C y`` (or ``y``) over the box, in float64, no float safety margin added."""
        if method not in LIRPA_METHODS:
            raise ValueError(f"unknown auto_LiRPA method {method!r}; known: {sorted(LIRPA_METHODS)}")
        from auto_LiRPA.perturbations import PerturbationLpNorm

        lo = lower.reshape(lower.shape[0], -1).double()
        hi = upper.reshape(upper.shape[0], -1).double()
        name = LIRPA_METHODS[method]
        with _float64_default():
            ptb = PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)
            x = self.lirpa.BoundedTensor((lo + hi) / 2, ptb)
            if name == "CROWN-Optimized":
                self.module.set_bound_opts({"optimize_bound_args": {
                    "iteration": alpha_iterations, "lr_alpha": alpha_lr, "early_stop_patience": 1000,
                }})
            lb, ub = self.module.compute_bounds(x=(x,), C=None if C is None else C.double(), method=name)
        return LirpaResult(lb.detach().double(), ub.detach().double(), method)


def lirpa_bounds(
    net: Network,
    lower: torch.Tensor,
    upper: torch.Tensor,
    method: str,
    C: torch.Tensor | None = None,
    alpha_iterations: int = 30,
    alpha_lr: float = 0.1,
    bound_opts: Mapping[str, Any] | None = None,
) -> LirpaResult:
    """Bounds on ``C y`` over the box by auto_LiRPA's IBP (``interval``), CROWN (``crown``) or
    alpha-CROWN (``alpha-crown``), computed in float64 (no float safety margin added); traces the
    network anew (use :class:`LirpaNetwork` to bound many boxes)."""
    return LirpaNetwork(net, bound_opts).bounds(lower, upper, method, C, alpha_iterations, alpha_lr)
