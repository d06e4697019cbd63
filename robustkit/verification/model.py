"""A model loaded once per process: representation, torch module, onnxruntime session."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from robustkit.errors import ModelFormatError
from robustkit.network import Network, OrtModel, network_from_onnx


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
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:
            raise ModelFormatError(f"{source} is not a readable ONNX model: {exc}") from exc
        net = network_from_onnx(proto, source=source)
        module = net.to_torch().eval()
        return cls(data, net, OrtModel(data, net.onnx_input_shape), module, hashlib.sha256(data).hexdigest())

    @classmethod
    def from_path(cls, path: str | Path) -> "ModelContext":
        from robustkit.network.onnx_loader import load_onnx

        path = Path(path)
        load_onnx(path)  # validates with a clear message (missing file, not ONNX, unsupported op)
        return cls.from_bytes(path.read_bytes(), source=str(path))

    def predict(self, x) -> int:  # type: ignore[no-untyped-def]
        """onnxruntime's argmax for one flat input."""
        return int(self.ort(x)[0].argmax())

