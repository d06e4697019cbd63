"""The MILP (Tjeng, Xiao & Tedrake 2019) against independent answers.

* MIPVerify-style layer checks: with the input pinned, the solver's columns equal the forward pass.
* Known robustness radii: an analytic net, and a random one-hidden-layer net whose exact radius
  is computed here by enumerating activation patterns and solving one LP per pattern and class.
* A VNN-COMP instance with published ground truth.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import highspy
import numpy as np
import onnxruntime as ort
import pytest
import torch
from scipy.optimize import linprog

from robustkit.bounds import interval_bounds
from robustkit.milp import encode, solve_violation
from robustkit.milp.encoder import SOLVER_SLACK, ZERO
from robustkit.network import Conv2d, Dense, Elementwise, LinearLayer, Network, ReLU
from robustkit.spec import LinearConstraints, eps_box, robustness_spec
from robustkit.verification import ModelContext, VerifyConfig, verify_sample, verify_spec

ATOL = 1e-6


def _allowed(net: Network, nb) -> list[np.ndarray]:
    """How far a solver point with the input pinned may lie from the exact forward pass, per
    layer: the encoding's ReLU rows admit the float32 rounding accumulated before them and the
    solver slack, and those add up through the layers (``D_i = |W_i| D_{i-1} + e_i + slack_i``:
    a bound on what the encoding allows), plus the solver's own feasibility tolerance."""
    errs = nb.float_errors(net)
    d = torch.zeros(1, net.in_dim, dtype=torch.float64)
    out = []
    for i, layer in enumerate(net.layers):
        scale = torch.maximum(nb.lower[i].abs(), nb.upper[i].abs())
        slack = 2 * SOLVER_SLACK * (1 + scale) + 1e-7
        d = (layer.abs_forward(d) + errs.rounding[i] if isinstance(layer, LinearLayer) else d) + slack
        out.append(d.reshape(-1).numpy() + ATOL)
    return out


# -- MIPVerify-style layer checks ------------------------------------------------------------------
def _layer(kind: str, rng: np.random.Generator) -> tuple[list, tuple[int, ...]]:
    """(layers, sample shape) of a net made of one layer of ``kind``, a ReLU and a Dense readout."""
    if kind == "dense":
        first = Dense(torch.from_numpy(rng.normal(size=(8, 5))), torch.from_numpy(rng.normal(size=8) * 0.3))
        shape: tuple[int, ...] = (5,)
    elif kind == "conv":  # asymmetric padding and stride 2
        first = Conv2d(torch.from_numpy(rng.normal(size=(2, 2, 3, 3)).astype(np.float32)),
                       torch.from_numpy(rng.normal(size=2).astype(np.float32) * 0.3), (2, 5, 4),
                       stride=(2, 2), padding=(1, 0, 2, 1))
        shape = (2, 5, 4)
    else:
        first = Elementwise(torch.from_numpy(rng.uniform(-2, 2, size=6)), torch.from_numpy(rng.normal(size=6) * 0.3))
        shape = (6,)
    readout = Dense(torch.from_numpy(rng.normal(size=(3, first.out_dim))), torch.from_numpy(rng.normal(size=3)))
    return [first, ReLU(first.out_dim), readout], shape


def _check_linear_cols(col: np.ndarray, cols: np.ndarray, expected: np.ndarray, what: str,
                       tol: np.ndarray | float = ATOL) -> None:
    """Solver values of a linear layer equal ``expected`` (within ``tol``); neurons without a
    column (ZERO: they feed a stably inactive ReLU) must have a non-positive value."""
    assert cols.shape == expected.shape
    present = cols != ZERO
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), expected.shape)
    assert bool(np.all(np.abs(col[cols[present]] - expected[present]) <= tol[present])), what
    assert bool(np.all(expected[~present] <= ATOL)), f"{what}: a neuron left out of the MILP is positive"


def _solve_pinned(net: Network, x: np.ndarray, half_width: float) -> tuple[np.ndarray, object]:
    """Encode ``net`` over the box ``x +- half_width``, fix the input columns to ``x``, solve a
    feasibility MILP; return all column values and the encoding."""
    xt = torch.from_numpy(x[None])
    nb = interval_bounds(net, xt - half_width, xt + half_width)
    enc = encode(net, nb)
    h = enc.highs
    cols = enc.input_cols.astype(np.int32)
    h.changeColsBounds(cols.size, cols, x.astype(np.float64), x.astype(np.float64))
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal, h.modelStatusToString(h.getModelStatus())
    return np.asarray(h.getSolution().col_value), enc, _allowed(net, nb)


