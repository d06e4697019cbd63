"""Re-checking a counterexample on the real model before anyone is told about it.

A candidate from an attack or the MILP is moved into the input box, cast to float32 exactly as
it will be fed, nudged back inside where the cast rounded it out, and run through onnxruntime.
Only if that float32 point lies in the box (compared in float64) and its onnxruntime output
satisfies the violation is it a witness. MIPVerify re-checks its witnesses the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robustkit.spec import InputBox, OutputSpec
from robustkit.verification.model import ModelContext


@dataclass(frozen=True)
class Witness:
    """A validated counterexample: float32 input and its onnxruntime output."""

    x: np.ndarray  # float32, flat
    y: np.ndarray  # float64 (from onnxruntime's float32 output)
    disjunct: int


def to_float32_in_box(x: np.ndarray, box: InputBox) -> np.ndarray | None:
    """``x`` clipped into the box and cast to float32, staying inside the box; None if impossible."""
    x64 = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), box.lower, box.upper)
    x32 = x64.astype(np.float32)
    for _ in range(4):
        low = x32.astype(np.float64) < box.lower
        high = x32.astype(np.float64) > box.upper
        if not (low.any() or high.any()):
            return x32
        x32 = np.where(low, np.nextafter(x32, np.float32(np.inf)), x32)
        x32 = np.where(high, np.nextafter(x32, np.float32(-np.inf)), x32)
    return None


def validate_witness(
    ctx: ModelContext, x: np.ndarray, box: InputBox, output: OutputSpec, strict_label: int | None = None
) -> Witness | None:
    """The witness if ``x`` really violates the property on the ONNX model, else None.

    ``strict_label``: for robustness properties also require a strict misclassification
    (some other logit strictly above the label's), so that ties never count as falsified.
    """
    x32 = to_float32_in_box(x, box)
    if x32 is None or not box.contains(x32.astype(np.float64)):
        return None
    y = ctx.ort(x32)[0]
    if not np.all(np.isfinite(y)):
        return None
    for k, dj in enumerate(output):
        if np.all(dj.slack(y) >= 0):
            if strict_label is not None:
                others = np.delete(y, strict_label)
                if not others.max() > y[strict_label]:
                    continue
            return Witness(x32, y, k)
    return None
