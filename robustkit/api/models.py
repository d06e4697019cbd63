"""What every public function takes: a model (an ``nn.Module``, an ONNX file or ONNX bytes), a
batch of samples and labels, checked and turned into what the library runs on.

An ``nn.Module`` is exported to ONNX in memory first (:func:`robustkit.onnx_export.model_bytes`,
checked against onnxruntime), so that every analysis runs on the float32 graph onnxruntime
executes, exactly as for a model file: what is proven is proven for that graph, and a
counterexample is one onnxruntime confirms.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from robustkit.errors import InputError

if TYPE_CHECKING:
    from robustkit.verification.model import ModelContext

#: A model the public functions accept: a module, an ONNX file path, or the bytes of an ONNX file.
ModelLike = Union[nn.Module, str, "os.PathLike[str]", bytes]
#: A batch of samples: a tensor or an array ``(N, *sample_shape)`` (or flat ``(N, features)``).
ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[Any]]


def as_tensor(x: ArrayLike, what: str = "x") -> torch.Tensor:
    """``x`` as a float32 CPU tensor with a batch dimension."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{what} must be a tensor or an array of numbers, got {type(x).__name__}") from exc
    if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise InputError(f"{what} must hold numbers, got {t.dtype}")
    if t.dim() < 2 or t.shape[0] == 0:
        raise InputError(f"{what} must be a batch (N, ...) of N >= 1 samples, got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"{what} holds NaN or infinite values")
    return t


def model_context(model: ModelLike, x: torch.Tensor, *, value_range: tuple[float, float] | None = None,
                  metadata: Mapping[str, Any] | None = None) -> "ModelContext":
    """The verifier's view of ``model`` (its ONNX bytes, Network, onnxruntime session): a module
    is exported in memory with ``x``'s sample shape (and ``value_range``, ``metadata`` written
    into its metadata); a path or bytes is read as an ONNX file."""
    from robustkit.verification.model import ModelContext

    if isinstance(model, nn.Module):
        from robustkit.onnx_export import model_bytes

        data = model_bytes(model, x[:1], metadata, value_range=value_range or (0.0, 1.0))
        return ModelContext.from_bytes(data, f"<{type(model).__name__}>")
    if isinstance(model, (bytes, bytearray)):
        return ModelContext.from_bytes(bytes(model), "<ONNX bytes>")
    if isinstance(model, (str, os.PathLike)):
        return ModelContext.from_path(Path(model))
    raise InputError(f"model must be a torch nn.Module, an ONNX file path or ONNX bytes, got {type(model).__name__}")


def model_name(model: ModelLike) -> str:
    """A short name for tables: the class name of a module, the file name of a path."""
    if isinstance(model, nn.Module):
        return type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        return Path(model).name
    return "model.onnx"


def flat_samples(x: torch.Tensor, ctx: "ModelContext", what: str = "x") -> np.ndarray:
    """``x`` as flat float32 samples ``(N, in_dim)``, after checking its shape against the model's."""
    net = ctx.net
    sample = tuple(int(d) for d in x.shape[1:])
    if sample != tuple(net.sample_shape) and sample != (net.in_dim,):
        raise InputError(f"{what} has samples of shape {sample}, but the model takes {tuple(net.sample_shape)} "
                         f"({net.in_dim} values)")
    return x.reshape(x.shape[0], -1).numpy().astype(np.float32)


def range_of(ctx: "ModelContext", value_range: tuple[float, float] | None) -> tuple[float, float]:
    """``value_range``, else the model's ``robustkit.value_range`` metadata, else [0, 1]; checked."""
    from robustkit.metadata import value_range_of

    lo, hi = value_range if value_range is not None else value_range_of(ctx.net.metadata)
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"value_range must be (lo, hi) with finite lo < hi, got {value_range}")
    return lo, hi


def check_in_range(x: np.ndarray, value_range: tuple[float, float], what: str = "x") -> None:
    """The samples must lie in the valid input range (the eps-box is clipped to it)."""
    lo, hi = value_range
    if x.size and (float(x.min()) < lo or float(x.max()) > hi):
        raise InputError(f"{what} lies in [{float(x.min()):g}, {float(x.max()):g}], outside the valid input range "
                         f"[{lo:g}, {hi:g}]; pass value_range=(lo, hi) to say the model takes other inputs")


def model_and_samples(model: ModelLike, x: ArrayLike, value_range: tuple[float, float] | None
                      ) -> tuple["ModelContext", torch.Tensor, np.ndarray, tuple[float, float]]:
    """What every API function starts from: the model's context, ``x`` as a tensor, its flat
    float32 samples (shape checked) and the valid input range (the samples checked inside it)."""
    xt = as_tensor(x)
    ctx = model_context(model, xt, value_range=value_range)
    flat = flat_samples(xt, ctx)
    vr = range_of(ctx, value_range)
    check_in_range(flat, vr)
    return ctx, xt, flat, vr


def labels_of(y: ArrayLike | None, n: int, classes: int, what: str = "y") -> np.ndarray:
    """``y`` as int64 class indices ``(n,)``, each in ``0 .. classes - 1``."""
    if y is None:
        raise InputError(f"{what} (the labels) is required")
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    arr = arr.reshape(-1) if arr.ndim == 0 or (arr.ndim == 2 and 1 in arr.shape) else arr
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{what} must hold one label per sample ({n}), got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        raise InputError(f"{what} must be integer class labels, got {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= classes))
    if bad.size:
        raise InputError(f"labels out of range: {what}[{int(bad[0])}] = {int(arr[bad[0]])}, but the model has {classes} "
                         f"outputs (labels 0..{classes - 1})")
    return arr


def check_eps(eps: float) -> float:
    from robustkit.numbers import parse_eps

    value = parse_eps(eps) if isinstance(eps, str) else float(eps)
    if not (np.isfinite(value) and value >= 0):
        raise InputError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def export(model: nn.Module, example_input: "ArrayLike | Sequence[int]", path: "str | os.PathLike[str]", *,
           value_range: tuple[float, float] = (0.0, 1.0), metadata: Mapping[str, Any] | None = None,
           check: bool = True) -> Path:
    """Write ``model`` to ``path`` as one self-contained ONNX file that robustkit verifies.

    ``example_input``: a batch ``(N, ...)`` or one sample's shape, e.g. ``(1, 28, 28)``. The model
    must be built from the supported operators (Linear, Conv2d, BatchNorm, ReLU and the other
    activations of :mod:`robustkit.network.torch_capture`, pooling, Flatten, residual sums and
    ``torch.cat`` in ``forward()``); anything else raises a :class:`~robustkit.network.torch_capture.
    CaptureError` naming the module and its path. The file is exported by PyTorch's TorchScript
    exporter (no ``onnxscript`` needed), read back by robustkit's loader, and (``check``) compared
    with the module on onnxruntime. ``value_range`` (the valid input range) and ``metadata`` are
    stored in the file's metadata. Returns the path."""
    from robustkit.onnx_export import model_bytes

    if not isinstance(model, nn.Module):
        raise InputError(f"export takes a torch nn.Module, got {type(model).__name__}")
    if isinstance(example_input, (torch.Tensor, np.ndarray)):
        example: Any = as_tensor(example_input, "example_input")
    else:
        example = tuple(example_input)
    data = model_bytes(model, example, metadata, value_range=value_range, check=check)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out
