"""Export a robustkit net (or a training run) to one self-contained ONNX file.

The graph is written directly with ``onnx.helper`` from the ``nn.Sequential`` (robustkit nets
contain only ``Normalize``, ``Conv2d``, ``Linear``, ``ReLU``, ``Flatten``, ``MaxPool2d`` and
:class:`~robustkit.nets.Residual`), which gives a predictable operator set for robustkit's own
ONNX loader: Sub/Div (normalization), Conv, Gemm (``transB=1``), Relu, Flatten, MaxPool
(``kernel_shape``, ``strides``, ``pads``), and for a residual block the body's nodes followed by
``Add(block input, body output)``. Nodes and weights of a block's body are named by their path,
e.g. ``Conv_3.0`` / ``layer3.0.weight`` for the first layer of the body at position 3. Input ``input`` is ``[N, C, H, W]`` with a symbolic batch
``N``; output ``output`` is ``[N, classes]``; opset 13; weights are stored inside the file.

Metadata (``metadata_props``, all strings, JSON where structured): ``robustkit.dataset``,
``robustkit.input_shape``, ``robustkit.value_range``, ``robustkit.normalization``,
``robustkit.net``, ``robustkit.net_config``, ``robustkit.train_config``, ``robustkit.metrics``,
``robustkit.version``. After writing, the file is run with onnxruntime and compared with torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from robustkit import __version__
from robustkit.errors import InputError, ModelFormatError, RobustkitError
from robustkit.nets import Normalize, Residual

logger = logging.getLogger(__name__)

OPSET = 13
IR_VERSION = 8  # readable by every onnxruntime robustkit supports (>= 1.17)
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


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: torch.Tensor) -> str:
        arr = value.detach().cpu().to(torch.float32).numpy()
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _add_conv(b: _GraphBuilder, layer: nn.Conv2d, x: str, i: int | str) -> str:
    if layer.padding_mode != "zeros":
        raise InputError(f"layer {i}: Conv2d padding_mode {layer.padding_mode!r} cannot be exported (only 'zeros')")
    if isinstance(layer.padding, str):
        if layer.padding != "valid":
            raise InputError(f"layer {i}: Conv2d padding {layer.padding!r} cannot be exported; use explicit numbers")
        ph, pw = 0, 0
    else:
        ph, pw = _pair(layer.padding)
    kh, kw = _pair(layer.kernel_size)
    inputs = [x, b.const(f"layer{i}.weight", layer.weight)]
    if layer.bias is not None:
        inputs.append(b.const(f"layer{i}.bias", layer.bias))
    return b.node(
        "Conv",
        inputs,
        f"Conv_{i}",
        kernel_shape=[kh, kw],
        strides=list(_pair(layer.stride)),
        pads=[ph, pw, ph, pw],
        dilations=list(_pair(layer.dilation)),
        group=int(layer.groups),
    )


def _add_maxpool(b: _GraphBuilder, layer: nn.MaxPool2d, x: str, i: int | str) -> str:
    if layer.return_indices:
        raise InputError(f"layer {i}: MaxPool2d(return_indices=True) cannot be exported")
    if _pair(layer.dilation) != (1, 1):
        raise InputError(f"layer {i}: MaxPool2d with dilation {layer.dilation} cannot be exported (only 1)")
    kh, kw = _pair(layer.kernel_size)
    stride = layer.stride if layer.stride is not None else layer.kernel_size
    ph, pw = _pair(layer.padding)
    attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": list(_pair(stride)), "pads": [ph, pw, ph, pw]}
    if layer.ceil_mode:
        attrs["ceil_mode"] = 1
    return b.node("MaxPool", [x], f"MaxPool_{i}", **attrs)


def _add_layers(b: _GraphBuilder, model: nn.Sequential, x: str, rank: int, prefix: str = "") -> tuple[str, int]:
    """Append the nodes of ``model``'s layers to ``b``; returns the output name and its rank."""
    for j, layer in enumerate(model):
        i: int | str = f"{prefix}{j}" if prefix else j
        if isinstance(layer, Normalize):
            x = b.node("Sub", [x, b.const(f"layer{i}.mean", layer.mean)], f"Sub_{i}")
            x = b.node("Div", [x, b.const(f"layer{i}.std", layer.std)], f"Div_{i}")
        elif isinstance(layer, nn.Conv2d):
            if rank != 4:
                raise InputError(f"layer {i}: Conv2d after Flatten cannot be exported")
            x = _add_conv(b, layer, x, i)
        elif isinstance(layer, nn.MaxPool2d):
            if rank != 4:
                raise InputError(f"layer {i}: MaxPool2d after Flatten cannot be exported")
            x = _add_maxpool(b, layer, x, i)
        elif isinstance(layer, Residual):
            out, out_rank = _add_layers(b, layer.body, x, rank, prefix=f"{i}.")
            if out_rank != rank:
                raise InputError(f"layer {i}: a Residual body must keep the rank of its input (no Flatten)")
            x = b.node("Add", [x, out], f"Add_{i}")
        elif isinstance(layer, nn.Linear):
            if rank != 2:
                raise InputError(f"layer {i}: Linear needs a flat (N, features) input; add nn.Flatten() before it")
            inputs = [x, b.const(f"layer{i}.weight", layer.weight)]
            if layer.bias is not None:
                inputs.append(b.const(f"layer{i}.bias", layer.bias))
            x = b.node("Gemm", inputs, f"Gemm_{i}", transB=1)
        elif isinstance(layer, nn.ReLU):
            x = b.node("Relu", [x], f"Relu_{i}")
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise InputError(f"layer {i}: only Flatten(start_dim=1, end_dim=-1) can be exported")
            x, rank = b.node("Flatten", [x], f"Flatten_{i}", axis=1), 2
        else:
            raise InputError(
                f"layer {i}: {type(layer).__name__} cannot be exported "
                "(supported: Normalize, Conv2d, Linear, ReLU, Flatten, MaxPool2d, Residual)"
            )
    return x, rank


