"""The layers of robustkit's network representation.

A network is a sequence of layers acting on *flat* activations: a batch is a tensor of shape
``(B, n)`` where ``n`` is the number of elements of one sample in row-major (C, H, W) order,
the same order ONNX's Flatten and Reshape use. Shape-only ONNX operators (Flatten, Reshape,
Squeeze, ...) therefore disappear; what remains are linear layers (``Dense``, ``Conv2d``,
``Elementwise``) and elementwise nonlinear operators (ReLU, LeakyReLU, HardTanh, Sigmoid, Tanh).

Each layer has one meaning on numbers (``forward``), one on intervals (``interval``) and, for
linear layers, one as a matrix (``matrix``/``bias_vector``), which the MILP encoder turns into
solver rows and bound propagation uses through ``backward`` (the product ``A @ W``).
Weights are stored exactly as read (float32 from ONNX); computations run in the dtype of the
input (float32 for attacks, float64 for bounds and the MILP).

Each linear layer also states how its float evaluation (onnxruntime) may differ from the exact
affine map (:meth:`LinearLayer.float_model`, the model of :mod:`robustkit.bounds.floaterr`).
The nonlinear operators live in :mod:`robustkit.network.activations` and the modules beside it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from robustkit.network.encoding import ZERO, RowBuilder
from robustkit.network.floatfmt import FLOAT32, FloatFormat


class Layer(ABC):
    """A layer mapping flat ``(B, in_dim)`` activations to ``(B, out_dim)``: a linear layer
    (:class:`LinearLayer`) or an elementwise nonlinear operator
    (:class:`~robustkit.network.activations.Activation`), each owning all its meanings."""

    nonlinear: ClassVar[bool] = False  # an Activation: relaxed, split and encoded as one

    @property
    def rounds(self) -> bool:
        """Whether the bound methods charge this layer's own float error (``errs.rounding``)."""
        return False

    @property
    @abstractmethod
    def in_dim(self) -> int: ...

    @property
    @abstractmethod
    def out_dim(self) -> int: ...

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to a batch of flat activations."""

    @abstractmethod
    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image of the box ``[lower, upper]`` under the layer, by interval arithmetic."""

    def describe(self) -> str:
        return f"{type(self).__name__}({self.in_dim} -> {self.out_dim})"

    def torch_modules(self, dtype: torch.dtype = torch.float32) -> list["torch.nn.Module"]:
        """Standard torch modules computing this layer on flat activations (``nn.Linear``,
        ``nn.Conv2d`` between reshapes, ``nn.ReLU``, ...), for code that understands those."""
        raise NotImplementedError(f"{self.describe()} has no standard torch module")

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Layer":
        """The same layer with ``fn`` applied to its tensors (device and dtype moves)."""
        moved = {f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved) if moved else self  # type: ignore[type-var]


