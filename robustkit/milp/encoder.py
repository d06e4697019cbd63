"""Encoding of a network over an input box as a mixed-integer linear program (HiGHS arrays).

Tjeng, Xiao & Tedrake (2019), "Evaluating Robustness of Neural Networks with Mixed Integer
Programming", Sec. 4: a ReLU ``a = max(z, 0)`` with pre-activation bounds ``l <= z <= u`` is

* stably inactive (``u <= 0``): ``a = 0`` (no variable at all here);
* stably active (``l >= 0``): ``a = z`` (the same column);
* unstable: ``a >= 0, a >= z, a <= u d, a <= z - l (1 - d)``, ``d`` binary (their Eq. 5).

Every layer adds itself (:meth:`robustkit.network.layers.LinearLayer.encode`, an operator's
``encode``, over the row builder of :mod:`robustkit.network.encoding`). Linear layers become
equality rows ``z - W a = b`` (which presolve can use to eliminate columns; ranged rows made HiGHS
up to 2.7x slower); an output that copies an input exactly (a carried tensor of a lowered graph,
a permutation, a selection) takes that input's column, with no new column and no row. The float32 network is one of the perturbed networks
``z_hat = W a + b + delta`` of :mod:`robustkit.bounds.floaterr`, so each column ``z`` stands for
a float32 value within ``acc`` of it: ``acc = e`` after a linear layer, carried through stably
active ReLUs (which reuse the column) and the next linear layers (``|W| acc + e``), and reset to 0
where an unstable ReLU gets its own output column, whose rows take the pre-activation's ``acc``
(``a >= z - acc``, ``a <= z + acc - l (1 - d)``, ``a <= u d``, ``a >= 0``). Column bounds are the
float32 network's bounds widened by ``acc``; the output columns carry ``output_err`` for the
specification rows (:mod:`robustkit.milp.solve`). The model is built once per sample with
highspy's array API (``addVars``/``addRows`` in CSR), which is ~20x faster than a modelling layer.

Solver tolerances: HiGHS accepts a point that violates a row or a bound by up to its primal
feasibility tolerance (1e-7) and calls an integer within 1e-6 integral. So that an
"infeasible" verdict cannot come from those tolerances alone, every inequality row and column
bound of the model is relaxed by ``SOLVER_SLACK * (1 + |scale|)`` (``SOLVER_SLACK = 1e-6``), ten times them and more: a
point of the true (float32) model satisfies every relaxed inequality with at least that much
room, and the equalities exactly (up to float64 rounding, far below the tolerance), which the
solver's tolerances cannot take away. Relaxing only adds points, so a proof on the
relaxed model is a proof on the true one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highspy
import numpy as np
import scipy.sparse as sp
import torch

from robustkit.bounds.types import NetBounds
from robustkit.network import Network
from robustkit.network.encoding import ZERO

INF = highspy.kHighsInf
SOLVER_SLACK = 1e-6  # relative relaxation of every row and column bound (see the module docstring)

__all__ = ["INF", "ZERO", "SOLVER_SLACK", "Encoding", "add_rows_csr", "encode", "new_highs", "relax"]


def relax(lower: np.ndarray, upper: np.ndarray, scale: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``[lower, upper]`` relaxed by ``SOLVER_SLACK * (1 + |scale|)`` (infinite sides stay)."""
    by = SOLVER_SLACK * (1.0 + np.abs(scale))
    return lower - by, upper + by