@pytest.mark.parametrize("kind", ["dense", "conv", "elementwise"])
@pytest.mark.parametrize("half_width", [0.0, 0.03, 0.4])
def test_encoding_with_pinned_input_equals_forward(kind: str, half_width: float) -> None:
    rng = np.random.default_rng(17)
    layers, shape = _layer(kind, rng)
    net = Network(tuple(layers), shape, (1, *shape))
    binaries = 0
    for _ in range(6):
        x = rng.uniform(-1, 1, size=net.in_dim)
        col, enc, tol = _solve_pinned(net, x, half_width)
        outs = [h.reshape(-1).numpy() for h in net.forward_all(torch.from_numpy(x[None]))]
        np.testing.assert_allclose(col[enc.input_cols], x, atol=ATOL)
        # pre-activations (linear layer 0) and outputs (readout), within the admitted float error
        _check_linear_cols(col, enc.linear_cols[0], outs[0], "pre-activations", tol[0])
        assert bool(np.all(np.abs(col[enc.output_cols] - outs[2]) <= tol[2]))
        assert float(tol[2].max()) < 1e-3  # the admitted band is narrow: a wrong row would show
        # ReLU outputs: a column per neuron, or the constant 0 for stably inactive ones
        info = enc.relus[1]
        relu_vals = np.where(info.out_cols == ZERO, 0.0, col[np.maximum(info.out_cols, 0)])
        assert bool(np.all(np.abs(relu_vals - outs[1]) <= tol[1]))
        # the warm start built from a forward pass is the same assignment (up to the same band)
        start = enc.start_vector(x)
        pre = enc.linear_cols[0]
        used = np.concatenate([enc.input_cols, pre[pre != ZERO], enc.output_cols, info.out_cols[info.out_cols != ZERO]])
        np.testing.assert_allclose(start[used], col[used], atol=float(max(t.max() for t in tol)))
        binaries += enc.num_binaries
    if half_width >= 0.4:
        assert binaries > 0, "a wide box must leave some ReLUs unstable (else the test is vacuous)"


def test_pinned_encoding_of_a_deep_mixed_net() -> None:
    rng = np.random.default_rng(23)
    conv = Conv2d(torch.from_numpy(rng.normal(size=(3, 1, 3, 2)).astype(np.float32)),
                  torch.from_numpy(rng.normal(size=3).astype(np.float32) * 0.2), (1, 6, 5),
                  stride=(2, 2), padding=(0, 1, 1, 0))
    layers = [
        Elementwise(torch.from_numpy(rng.uniform(0.5, 2, 30)), torch.from_numpy(rng.normal(size=30) * 0.1)),
        conv, ReLU(conv.out_dim),
        Dense(torch.from_numpy(rng.normal(size=(7, conv.out_dim))), torch.from_numpy(rng.normal(size=7) * 0.2)), ReLU(7),
        Dense(torch.from_numpy(rng.normal(size=(4, 7))), torch.from_numpy(rng.normal(size=4))),
    ]
    net = Network(tuple(layers), (1, 6, 5), (1, 1, 6, 5))
    x = rng.uniform(0, 1, size=net.in_dim)
    col, enc, tol = _solve_pinned(net, x, 0.3)
    assert enc.num_binaries > 0
    outs = [h.reshape(-1).numpy() for h in net.forward_all(torch.from_numpy(x[None]))]
    for pos, layer in enumerate(net.layers):
        if isinstance(layer, ReLU):
            info = enc.relus[pos]
            vals = np.where(info.out_cols == ZERO, 0.0, col[np.maximum(info.out_cols, 0)])
            assert bool(np.all(np.abs(vals - outs[pos]) <= tol[pos])), f"layer {pos}"
        else:
            _check_linear_cols(col, enc.linear_cols[pos], outs[pos], f"layer {pos}", tol[pos])
    assert float(tol[-1].max()) < 2e-2  # narrow next to the outputs (~1): a wrong row would show


