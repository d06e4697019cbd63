"""Export a PyTorch model (or a ``robustkit train`` run) to one self-contained ONNX file.

The graph is written by PyTorch's TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``: it needs no ``onnxscript``, which the default dynamo exporter of torch >= 2.9
does), at opset :data:`OPSET`, with input ``input`` ``[N, *input_shape]`` (symbolic batch ``N``)
and output ``output`` ``[N, classes]``; weights are stored inside the file. Any ``nn.Module`` that
robustkit can capture exports (:mod:`robustkit.network.torch_capture`: Linear, Conv2d, BatchNorm,
ReLU and the other supported activations, pooling, Flatten, residual sums and ``torch.cat``
written in ``forward()``); anything else is refused before exporting, naming the module and its
path in the model. In eval mode the exporter folds a BatchNorm into the Conv before it.

Every export is checked three ways before it is written: onnx's checker, robustkit's own ONNX
loader (the graph the verifier will read), and onnxruntime against torch on random inputs and the
corners of the input box (:func:`check_onnx_matches`).

Metadata (``metadata_props``, all strings, JSON where structured): ``robustkit.dataset``,
``robustkit.input_shape``, ``robustkit.value_range``, ``robustkit.normalization``,
``robustkit.net``, ``robustkit.net_config``, ``robustkit.train_config``, ``robustkit.metrics``,
``robustkit.version``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from robustkit import __version__
from robustkit.errors import InputError, ModelFormatError, RobustkitError
from robustkit.nets import Normalize

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
META_PREFIX = "robustkit."
JSON_KEYS = (
    "robustkit.input_shape",
    "robustkit.value_range",
    "robustkit.normalization",
    "robustkit.net_config",
    "robustkit.train_config",
    "robustkit.metrics",
)


class ExportMismatchError(RobustkitError):
    """onnxruntime's outputs for the exported file differ from torch's (an exporter bug)."""


def example_batch(model: nn.Module, example: "torch.Tensor | np.ndarray | Sequence[int]") -> torch.Tensor:
    """One input of ``model``'s input shape: ``example`` is a batch (its first sample is used), or
    the shape of one sample (``(C, H, W)`` or ``(features,)``), filled with zeros."""
    if isinstance(example, np.ndarray):
        example = torch.from_numpy(example)
    if isinstance(example, torch.Tensor):
        if example.dim() < 2 or example.shape[0] < 1:
            raise InputError(f"the example input must be a batch (N, ...) with N >= 1, got shape "
                             f"{tuple(example.shape)} (give a shape tuple for one sample)")
        x = example[:1].detach()
    else:
        try:
            shape = tuple(int(d) for d in example)
        except (TypeError, ValueError) as exc:
            raise InputError(f"the example input must be a tensor, an array or a shape tuple, got "
                             f"{type(example).__name__}") from exc
        if not shape or min(shape) <= 0:
            raise InputError(f"an input shape needs positive sizes, got {shape}")
        x = torch.zeros(1, *shape)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return x.to(device=device, dtype=dtype)


def module_to_onnx(model: nn.Module, example: "torch.Tensor | np.ndarray | Sequence[int]") -> onnx.ModelProto:
    """The ONNX graph of ``model`` (in eval mode) for inputs shaped like ``example``
    (:func:`example_batch`), refused with a :class:`~robustkit.network.torch_capture.CaptureError`
    naming the module if robustkit cannot read it. The model's train/eval mode is restored."""
    from robustkit.network.onnx_loader import network_from_onnx
    from robustkit.network.torch_capture import CaptureError, capture

    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch nn.Module, got {type(model).__name__}")
    x = example_batch(model, example)
    was_training = model.training
    model.eval()
    try:
        capture(model, x)  # names an unsupported module (and its path) before torch sees it
        buf = io.BytesIO()
        with warnings.catch_warnings():
            # the TorchScript exporter announces its deprecation; it is the one that needs no onnxscript
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            try:
                torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], do_constant_folding=True,
                                  dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
            except Exception as exc:  # the exporter raises many kinds; the model is the user's
                raise CaptureError(f"torch.onnx.export failed on {type(model).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    proto = onnx.load_model_from_string(buf.getvalue())
    proto.producer_name, proto.producer_version = "robustkit", __version__
    if len(proto.graph.output) != 1:
        raise InputError(f"{type(model).__name__}.forward() must return one tensor of logits, "
                         f"returns {len(proto.graph.output)}")
    onnx.checker.check_model(proto, full_check=True)
    network_from_onnx(proto, source=f"the export of {type(model).__name__}")  # the verifier reads it
    return proto


def sequential_to_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The ONNX graph of ``model`` taking ``(N, *input_shape)`` (:func:`module_to_onnx`)."""
    return module_to_onnx(model, tuple(input_shape))


def _meta_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _normalization_of(model: nn.Module) -> dict[str, Any] | None:
    """The model's leading :class:`~robustkit.nets.Normalize` (a Sequential's first layer)."""
    first = model[0] if isinstance(model, nn.Sequential) and len(model) else None
    if isinstance(first, Normalize):
        return {
            "mean": [float(v) for v in first.mean.flatten()],
            "std": [float(v) for v in first.std.flatten()],
            "in_model": True,
        }
    return None


def _run_metadata(run_dir: Path) -> tuple[nn.Module, tuple[int, ...], dict[str, str]]:
    from robustkit.training.artifacts import load_trained, net_config_to_json

    trained = load_trained(run_dir)
    cfg, net = trained.config, trained.net_config
    meta = {
        "robustkit.dataset": cfg.dataset,
        "robustkit.value_range": json.dumps(list(cfg.dataset_info.value_range)),
        "robustkit.net": net.name,
        "robustkit.net_config": net_config_to_json(net),
        "robustkit.train_config": json.dumps(cfg.to_dict()),
        "robustkit.metrics": json.dumps(trained.metrics),
    }
    return trained.model, net.input_shape, meta


def model_bytes(
    model: nn.Module,
    example: "torch.Tensor | np.ndarray | Sequence[int]",
    metadata: Mapping[str, Any] | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    check: bool = True,
) -> bytes:
    """``model`` as the bytes of one ONNX file with robustkit's metadata plus ``metadata``
    (non-string values JSON-encoded); with ``check`` onnxruntime must match torch
    (:func:`check_onnx_matches`), else :class:`ExportMismatchError`."""
    x = example_batch(model, example)
    shape = tuple(int(d) for d in x.shape[1:])
    meta: dict[str, str] = {str(k): _meta_value(v) for k, v in (metadata or {}).items()}
    if value_range is not None:
        meta["robustkit.value_range"] = json.dumps([float(value_range[0]), float(value_range[1])])
    meta.setdefault("robustkit.value_range", json.dumps([0.0, 1.0]))
    meta["robustkit.input_shape"] = json.dumps(list(shape))
    meta.setdefault("robustkit.normalization", json.dumps(_normalization_of(model)))
    meta["robustkit.version"] = __version__
    proto = module_to_onnx(model, x)
    helper.set_model_props(proto, meta)
    data = proto.SerializeToString()
    if check:
        lo, hi = json.loads(meta["robustkit.value_range"])
        check_onnx_matches(model, data, shape, value_range=(float(lo), float(hi)))
    return data


def export_onnx(
    source: Path | str | nn.Module,
    out_path: Path | str,
    metadata: Mapping[str, Any] | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    check: bool = True,
) -> Path:
    """Write ``source`` (a run directory of ``robustkit train`` or an ``nn.Module``) to
    ``out_path`` as one ONNX file, with robustkit metadata plus ``metadata`` (non-string values
    are JSON-encoded). For a bare model give ``input_shape`` (one sample's shape, e.g. (C, H, W))
    or put it in ``metadata["robustkit.input_shape"]``. With ``check`` the written file is run
    with onnxruntime and must match torch (atol = rtol = 1e-5), else :class:`ExportMismatchError`."""
    meta: dict[str, Any] = {}
    if isinstance(source, nn.Module):
        model = source
        shape = input_shape
        if shape is None and metadata and "robustkit.input_shape" in metadata:
            raw = metadata["robustkit.input_shape"]
            shape = tuple(json.loads(raw) if isinstance(raw, str) else raw)
        if shape is None:
            raise InputError("exporting a bare model needs input_shape, e.g. (C, H, W)")
    else:
        run_dir = Path(source)
        if not run_dir.is_dir():
            raise InputError(f"{run_dir} is not a run directory (expected the --out folder of `robustkit train`)")
        model, shape, meta = _run_metadata(run_dir)
        if input_shape is not None and tuple(input_shape) != tuple(shape):
            raise InputError(f"input_shape {input_shape} differs from the run's {shape}")
    shape = tuple(int(s) for s in shape)
    if not shape or min(shape) <= 0:
        raise InputError(f"input_shape must have positive sizes, got {shape}")
    meta.update(metadata or {})
    data = model_bytes(model, shape, meta, check=check)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    logger.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return out


def check_onnx_matches(
    model: nn.Module,
    path: "Path | str | bytes",
    input_shape: tuple[int, ...],
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    atol: float = 1e-5,
    rtol: float = 1e-5,
    seed: int = 0,
) -> float:
    """Run ``path`` (a file or the model's bytes) with onnxruntime on random inputs (batches of 1
    and 7) and on the corners of the input box; raise :class:`ExportMismatchError` unless it equals
    ``model``'s output (eval mode) within ``atol + rtol * |torch|``. Returns the largest absolute
    difference."""
    import onnxruntime as ort

    where = "the exported model" if isinstance(path, bytes) else str(path)
    lo, hi = value_range
    g = torch.Generator().manual_seed(seed)
    batches = [
        lo + (hi - lo) * torch.rand(1, *input_shape, generator=g),
        lo + (hi - lo) * torch.rand(7, *input_shape, generator=g),
        torch.stack([torch.full(input_shape, float(lo)), torch.full(input_shape, float(hi))]),
    ]
    session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), providers=["CPUExecutionProvider"])
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for x in batches:
            with torch.no_grad():
                ref = model(x.to(device)).float().cpu().numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if got.shape != ref.shape:
                raise ExportMismatchError(f"{where}: onnxruntime output shape {got.shape}, torch {ref.shape}")
            diff = np.abs(got - ref)
            worst = max(worst, float(diff.max()))
            if not np.all(diff <= atol + rtol * np.abs(ref)):
                raise ExportMismatchError(
                    f"{where}: onnxruntime and torch disagree by up to {float(diff.max()):.3g} "
                    f"(allowed {atol:g} + {rtol:g}*|y|) on a batch of {len(x)}"
                )
    finally:
        model.train(was_training)
    return worst


def read_metadata(path: Path | str, decode: bool = False) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file as strings; with ``decode`` the robustkit JSON
    values are parsed."""
    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"{p} not found")
    try:
        proto = onnx.load_model(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for non-ONNX files
        raise ModelFormatError(f"{p} is not an ONNX model: {exc}") from exc
    meta: dict[str, Any] = {prop.key: prop.value for prop in proto.metadata_props}
    if decode:
        for key in JSON_KEYS:
            if key in meta:
                try:
                    meta[key] = json.loads(meta[key])
                except json.JSONDecodeError:
                    pass
    return meta
