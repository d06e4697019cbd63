"""Lower an ONNX *graph* to robustkit's chain of layers.

The chain's flat activation is the concatenation of every tensor still needed, its *segments*
(:mod:`robustkit.network.graph_ops`). Nodes are processed in order:

* a node with one dynamic input ``t`` runs the loader's per-operator handler on ``t`` alone; the
  layers it produces act on ``t``'s segment, with the other segments copied (an
  :class:`~robustkit.network.graph_ops.Blocks` with ``Identity`` blocks) or carried through a
  nonlinear layer (its ``identity`` mask). If ``t`` is read again later, the op works on a copy and ``t``'s
  segment stays; otherwise the result replaces it. Shape-only operators add another name (and
  shape) for the same segment;
* ``Add``/``Sub`` of two tensors is one ``Blocks`` row with two blocks, ``Concat`` one
  :class:`~robustkit.network.graph_ops.SparseLinear` per input segment that puts its elements
  where row-major order wants them;
* a segment nobody reads any more is dropped at the next ``Blocks`` (no block in its column).

A chain (one segment throughout, each tensor read once) is handled by the loader exactly as
before: its layers are pushed as they are, with no ``Blocks`` and no identity masks.

This module also builds the exact piecewise-linear lowerings of MaxPool (a tournament of
``max(a, b) = relu(a - b) + b``), Clip and Slice.
"""

from __future__ import annotations

import functools

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from robustkit.network.graph_ops import Blocks, Identity, SparseLinear
from robustkit.network.activations import Activation
from robustkit.network.hardtanh import HardTanh
from robustkit.network.layers import Layer, LinearLayer
from robustkit.network.relu import ReLU

if TYPE_CHECKING:
    import onnx


@dataclass(eq=False)
class Segment:
    """A part of the flat activation: the tensors (name -> shape) that hold these values."""

    size: int
    names: dict[str, tuple[int, ...]] = field(default_factory=dict)


