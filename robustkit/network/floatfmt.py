"""The floating-point formats a network may compute in, each with its own error model.

Every linear layer records the format its ONNX operators run in (:attr:`LinearLayer.fmt`); the
float error model (:mod:`robustkit.bounds.floaterr`) reads the unit roundoff, the absolute
underflow terms and the largest finite value from it. The rounding model of one operation is

    ``|fl(z) - z| <= unit |z| + eta``

(round to nearest; ``eta`` bounds the absolute error of a result in or below the subnormal range:
half the smallest subnormal under gradual underflow, the smallest normal number if results are
flushed to zero). Operands below ``daz`` may be read as zero (the x86 denormals-are-zero flag, or
a flush-to-zero mode that a process such as PyTorch's ``set_flush_denormal`` leaves on the thread
that runs onnxruntime); ``daz = 0`` assumes they are not. A value of magnitude ``max`` or more
overflows (``inf``): where a bound can reach it, no proof is claimed.

* ``float32``: ``unit = 2**-24``; ``eta = daz = 2**-126``: flush-to-zero and denormals-are-zero are
  covered as well as gradual underflow.
* ``float64``: ``unit = 2**-53``; ``eta = daz = 2**-1022``.
* ``float16``: ``unit = 2**-11``; onnxruntime's CPU kernels widen float16 to float32, compute, and
  round back: ``eta = 2**-25`` (half float16's smallest subnormal: the conversion back does not
  flush) plus ``2**-126`` (the float32 steps, which may flush); ``daz = 2**-126`` (a float16
  subnormal is a normal float32 number, so only float32 intermediates can be flushed).

Other element types (bfloat16, for which onnxruntime's CPU provider has no arithmetic kernels;
integers, float8, quantized tensors) have no error model here: the loader refuses them, naming the
tensor and its type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FloatFormat", "FLOAT16", "FLOAT32", "FLOAT64", "FORMATS", "format_named", "contains"]


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format and its error model (see the module docstring)."""

    name: str
    unit: float  # unit roundoff u (round to nearest)
    eta: float  # absolute error bound of one operation's result near or below the subnormal range
    daz: float  # operands below this magnitude may be read as zero (0: they are not)
    max: float  # largest finite value
    numpy: str  # the numpy dtype name

    def gamma(self, n: int) -> float:
        """``gamma_n = n u / (1 - n u)``: the relative error bound of ``n`` roundings."""
        if n < 0 or n * self.unit >= 0.5:
            raise ValueError(f"{n} roundings in {self.name} are outside the error model's range (n u < 1/2)")
        return n * self.unit / (1 - n * self.unit)

    def max_ops(self) -> int:
        """The most roundings on one path the error model covers in this format."""
        return int(np.ceil(0.5 / self.unit)) - 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.numpy)

    def round_down(self, x: np.ndarray) -> np.ndarray:
        """The largest value of this format ``<= x`` (float64 array; ``-inf`` below the range)."""
        return _directed(x, self, down=True)

    def round_up(self, x: np.ndarray) -> np.ndarray:
        """The smallest value of this format ``>= x`` (float64 array; ``inf`` above the range)."""
        return _directed(x, self, down=False)

    def round_nearest(self, x: np.ndarray) -> np.ndarray:
        """``x`` rounded to nearest in this format, as float64 (``+-inf`` beyond its range)."""
        with np.errstate(over="ignore"):
            return np.asarray(x, dtype=np.float64).astype(self.dtype).astype(np.float64)


def _directed(x: np.ndarray, fmt: FloatFormat, down: bool) -> np.ndarray:
    x64 = np.asarray(x, dtype=np.float64)
    if fmt.name == "float64":
        return x64.copy()
    r = fmt.round_nearest(x64)  # may overflow to +-inf: the directed result is then inf or max
    with np.errstate(over="ignore"):
        if down:
            fix = r > x64
            step = np.nextafter(r.astype(fmt.dtype), fmt.dtype.type(-np.inf)).astype(np.float64)
        else:
            fix = r < x64
            step = np.nextafter(r.astype(fmt.dtype), fmt.dtype.type(np.inf)).astype(np.float64)
    return np.where(fix, step, r)


FLOAT32 = FloatFormat("float32", 2.0**-24, 2.0**-126, 2.0**-126, float(np.finfo(np.float32).max), "float32")
FLOAT64 = FloatFormat("float64", 2.0**-53, 2.0**-1022, 2.0**-1022, float(np.finfo(np.float64).max), "float64")
FLOAT16 = FloatFormat("float16", 2.0**-11, 2.0**-25 + 2.0**-126, 2.0**-126, float(np.finfo(np.float16).max),
                      "float16")

# ONNX TensorProto element types with an error model
FORMATS: dict[int, FloatFormat] = {1: FLOAT32, 10: FLOAT16, 11: FLOAT64}


def contains(wide: FloatFormat, narrow: FloatFormat) -> bool:
    """Whether every value of ``narrow`` is a value of ``wide`` (a cast from ``narrow`` to ``wide`` is exact)."""
    return wide.unit <= narrow.unit and wide.max >= narrow.max and wide.eta <= narrow.eta


def format_named(name: str) -> FloatFormat:
    """The format called ``name`` (``float32``, ``float16``, ``float64``)."""
    for fmt in FORMATS.values():
        if fmt.name == name:
            return fmt
    raise ValueError(f"unknown float format {name!r}; known: {', '.join(f.name for f in FORMATS.values())}")