class LinearLayer(Layer):
    """An affine layer ``y = W x + b``; subclasses differ in how ``W`` is stored and applied."""

    @abstractmethod
    def matrix(self) -> sp.csr_matrix:
        """``W`` as a float64 sparse matrix of shape ``(out_dim, in_dim)``."""

    @abstractmethod
    def bias_vector(self) -> np.ndarray:
        """``b`` as a float64 vector of length ``out_dim``."""

    @abstractmethod
    def backward(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ W`` for ``a`` of shape ``(..., out_dim)``: pulls a linear function back one layer."""

    @abstractmethod
    def bias_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        """``b`` as a tensor of the given dtype."""

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ |W|`` (for interval arithmetic); ``a`` must be non-negative."""
        raise NotImplementedError

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        center = (upper + lower) * 0.5  # (x * 0.5 is x / 2 exactly, and cheaper)
        radius = (upper - lower) * 0.5
        c = self.forward(center)
        r = self.abs_forward(radius)
        return c - r, c + r

    @abstractmethod
    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``|W| x`` (no bias), for interval arithmetic."""

    @property
    def rounds(self) -> bool:
        return self.rounding_ops > 0

    def backward_step(self, A: torch.Tensor, c: torch.Tensor, *_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """``A h + c`` (``h``: this layer's output) as a function of its input: ``(A W, c + A b)``."""
        return self.backward(A), c + A @ self.bias_tensor(A.dtype)

    def row_slice(self, rows: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(W[rows], b[rows])`` where taking rows of ``W`` is cheaper than multiplying one-hot
        rows through :meth:`backward` (None: not offered)."""
        return None

    def copies(self) -> np.ndarray:
        """``(out_dim,)``: for each output, the input it copies exactly (no arithmetic, no bias),
        or -1 (an encoder then needs no column and no row for it)."""
        return np.full(self.out_dim, -1, dtype=np.int64)

    @property
    def mixes(self) -> bool:
        """Whether an output depends on more than one input (not a diagonal map or a selection)."""
        return True

    @property
    def feeds_once(self) -> bool:
        """Whether each input reaches at most one output (a column of the matrix has at most one
        nonzero): the rows then have disjoint supports, so a layer after this one has row norms
        ``sum_j W_ij^2 ||row_j||^2`` (:meth:`row_energy` composes). False when unknown."""
        return False

    def row_energy(self, sigma: torch.Tensor) -> torch.Tensor:
        """``(B or 1, out_dim)``: ``sum_j W_ij^2 sigma_j`` (``sigma``: ``(B or 1, in_dim)`` weights of
        the inputs, e.g. 1, or the squared scales of a diagonal map before): the squared norms of the
        Jacobian's rows (the contractive penalty). Differentiable in the layer's parameters where it
        has them; from :meth:`matrix` for the others."""
        m = self.matrix()
        sq = torch.from_numpy(m.multiply(m).toarray() if self.in_dim * self.out_dim <= 4_000_000
                              else m.multiply(m).tocsr().toarray()).to(sigma.dtype)
        return sigma @ sq.T

    def encode(self, builder: RowBuilder, z: np.ndarray, lower: np.ndarray, upper: np.ndarray, acc: np.ndarray,
               error: np.ndarray, needed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add the layer to a MILP or LP (:class:`~robustkit.network.encoding.RowBuilder`): the
        outputs ``needed`` get a column (an exact copy of an input takes that input's column, no
        row) tied to the inputs ``z`` (columns standing for float values within ``acc``).
        ``lower``/``upper``: bounds of the output (of the float network); ``error``: its float
        error bound. With ``builder.ranged`` each new column is the float value itself, the row
        ``|c - W a - b| <= error + |W| acc`` (an LP); else the row ``c = W a + b`` is exact and the
        column stands for a float value within ``error + |W| acc`` (the MILP; ``builder.exact``:
        no error at all). Returns the output columns (``ZERO`` where not needed) and their ``acc``."""
        out = np.full(self.out_dim, ZERO, dtype=np.int64)
        out_acc = np.zeros(self.out_dim)
        copied = self.copies()
        take = needed & (copied >= 0)
        out[take] = z[copied[take]]
        out_acc[take] = acc[copied[take]]
        idx = np.flatnonzero(needed & (copied < 0))
        if idx.size == 0:
            return out, out_acc
        w = self.matrix()[idx]
        keep = np.flatnonzero(z != ZERO)
        w_keep = w[:, keep].tocoo()
        spread = abs(w[:, keep]) @ acc[keep] if keep.size else np.zeros(idx.size)
        b = self.bias_vector()[idx]
        scale = np.maximum(-lower[idx], upper[idx])
        if builder.ranged:
            tol = error[idx] + spread
            cols = builder.add_cols(lower[idx], upper[idx], scale=scale)
            lo_row, hi_row, new_acc = b - tol, b + tol, np.zeros(idx.size)
        else:
            new_acc = np.zeros(idx.size) if builder.exact else error[idx] + spread
            cols = builder.add_cols(lower[idx] - new_acc, upper[idx] + new_acc, scale=scale)
            lo_row, hi_row = b, b
        r = np.arange(idx.size)
        builder.add_rows(np.concatenate([r, w_keep.row]), np.concatenate([cols, z[keep][w_keep.col]]),
                         np.concatenate([np.ones(idx.size), -w_keep.data]), lo_row, hi_row)
        out[idx] = cols
        out_acc[idx] = new_acc
        return out, out_acc

    @property
    @abstractmethod
    def rounding_ops(self) -> int:
        """The most roundings on the path to one output when the ONNX operators this layer came
        from run in :attr:`fmt`: the length of the dot product plus the bias and scaling steps."""

    def error_offset(self, dtype: torch.dtype) -> torch.Tensor:
        """The constant part of the rounding-error magnitude (``|b|`` for a plain affine layer;
        larger for layers folded from several operators, whose intermediate constants round too)."""
        return self.bias_tensor(dtype).abs()

    # the format the layer's ONNX operators compute in (a dataclass field of every subclass)
    fmt: FloatFormat

    @property
    def coef_bound(self) -> float:
        """The largest ``|coefficient|`` the layer's operators multiply a value by (for the term of
        an operand read as zero, :meth:`float_model`)."""
        return 0.0

    @property
    def amplification(self) -> float:
        """A bound on how much the operators after an intermediate value of the layer multiply an
        absolute error in it (1 for a dot product: later steps only add to it)."""
        return 1.0

    def peak(self, mag: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
        """``(B,)``: a bound on the magnitude of every value the layer's operators compute (each
        product, partial sum and result, in exact arithmetic) for inputs of magnitude at most ``mag``
        ``(B, in_dim)``, given ``terms = |W| mag + error_offset``: by default their largest entry."""
        return terms.amax(-1)

    def float_model(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's part of the float error model over ``[lower, upper]`` (``(B, in_dim)``), when
        its operators run in :attr:`fmt` (:mod:`robustkit.network.floatfmt`): ``(error, reach)``.

        ``error`` ``(B, out_dim)`` bounds ``|fl(W x + b) - (W x + b)|``: ``gamma(n) t + a`` with ``n``
        = :attr:`rounding_ops`, ``t = |W| m + error_offset`` (``m = max(|lower|, |upper|)``) and the
        absolute part ``a = 2 n A (eta + daz (c + p + 1))``: each operation's result may underflow
        (``eta``), each of its operands (an activation, a coefficient, a constant, all at most
        ``c`` = :attr:`coef_bound` or ``p`` = the larger of ``max m`` and :meth:`peak`) may be read
        as zero below ``daz``, the steps after it multiply that by at most ``A`` =
        :attr:`amplification`, and the ``n`` roundings by at most 2.
        ``reach`` ``(B,)`` bounds every value the float evaluation computes, ``(1 + gamma(n)) p + a``:
        below ``fmt.max`` nothing overflows."""
        mag = torch.maximum(lower.abs(), upper.abs())
        n = self.rounding_ops
        if n == 0:  # moves values: exact, and no larger than its inputs
            return torch.zeros(mag.shape[0], self.out_dim, dtype=mag.dtype, device=mag.device), mag.amax(-1)
        terms = self.abs_forward(mag) + self.error_offset(mag.dtype).to(mag.device)
        return _error_and_reach(self, n, mag, terms, self.peak(mag, terms))

    def rounding_error(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """``(B, out_dim)``: the error part of :meth:`float_model`."""
        return self.float_model(lower, upper)[0]

    def fused_reach(self, before: torch.Tensor) -> torch.Tensor:
        """``(B,)``: the values this layer reaches if onnxruntime fuses it into the linear layer before
        it, whose :meth:`float_model` reach was ``before`` (0: this layer does not fuse)."""
        return torch.zeros_like(before)

    def fused_error(self, prev: LinearLayer, prev_error: torch.Tensor, prev_reach: torch.Tensor) -> torch.Tensor:
        """``(B, out_dim)``: what this layer's error bound must be at least, if onnxruntime may fuse
        it into ``prev`` (whose error bound was ``prev_error`` and reach ``prev_reach``), so that the
        fused operator's result is one of the perturbed networks too (0: this layer does not fuse)."""
        return prev_error.new_zeros(prev_error.shape[0], self.out_dim)


def _error_and_reach(layer: LinearLayer, n: int | torch.Tensor, mag: torch.Tensor, terms: torch.Tensor,
                     peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`LinearLayer.float_model` from ``n`` roundings (an int, or ``(out_dim,)`` per output),
    the terms ``|W| m + offset`` and the peak."""
    fmt = layer.fmt
    try:
        g_max = fmt.gamma(n if isinstance(n, int) else int(n.max()))
    except ValueError as exc:
        raise ValueError(f"{layer.describe()}: {exc}") from None
    if isinstance(n, int):
        g: float | torch.Tensor = g_max
    else:
        nu = n.to(device=mag.device, dtype=mag.dtype) * fmt.unit
        g = nu / (1 - nu)
    operand = torch.maximum(mag.amax(-1), peak)
    per_op = 2 * layer.amplification * (fmt.eta + fmt.daz * (layer.coef_bound + operand + 1))  # (B,)
    if isinstance(n, int):
        absolute = n * per_op.unsqueeze(-1)
        n_max = n
    else:
        absolute = n.to(device=mag.device, dtype=mag.dtype) * per_op.unsqueeze(-1)
        n_max = int(n.max())
    return g * terms + absolute, (1 + g_max) * peak + n_max * per_op


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


@dataclass(frozen=True, eq=False)
class Dense(LinearLayer):
    """Fully connected layer ``y = W x + b`` (ONNX Gemm, MatMul + Add)."""

    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor  # (out,)
    # a constant Add folded into the bias (the loader's MatMul/Gemm + Add): its rounding, and the
    # error offset |b| + |c| (the intermediate W x + b is rounded before c is added)
    extra_ops: int = 0
    offset: torch.Tensor | None = None  # (out,) replaces |bias| in the error model
    fmt: FloatFormat = FLOAT32

    def __post_init__(self) -> None:
        if self.weight.dim() != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"Dense: weight {tuple(self.weight.shape)} and bias {tuple(self.bias.shape)} disagree")
        if self.offset is not None and self.offset.shape != self.bias.shape:
            raise ValueError("Dense: error offset and bias differ in shape")

    @property
    def rounding_ops(self) -> int:
        # the dot product, the bias add, Gemm's alpha/beta scaling, and a separate Add node
        return self.in_dim + 3 + self.extra_ops

    def error_offset(self, dtype: torch.dtype) -> torch.Tensor:
        return self.bias_tensor(dtype).abs() if self.offset is None else _cast(self.offset, dtype)

    @cached_property
    def coef_bound(self) -> float:
        return float(self.weight.abs().max()) if self.weight.numel() else 0.0

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _cast(self.weight, x.dtype).abs())

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return a @ _cast(self.weight, a.dtype)

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return a @ _cast(self.weight, a.dtype).abs()

    def bias_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        return _cast(self.bias, dtype)

    def row_slice(self, rows: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.weight.to(dtype)[rows], self.bias.to(dtype)[rows]

    def row_energy(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma @ _cast(self.weight, sigma.dtype).pow(2).T

    def torch_modules(self, dtype: torch.dtype = torch.float32) -> list["torch.nn.Module"]:
        from robustkit.network.torch_modules import linear

        return [linear(self.weight, self.bias, dtype)]

    def matrix(self) -> sp.csr_matrix:
        return sp.csr_matrix(self.weight.detach().double().cpu().numpy())

    def bias_vector(self) -> np.ndarray:
        return self.bias.detach().double().cpu().numpy()


@dataclass(frozen=True, eq=False)
class Elementwise(LinearLayer):
    """Elementwise affine map ``y = x * scale + shift`` (normalization: ONNX Sub, Div, Mul, Add,
    BatchNormalization in inference mode). ``scale`` and ``shift`` are flat, length ``dim``."""

    scale: torch.Tensor
    shift: torch.Tensor
    # roundings of the ONNX operators it came from (one Sub/Div/Mul/Add: 1, plus 1 for the
    # float64 reciprocal of a divisor; BatchNormalization: 6) and their error offset (default |shift|)
    ops: int = 2
    offset: torch.Tensor | None = None
    fmt: FloatFormat = FLOAT32
    # several steps (BatchNormalization): every intermediate is at most ``peak_scale |x| + peak_shift``
    # (flat, length ``dim``; default: the result's own bound), the steps multiply by at most ``coef``
    # (default max |scale|) and amplify an absolute error by at most ``amplify``
    peak_scale: torch.Tensor | None = None
    peak_shift: torch.Tensor | None = None
    coef: float | None = None
    amplify: float = 1.0

    def __post_init__(self) -> None:
        if self.scale.shape != self.shift.shape or self.scale.dim() != 1:
            raise ValueError("Elementwise: scale and shift must be flat and of equal length")
        for name in ("offset", "peak_scale", "peak_shift"):
            t = getattr(self, name)
            if t is not None and t.shape != self.shift.shape:
                raise ValueError(f"Elementwise: {name} and shift differ in shape")
        if (self.peak_scale is None) != (self.peak_shift is None):
            raise ValueError("Elementwise: peak_scale and peak_shift go together")
        if self.ops < 1:
            raise ValueError("Elementwise: ops must be >= 1")
        if self.amplify < 1:
            raise ValueError("Elementwise: amplify must be >= 1")

    @cached_property
    def coef_bound(self) -> float:
        own = float(self.scale.abs().max()) if self.scale.numel() else 0.0
        return own if self.coef is None else max(own, self.coef)

    @property
    def amplification(self) -> float:
        return self.amplify

    def fused_reach(self, before: torch.Tensor) -> torch.Tensor:
        # Conv/Gemm + BatchNormalization, Mul or Add: the fused weights and sums are the earlier
        # ones times the scale, plus the shifted constants
        shift = float(self.error_offset(torch.float64).abs().max()) if self.in_dim else 0.0
        return 2 * (self.coef_bound * before + shift)

    def fused_error(self, prev: LinearLayer, prev_error: torch.Tensor, prev_reach: torch.Tensor) -> torch.Tensor:
        # fused, each term of prev's dot product carries this layer's roundings too (the scale folded
        # into the weights, the shift into the bias): within gamma_k (|s| t_prev + offset) of the exact
        # value, k = k_prev + k_self, t_prev = |W| |x| + |b| <= prev_error / gamma_k_prev. Charging
        # |s| prev_error through prev and this layer's error here covers that when the latter is at
        # least the excess over |s| prev_error, and the fused operator's underflow terms.
        kp = prev.rounding_ops
        if kp == 0 or prev.out_dim != self.in_dim:
            return prev_error.new_zeros(prev_error.shape[0], self.out_dim)
        k = kp + self.rounding_ops
        fmt = self.fmt
        g_k, g_p = fmt.gamma(k), fmt.gamma(kp)
        s = _cast(self.scale, prev_error.dtype).abs()
        per_op = fmt.eta + fmt.daz * (prev.coef_bound * max(self.coef_bound, 1.0) + prev_reach + 1)
        return ((g_k - g_p) / g_p) * s * prev_error + g_k * self.error_offset(prev_error.dtype) \
            + (2 * k * per_op).unsqueeze(-1)

    def peak(self, mag: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
        top = terms.amax(-1)
        if self.peak_scale is None or self.peak_shift is None:
            return top
        inner = mag * _cast(self.peak_scale, mag.dtype) + _cast(self.peak_shift, mag.dtype)
        return torch.maximum(top, inner.amax(-1))

    @property
    def rounding_ops(self) -> int:
        return self.ops

    def error_offset(self, dtype: torch.dtype) -> torch.Tensor:
        return self.bias_tensor(dtype).abs() if self.offset is None else _cast(self.offset, dtype)

    @property
    def in_dim(self) -> int:
        return int(self.scale.shape[0])

    @property
    def out_dim(self) -> int:
        return self.in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _cast(self.scale, x.dtype) + _cast(self.shift, x.dtype)

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _cast(self.scale, x.dtype).abs()

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return a * _cast(self.scale, a.dtype)

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return a * _cast(self.scale, a.dtype).abs()

    def bias_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        return _cast(self.shift, dtype)

    def matrix(self) -> sp.csr_matrix:
        return sp.diags(self.scale.detach().double().cpu().numpy()).tocsr()

    @property
    def mixes(self) -> bool:
        return False

    @property
    def feeds_once(self) -> bool:
        return True

    def row_energy(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * _cast(self.scale, sigma.dtype).pow(2)

    def torch_modules(self, dtype: torch.dtype = torch.float32) -> list["torch.nn.Module"]:
        from robustkit.network.torch_modules import Affine

        return [Affine(self.scale.detach().to(dtype), self.shift.detach().to(dtype))]

    def bias_vector(self) -> np.ndarray:
        return self.shift.detach().double().cpu().numpy()
