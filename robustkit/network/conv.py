"""2-D convolution as a linear layer over flat activations (:class:`Conv2d`, with groups and
dilation), and :class:`SpatialDims`, the image shape bookkeeping it shares with the pooling and
padding layers of :mod:`robustkit.network.linear_ops`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from robustkit.network.floatfmt import FLOAT32, FloatFormat
from robustkit.network.layers import LinearLayer, _cast


class SpatialDims:
    """``in_dim``/``out_dim`` of a layer on a ``(C, H, W)``-style activation, from its ``in_shape``
    and ``out_shape`` (mix in before the layer base class)."""

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.in_shape))  # type: ignore[attr-defined]

    @property
    def out_dim(self) -> int:
        return int(np.prod(self.out_shape))  # type: ignore[attr-defined]


@dataclass(frozen=True, eq=False)
class Conv2d(SpatialDims, LinearLayer):
    """2-D convolution (ONNX Conv, with groups and dilation) on flat ``(C, H, W)`` activations."""

    weight: torch.Tensor  # (C_out, C_in / groups, kh, kw)
    bias: torch.Tensor  # (C_out,)
    in_shape: tuple[int, int, int]  # (C_in, H, W)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right (ONNX pads order: t, l, b, r)
    fmt: FloatFormat = FLOAT32
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        if self.weight.dim() != 4 or self.weight.shape[1] * self.groups != self.in_shape[0] \
                or self.weight.shape[0] % self.groups:
            raise ValueError(f"Conv2d: weight {tuple(self.weight.shape)} does not match input {self.in_shape} "
                             f"in {self.groups} group(s)")
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError("Conv2d: bias length differs from output channels")
        if min(self.dilation) < 1 or min(self.stride) < 1:
            raise ValueError(f"Conv2d: stride {self.stride} and dilation {self.dilation} must be >= 1")

    @property
    def rounding_ops(self) -> int:
        # the dot product over the kernel, the bias, and a following BatchNormalization that
        # onnxruntime may fuse into the weights (their float32 rounding)
        return int(np.prod(self.weight.shape[1:])) + 4

    @cached_property
    def coef_bound(self) -> float:
        return float(self.weight.abs().max()) if self.weight.numel() else 0.0

    @cached_property
    def out_shape(self) -> tuple[int, int, int]:
        c_in, h, w = self.in_shape
        kh, kw = self._reach
        pt, pl, pb, pr = self.padding
        ho = (h + pt + pb - kh) // self.stride[0] + 1
        wo = (w + pl + pr - kw) // self.stride[1] + 1
        if ho <= 0 or wo <= 0:
            raise ValueError(f"Conv2d: empty output for input {self.in_shape}")
        return (int(self.weight.shape[0]), int(ho), int(wo))

    @property
    def _reach(self) -> tuple[int, int]:
        """The kernel's extent on the input: ``dilation (k - 1) + 1`` per axis."""
        kh, kw = self.weight.shape[2:]
        return self.dilation[0] * (int(kh) - 1) + 1, self.dilation[1] * (int(kw) - 1) + 1

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b = x.shape[0]
        x = x.reshape(b, *self.in_shape)
        pt, pl, pb, pr = self.padding
        if pt == pb and pl == pr:
            y = F.conv2d(x, weight, bias, stride=self.stride, padding=(pt, pl), dilation=self.dilation,
                         groups=self.groups)
        else:
            y = F.conv2d(F.pad(x, (pl, pr, pt, pb)), weight, bias, stride=self.stride, dilation=self.dilation,
                         groups=self.groups)
        return y.reshape(b, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, _cast(self.weight, x.dtype).abs(), None)

    def _transpose(self, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        lead = a.shape[:-1]
        a = a.reshape(-1, *self.out_shape)
        _, h, w = self.in_shape
        kh, kw = self._reach
        pt, pl, pb, pr = self.padding
        # conv_transpose2d computes the adjoint of conv2d on the padded input; crop the padding.
        hp, wp = h + pt + pb, w + pl + pr
        out_pad = (
            hp - ((self.out_shape[1] - 1) * self.stride[0] + kh),
            wp - ((self.out_shape[2] - 1) * self.stride[1] + kw),
        )
        if a.dtype == torch.float64 and not (torch.is_grad_enabled() and a.requires_grad):
            # the same adjoint as conv2d's input gradient: on a CPU in float64 3-6x faster than
            # conv_transpose2d (whose float64 kernel is the unvectorised fallback), with no autograd
            # graph needed (with one, conv_transpose2d's backward is the faster):
            # verify/results/bab_speed.md
            full = torch.nn.grad.conv2d_input((a.shape[0], self.in_shape[0], hp, wp), weight, a, stride=self.stride,
                                              dilation=self.dilation, groups=self.groups)
        else:
            # channels-last: oneDNN's CPU kernel for this layout is 2-3x faster on the coefficient
            # batches of the bound passes (verify/results/bab_speed_channels_last.md)
            a = a.contiguous(memory_format=torch.channels_last)
            full = F.conv_transpose2d(a, weight.contiguous(memory_format=torch.channels_last), stride=self.stride,
                                      output_padding=out_pad, groups=self.groups, dilation=self.dilation)
        full = full[:, :, pt : pt + h, pl : pl + w]
        return full.reshape(*lead, self.in_dim)

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return self._transpose(a, _cast(self.weight, a.dtype))

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return self._transpose(a, _cast(self.weight, a.dtype).abs())

    def bias_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        return _cast(self.bias, dtype).repeat_interleave(self.out_shape[1] * self.out_shape[2])

    def row_energy(self, sigma: torch.Tensor) -> torch.Tensor:
        return self._conv(sigma, _cast(self.weight, sigma.dtype).pow(2), None)

    def torch_modules(self, dtype: torch.dtype = torch.float32) -> list["torch.nn.Module"]:
        from torch import nn

        from robustkit.network.torch_modules import Flat, Unflat

        pt, pl, pb, pr = self.padding
        sym = pt == pb and pl == pr
        conv = nn.Conv2d(self.in_shape[0], self.out_shape[0], tuple(self.weight.shape[2:]),  # type: ignore[arg-type]
                         stride=self.stride, padding=(pt, pl) if sym else 0, dilation=self.dilation,
                         groups=self.groups)
        conv.weight.data = self.weight.detach().to(dtype).clone()
        conv.bias.data = self.bias.detach().to(dtype).clone()
        pad = [] if sym else [nn.ZeroPad2d((pl, pr, pt, pb))]
        return [Unflat(self.in_shape), *pad, conv, Flat()]

    def matrix(self) -> sp.csr_matrix:
        """The convolution as a sparse matrix, built from index arithmetic (no dense identity)."""
        c_out, ho, wo = self.out_shape
        c_in, h, w = self.in_shape
        cg = int(self.weight.shape[1])  # input channels per group
        kh, kw = self.weight.shape[2:]
        pt, pl = self.padding[0], self.padding[1]
        wt = self.weight.detach().double().cpu().numpy()
        co, ci, ki, kj, oi, oj = np.meshgrid(
            np.arange(c_out), np.arange(cg), np.arange(kh), np.arange(kw), np.arange(ho), np.arange(wo), indexing="ij"
        )
        ii = oi * self.stride[0] - pt + ki * self.dilation[0]
        jj = oj * self.stride[1] - pl + kj * self.dilation[1]
        channel = (co // (c_out // self.groups)) * cg + ci  # the input channel of (co, ci) in its group
        valid = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        rows = ((co * ho + oi) * wo + oj)[valid]
        cols = ((channel * h + ii) * w + jj)[valid]
        vals = wt[co[valid], ci[valid], ki[valid], kj[valid]]
        keep = vals != 0
        return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(self.out_dim, self.in_dim))

    def bias_vector(self) -> np.ndarray:
        return self.bias_tensor(torch.float64).detach().cpu().numpy()
