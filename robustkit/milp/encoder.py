"""Encoding of a network over an input box as a mixed-integer linear program (HiGHS arrays).

Tjeng, Xiao & Tedrake (2019), "Evaluating Robustness of Neural Networks with Mixed Integer
Programming", Sec. 4: a ReLU ``a = max(z, 0)`` with pre-activation bounds ``l <= z <= u`` is

* stably inactive (``u <= 0``): ``a = 0`` (no variable at all here);
* stably active (``l >= 0``): ``a = z`` (the same column);
* unstable: ``a >= 0, a >= z, a <= u d, a <= z - l (1 - d)``, ``d`` binary (their Eq. 5).

Linear layers become equality rows ``z - W a = b`` (which presolve can use to eliminate columns;
ranged rows made HiGHS up to 2.7x slower). The float32 network is one of the perturbed networks
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
from robustkit.network import LinearLayer, Network, ReLU

INF = highspy.kHighsInf
ZERO = -1  # column index meaning "the constant 0"
SOLVER_SLACK = 1e-6  # relative relaxation of every row and column bound (see the module docstring)


def relax(lower: np.ndarray, upper: np.ndarray, scale: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``[lower, upper]`` relaxed by ``SOLVER_SLACK * (1 + |scale|)`` (infinite sides stay)."""
    by = SOLVER_SLACK * (1.0 + np.abs(scale))
    return lower - by, upper + by


@dataclass
class _Relu:
    """Bookkeeping for one ReLU layer (for warm starts and statistics)."""

    pre_cols: np.ndarray
    out_cols: np.ndarray
    unstable: np.ndarray  # indices of unstable neurons
    binary_cols: np.ndarray
    active: int
    inactive: int


@dataclass
class Encoding:
    """A built HiGHS model of the network; columns are HiGHS column indices."""

    highs: highspy.Highs
    net: Network
    input_cols: np.ndarray
    output_cols: np.ndarray
    num_cols: int
    linear_cols: list[np.ndarray] = field(default_factory=list)  # output columns of each linear layer, by position
    relus: dict[int, _Relu] = field(default_factory=dict)
    output_lower: np.ndarray = field(default_factory=lambda: np.zeros(0))  # bounds of the output columns
    output_upper: np.ndarray = field(default_factory=lambda: np.zeros(0))
    output_err: np.ndarray = field(default_factory=lambda: np.zeros(0))  # |float32 output - column| bound

    @property
    def num_binaries(self) -> int:
        return int(sum(r.binary_cols.size for r in self.relus.values()))

    @property
    def unstable_per_layer(self) -> list[int]:
        return [int(self.relus[k].unstable.size) for k in sorted(self.relus)]

    def start_vector(self, x: np.ndarray) -> np.ndarray:
        """A full column assignment from the input ``x`` (forward pass in float64), for a warm start."""
        col = np.zeros(self.num_cols)
        h = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(1, -1))
        col[self.input_cols] = h.numpy().ravel()
        for pos, layer in enumerate(self.net.layers):
            h = layer.forward(h)
            values = h.numpy().ravel()
            if isinstance(layer, ReLU):
                info = self.relus[pos]
                keep = info.out_cols != ZERO
                col[info.out_cols[keep]] = values[keep]
                if info.unstable.size:
                    col[info.binary_cols] = (col[info.pre_cols[info.unstable]] > 0).astype(float)
            else:
                cols = self.linear_cols[pos]
                used = cols != ZERO
                col[cols[used]] = values[used]
        return col


def _add_cols(h: highspy.Highs, lower: np.ndarray, upper: np.ndarray, start: int) -> np.ndarray:
    n = int(lower.size)
    if n:
        h.addVars(n, np.ascontiguousarray(lower, dtype=np.float64), np.ascontiguousarray(upper, dtype=np.float64))
    return np.arange(start, start + n, dtype=np.int64)


def _add_rows_csr(h: highspy.Highs, mat: sp.csr_matrix, lower: np.ndarray, upper: np.ndarray) -> None:
    mat = mat.tocsr()
    mat.sum_duplicates()
    h.addRows(
        mat.shape[0],
        np.ascontiguousarray(lower, dtype=np.float64),
        np.ascontiguousarray(upper, dtype=np.float64),
        int(mat.nnz),
        np.ascontiguousarray(mat.indptr[:-1], dtype=np.int32),
        np.ascontiguousarray(mat.indices, dtype=np.int32),
        np.ascontiguousarray(mat.data, dtype=np.float64),
    )


def new_highs(threads: int = 1) -> highspy.Highs:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", threads)
    return h