class GraphLowering:
    """The live segments while the loader walks the graph, and the layers that move them.

    ``reader`` is the loader's graph reader: its ``layers`` (the output chain), ``shape`` and
    ``dyn`` (the tensor a handler works on), ``batch_dims`` and ``_fail``."""

    def __init__(self, reader, nodes: Sequence["onnx.NodeProto"], outputs: Sequence[str],
                 input_name: str, shape: tuple[int, ...]) -> None:
        self.reader = reader
        self.last_use: dict[str, float] = {}
        for k, node in enumerate(nodes):
            for name in node.input:
                if name:
                    self.last_use[name] = k
        for name in outputs:
            self.last_use[name] = float("inf")
        self.segs: list[Segment] = [Segment(self._size(shape), {input_name: shape})]

    # -- state -------------------------------------------------------------------------------
    def _size(self, shape: tuple[int, ...]) -> int:
        return int(np.prod(shape[self.reader.batch_dims:])) if len(shape) > self.reader.batch_dims else 1

    def find(self, name: str) -> tuple[int, tuple[int, ...]] | None:
        """(segment index, shape) of a live tensor, or None if ``name`` is not dynamic."""
        for j, seg in enumerate(self.segs):
            if name in seg.names:
                return j, seg.names[name]
        return None

    def _needed(self, seg: Segment, k: int) -> bool:
        """Whether a node after the ``k``-th (or the graph output) reads a tensor of ``seg``."""
        return any(self.last_use.get(n, -1) > k for n in seg.names)

    def _finish(self, k: int) -> None:
        """Forget the names nobody reads after node ``k`` (a segment without names is dead)."""
        for seg in self.segs:
            seg.names = {n: s for n, s in seg.names.items() if self.last_use.get(n, -1) > k}

    def _copies(self, k: int, skip: Segment | None = None) -> list[tuple[Segment, list[tuple[int, LinearLayer]]]]:
        """Identity rows for the live segments other than ``skip``."""
        return [(seg, [(j, Identity(seg.size))]) for j, seg in enumerate(self.segs)
                if seg is not skip and seg.names and self._needed(seg, k)]

    # -- emitting layers ---------------------------------------------------------------------
    def _emit(self, rows: list[tuple[Segment, list[tuple[int, LinearLayer]]]]) -> None:
        """Push the linear map whose output segment ``i`` is ``sum P x_j`` over ``rows[i]``."""
        in_sizes = tuple(seg.size for seg in self.segs)
        for seg, terms in rows:
            seg.size = terms[0][1].out_dim
        out_sizes = tuple(seg.size for seg, _ in rows)
        blocks = tuple((i, j, p) for i, (_, terms) in enumerate(rows) for j, p in terms)
        self.segs = [seg for seg, _ in rows]
        if in_sizes == out_sizes and all(isinstance(p, Identity) and i == j for i, j, p in blocks) \
                and len(blocks) == len(rows):
            return  # every segment copied to its own place
        if len(in_sizes) == 1 and len(out_sizes) == 1 and len(blocks) == 1:
            layer: LinearLayer = blocks[0][2]
        else:
            layer = Blocks(in_sizes, out_sizes, blocks, self.reader.fmt)
        layers = self.reader.layers
        if layers and isinstance(layers[-1], Blocks) and isinstance(layer, Blocks):
            merged = _compose(layers[-1], layer)
            if merged is not None:
                layers[-1] = merged
                return
        layers.append(layer)

    def _activation(self, target: int, act: Activation) -> None:
        """Push the nonlinear ``act`` on segment ``target``, every other segment carried."""
        parts = []
        for j, seg in enumerate(self.segs):
            if j == target:
                own = act.identity.cpu() if act.identity is not None else torch.zeros(seg.size, dtype=torch.bool)
                parts.append(own)
            else:
                parts.append(torch.ones(seg.size, dtype=torch.bool))
        self.reader.layers.append(act.with_identity(torch.cat(parts)))

    # -- nodes -------------------------------------------------------------------------------
    def unary(self, node: "onnx.NodeProto", k: int, name: str, handler: Callable[["onnx.NodeProto"], None]) -> None:
        """A node whose only dynamic input is ``name``: run the loader's handler on it."""
        reader = self.reader
        j, shape = self.find(name)  # type: ignore[misc]
        seg = self.segs[j]
        reader.shape, reader.dyn = shape, name
        outs = [o for o in node.output if o]
        keep = any(self.last_use.get(n, -1) > k for n in seg.names)
        if len(self.segs) == 1 and not keep:  # a chain: push as they come
            handler(node)
            seg.names, seg.size = {o: reader.shape for o in outs[:1]}, reader._flat
            self._finish(k)
            return
        saved, reader.layers = reader.layers, []
        try:
            handler(node)
        finally:
            pushed, reader.layers = reader.layers, saved
        if not outs or outs[0] not in self.last_use:  # nobody reads the result: checked, not lowered
            self._finish(k)
            return
        if not pushed:  # shape only: another name for the same values
            seg.names[outs[0]] = reader.shape
            self._finish(k)
            return
        work = Segment(seg.size)
        if keep:  # the op works on a copy of seg
            if pushed[0].nonlinear:
                self._emit(self._copies(k) + [(work, [(j, Identity(seg.size))])])
            else:
                self._emit(self._copies(k) + [(work, [(j, pushed[0])])])
                pushed = pushed[1:]
        else:
            rows = self._copies(k, skip=seg)
            rows.insert(sum(1 for r, _ in rows if self.segs.index(r) < j), (work, [(j, Identity(seg.size))]))
            self._emit(rows)  # pure copy or a drop of dead segments
        for layer in pushed:
            t = self.segs.index(work)
            if isinstance(layer, Activation):
                self._activation(t, layer)
            else:
                self._emit([(s, [(i, layer if s is work else Identity(s.size))]) for i, s in enumerate(self.segs)])
        work.names = {outs[0]: reader.shape}
        self._finish(k)

    def add(self, node: "onnx.NodeProto", k: int, names: list[str], negate_second: bool) -> None:
        """``Add``/``Sub`` of two dynamic tensors of the same (flat) shape."""
        (ja, sa), (jb, sb) = self.find(names[0]), self.find(names[1])  # type: ignore[misc]
        try:
            out = tuple(int(d) for d in np.broadcast_shapes(sa, sb))
        except ValueError as exc:
            raise self.reader._fail(node, f"operands of shapes {sa} and {sb} do not broadcast") from exc
        if not (self._size(out) == self._size(sa) == self._size(sb)) or len(out) != max(len(sa), len(sb)):
            raise self.reader._fail(node, f"operands of shapes {sa} and {sb} broadcast to {out} "
                                          "(only sums of equally large tensors are supported)")
        n = self.segs[ja].size
        second: LinearLayer = SparseLinear.from_scipy(-sp.identity(n, format="csr"), name="Negate") \
            if negate_second else Identity(n)
        work = Segment(n, {})
        self._emit(self._copies(k) + [(work, [(ja, Identity(n)), (jb, second)])])
        work.names = {node.output[0]: out}
        self._finish(k)

    def concat(self, node: "onnx.NodeProto", k: int, axis: int, parts: list[str | np.ndarray | None]) -> None:
        """``Concat`` along ``axis`` of dynamic tensors (names) and constants (arrays)."""
        reader = self.reader
        if any(p is None for p in parts):
            raise reader._fail(node, "an input is neither a constant nor an activation")
        shapes = []
        for p in parts:
            shapes.append(self.find(p)[1] if isinstance(p, str) else tuple(p.shape))  # type: ignore[index]
        rank = len(shapes[0])
        axis = axis + rank if axis < 0 else axis
        if any(len(s) != rank for s in shapes) or not 0 <= axis < rank or \
                any(s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
            raise reader._fail(node, f"cannot concatenate shapes {shapes} along axis {axis}")
        if reader.batch_dims and axis == 0:
            raise reader._fail(node, "concatenation along the batch axis")
        out_shape = list(shapes[0])
        out_shape[axis] = sum(s[axis] for s in shapes)
        out_idx = np.arange(int(np.prod(out_shape))).reshape(out_shape)
        total = out_idx.size
        bias = np.zeros(total)
        mats: dict[int, sp.spmatrix] = {}
        start = 0
        for p, s in zip(parts, shapes):
            where = np.take(out_idx, np.arange(start, start + s[axis]), axis=axis).reshape(-1)
            start += s[axis]
            if isinstance(p, str):
                j = self.find(p)[0]  # type: ignore[index]
                m = sp.csr_matrix((np.ones(where.size), (where, np.arange(where.size))),
                                  shape=(total, self.segs[j].size))
                mats[j] = mats[j] + m if j in mats else m
            else:
                bias[where] = np.asarray(p, dtype=np.float64).reshape(-1)
        terms: list[tuple[int, LinearLayer]] = []
        for n, (j, m) in enumerate(sorted(mats.items())):
            terms.append((j, SparseLinear.from_scipy(m, bias if n == 0 else None, name="Concat")))
        work = Segment(total)
        self._emit(self._copies(k) + [(work, terms)])
        work.names = {node.output[0]: tuple(int(d) for d in out_shape)}
        self._finish(k)

    def finish(self, output: str) -> bool:
        """Keep only the graph output's segment; False if ``output`` is not a live tensor."""
        found = self.find(output)
        if found is None:
            return False
        j = found[0]
        seg = self.segs[j]
        self._emit([(seg, [(j, Identity(seg.size))])])
        return True


def _compose(first: Blocks, second: Blocks) -> Blocks | None:
    """``second`` after ``first`` as one ``Blocks``, when every block pair that composes has an
    ``Identity`` on one side (so no product of two layers is needed) and no layer of ``first``
    would be duplicated; else None. The float model stays sound: a row of ``J`` terms summed in any
    order is within ``gamma(max k + J - 1)`` of the exact sum, however ``first`` grouped them.
    Both must compute in the same float format."""
    if first.fmt != second.fmt:
        return None
    rows: dict[int, list[tuple[int, LinearLayer]]] = {}
    for i, j, p in first.blocks:
        rows.setdefault(i, []).append((j, p))
    uses = [j for _, j, _ in second.blocks]
    blocks = []
    for i, j, p in second.blocks:
        if isinstance(p, Identity):
            if uses.count(j) > 1 and not all(isinstance(q, Identity) for _, q in rows[j]):
                return None  # would compute that row's layers twice
            blocks += [(i, k, q) for k, q in rows[j]]
        elif len(rows[j]) == 1 and isinstance(rows[j][0][1], Identity):
            blocks.append((i, rows[j][0][0], p))
        else:
            return None
    return Blocks(first.in_sizes, second.out_sizes, tuple(blocks), first.fmt)


# -- operators lowered to several layers ------------------------------------------------------
def _selection(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int],
               bias: np.ndarray | None = None, name: str = "SparseLinear") -> SparseLinear:
    m = sp.csr_matrix((vals.astype(np.float64), (rows, cols)), shape=shape)
    return SparseLinear.from_scipy(m, bias, ops=0, name=name)


