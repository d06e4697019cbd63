"""Linear layers without weights: average pooling, permutation of axes, zero padding.

They act on flat row-major activations like every other layer (see :mod:`robustkit.network.layers`)
and have no bias. A permutation and a zero pad move values without arithmetic, so their float32
evaluation is exact (``rounding_ops`` 0); an average of ``k`` values rounds at most ``k + 1``
times (the sum, then the division or a multiplication by a rounded reciprocal).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from robustkit.network.floatfmt import FLOAT32, FloatFormat
from robustkit.network.conv import SpatialDims
from robustkit.network.layers import LinearLayer


class _NoBias(LinearLayer):
    """A linear layer whose bias is zero."""

    def bias_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(self.out_dim, dtype=dtype)

    def bias_vector(self) -> np.ndarray:
        return np.zeros(self.out_dim)


@dataclass(frozen=True, eq=False)
class AvgPool2d(SpatialDims, _NoBias):
    """2-D average pooling (ONNX AveragePool with ``ceil_mode`` 0, GlobalAveragePool) on flat
    ``(C, H, W)`` activations. ``count_include_pad``: divide by the kernel size everywhere (ONNX
    ``count_include_pad=1``) instead of by the number of input (non-pad) elements in the window."""

    in_shape: tuple[int, int, int]  # (C, H, W)
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    count_include_pad: bool = False
    name: str = "AvgPool2d"  # what describe() calls it (GlobalAveragePool)
    fmt: FloatFormat = FLOAT32

    def __post_init__(self) -> None:
        kh, kw = self.kernel
        pt, pl, pb, pr = self.padding
        if min(kh, kw, *self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"AvgPool2d: bad kernel {self.kernel}, stride {self.stride} or padding {self.padding}")
        if max(pt, pb) >= kh or max(pl, pr) >= kw:
            raise ValueError(f"AvgPool2d: padding {self.padding} not smaller than kernel {self.kernel}")
        _ = self.out_shape  # raises on an empty output

    @cached_property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.in_shape
        pt, pl, pb, pr = self.padding
        ho = (h + pt + pb - self.kernel[0]) // self.stride[0] + 1
        wo = (w + pl + pr - self.kernel[1]) // self.stride[1] + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"AvgPool2d: empty output for input {self.in_shape}")
        return (int(c), int(ho), int(wo))

    @cached_property
    def _divisor(self) -> np.ndarray:
        """``(Ho, Wo)``: the number each window's sum is divided by."""
        _, ho, wo = self.out_shape
        kh, kw = self.kernel
        if self.count_include_pad:
            return np.full((ho, wo), float(kh * kw))
        _, h, w = self.in_shape
        pt, pl = self.padding[0], self.padding[1]
        top = np.arange(ho) * self.stride[0] - pt
        left = np.arange(wo) * self.stride[1] - pl
        rows = np.minimum(top + kh, h) - np.maximum(top, 0)
        cols = np.minimum(left + kw, w) - np.maximum(left, 0)
        return np.outer(rows, cols).astype(np.float64)

    def _div(self, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self._divisor, dtype=like.dtype, device=like.device)

    @property
    def rounding_ops(self) -> int:
        return self.kernel[0] * self.kernel[1] + 1

    @property
    def coef_bound(self) -> float:
        return 1.0  # sums, then divides by at least 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pt, pl, pb, pr = self.padding
        x = F.pad(x.reshape(b, *self.in_shape), (pl, pr, pt, pb))
        sums = F.avg_pool2d(x, self.kernel, self.stride, divisor_override=1)
        return (sums / self._div(sums)).reshape(b, -1)

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        lead = a.shape[:-1]
        c, ho, wo = self.out_shape
        _, h, w = self.in_shape
        kh, kw = self.kernel
        pt, pl, pb, pr = self.padding
        a = (a.reshape(-1, c, ho, wo) / self._div(a)).reshape(-1, 1, ho, wo)
        out_pad = (h + pt + pb - ((ho - 1) * self.stride[0] + kh), w + pl + pr - ((wo - 1) * self.stride[1] + kw))
        ones = torch.ones(1, 1, kh, kw, dtype=a.dtype, device=a.device)
        full = F.conv_transpose2d(a, ones, stride=self.stride, output_padding=out_pad)
        return full[:, :, pt : pt + h, pl : pl + w].reshape(*lead, self.in_dim)

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return self.backward(a)

    def matrix(self) -> sp.csr_matrix:
        c, ho, wo = self.out_shape
        _, h, w = self.in_shape
        kh, kw = self.kernel
        pt, pl = self.padding[0], self.padding[1]
        ch, oi, oj, ki, kj = np.meshgrid(np.arange(c), np.arange(ho), np.arange(wo), np.arange(kh), np.arange(kw),
                                         indexing="ij")
        ii = oi * self.stride[0] - pt + ki
        jj = oj * self.stride[1] - pl + kj
        valid = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        rows = ((ch * ho + oi) * wo + oj)[valid]
        cols = ((ch * h + ii) * w + jj)[valid]
        vals = 1.0 / self._divisor[oi[valid], oj[valid]]
        return sp.csr_matrix((vals, (rows, cols)), shape=(self.out_dim, self.in_dim))

    def describe(self) -> str:
        return (f"{self.name}(kernel {self.kernel}, stride {self.stride}, pads {self.padding}, "
                f"count_include_pad {int(self.count_include_pad)}: {self.in_dim} -> {self.out_dim})")


