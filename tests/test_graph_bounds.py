"""Graph networks lowered to chains (robustkit.network.graph_ops): every bound method, the MILP and
branch and bound on nets with carried segments (``Blocks`` + ``ReLU(identity=...)``).

The nets are built by hand here and computed independently in numpy (a residual block whose skip
tensor takes negative values, a MaxPool-style ``max(a, b) = relu(a - b) + b``): an identity
coordinate treated as a ReLU (clamped at 0, split, given a binary or a ``v >= 0`` row) changes
the function or its bounds, and the checks below see it:

* the chain's forward equals the numpy graph; batched == per sample;
* interval / CROWN / alpha-CROWN / LP bounds of every layer contain dense samples and box corners;
* the MILP maximum of an output is at least every sampled value and is reached (within the float
  error band) by the network at the MILP's own input;
* branch and bound and the MILP give the same answer on thresholds around the true maximum.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from robustkit.bounds.interval import interval_bounds
from robustkit.bounds.methods import run_bounds
from robustkit.milp.encoder import encode
from robustkit.milp.solve import LinearConstraints, solve_violation
from robustkit.network import Blocks, Dense, Identity, Network, ReLU, SparseLinear
from robustkit.verification.bab import BabConfig, branch_and_bound

import scipy.sparse as sp


def _dense(rng: np.random.Generator, out: int, inp: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(out, inp)) * scale / np.sqrt(inp), rng.normal(size=out) * 0.3


def _graph(seed: int, n: int = 4, hidden: int = 6) -> tuple[Network, "callable"]:  # type: ignore[valid-type]
    """``x -> r = x + W2 relu(W1 x + b1) + b2`` (pre-activation residual: ``x`` is negative in
    places), then ``m = max(r_0, r_1), max(r_2, r_3)`` (MaxPool of pairs as relu(a - b) + b), then
    a readout ``V relu([m; r]) + c``. Returns the chain and a numpy reference."""
    rng = np.random.default_rng(seed)
    W1, b1 = _dense(rng, hidden, n, 2.0)
    W2, b2 = _dense(rng, n, hidden, 2.0)
    V, c = _dense(rng, 3, n // 2 + n)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    half = n // 2
    layers = [
        # [W1 x + b1 ; x]
        Blocks((n,), (hidden, n), ((0, 0, Dense(t(W1), t(b1))), (1, 0, Identity(n)))),
        ReLU(hidden + n, torch.tensor([False] * hidden + [True] * n)),
        # r = W2 h + b2 + x
        Blocks((hidden, n), (n,), ((0, 0, Dense(t(W2), t(b2))), (0, 1, Identity(n)))),
    ]
    # [r_{2k} - r_{2k+1} ; r_{2k+1} ; r] : differences, the carried second element, and r itself
    D = sp.lil_matrix((half + half + n, n))
    for k in range(half):
        D[k, 2 * k], D[k, 2 * k + 1] = 1.0, -1.0
        D[half + k, 2 * k + 1] = 1.0
    for j in range(n):
        D[2 * half + j, j] = 1.0
    layers.append(SparseLinear.from_scipy(D.tocsr(), name="MaxPoolDiff"))
    layers.append(ReLU(2 * half + n, torch.tensor([False] * half + [True] * (half + n))))
    S = sp.lil_matrix((half + n, 2 * half + n))
    for k in range(half):
        S[k, k], S[k, half + k] = 1.0, 1.0
    for j in range(n):
        S[half + j, 2 * half + j] = 1.0
    layers.append(SparseLinear.from_scipy(S.tocsr(), name="MaxPoolSum"))
    layers.append(ReLU(half + n))
    layers.append(Dense(t(V), t(c)))
    net = Network(tuple(layers), (n,), (1, n))

    def reference(x: np.ndarray) -> np.ndarray:
        r = x + np.maximum(x @ W1.T + b1, 0) @ W2.T + b2
        m = np.maximum(r[:, 0::2], r[:, 1::2])
        return np.maximum(np.concatenate([m, r], axis=1), 0) @ V.T + c

    return net, reference


def _points(lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(lo, hi, size=(n, lo.size))
    corners = np.where(rng.random((n // 4, lo.size)) < 0.5, lo, hi)
    return np.concatenate([pts, corners])


def _box(seed: int, n: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    x0 = np.random.default_rng(seed + 99).uniform(-1, 1, size=n)
    return x0 - eps, x0 + eps


@pytest.mark.parametrize("seed", range(3))
def test_forward_equals_the_graph_and_batches(seed: int) -> None:
    net, ref = _graph(seed)
    x = np.random.default_rng(seed).uniform(-2, 2, size=(64, 4))
    y = net.forward(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, ref(x), rtol=1e-12, atol=1e-12)
    single = np.concatenate([net.forward(torch.from_numpy(x[i : i + 1])).numpy() for i in range(5)])
    np.testing.assert_allclose(single, y[:5], rtol=1e-12, atol=1e-12)
    # identity coordinates really carry negative values (else the test would not see a clamp)
    acts = net.forward_all(torch.from_numpy(x))
    assert float(acts[1][:, 6:].min()) < 0 and float(acts[4][:, 2:].min()) < 0
    m32 = net.to_torch().to(torch.float32)
    np.testing.assert_allclose(m32(torch.from_numpy(x).float()).detach().numpy(), y, rtol=1e-4, atol=1e-4)
    assert net.num_neurons == 6 + 2 + 6


@pytest.mark.parametrize("method", ["interval", "crown", "alpha-crown", "lp"])
@pytest.mark.parametrize("seed", range(3))
def test_bounds_contain_samples_and_corners(method: str, seed: int) -> None:
    net, _ = _graph(seed)
    lo, hi = _box(seed, 4, 0.6)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    res = run_bounds(net, torch.from_numpy(lo[None]), torch.from_numpy(hi[None]), method, C=C)
    pts = torch.from_numpy(_points(lo, hi, 4000, seed))
    with torch.no_grad():
        acts = net.forward_all(pts)
    unstable = 0
    for i, a in enumerate(acts):
        assert bool((a >= res.bounds.lower[i] - 1e-9).all()), (method, i)
        assert bool((a <= res.bounds.upper[i] + 1e-9).all()), (method, i)
    for r in net.split_indices:
        unstable += int(res.bounds.phases(net, r)[2].sum())
    assert unstable > 0, "no unstable ReLU: the box is too small to test anything"
    spec = (acts[-1] @ C.T)
    assert bool((spec >= res.spec.lower - 1e-9).all()), method
    # identity coordinates are never counted as unstable ReLUs
    ident = net.layers[1].identity
    assert not bool(res.bounds.phases(net, 1)[2][:, ident].any())


def _milp_max(net: Network, lo: np.ndarray, hi: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    import highspy
    nb = run_bounds(net, torch.from_numpy(lo[None]), torch.from_numpy(hi[None]), "crown").bounds
    enc = encode(net, nb)
    h = enc.highs
    col = int(enc.output_cols[k])
    h.changeColCost(col, 1.0)
    h.changeObjectiveSense(highspy.ObjSense.kMaximize)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-9)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    x = np.asarray(h.getSolution().col_value)[enc.input_cols]
    return float(h.getInfo().objective_function_value), x


@pytest.mark.parametrize("seed", range(3))
def test_milp_maximum_is_the_true_maximum(seed: int) -> None:
    net, ref = _graph(seed)
    lo, hi = _box(seed, 4, 0.6)
    pts = _points(lo, hi, 20000, seed)
    ys = ref(pts)
    for k in range(3):
        opt, x = _milp_max(net, lo, hi, k)
        assert opt >= ys[:, k].max() - 1e-6, (k, opt, ys[:, k].max())
        x = np.clip(x, lo, hi)
        assert float(ref(x[None])[0, k]) >= opt - 1e-4, (k, opt)


@pytest.mark.parametrize("seed,fsb,mode", [(0, 1, "auto"), (1, 1, "auto"), (2, 1, "auto"), (0, 4, "auto"), (2, 4, "auto"),
                                           (0, 1, "fixed"), (1, 1, "fixed"), (2, 4, "fixed")])
def test_bab_agrees_with_the_milp(seed: int, fsb: int, mode: str) -> None:
    """Both branching rules (the intercept score alone; filtered smart branching over 4
    candidates), and children that keep their parent's intermediate bounds (``fixed``: the
    split multipliers and the leaf LPs carry the splits)."""
    net, ref = _graph(seed)
    lo, hi = _box(seed, 4, 0.6)
    opt, _ = _milp_max(net, lo, hi, 0)
    root = run_bounds(net, torch.from_numpy(lo[None]), torch.from_numpy(hi[None]), "crown").bounds

    def check(x: np.ndarray) -> object | None:
        return ("witness", x) if float(ref(x[None])[0, 0]) >= thr else None

    answers = []
    for thr in (opt - 0.05, opt + 0.05):
        # violation: y_0 >= thr  <=>  -y_0 <= -thr
        C, d = np.array([[-1.0, 0.0, 0.0]]), np.array([-thr])
        res = branch_and_bound(net, lo, hi, C, d, np.zeros(1, dtype=np.int64), root, time.perf_counter() + 60,
                               check, cfg=BabConfig(fsb_candidates=fsb, intermediate=mode))
        enc = encode(net, root)
        mv = solve_violation(enc, [LinearConstraints(C, d)], time_limit=60)
        answers.append((res.status, mv.outcome))
        # the filter's bookkeeping: it ran on the domains it was asked to, kept the score's choice at most as often
        tried = res.stats.get("fsb_tried", 0)
        assert (tried > 0) == (fsb > 1 and res.stats["domains"] > 1) and 0 <= res.stats.get("fsb_agree", 0) <= tried
    assert answers[0][0] == "sat" and answers[0][1] == "candidate", answers
    assert answers[1][0] == "unsat" and answers[1][1] == "holds", answers


def test_interval_of_identity_coordinates_is_the_identity() -> None:
    relu = ReLU(3, torch.tensor([False, True, True]))
    lo, hi = torch.tensor([[-1.0, -2.0, 0.5]]), torch.tensor([[1.0, -1.0, 2.0]])
    l, u = relu.interval(lo, hi)
    assert l.tolist() == [[0.0, -2.0, 0.5]] and u.tolist() == [[1.0, -1.0, 2.0]]
    active, inactive, unstable = relu.phases(lo, hi)
    assert active.tolist() == [[False, True, True]] and not bool(inactive.any())
    assert unstable.tolist() == [[True, False, False]]
    assert relu.count == 1 and ReLU(3, torch.zeros(3, dtype=torch.bool)).identity is None
    with pytest.raises(ValueError):
        ReLU(3, torch.tensor([True, False]))


def test_blocks_checks_its_grid_and_float_model() -> None:
    d = Dense(torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        Blocks((3,), (2, 3), ((0, 0, d),))  # output segment 1 has no block
    with pytest.raises(ValueError):
        Blocks((3,), (3,), ((0, 0, d),))  # d maps 3 -> 2, not 3 -> 3
    b = Blocks((3, 2), (2, 2), ((0, 0, d), (0, 1, Identity(2)), (1, 1, Identity(2))))
    np.testing.assert_allclose(b.matrix().toarray(), [[1, 1, 1, 1, 0], [1, 1, 1, 0, 1], [0, 0, 0, 1, 0],
                                                       [0, 0, 0, 0, 1]])
    x = torch.rand(4, 5, dtype=torch.float64)
    np.testing.assert_allclose(b.forward(x).numpy(), x.numpy() @ b.matrix().toarray().T)
    a = torch.rand(2, 7, 4, dtype=torch.float64)
    np.testing.assert_allclose(b.backward(a).numpy(), a.numpy() @ b.matrix().toarray())
    e = b.rounding_error(x, x)
    assert bool((e[:, 2:] == 0).all()), "a carried copy is exact"
    assert bool((e[:, :2] > 0).all())
    assert b.rounding_ops == 3 + 3 + 1  # Dense: 3 inputs + 3, plus one addition