def sequential_to_onnx(model: nn.Sequential, input_shape: tuple[int, int, int]) -> onnx.ModelProto:
    """The ONNX graph of a robustkit ``nn.Sequential`` taking ``(N, *input_shape)``."""
    if not isinstance(model, nn.Sequential):
        raise InputError(f"only nn.Sequential models can be exported, got {type(model).__name__}")
    b = _GraphBuilder()
    x, rank = _add_layers(b, model, INPUT_NAME, 4)
    if rank != 2:
        raise InputError("the model must end in a Linear layer giving (N, classes) logits")
    with torch.no_grad():
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        n_out = int(model(torch.zeros(1, *input_shape, device=device)).shape[1])
    b.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="Identity_output"))
    graph = helper.make_graph(
        b.nodes,
        "robustkit",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", n_out])],
        initializer=b.initializers,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="robustkit",
        producer_version=__version__,
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _meta_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _normalization_of(model: nn.Sequential) -> dict[str, Any] | None:
    first = model[0] if len(model) else None
    if isinstance(first, Normalize):
        return {
            "mean": [float(v) for v in first.mean.flatten()],
            "std": [float(v) for v in first.std.flatten()],
            "in_model": True,
        }
    return None


def _run_metadata(run_dir: Path) -> tuple[nn.Sequential, tuple[int, int, int], dict[str, str]]:
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


def export_onnx(
    source: Path | str | nn.Sequential,
    out_path: Path | str,
    metadata: Mapping[str, Any] | None = None,
    *,
    input_shape: tuple[int, int, int] | None = None,
    check: bool = True,
) -> Path:
    """Write ``source`` (a run directory of ``robustkit train`` or an ``nn.Sequential``) to
    ``out_path`` as one ONNX file, with robustkit metadata plus ``metadata`` (non-string values
    are JSON-encoded). For a bare model give ``input_shape`` (C, H, W) or put it in
    ``metadata["robustkit.input_shape"]``. With ``check`` the written file is run with
    onnxruntime and must match torch (atol = rtol = 1e-5), else :class:`ExportMismatchError`."""
    meta: dict[str, str] = {}
    if isinstance(source, nn.Module):
        model = source
        shape = input_shape
        if shape is None and metadata and "robustkit.input_shape" in metadata:
            raw = metadata["robustkit.input_shape"]
            shape = tuple(json.loads(raw) if isinstance(raw, str) else raw)
        if shape is None:
            raise InputError("exporting a bare model needs input_shape=(C, H, W)")
    else:
        run_dir = Path(source)
        if not run_dir.is_dir():
            raise InputError(f"{run_dir} is not a run directory (expected the --out folder of `robustkit train`)")
        model, shape, meta = _run_metadata(run_dir)
        if input_shape is not None and tuple(input_shape) != tuple(shape):
            raise InputError(f"input_shape {input_shape} differs from the run's {shape}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise InputError(f"input_shape must be (C, H, W) with positive sizes, got {shape}")
    model = model.eval()
    meta.setdefault("robustkit.value_range", json.dumps([0.0, 1.0]))
    meta["robustkit.input_shape"] = json.dumps(list(shape))
    meta["robustkit.normalization"] = json.dumps(_normalization_of(model))
    meta["robustkit.version"] = __version__
    for key, value in (metadata or {}).items():
        meta[str(key)] = _meta_value(value)

    proto = sequential_to_onnx(model, shape)  # type: ignore[arg-type]
    helper.set_model_props(proto, meta)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    os.replace(tmp, out)
    if check:
        value_range = tuple(json.loads(meta["robustkit.value_range"]))
        check_onnx_matches(model, out, shape, value_range=value_range)  # type: ignore[arg-type]
    logger.info("wrote %s (%d bytes)", out, out.stat().st_size)
    return out


def check_onnx_matches(
    model: nn.Module,
    path: Path | str,
    input_shape: tuple[int, int, int],
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    atol: float = 1e-5,
    rtol: float = 1e-5,
    seed: int = 0,
) -> float:
    """Run ``path`` with onnxruntime on random inputs (batches of 1 and 7) and on the corners
    of the input box; raise :class:`ExportMismatchError` unless it equals ``model``'s output
    within ``atol + rtol * |torch|``. Returns the largest absolute difference."""
    import onnxruntime as ort

    lo, hi = value_range
    g = torch.Generator().manual_seed(seed)
    batches = [
        lo + (hi - lo) * torch.rand(1, *input_shape, generator=g),
        lo + (hi - lo) * torch.rand(7, *input_shape, generator=g),
        torch.stack([torch.full(input_shape, float(lo)), torch.full(input_shape, float(hi))]),
    ]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    device = next(model.parameters()).device
    worst = 0.0
    for x in batches:
        with torch.no_grad():
            ref = model(x.to(device)).cpu().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportMismatchError(f"{path}: onnxruntime output shape {got.shape}, torch {ref.shape}")
        diff = np.abs(got - ref)
        worst = max(worst, float(diff.max()))
        if not np.all(diff <= atol + rtol * np.abs(ref)):
            raise ExportMismatchError(
                f"{path}: onnxruntime and torch disagree by up to {float(diff.max()):.3g} "
                f"(allowed {atol:g} + {rtol:g}*|y|) on a batch of {len(x)}"
            )
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