def maxpool_layers(in_shape: tuple[int, int, int], kernel: tuple[int, int], stride: tuple[int, int],
                   pads: tuple[int, int, int, int]) -> tuple[list[Layer], tuple[int, int, int]]:
    """:func:`_maxpool_layers`, built once per shape (the layers are immutable constants: a
    captured module's network is rebuilt at every training step)."""
    layers, out = _maxpool_layers(tuple(in_shape), tuple(kernel), tuple(stride), tuple(pads))
    return list(layers), out


@functools.lru_cache(maxsize=64)
def _maxpool_layers(in_shape: tuple[int, int, int], kernel: tuple[int, int], stride: tuple[int, int],
                    pads: tuple[int, int, int, int]) -> tuple[tuple[Layer, ...], tuple[int, int, int]]:
    """MaxPool (pad cells excluded from the windows) as exact linear and ReLU layers.

    Each window's maximum is a knockout tournament with ``max(a, b) = relu(a - b) + b``. The
    candidates of every window are positions in the current flat vector (at first the input
    elements of the window). One round pairs them up: a :class:`SparseLinear` writes ``a - b`` and
    ``b`` for each pair (and the odd one out), a ``ReLU`` acts on the differences only (``b`` and
    the odd one are carried by its identity mask), and the next linear layer sums ``relu(a - b) + b``;
    that sum is folded into the next round's differences. ``ceil(log2(window))`` rounds leave one
    candidate per window, in (C, Ho, Wo) order. All maps are exact (``ops`` 0), like MaxPool."""
    c, h, w = in_shape
    kh, kw = kernel
    pt, pl, pb, pr = pads
    ho = (h + pt + pb - kh) // stride[0] + 1
    wo = (w + pl + pr - kw) // stride[1] + 1
    if ho <= 0 or wo <= 0 or max(pt, pb) >= kh or max(pl, pr) >= kw:
        raise ValueError(f"MaxPool: kernel {kernel}, strides {stride}, pads {pads} do not fit input {in_shape}")
    windows: list[list[int]] = []
    for ch in range(c):
        for i in range(ho):
            for jj in range(wo):
                r0, c0 = i * stride[0] - pt, jj * stride[1] - pl
                windows.append([(ch * h + r) * w + q for r in range(max(r0, 0), min(r0 + kh, h))
                                for q in range(max(c0, 0), min(c0 + kw, w))])
    layers: list[Layer] = []
    n_in = c * h * w
    # pending: a matrix from the current vector to the candidates (None: the candidates are positions)
    pending: sp.csr_matrix | None = None
    cand = windows
    width = n_in
    while max(len(cd) for cd in cand) > 1:
        rows, cols, vals, carried = [], [], [], []
        sums: list[list[int]] = []  # for each new candidate, the rows it sums
        nxt: list[list[int]] = []
        r = 0
        for cd in cand:
            new = []
            for p in range(0, len(cd) - 1, 2):
                a, b = cd[p], cd[p + 1]
                rows += [r, r, r + 1]
                cols += [a, b, b]
                vals += [1.0, -1.0, 1.0]
                carried.append(r + 1)
                sums.append([r, r + 1])
                new.append(len(sums) - 1)
                r += 2
            if len(cd) % 2:
                rows.append(r)
                cols.append(cd[-1])
                vals.append(1.0)
                carried.append(r)
                sums.append([r])
                new.append(len(sums) - 1)
                r += 1
            nxt.append(new)
        diff = sp.csr_matrix((vals, (rows, cols)), shape=(r, width))
        if pending is not None:
            diff = diff @ pending
        layers.append(SparseLinear.from_scipy(diff, name="MaxPoolDiff"))
        mask = torch.zeros(r, dtype=torch.bool)
        mask[carried] = True
        layers.append(ReLU(r, identity=mask, part_of="MaxPool"))
        srows = [q for q, rs in enumerate(sums) for _ in rs]
        scols = [x for rs in sums for x in rs]
        pending = sp.csr_matrix((np.ones(len(scols)), (srows, scols)), shape=(len(sums), r))
        cand, width = nxt, len(sums)
    final = sp.csr_matrix((np.ones(len(cand)), (np.arange(len(cand)), [cd[0] for cd in cand])),
                          shape=(len(cand), width))
    if pending is not None:
        final = final @ pending
    layers.append(SparseLinear.from_scipy(final, name="MaxPool"))
    return tuple(layers), (c, ho, wo)