@dataclass
class _Act:
    """Bookkeeping for one nonlinear layer (warm starts, statistics, the sidecar of written models)."""

    pre_cols: np.ndarray
    out_cols: np.ndarray
    unstable: np.ndarray  # indices of the neurons with an undecided kink
    binary_cols: np.ndarray
    active: int
    inactive: int
    aux_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class Encoding:
    """A built HiGHS model of the network; columns are HiGHS column indices."""

    highs: highspy.Highs
    net: Network
    input_cols: np.ndarray
    output_cols: np.ndarray
    num_cols: int
    linear_cols: list[np.ndarray] = field(default_factory=list)  # output columns of each linear layer, by position
    relus: dict[int, _Act] = field(default_factory=dict)  # each nonlinear layer, by position
    output_lower: np.ndarray = field(default_factory=lambda: np.zeros(0))  # bounds of the output columns
    output_upper: np.ndarray = field(default_factory=lambda: np.zeros(0))
    output_err: np.ndarray = field(default_factory=lambda: np.zeros(0))  # |float output - column| bound

    @property
    def num_binaries(self) -> int:
        return int(sum(r.binary_cols.size for r in self.relus.values()))

    @property
    def unstable_per_layer(self) -> list[int]:
        return [int(self.relus[k].unstable.size) for k in sorted(self.relus)]

    def start_vector(self, x: np.ndarray) -> np.ndarray:
        """A column assignment from the input ``x`` (forward pass in float64), for a warm start: every
        layer's columns, each binary 1 where its pre-activation is above the kink it decides (a
        ReLU's: 0); auxiliary columns of other operators are left at 0 (HiGHS repairs a start)."""
        col = np.zeros(self.num_cols)
        h = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(1, -1))
        col[self.input_cols] = h.numpy().ravel()
        for pos, layer in enumerate(self.net.layers):
            pre = h.numpy().ravel()
            h = layer.forward(h)
            values = h.numpy().ravel()
            if layer.nonlinear:
                info = self.relus[pos]
                keep = info.out_cols != ZERO
                col[info.out_cols[keep]] = values[keep]
                if info.unstable.size and info.binary_cols.size == info.unstable.size:
                    col[info.binary_cols] = (pre[info.unstable] > 0).astype(float)
            else:
                cols = self.linear_cols[pos]
                used = cols != ZERO
                col[cols[used]] = values[used]
        return col


class _Builder:
    """:class:`~robustkit.network.encoding.RowBuilder` over a HiGHS instance (highspy's array
    API): columns and rows relaxed by the solver slack unless ``exact``."""

    ranged = False  # linear rows are exact equalities; the float error travels as acc

    def __init__(self, h: highspy.Highs, exact: bool) -> None:
        self.h, self.exact, self.integer = h, exact, True
        self.ncols = 0
        self.binaries: list[np.ndarray] = []

    def add_cols(self, lower: np.ndarray, upper: np.ndarray, scale: np.ndarray | float | None = None,
                 integer: bool = False) -> np.ndarray:
        lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        if scale is not None and not self.exact:
            lower, upper = relax(lower, upper, scale)
        n = int(lower.size)
        if n:
            self.h.addVars(n, np.ascontiguousarray(lower), np.ascontiguousarray(upper))
        cols = np.arange(self.ncols, self.ncols + n, dtype=np.int64)
        self.ncols += n
        if integer and n:
            self.h.changeColsIntegrality(n, cols.astype(np.int32), np.array([highspy.HighsVarType.kInteger] * n))
            self.binaries.append(cols)
        return cols

    def add_rows(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, lower: np.ndarray,
                 upper: np.ndarray, scale: np.ndarray | float | None = None) -> None:
        lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        if scale is not None and not self.exact:
            lower, upper = relax(lower, upper, scale)
        add_rows_csr(self.h, sp.csr_matrix((vals, (rows, cols)), shape=(lower.size, self.ncols)), lower, upper)


def add_rows_csr(h: highspy.Highs, mat: sp.csr_matrix, lower: np.ndarray, upper: np.ndarray) -> None:
    """``lower <= mat x <= upper`` added to ``h`` in one call."""
    mat = mat.tocsr()
    mat.sum_duplicates()
    h.addRows(
        mat.shape[0], np.ascontiguousarray(lower, dtype=np.float64), np.ascontiguousarray(upper, dtype=np.float64),
        int(mat.nnz), np.ascontiguousarray(mat.indptr[:-1], dtype=np.int32),
        np.ascontiguousarray(mat.indices, dtype=np.int32), np.ascontiguousarray(mat.data, dtype=np.float64),
    )


