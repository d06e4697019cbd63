"""Re-checking a counterexample on the real model before anyone is told about it.

A candidate from an attack, the MILP or branch and bound is moved into the input box and written
in the network's input type (float32 for most models) exactly as it will be fed: rounded to
nearest, then kept within the values of that type the box admits (strict sides strictly; an input
pinned to a value the type cannot represent, such as 0.1 in float32, takes the value the network is
fed for it: :meth:`~robustkit.spec.InputBox.representable`). Only if that point's outputs in
onnxruntime, with the graph optimizations on and off, are finite and satisfy the violation as
written (strict comparisons strictly, in exact arithmetic) is it a witness. MIPVerify re-checks
its witnesses the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robustkit.network.floatfmt import FLOAT32, FloatFormat
from robustkit.spec import InputBox, OutputSpec
from robustkit.verification.model import ModelContext


@dataclass(frozen=True)
class Witness:
    """A validated counterexample: the input as fed (flat, in the network's input type, float32 for
    most models) and its onnxruntime output."""

    x: np.ndarray  # flat, the network's input dtype
    y: np.ndarray  # float64 (from onnxruntime's output)
    disjunct: int


def to_input_point(x: np.ndarray, box: InputBox, fmt: FloatFormat = FLOAT32) -> np.ndarray | None:
    """``x`` moved into the box and written in ``fmt``: rounded to nearest, then clipped to the
    values of ``fmt`` the box admits (:meth:`InputBox.representable`); None if the box reaches
    beyond the format's range."""
    lo, hi = box.representable(fmt)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        return None
    x64 = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), lo, hi)
    return np.clip(fmt.round_nearest(x64), lo, hi).astype(fmt.dtype)


def validate_witness(
    ctx: ModelContext, x: np.ndarray, box: InputBox, output: OutputSpec, strict_label: int | None = None
) -> Witness | None:
    """The witness if ``x`` really violates the property on the ONNX model, else None.

    ``strict_label``: for robustness properties also require a strict misclassification
    (some other logit strictly above the label's), so that ties never count as falsified.
    """
    fmt = ctx.net.input_fmt
    xq = to_input_point(x, box, fmt)
    if xq is None or not box.admits(xq, fmt):
        return None
    y, y_plain = ctx.ort.both(xq)
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(y_plain))):
        return None
    for k, dj in enumerate(output):
        if dj.satisfied_by(y) and dj.satisfied_by(y_plain):
            if strict_label is not None and not (_beaten(y, strict_label) and _beaten(y_plain, strict_label)):
                continue
            return Witness(xq, y, k)
    return None


def _beaten(y: np.ndarray, label: int) -> bool:
    """Whether some other output is strictly above ``y[label]``."""
    return bool(np.delete(y, label).max() > y[label])