def _exact(lower: np.ndarray, upper: np.ndarray, scale: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return lower, upper


def encode(net: Network, bounds: NetBounds, highs: highspy.Highs | None = None, exact: bool = False) -> Encoding:
    """Build the MILP of ``net`` over ``bounds``' input box (``bounds`` must hold one sample).

    ``exact``: the exact network, without the float error band and the solver slack. Its
    "infeasible" proves nothing about the float32 network; it is only a source of candidate points
    (a relaxed model's optimum can lie off a violation narrower than the band), each of which
    is replayed in onnxruntime like any other."""
    relax_ = _exact if exact else relax
    if bounds.input_lower.shape[0] != 1:
        raise ValueError("encode() takes the bounds of a single sample")
    h = highs or new_highs()
    errs = bounds.float_errors(net)
    lo = bounds.input_lower.reshape(-1).numpy().astype(np.float64)
    hi = bounds.input_upper.reshape(-1).numpy().astype(np.float64)
    ncols = 0
    input_cols = _add_cols(h, lo, hi, ncols)
    ncols += input_cols.size
    expr = input_cols.copy()  # column of each current neuron, or ZERO
    acc = np.zeros(input_cols.size)  # bound on |float32 value - column value| of each current neuron
    enc = Encoding(h, net, input_cols, input_cols, 0)
    for pos, layer in enumerate(net.layers):
        if isinstance(layer, LinearLayer):
            l_out = bounds.lower[pos].reshape(-1).numpy().astype(np.float64)
            u_out = bounds.upper[pos].reshape(-1).numpy().astype(np.float64)
            # neurons feeding a stably inactive ReLU are never needed: no column, no row
            needed = np.ones(layer.out_dim, dtype=bool)
            nxt = net.layers[pos + 1] if pos + 1 < len(net.layers) else None
            if isinstance(nxt, ReLU):
                needed = (u_out > 0) | ~nxt.relu_mask.numpy()  # a carried coordinate is always needed
            rows_idx = np.flatnonzero(needed)
            w = layer.matrix()
            keep = np.flatnonzero(expr != ZERO)
            w_keep = w[rows_idx][:, keep].tocsr()
            e = errs.rounding[pos][0].detach().cpu().numpy().astype(np.float64)
            acc_out = np.zeros(layer.out_dim)
            if not exact:
                acc_out[rows_idx] = e[rows_idx] + (abs(w[rows_idx][:, keep]) @ acc[keep] if keep.size else 0.0)
            new_cols = _add_cols(h, *relax_(l_out[rows_idx] - acc_out[rows_idx], u_out[rows_idx] + acc_out[rows_idx],
                                           np.maximum(-l_out, u_out)[rows_idx]), ncols)
            ncols += new_cols.size
            # rows: z - W a = b  ->  [I | -W] with column map [z_cols, expr[keep]]
            block = sp.hstack([sp.identity(rows_idx.size, format="csr"), -w_keep], format="csr")
            colmap = np.concatenate([new_cols, expr[keep]]).astype(np.int32)
            block = sp.csr_matrix((block.data, colmap[block.indices], block.indptr), shape=(block.shape[0], ncols))
            b = layer.bias_vector()[rows_idx]
            _add_rows_csr(h, block, b, b)
            z_cols = np.full(layer.out_dim, ZERO, dtype=np.int64)
            z_cols[rows_idx] = new_cols
            enc.linear_cols.append(z_cols)
            expr = z_cols
            acc = acc_out
        elif isinstance(layer, ReLU):
            enc.linear_cols.append(np.zeros(0, dtype=np.int64))
            pl, pu = bounds.pre_activation(net, pos)
            l_pre = pl.reshape(-1).numpy().astype(np.float64)
            u_pre = pu.reshape(-1).numpy().astype(np.float64)
            act, inact, _ = (m.numpy() for m in layer.phases(torch.from_numpy(l_pre), torch.from_numpy(u_pre)))
            inactive = inact | (expr == ZERO)
            active = act & ~inactive  # includes the identity (carried) coordinates: the same column
            unstable = np.flatnonzero(~inactive & ~active)
            out = np.where(inactive, ZERO, expr).astype(np.int64)
            k = unstable.size
            a_cols = _add_cols(h, *relax_(np.zeros(k), u_pre[unstable], u_pre[unstable]), ncols)
            acc_z = acc[unstable]
            ncols += k
            d_cols = _add_cols(h, np.zeros(k), np.ones(k), ncols)
            ncols += k
            if k:
                h.changeColsIntegrality(
                    k, d_cols.astype(np.int32), np.array([highspy.HighsVarType.kInteger] * k)
                )
                z = expr[unstable]
                r = np.arange(k)
                # a - z >= -acc ; a - u d <= 0 ; a - z - l d <= acc - l   (z: the column, off by <= acc)
                rows = np.concatenate([r, r, k + r, k + r, 2 * k + r, 2 * k + r, 2 * k + r])
                cols = np.concatenate([a_cols, z, a_cols, d_cols, a_cols, z, d_cols])
                vals = np.concatenate([
                    np.ones(k), -np.ones(k), np.ones(k), -u_pre[unstable], np.ones(k), -np.ones(k), -l_pre[unstable],
                ])
                mat = sp.csr_matrix((vals, (rows, cols)), shape=(3 * k, ncols))
                lower = np.concatenate([-acc_z, np.full(k, -INF), np.full(k, -INF)])
                upper = np.concatenate([np.full(k, INF), np.zeros(k), acc_z - l_pre[unstable]])
                scale = np.tile(np.maximum(-l_pre[unstable], u_pre[unstable]), 3)
                _add_rows_csr(h, mat, *relax_(lower, upper, scale))
                out[unstable] = a_cols
            enc.relus[pos] = _Relu(expr.copy(), out, unstable, d_cols, int((active & layer.relu_mask.numpy()).sum()),
                                   int(inactive.sum()))
            expr = out
            acc = np.where(inactive, 0.0, acc)
            acc[unstable] = 0.0  # their own columns are the float32 ReLU outputs
        else:  # pragma: no cover - the loader only produces linear layers and ReLUs
            raise TypeError(f"cannot encode layer {layer.describe()}")
    # outputs that are the constant 0 get a fixed column so objectives can refer to them
    zero_out = np.flatnonzero(expr == ZERO)
    if zero_out.size:
        zc = _add_cols(h, np.zeros(zero_out.size), np.zeros(zero_out.size), ncols)
        ncols += zc.size
        expr = expr.copy()
        expr[zero_out] = zc
    enc.output_cols = expr
    enc.num_cols = ncols
    ol, ou = bounds.output()
    enc.output_err = acc.copy()
    enc.output_lower = ol.reshape(-1).numpy().astype(np.float64) - enc.output_err
    enc.output_upper = ou.reshape(-1).numpy().astype(np.float64) + enc.output_err
    return enc
