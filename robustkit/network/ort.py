"""Evaluation of the original ONNX file in onnxruntime (CPU): the ground truth against which every
counterexample is re-checked before robustkit reports it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from robustkit.errors import ModelFormatError
from robustkit.subnormal import gradual_underflow


class OrtModel:
    """onnxruntime sessions over a model file or its bytes, evaluating one sample at a time.

    Two sessions: onnxruntime's default (every graph optimization on: fused Conv + BatchNormalization,
    MatMul + Add, ...) and one with the optimizations off (the graph as written). A counterexample
    must violate the property in both (:meth:`both`), so that it holds whichever way a user runs
    the model on the CPU. Each evaluation runs with gradual underflow (IEEE subnormals), whatever
    flush-to-zero mode the calling thread was left in."""

    def __init__(self, model: str | Path | bytes, onnx_input_shape: tuple[int, ...],
                 input_dtype: str | np.dtype = "float32") -> None:
        src = model if isinstance(model, bytes) else str(model)
        self.session = _session(src, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        self._plain: ort.InferenceSession | None = None
        self._src = src
        self.input_name = self.session.get_inputs()[0].name
        self.onnx_input_shape = tuple(onnx_input_shape)
        self.input_dtype = np.dtype(input_dtype)

    @property
    def plain(self) -> ort.InferenceSession:
        """The session without graph optimizations (made on first use)."""
        if self._plain is None:
            self._plain = _session(self._src, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        return self._plain

    def __call__(self, x: np.ndarray, optimized: bool = True) -> np.ndarray:
        """Outputs for a batch of flat inputs ``(B, n)`` as float64 array ``(B, out)``; the inputs
        are cast to the model's input type (round to nearest) exactly as they would be fed to it."""
        session = self.session if optimized else self.plain
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None]
        outs = []
        with gradual_underflow():
            for row in x:
                with np.errstate(over="ignore"):
                    feed = np.ascontiguousarray(row.astype(self.input_dtype).reshape(self.onnx_input_shape))
                y = session.run(None, {self.input_name: feed})[0]
                outs.append(np.asarray(y, dtype=np.float64).reshape(-1))
        return np.stack(outs)

    def both(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The outputs of one flat input with the graph optimizations on and off."""
        return self(x)[0], self(x, optimized=False)[0]


def _session(src: str | bytes, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = level
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelFormatError(f"onnxruntime cannot load the model: {exc}") from exc