@dataclass(frozen=True, eq=False)
class Permute(SpatialDims, _NoBias):
    """ONNX Transpose that reorders elements: the activation, read as ``in_shape`` (row-major),
    has its axes permuted by ``perm`` (output axis ``k`` is input axis ``perm[k]``)."""

    in_shape: tuple[int, ...]
    perm: tuple[int, ...]
    fmt: FloatFormat = FLOAT32

    def __post_init__(self) -> None:
        if sorted(self.perm) != list(range(len(self.in_shape))):
            raise ValueError(f"Permute: {self.perm} is not a permutation of the axes of {self.in_shape}")

    @cached_property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(int(self.in_shape[p]) for p in self.perm)

    @cached_property
    def _inverse(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.perm))

    @cached_property
    def _index(self) -> np.ndarray:
        """``out[j] = in[index[j]]``."""
        return np.arange(self.in_dim).reshape(self.in_shape).transpose(self.perm).reshape(-1)

    @property
    def rounding_ops(self) -> int:
        return 0  # moves values, no arithmetic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return x.reshape(b, *self.in_shape).permute(0, *(p + 1 for p in self.perm)).reshape(b, -1)

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        lead = a.shape[:-1]
        a = a.reshape(-1, *self.out_shape).permute(0, *(p + 1 for p in self._inverse))
        return a.reshape(*lead, self.in_dim)

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return self.backward(a)

    def matrix(self) -> sp.csr_matrix:
        n = self.in_dim
        return sp.csr_matrix((np.ones(n), (np.arange(n), self._index)), shape=(n, n))

    def copies(self) -> np.ndarray:
        return self._index.astype(np.int64)

    @property
    def mixes(self) -> bool:
        return False

    def row_energy(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.forward(sigma)

    def describe(self) -> str:
        return f"Permute({self.in_shape} by {self.perm}: {self.in_dim})"


@dataclass(frozen=True, eq=False)
class ZeroPad2d(SpatialDims, _NoBias):
    """ONNX Pad (mode constant, value 0) of the spatial dims of a flat ``(C, H, W)`` activation."""

    in_shape: tuple[int, int, int]  # (C, H, W)
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    fmt: FloatFormat = FLOAT32

    def __post_init__(self) -> None:
        if min(self.padding) < 0:
            raise ValueError(f"ZeroPad2d: negative padding {self.padding}")

    @cached_property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.in_shape
        pt, pl, pb, pr = self.padding
        return (int(c), int(h + pt + pb), int(w + pl + pr))

    @property
    def rounding_ops(self) -> int:
        return 0  # copies values and inserts exact zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pt, pl, pb, pr = self.padding
        return F.pad(x.reshape(b, *self.in_shape), (pl, pr, pt, pb)).reshape(b, -1)

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        lead = a.shape[:-1]
        _, h, w = self.in_shape
        pt, pl = self.padding[0], self.padding[1]
        a = a.reshape(-1, *self.out_shape)[:, :, pt : pt + h, pl : pl + w]
        return a.reshape(*lead, self.in_dim)

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return self.backward(a)

    def matrix(self) -> sp.csr_matrix:
        c, h, w = self.in_shape
        _, hp, wp = self.out_shape
        pt, pl = self.padding[0], self.padding[1]
        dst = np.arange(self.out_dim).reshape(c, hp, wp)[:, pt : pt + h, pl : pl + w].reshape(-1)
        return sp.csr_matrix((np.ones(self.in_dim), (dst, np.arange(self.in_dim))), shape=(self.out_dim, self.in_dim))

    @property
    def mixes(self) -> bool:
        return False

    def row_energy(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.forward(sigma)

    def copies(self) -> np.ndarray:
        c, h, w = self.in_shape
        _, hp, wp = self.out_shape
        pt, pl = self.padding[0], self.padding[1]
        out = np.full(self.out_dim, -1, dtype=np.int64)
        dst = np.arange(self.out_dim).reshape(c, hp, wp)[:, pt : pt + h, pl : pl + w].reshape(-1)
        out[dst] = np.arange(self.in_dim)
        return out

    def describe(self) -> str:
        return f"ZeroPad2d(pads {self.padding}, {self.in_shape} -> {self.out_shape}: {self.in_dim} -> {self.out_dim})"