def new_highs(threads: int = 1) -> highspy.Highs:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", threads)
    return h


def encode(net: Network, bounds: NetBounds, highs: highspy.Highs | None = None, exact: bool = False) -> Encoding:
    """Build the MILP of ``net`` over ``bounds``' input box (``bounds`` must hold one sample): every
    layer adds itself (:meth:`LinearLayer.encode`, an operator's ``encode``).

    ``exact``: the exact network, without the float error band and the solver slack. Its
    "infeasible" proves nothing about the float32 network; it is only a source of candidate points
    (a relaxed model's optimum can lie off a violation narrower than the band), each of which
    is replayed in onnxruntime like any other."""
    if bounds.input_lower.shape[0] != 1:
        raise ValueError("encode() takes the bounds of a single sample")
    h = highs or new_highs()
    b = _Builder(h, exact)
    errs = bounds.float_errors(net)
    lo = bounds.input_lower.reshape(-1).numpy().astype(np.float64)
    hi = bounds.input_upper.reshape(-1).numpy().astype(np.float64)
    input_cols = b.add_cols(lo, hi)
    expr = input_cols.copy()  # column of each current neuron, or ZERO
    acc = np.zeros(input_cols.size)  # bound on |float value - column value| of each current neuron
    enc = Encoding(h, net, input_cols, input_cols, 0)
    for pos, layer in enumerate(net.layers):
        if layer.nonlinear:
            enc.linear_cols.append(np.zeros(0, dtype=np.int64))
            pl, pu = bounds.pre_activation(net, pos)
            l_pre = pl.reshape(-1).numpy().astype(np.float64)
            u_pre = pu.reshape(-1).numpy().astype(np.float64)
            first_col, first_bin = b.ncols, len(b.binaries)
            out, out_acc = layer.encode(b, expr, l_pre, u_pre, acc)  # type: ignore[attr-defined]
            act, inact, unstable = (m.numpy() for m in layer.phases(torch.from_numpy(l_pre),  # type: ignore[attr-defined]
                                                                     torch.from_numpy(u_pre)))
            live = expr != ZERO
            binaries = np.concatenate(b.binaries[first_bin:]) if len(b.binaries) > first_bin else np.zeros(0, np.int64)
            enc.relus[pos] = _Act(expr.copy(), out, np.flatnonzero(unstable & live), binaries,
                                  int((act & live & layer.relu_mask.numpy()).sum()),  # type: ignore[attr-defined]
                                  int((inact | ~live).sum()), np.arange(first_col, b.ncols))
            expr = out
            acc = np.where(out == ZERO, 0.0, out_acc)
            continue
        l_out = bounds.lower[pos].reshape(-1).numpy().astype(np.float64)
        u_out = bounds.upper[pos].reshape(-1).numpy().astype(np.float64)
        nxt = net.layers[pos + 1] if pos + 1 < len(net.layers) else None
        needed = nxt.needs_input(l_out, u_out) if nxt is not None and nxt.nonlinear \
            else np.ones(layer.out_dim, dtype=bool)  # type: ignore[attr-defined]
        e = errs.rounding[pos][0].detach().cpu().numpy().astype(np.float64)
        expr, acc = layer.encode(b, expr, l_out, u_out, acc, e, needed)  # type: ignore[attr-defined]
        enc.linear_cols.append(expr)
    # outputs that are the constant 0 get a fixed column so objectives can refer to them
    zero_out = np.flatnonzero(expr == ZERO)
    if zero_out.size:
        expr = expr.copy()
        expr[zero_out] = b.add_cols(np.zeros(zero_out.size), np.zeros(zero_out.size))
    enc.output_cols = expr
    enc.num_cols = b.ncols
    ol, ou = bounds.output()
    enc.output_err = acc.copy()
    enc.output_lower = ol.reshape(-1).numpy().astype(np.float64) - enc.output_err
    enc.output_upper = ou.reshape(-1).numpy().astype(np.float64) + enc.output_err
    return enc