# -- solve_violation directly ------------------------------------------------------------------------
def test_solve_violation_maximum_and_model_restored() -> None:
    """On y = relu(x) - relu(-x) = x over x in [-1, 2], max of y - 1.5 is 0.5 (at x = 2)."""
    net = Network((Dense(torch.tensor([[1.0], [-1.0]], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)),
                   ReLU(2), Dense(torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))),
                  (1,), (1, 1))
    nb = interval_bounds(net, torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64))
    enc = encode(net, nb)
    rows, cols = enc.highs.getNumRow(), enc.highs.getNumCol()
    # violation "y >= 1.5"  <=>  -y <= -1.5
    res = solve_violation(enc, [LinearConstraints(np.array([[-1.0]]), np.array([-1.5]))], time_limit=10)
    assert res.outcome == "candidate"
    assert res.x is not None and 1.5 <= float(res.x[0]) <= 2.0 + 1e-6
    assert enc.highs.getNumRow() == rows and enc.highs.getNumCol() == cols
    # "y >= 2.5" is impossible: holds
    res = solve_violation(enc, [LinearConstraints(np.array([[-1.0]]), np.array([-2.5]))], time_limit=10)
    assert res.outcome == "holds" and res.x is None
    # "y <= -0.5 or y >= 2.5": the first disjunct is reachable (x = -1)
    res = solve_violation(enc, [LinearConstraints(np.array([[1.0]]), np.array([-0.5])),
                                LinearConstraints(np.array([[-1.0]]), np.array([-2.5]))], time_limit=10)
    assert res.outcome == "candidate" and res.disjunct == 0 and float(res.x[0]) <= -0.5 + 1e-6
    assert enc.highs.getNumRow() == rows and enc.highs.getNumCol() == cols
    # "y >= 2.00005": the worst case -5e-5 lies within the safety margin 1e-4: neither proven nor a candidate
    res = solve_violation(enc, [LinearConstraints(np.array([[-1.0]]), np.array([-2.00005]))], time_limit=10)
    assert res.outcome == "undecided"
    # the rows are relaxed by the solver slack (1e-6 relative): the optimum moves by about that
    assert abs(res.t_best - (-5e-5)) < 1e-5


# -- known radii -----------------------------------------------------------------------------------
def ort_predict(path: Path, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: np.asarray(x, dtype=np.float32).reshape(shape)})[0]).reshape(-1)


def check_falsified(record: dict, path: Path, x0: np.ndarray, eps: float, label: int,
                    shape: tuple[int, ...]) -> None:
    assert record["status"] == "falsified", record
    cex = np.asarray(record["counterexample"], dtype=np.float32)
    assert cex.shape == x0.shape
    assert np.abs(cex.astype(np.float64) - x0.astype(np.float64)).max() <= eps
    assert cex.min() >= 0.0 and cex.max() <= 1.0
    y = ort_predict(path, cex, shape)
    others = np.delete(y, label)
    assert others.max() > y[label], f"counterexample not misclassified in onnxruntime: {y}"
    assert record["counterexample_pred"] == int(np.argmax(y))


CFG_VARIANTS = [
    pytest.param(dict(attack_steps=0, formulation="per-target"), id="milp-per-target"),
    pytest.param(dict(attack_steps=0, formulation="max"), id="milp-max"),
    pytest.param(dict(attack_steps=20, attack_restarts=2, formulation="per-target"), id="attack-per-target"),
    pytest.param(dict(attack_steps=0, method="bab"), id="bab"),
]


@pytest.mark.parametrize("variant", CFG_VARIANTS)
def test_analytic_radius(analytic_onnx: Path, onnx_kit, variant: dict) -> None:  # type: ignore[no-untyped-def]
    ctx = ModelContext.from_path(analytic_onnx)
    x0, radius = onnx_kit.analytic_x0, onnx_kit.analytic_radius
    assert ctx.predict(x0) == 0
    below = verify_sample(ctx, x0, 0, VerifyConfig(eps=radius * 0.96, tighten="interval", timeout=30, **variant))
    assert below["status"] == "verified", below
    assert below["stage"] == variant.get("method", "milp"), "interval bounds cannot decide this eps: the MILP (or BaB) must"
    above = verify_sample(ctx, x0, 0, VerifyConfig(eps=radius * 1.06, tighten="interval", timeout=30, **variant))
    check_falsified(above, analytic_onnx, x0, radius * 1.06, 0, (1, 2))
    assert above["counterexample_pred"] == 2  # class 1 is still out of reach at this eps
    # far inside the radius, interval bounds alone suffice
    easy = verify_sample(ctx, x0, 0, VerifyConfig(eps=0.03, tighten="interval", **variant))
    assert easy["status"] == "verified" and easy["stage"] == "bounds"


def test_analytic_misclassified_and_bound_only_methods(analytic_onnx: Path) -> None:
    ctx = ModelContext.from_path(analytic_onnx)
    x = np.array([0.9, 0.1], dtype=np.float32)  # |x1 - x2| = 0.8: class 2 wins
    rec = verify_sample(ctx, x, 0, VerifyConfig(eps=0.01, attack_steps=0, tighten="interval"))
    assert rec["status"] == "misclassified" and rec["pred"] == 2
    # incomplete methods: verified only where interval bounds prove it, else unknown (never falsified without witness)
    x0 = np.array([0.5, 0.5], dtype=np.float32)
    r1 = verify_sample(ctx, x0, 0, VerifyConfig(eps=0.03, method="interval", attack_steps=0))
    r2 = verify_sample(ctx, x0, 0, VerifyConfig(eps=0.08, method="interval", attack_steps=0))
    assert (r1["status"], r2["status"]) == ("verified", "unknown")


