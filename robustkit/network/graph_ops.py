"""Linear layers that let a network *graph* run as a chain.

A graph with branches (a residual ``Add`` of two paths, ``Concat``, a tensor read by several
nodes) becomes a chain whose flat activation is the concatenation of every tensor still needed,
its *segments*. Each step maps segments to segments:

* :class:`Blocks`: ``y_i = sum_j P_ij x_j`` for a sparse grid of linear layers ``P_ij`` between
  input segment ``j`` and output segment ``i`` (copying a segment is an :class:`Identity` block,
  a residual sum two blocks in one row, ``Concat`` two rows of one output segment each);
* a :class:`~robustkit.network.layers.ReLU` whose ``identity`` mask carries the other segments.

So every bound method, the MILP encoder and branch and bound run on graphs unchanged; a chain
(one segment throughout) gets no ``Blocks`` at all. :class:`SparseLinear` is a sparse matrix with
an exact float model, for MaxPool's differences ``max(a, b) = relu(a - b) + b``.

Float error (:mod:`robustkit.bounds.floaterr`): an output row of :class:`Blocks` that sums ``J``
terms, each computed with ``k_j`` roundings, then added in float32, is within
``gamma(max k_j + J - 1) * sum_j (|P_ij| |x_j| + o_ij)`` of the exact sum (Higham, Lemma 3.3);
a row with one :class:`Identity` block is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

from robustkit.network.floatfmt import FLOAT32, FloatFormat
from robustkit.network.layers import LinearLayer, _error_and_reach


@dataclass(frozen=True, eq=False)
class Identity(LinearLayer):
    """``y = x`` (a copy of a segment; exact in float32)."""

    dim: int
    fmt: FloatFormat = FLOAT32

    @property
    def in_dim(self) -> int:
        return self.dim

    @property
    def out_dim(self) -> int:
        return self.dim

    @property
    def rounding_ops(self) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def bias_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=dtype)

    def bias_vector(self) -> np.ndarray:
        return np.zeros(self.dim)

    def matrix(self) -> sp.csr_matrix:
        return sp.identity(self.dim, format="csr")

    def copies(self) -> np.ndarray:
        return np.arange(self.dim, dtype=np.int64)

    @property
    def mixes(self) -> bool:
        return False

    @property
    def feeds_once(self) -> bool:
        return True

    def row_energy(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma


@dataclass(frozen=True, eq=False)
class SparseLinear(LinearLayer):
    """``y = W x + b`` with a sparse ``W`` (a torch COO tensor, ``(out, in)``), for selections and
    differences that the ONNX graph computes exactly or with ``ops`` roundings per output."""

    weight: torch.Tensor
    bias: torch.Tensor
    ops: int = 0
    name: str = "SparseLinear"
    fmt: FloatFormat = FLOAT32

    def __post_init__(self) -> None:
        if not self.weight.is_sparse or self.weight.dim() != 2:
            raise ValueError("SparseLinear: weight must be a 2-D sparse COO tensor")
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError("SparseLinear: bias length differs from the rows of the weight")
        if self.ops < 0:
            raise ValueError("SparseLinear: ops must be >= 0")

    @classmethod
    def from_scipy(cls, m: sp.spmatrix, bias: np.ndarray | None = None, ops: int = 0,
                   name: str = "SparseLinear", fmt: FloatFormat = FLOAT32) -> "SparseLinear":
        coo = sp.coo_matrix(m, dtype=np.float64)
        idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        weight = torch.sparse_coo_tensor(idx, torch.from_numpy(coo.data), coo.shape,
                                         check_invariants=True).coalesce()
        b = torch.zeros(coo.shape[0], dtype=torch.float64) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
        return cls(weight, b, ops, name, fmt)

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def rounding_ops(self) -> int:
        return self.ops

    @cached_property
    def feeds_once(self) -> bool:
        cols = self.weight.coalesce().indices()[1]
        return bool(cols.unique().numel() == cols.numel())

    @cached_property
    def coef_bound(self) -> float:
        values = self.weight.coalesce().values()
        return float(values.abs().max()) if values.numel() else 0.0

    def _w(self, dtype: torch.dtype, absolute: bool = False) -> torch.Tensor:
        w = self.weight if self.weight.dtype == dtype else self.weight.to(dtype)
        return torch.abs(w) if absolute else w

    def _apply_w(self, x: torch.Tensor, absolute: bool) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        return torch.sparse.mm(self._w(x.dtype, absolute), flat.T).T.reshape(*lead, self.out_dim)

    def _apply_wt(self, a: torch.Tensor, absolute: bool) -> torch.Tensor:
        lead = a.shape[:-1]
        flat = a.reshape(-1, a.shape[-1])
        return torch.sparse.mm(self._w(a.dtype, absolute).t(), flat.T).T.reshape(*lead, self.in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_w(x, False) + self.bias_tensor(x.dtype).to(x.device)

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_w(x, True)

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return self._apply_wt(a, False)

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return self._apply_wt(a, True)

    def bias_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        return self.bias if self.bias.dtype == dtype else self.bias.to(dtype)

    def bias_vector(self) -> np.ndarray:
        return self.bias.detach().double().cpu().numpy()

    def matrix(self) -> sp.csr_matrix:
        w = self.weight.coalesce()
        idx = w.indices().cpu().numpy()
        return sp.csr_matrix((w.values().double().cpu().numpy(), (idx[0], idx[1])), shape=tuple(w.shape))

    def copies(self) -> np.ndarray:
        """Rows with a single coefficient 1 and no bias (selections: MaxPool's candidates, Concat,
        Slice) copy that input."""
        if self.ops:
            return super().copies()
        m = self.matrix()
        out = np.full(self.out_dim, -1, dtype=np.int64)
        counts = np.diff(m.indptr)
        single = np.flatnonzero((counts == 1) & (self.bias_vector() == 0))
        one = m.data[m.indptr[single]] == 1.0
        out[single[one]] = m.indices[m.indptr[single[one]]]
        return out

    def describe(self) -> str:
        return f"{self.name}({self.in_dim} -> {self.out_dim})"


@dataclass(frozen=True, eq=False)
class Blocks(LinearLayer):
    """``y_i = sum_{(i, j, P) in blocks} P x_j``: a sparse grid of linear layers between the
    segments ``in_sizes`` of the input and ``out_sizes`` of the output. Every output segment has
    at least one block; an input segment with none is dropped (a tensor no longer needed)."""

    in_sizes: tuple[int, ...]
    out_sizes: tuple[int, ...]
    blocks: tuple[tuple[int, int, LinearLayer], ...]
    fmt: FloatFormat = FLOAT32

    def __post_init__(self) -> None:
        rows = set()
        for i, j, p in self.blocks:
            if not (0 <= i < len(self.out_sizes) and 0 <= j < len(self.in_sizes)):
                raise ValueError(f"Blocks: block ({i}, {j}) outside the {len(self.out_sizes)}x{len(self.in_sizes)} grid")
            if p.in_dim != self.in_sizes[j] or p.out_dim != self.out_sizes[i]:
                raise ValueError(f"Blocks: {p.describe()} at ({i}, {j}) does not map {self.in_sizes[j]} -> "
                                 f"{self.out_sizes[i]}")
            rows.add(i)
        if rows != set(range(len(self.out_sizes))):
            raise ValueError("Blocks: every output segment needs a block")

    @cached_property
    def _in_off(self) -> list[int]:
        return [0, *np.cumsum(self.in_sizes).tolist()]

    @cached_property
    def _out_off(self) -> list[int]:
        return [0, *np.cumsum(self.out_sizes).tolist()]

    @cached_property
    def _row_ops(self) -> list[int]:
        """Roundings per output segment: the most of its terms, plus one per addition."""
        ops = []
        for i in range(len(self.out_sizes)):
            terms = [p.rounding_ops for r, _, p in self.blocks if r == i]
            ops.append(max(terms) + len(terms) - 1)
        return ops

    @property
    def in_dim(self) -> int:
        return int(sum(self.in_sizes))

    @property
    def out_dim(self) -> int:
        return int(sum(self.out_sizes))

    @property
    def rounding_ops(self) -> int:
        return max(self._row_ops)

    def _seg(self, x: torch.Tensor, off: list[int], k: int) -> torch.Tensor:
        return x[..., off[k] : off[k + 1]]

    def _map(self, x: torch.Tensor, how: str) -> torch.Tensor:
        """Sum over blocks of ``P.<how>`` (forward/abs_forward) applied to the input segments."""
        outs: list[torch.Tensor | None] = [None] * len(self.out_sizes)
        for i, j, p in self.blocks:
            v = getattr(p, how)(self._seg(x, self._in_off, j))
            outs[i] = v if outs[i] is None else outs[i] + v
        return torch.cat(outs, dim=-1)  # type: ignore[arg-type]

    def _pull(self, a: torch.Tensor, how: str) -> torch.Tensor:
        """Sum over blocks of ``P.<how>`` (backward/abs_backward) of the output segments."""
        parts: list[torch.Tensor | None] = [None] * len(self.in_sizes)
        for i, j, p in self.blocks:
            v = getattr(p, how)(self._seg(a, self._out_off, i))
            parts[j] = v if parts[j] is None else parts[j] + v
        lead = a.shape[:-1]
        full = [torch.zeros(*lead, n, dtype=a.dtype, device=a.device) if v is None else v
                for v, n in zip(parts, self.in_sizes)]
        return torch.cat(full, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(x, "forward")

    def abs_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(x, "abs_forward")

    def backward(self, a: torch.Tensor) -> torch.Tensor:
        return self._pull(a, "backward")

    def abs_backward(self, a: torch.Tensor) -> torch.Tensor:
        return self._pull(a, "abs_backward")

    def _per_row(self, value: Callable[[LinearLayer], torch.Tensor]) -> list[torch.Tensor]:
        outs: list[torch.Tensor | None] = [None] * len(self.out_sizes)
        for i, _, p in self.blocks:
            v = value(p)
            outs[i] = v if outs[i] is None else outs[i] + v
        return outs  # type: ignore[return-value]

    def bias_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(self._per_row(lambda p: p.bias_tensor(dtype)))

    def error_offset(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(self._per_row(lambda p: p.error_offset(dtype)))

    def bias_vector(self) -> np.ndarray:
        return self.bias_tensor(torch.float64).detach().cpu().numpy()

    def row_energy(self, sigma: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor | None] = [None] * len(self.out_sizes)
        for i, j, p in self.blocks:
            v = p.row_energy(self._seg(sigma, self._in_off, j))
            outs[i] = v if outs[i] is None else outs[i] + v
        return torch.cat(outs, dim=-1)  # type: ignore[arg-type]

    @property
    def mixes(self) -> bool:
        return any(p.mixes for _, _, p in self.blocks) or len(self.blocks) > len(self.out_sizes)

    def copies(self) -> np.ndarray:
        """An output segment made of one block copies what that block copies (carried tensors)."""
        out = np.full(self.out_dim, -1, dtype=np.int64)
        terms: dict[int, list[tuple[int, LinearLayer]]] = {}
        for i, j, p in self.blocks:
            terms.setdefault(i, []).append((j, p))
        for i, parts in terms.items():
            if len(parts) == 1:
                j, p = parts[0]
                c = p.copies()
                seg = out[self._out_off[i]: self._out_off[i + 1]]
                seg[:] = np.where(c >= 0, c + self._in_off[j], -1)
        return out

    def matrix(self) -> sp.csr_matrix:
        grid: list[list[sp.spmatrix | None]] = [[None] * len(self.in_sizes) for _ in self.out_sizes]
        for i, j, p in self.blocks:
            m = p.matrix()
            grid[i][j] = m if grid[i][j] is None else grid[i][j] + m
        for j, n in enumerate(self.in_sizes):  # bmat needs each column's width from some block
            if all(row[j] is None for row in grid):
                grid[0][j] = sp.csr_matrix((self.out_sizes[0], n))
        return sp.bmat(grid, format="csr")

    @cached_property
    def coef_bound(self) -> float:
        return max(p.coef_bound for _, _, p in self.blocks)

    @cached_property
    def amplification(self) -> float:  # type: ignore[override]
        return max(p.amplification for _, _, p in self.blocks)

    def float_model(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per output row: the roundings of its terms plus one per addition (``_row_ops``); the
        peak is the largest of every block's own and of the rows' sums of terms."""
        mag = torch.maximum(lower.abs(), upper.abs())
        outs: list[torch.Tensor | None] = [None] * len(self.out_sizes)
        peaks = []
        for i, j, p in self.blocks:
            seg = self._seg(mag, self._in_off, j)
            v = p.abs_forward(seg) + p.error_offset(mag.dtype).to(mag.device)
            if p.rounding_ops:
                peaks.append(p.peak(seg, v))
            outs[i] = v if outs[i] is None else outs[i] + v
        terms = torch.cat(outs, dim=-1)  # type: ignore[arg-type]
        peak = torch.stack([terms.amax(-1), *peaks]).amax(0)
        if self.rounding_ops == 0:  # copies only
            return torch.zeros_like(terms), peak
        n = torch.cat([torch.full((size,), k) for size, k in zip(self.out_sizes, self._row_ops)])
        return _error_and_reach(self, n, mag, terms, peak)

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Blocks":
        return Blocks(self.in_sizes, self.out_sizes, tuple((i, j, p.map_tensors(fn)) for i, j, p in self.blocks),
                      self.fmt)

    def describe(self) -> str:
        inner = ", ".join(f"{i}<-{j}: {p.describe()}" for i, j, p in self.blocks if not isinstance(p, Identity))
        return f"Blocks({list(self.in_sizes)} -> {list(self.out_sizes)}; {inner or 'copies'})"
