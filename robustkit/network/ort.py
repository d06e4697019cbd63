"""Evaluation of the original ONNX file in onnxruntime (float32): the ground truth against
which every counterexample is re-checked before robustkit reports it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from robustkit.errors import ModelFormatError


class OrtModel:
    """An onnxruntime session over a model file or its bytes, evaluating one sample at a time."""

    def __init__(self, model: str | Path | bytes, onnx_input_shape: tuple[int, ...]) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        src = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelFormatError(f"onnxruntime cannot load the model: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.onnx_input_shape = tuple(onnx_input_shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a batch of flat inputs ``(B, n)`` as float64 array ``(B, out)``; the inputs
        are cast to float32 exactly as they would be fed to the model."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None]
        outs = []
        for row in x:
            feed = np.ascontiguousarray(row.astype(np.float32).reshape(self.onnx_input_shape))
            y = self.session.run(None, {self.input_name: feed})[0]
            outs.append(np.asarray(y, dtype=np.float64).reshape(-1))
        return np.stack(outs)