def exact_radius(layers: list[tuple[np.ndarray, np.ndarray]], x0: np.ndarray, label: int) -> float:
    """Smallest L-inf radius (inside [0, 1]^n) at which some class j != label reaches
    y_j >= y_label, for a one-hidden-layer ReLU net: enumerate the activation patterns, and for
    each pattern and class solve ``min r`` over the pattern's polyhedron (an LP)."""
    (w1, b1), (w2, b2) = layers
    n, hid = w1.shape[1], w1.shape[0]
    best = np.inf
    for pattern in itertools.product((0.0, 1.0), repeat=hid):
        d = np.array(pattern)
        sign = np.where(d > 0, -1.0, 1.0)  # active: -(W1 x + b1) <= 0 ; inactive: W1 x + b1 <= 0
        a_pat = sign[:, None] * w1
        b_pat = -sign * b1
        for j in range(w2.shape[0]):
            if j == label:
                continue
            c = (w2[label] - w2[j]) * d  # (y_label - y_j) = c @ (W1 x + b1) + b2[label] - b2[j] <= 0
            a_viol = (c @ w1)[None]
            b_viol = np.array([-(c @ b1 + b2[label] - b2[j])])
            # variables (x, r): |x - x0| <= r
            eye = np.eye(n)
            a_ub = np.block([
                [eye, -np.ones((n, 1))], [-eye, -np.ones((n, 1))],
                [a_pat, np.zeros((hid, 1))], [a_viol, np.zeros((1, 1))],
            ])
            b_ub = np.concatenate([x0, -x0, b_pat, b_viol])
            res = linprog(np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=b_ub,
                          bounds=[(0.0, 1.0)] * n + [(0.0, None)], method="highs")
            if res.status == 0:
                best = min(best, float(res.fun))
    return best


@pytest.fixture(scope="module")
def random_net_with_radius(tmp_path_factory: pytest.TempPathFactory, onnx_kit):  # type: ignore[no-untyped-def]
    """A random 3-6-3 ReLU net, a point x0 and its exact robustness radius (0.02 < r < 0.25)."""
    import onnx

    for seed in range(50):
        rng = np.random.default_rng(seed)
        w1 = rng.normal(size=(6, 3)).astype(np.float32)
        b1 = rng.normal(size=6).astype(np.float32) * 0.5
        w2 = rng.normal(size=(3, 6)).astype(np.float32)
        b2 = rng.normal(size=3).astype(np.float32) * 0.5
        layers = [(w1.astype(np.float64), b1.astype(np.float64)), (w2.astype(np.float64), b2.astype(np.float64))]
        x0 = rng.uniform(0.3, 0.7, size=3).astype(np.float32)
        logits = w2 @ np.maximum(w1 @ x0 + b1, 0) + b2
        label = int(np.argmax(logits))
        r = exact_radius(layers, x0.astype(np.float64), label)
        if 0.02 < r < 0.25:
            path = tmp_path_factory.mktemp("random_net") / "random.onnx"
            onnx.save(onnx_kit.mlp_model([(w1, b1), (w2, b2)]), str(path))
            return path, x0, label, r
    pytest.fail("no random net with a suitable radius found")


@pytest.mark.parametrize("variant", CFG_VARIANTS)
def test_random_net_exact_radius(random_net_with_radius, variant: dict) -> None:  # type: ignore[no-untyped-def]
    path, x0, label, radius = random_net_with_radius
    ctx = ModelContext.from_path(path)
    assert ctx.predict(x0) == label
    below = verify_sample(ctx, x0, label, VerifyConfig(eps=radius * 0.97, tighten="interval", timeout=30, **variant))
    assert below["status"] == "verified", below
    above = verify_sample(ctx, x0, label, VerifyConfig(eps=radius * 1.03, tighten="interval", timeout=30, **variant))
    check_falsified(above, path, x0, radius * 1.03, label, (1, 3))


