"""A model loaded once per process: representation, torch module, onnxruntime session."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from robustkit.network import Network, OrtModel, network_from_onnx
from robustkit.network.onnx_loader import read_model


@dataclass
class ModelContext:
    """Everything the verifier needs about one ONNX model."""

    model_bytes: bytes
    net: Network
    ort: OrtModel
    module: torch.nn.Module
    sha256: str

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<model>") -> "ModelContext":
        return cls._build(data, read_model(source, data), source)

    @classmethod
    def from_path(cls, path: str | Path) -> "ModelContext":
        """Load a model file once (clear errors for a missing file, not ONNX, unsupported op)."""
        path = Path(path)
        proto = read_model(path)  # checks the path; the store keys results by the file's own bytes
        return cls._build(path.read_bytes(), proto, str(path))

    @classmethod
    def _build(cls, data: bytes, proto: onnx.ModelProto, source: str) -> "ModelContext":
        net = network_from_onnx(proto, source=source)
        module = net.to_torch().eval()
        ort = OrtModel(data, net.onnx_input_shape, net.input_fmt.dtype)
        return cls(data, net, ort, module, hashlib.sha256(data).hexdigest())

    def predict(self, x) -> int:  # type: ignore[no-untyped-def]
        """onnxruntime's argmax for one flat input."""
        return int(self.ort(x)[0].argmax())