def clip_layers(dim: int, lo: float | None, hi: float | None) -> list[Layer]:
    """``clip(x, lo, hi)`` exactly: a :class:`~robustkit.network.hardtanh.HardTanh` with both
    bounds (a constant if they are equal); with one bound ``lo + relu(x - lo)`` or
    ``hi - relu(hi - x)``; ``Clip(min=0)`` is a plain ReLU."""
    eye = sp.identity(dim, format="csr")
    ones = np.ones(dim)
    if lo is None and hi is None:
        return []
    if hi is None:
        if lo == 0.0:
            return [ReLU(dim)]
        return [SparseLinear.from_scipy(eye, -lo * ones, name="Clip"), ReLU(dim),
                SparseLinear.from_scipy(eye, lo * ones, name="Clip")]
    if lo is None:
        return [SparseLinear.from_scipy(-eye, hi * ones, name="Clip"), ReLU(dim),
                SparseLinear.from_scipy(-eye, hi * ones, name="Clip")]
    if lo > hi:
        raise ValueError(f"Clip: min {lo} > max {hi}")
    if lo == hi:
        return [SparseLinear.from_scipy(sp.csr_matrix((dim, dim)), lo * ones, name="Clip")]
    return [HardTanh(dim, lo=lo, hi=hi)]


def slice_layer(shape: tuple[int, ...], batch_dims: int, starts: Sequence[int], ends: Sequence[int],
                axes: Sequence[int], steps: Sequence[int]) -> tuple[SparseLinear, tuple[int, ...]]:
    """ONNX ``Slice`` with static parameters as a selection, and the output shape (incl. batch)."""
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + len(shape) if axis < 0 else axis
        dim = shape[axis]
        if step == 0:
            raise ValueError("Slice: step 0")
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            keep = np.arange(min(max(start, 0), dim), min(max(end, 0), dim), step)
        else:
            keep = np.arange(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)
        if batch_dims and axis == 0 and keep.size != 1:
            raise ValueError("Slice: the batch axis must keep its one sample")
        idx = np.take(idx, keep, axis=axis)
    if idx.size == 0:
        raise ValueError(f"Slice: empty result from shape {shape}")
    sel = idx.reshape(-1)
    n_in = int(np.prod(shape))
    layer = _selection(np.arange(sel.size), sel, np.ones(sel.size), (sel.size, n_in), name="Slice")
    return layer, tuple(int(d) for d in idx.shape)