def test_formulations_agree(random_net_with_radius, analytic_onnx: Path, onnx_kit) -> None:  # type: ignore[no-untyped-def]
    path, x0, label, radius = random_net_with_radius
    cases = [(ModelContext.from_path(path), x0, label, radius),
             (ModelContext.from_path(analytic_onnx), onnx_kit.analytic_x0, 0, onnx_kit.analytic_radius)]
    for ctx, x, y, r in cases:
        for factor in (0.3, 0.6, 0.9, 1.1, 1.5, 3.0):
            expected = "verified" if factor < 1 else "falsified"
            got = {f: verify_sample(ctx, x, y, VerifyConfig(eps=r * factor, attack_steps=0, tighten="interval",
                                                            formulation=f))["status"]
                   for f in ("per-target", "max")}
            assert got == {"per-target": expected, "max": expected}, (factor, got)


def test_tighten_choices_agree(analytic_onnx: Path, onnx_kit) -> None:
    """Whatever bounds build the MILP (or the fallback when a method is unavailable), answers agree."""
    ctx = ModelContext.from_path(analytic_onnx)
    x0, r = onnx_kit.analytic_x0, onnx_kit.analytic_radius
    for tighten in ("interval", "crown"):
        for factor, expected in ((0.9, "verified"), (1.1, "falsified")):
            rec = verify_sample(ctx, x0, 0, VerifyConfig(eps=r * factor, attack_steps=0, tighten=tighten))
            assert rec["status"] == expected, (tighten, factor, rec)


# -- VNN-COMP ground truth ---------------------------------------------------------------------------
def _vnn_instance(vnncomp_dir: Path, prop: str):  # type: ignore[no-untyped-def]
    from robustkit.vnnlib import parse_vnnlib

    folder = vnncomp_dir / "mnist_fc_2022"
    onnx_path = folder / "onnx" / "mnist-net_256x2.onnx"
    vnnlib = folder / "vnnlib" / f"{prop}.vnnlib"
    if not onnx_path.exists() or not vnnlib.exists():
        pytest.skip(f"{onnx_path} or {vnnlib} missing")
    truth = {}
    for line in (folder / "results_summary.csv").read_text().splitlines()[1:]:
        parts = line.split(",")
        truth[(parts[1], parts[2])] = parts[4]
    expected = truth[("onnx/mnist-net_256x2.onnx", f"vnnlib/{prop}.vnnlib")]
    ctx = ModelContext.from_path(onnx_path)
    return ctx, parse_vnnlib(vnnlib, n_inputs=ctx.net.in_dim, n_outputs=ctx.net.out_dim), expected, onnx_path


def _check_vnn_verdict(verdict, spec, expected: str, onnx_path: Path, ctx: ModelContext) -> None:  # type: ignore[no-untyped-def]
    assert verdict.result == expected
    if expected == "sat":
        w = verdict.witness
        assert w is not None and w.x.dtype == np.float32
        y = ort_predict(onnx_path, w.x, ctx.net.onnx_input_shape)
        assert spec.is_violated_by(w.x.astype(np.float64), y), "witness does not violate the property in onnxruntime"


def test_vnncomp_mnist_256x2_unsat(vnncomp_dir: Path) -> None:
    ctx, spec, expected, onnx_path = _vnn_instance(vnncomp_dir, "prop_0_0.03")
    assert expected == "unsat"
    v = verify_spec(ctx, spec, VerifyConfig(attack_steps=0, tighten="interval", timeout=60))
    _check_vnn_verdict(v, spec, expected, onnx_path, ctx)
    assert v.stage == "milp"


@pytest.mark.parametrize("variant", [
    pytest.param(dict(attack_steps=50), id="attack"),
    pytest.param(dict(attack_steps=0, formulation="max"), id="milp-max"),
    pytest.param(dict(attack_steps=0, formulation="per-target"), id="milp-per-target", marks=pytest.mark.slow),
])
def test_vnncomp_mnist_256x2_sat(vnncomp_dir: Path, variant: dict) -> None:
    ctx, spec, expected, onnx_path = _vnn_instance(vnncomp_dir, "prop_1_0.03")
    assert expected == "sat"
    v = verify_spec(ctx, spec, VerifyConfig(tighten="interval", timeout=120, **variant))
    _check_vnn_verdict(v, spec, expected, onnx_path, ctx)
    if variant["attack_steps"] == 0:
        assert v.stage == "milp"


def test_robustness_spec_matches_eps_box() -> None:
    """verify_sample's property is the robustness spec over eps_box clipped to [0, 1]."""
    box = eps_box(np.array([0.05, 0.5]), 0.1)
    np.testing.assert_allclose(box.lower, [0.0, 0.4])
    np.testing.assert_allclose(box.upper, [0.15, 0.6])
    spec = robustness_spec(1, 3, box)
    ((_, out),) = spec.regions
    assert len(out) == 2 and out.robustness_label() == 1
