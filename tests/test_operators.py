"""The operator contract (:mod:`robustkit.network.activations`), checked the same way for every
piecewise-linear operator: ReLU, LeakyReLU and HardTanh (ONNX Relu, LeakyRelu, Clip).

Each meaning is tested against the function itself: relaxations and intervals on dense samples
and the ends of the box, the MILP's optimum against exhaustive grids, branch and bound against the
MILP, ONNX loading and the float model against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from robustkit.bounds.methods import run_bounds
from robustkit.milp import encode
from robustkit.network import Dense, HardTanh, LeakyReLU, Network, ReLU
from robustkit.network.encoding import ZERO
from robustkit.spec import InputBox, LinearConstraints, Specification
from robustkit.verification import ModelContext, VerifyConfig, verify_spec

OPERATORS = {
    "relu": lambda d: ReLU(d),
    "leaky": lambda d: LeakyReLU(d, slope=0.1),
    "hardtanh": lambda d: HardTanh(d, lo=-1.0, hi=2.0),
}


def _intervals(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals of every kind for kinks at 0, -1 and 2 (narrow and wide, each side of each kink)."""
    centres = rng.choice([-3.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0, 3.5], size=n) + rng.normal(size=n) * 0.3
    widths = np.exp(rng.uniform(-6, 2, size=n))
    lo = centres - widths * rng.uniform(0, 1, size=n)
    return torch.from_numpy(lo), torch.from_numpy(lo + widths)


@pytest.mark.parametrize("name", OPERATORS)
def test_relaxation_and_interval_hold_on_dense_points(name: str) -> None:
    rng = np.random.default_rng(0)
    op = OPERATORS[name](2000)
    lo, hi = _intervals(rng, 2000)
    t = torch.linspace(0, 1, 101, dtype=torch.float64).unsqueeze(1)
    z = lo + t * (hi - lo)  # (101, n): the ends and every point between
    fz = op.f(z)
    for alpha in (None, torch.zeros(2000, dtype=torch.float64), torch.ones(2000, dtype=torch.float64),
                  torch.from_numpy(rng.uniform(0, 1, size=2000))):
        lam_l, mu_l, lam_u, mu_u = op.linear_bounds(lo, hi, alpha)
        assert bool((lam_l * z + mu_l <= fz + 1e-9).all()), "lower relaxation above f"
        assert bool((lam_u * z + mu_u >= fz - 1e-9).all()), "upper relaxation below f"
        assert bool((lam_l >= 0).all() and (lam_u >= 0).all()), "slopes of a non-decreasing operator"
    il, iu = op.interval(lo, hi)
    assert bool((fz >= il).all() and (fz <= iu).all())
    # the affine piece where no kink is undecided is the function there
    decided = ~op.unstable(lo, hi)
    slope, icpt = op.piece(lo, hi)
    assert bool(torch.allclose((slope * z + icpt)[:, decided], fz[:, decided]))


@pytest.mark.parametrize("name", OPERATORS)
def test_splits_cover_and_tighten(name: str) -> None:
    """Splitting a unit at its kink: the children's bounds cover the parent and each child has that
    kink decided; the split constraint's Lagrangian term is 0 where it holds with equality."""
    rng = np.random.default_rng(1)
    op = OPERATORS[name](300)
    lo, hi = _intervals(rng, 300)
    und = op.undecided(lo, hi).reshape(1, -1)
    units = torch.nonzero(und[0]).flatten()
    assert units.numel() > 20
    l2, u2 = lo.unsqueeze(0).repeat(2, 1).clone(), hi.unsqueeze(0).repeat(2, 1).clone()
    neuron = units // op.kinks
    rows = torch.zeros(units.numel(), dtype=torch.long)
    for k, unit in enumerate(units):
        a, b = l2.clone(), u2.clone()
        op.split_bounds(a, b, torch.tensor([0]), unit.reshape(1), -1)
        op.split_bounds(a, b, torch.tensor([1]), unit.reshape(1), 1)
        j = int(unit) // op.kinks
        brk = float(op.breakpoints(lo)[int(unit) % op.kinks])
        assert float(b[0, j]) == min(float(hi[j]), brk) and float(a[1, j]) == max(float(lo[j]), brk)
        assert not bool(op.undecided(a[:, j], b[:, j])[:, int(unit) % op.kinks].any())
    del rows, neuron


def _random_net(rng: np.random.Generator, make, widths: tuple[int, ...]) -> Network:  # type: ignore[no-untyped-def]
    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(Dense(torch.from_numpy(rng.normal(size=(b, a)) / np.sqrt(a)), torch.from_numpy(rng.normal(size=b) * 0.5)))
        if k < len(widths) - 2:
            layers.append(make(b))
    return Network(tuple(layers), (widths[0],), (1, widths[0]))


@pytest.mark.parametrize("name", OPERATORS)
def test_bounds_of_every_method_contain_the_samples(name: str) -> None:
    rng = np.random.default_rng(2)
    net = _random_net(rng, OPERATORS[name], (3, 12, 12, 2))
    x0 = rng.uniform(-1, 1, size=3)
    lo, hi = torch.from_numpy(x0 - 0.8).unsqueeze(0), torch.from_numpy(x0 + 0.8).unsqueeze(0)
    pts = torch.from_numpy(rng.uniform(x0 - 0.8, x0 + 0.8, size=(3000, 3)))
    corners = torch.from_numpy(np.array(np.meshgrid(*[[x0[i] - 0.8, x0[i] + 0.8] for i in range(3)])).reshape(3, -1).T)
    outs = net.forward_all(torch.cat([pts, corners]))
    for method in ("interval", "crown", "alpha-crown", "lp"):
        nb = run_bounds(net, lo, hi, method).bounds
        for i, y in enumerate(outs):
            assert bool((y >= nb.lower[i] - 1e-9).all() and (y <= nb.upper[i] + 1e-9).all()), (method, i)


@pytest.mark.parametrize("name", OPERATORS)
def test_milp_optimum_is_the_grid_maximum(name: str) -> None:
    """The MILP is exact: maximising an output over a 2-D box gives the maximum of a dense grid
    (up to the float error band and the solver slack), never less."""
    import highspy

    rng = np.random.default_rng(3)
    for trial in range(3):
        net = _random_net(rng, OPERATORS[name], (2, 10, 10, 1))
        lo, hi = torch.full((1, 2), -1.5, dtype=torch.float64), torch.full((1, 2), 1.5, dtype=torch.float64)
        nb = run_bounds(net, lo, hi, "crown").bounds
        enc = encode(net, nb)
        h = enc.highs
        col = int(enc.output_cols[0])
        assert col != ZERO
        h.changeColsCost(1, np.array([col], dtype=np.int32), np.array([-1.0]))
        h.run()
        assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
        milp_max = -h.getInfo().objective_function_value
        g = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
        grid = torch.cartesian_prod(g, g)
        grid_max = float(net.forward(grid).max())
        assert milp_max >= grid_max - 1e-6, (trial, milp_max, grid_max)
        assert milp_max <= grid_max + 0.05, (trial, milp_max, grid_max)  # the grid's spacing


def _onnx(op: str, attrs: dict, extra: dict, rng: np.random.Generator) -> bytes:
    w1, b1 = rng.normal(size=(4, 8)) / 2, rng.normal(size=8) * 0.5
    w2, b2 = rng.normal(size=(8, 2)) / 3, rng.normal(size=2) * 0.5
    n = helper.make_node
    inputs = ["h"] + list(extra)
    nodes = [n("Gemm", ["x", "W1", "B1"], ["h"]), n(op, inputs, ["a"], **attrs), n("Gemm", ["a", "W2", "B2"], ["y"])]
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in
             {"W1": w1, "B1": b1, "W2": w2, "B2": b2, **extra}.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


ONNX_CASES = {
    "relu": ("Relu", {}, {}),
    "leaky": ("LeakyRelu", {"alpha": 0.1}, {}),
    "hardtanh": ("Clip", {}, {"lo": np.array(-0.5), "hi": np.array(1.0)}),
}


@pytest.mark.parametrize("name", ONNX_CASES)
def test_onnx_operator_loads_and_verification_agrees_across_methods(name: str) -> None:
    """From ONNX: the loaded operator, onnxruntime within the float model, and the complete methods
    (MILP, branch and bound over the operator's splits) agreeing on random margin properties."""
    rng = np.random.default_rng(4)
    op, attrs, extra = ONNX_CASES[name]
    data = _onnx(op, attrs, extra, rng)
    ctx = ModelContext.from_bytes(data, name)
    kind = {"relu": ReLU, "leaky": LeakyReLU, "hardtanh": HardTanh}[name]
    assert any(isinstance(layer, kind) for layer in ctx.net.layers)
    xs = rng.uniform(-1, 1, size=(500, 4)).astype(np.float32).astype(np.float64)
    nb = run_bounds(ctx.net, torch.full((1, 4), -1.0, dtype=torch.float64),
                    torch.full((1, 4), 1.0, dtype=torch.float64), "crown").bounds
    err = (nb.errors.accumulated[-1] + nb.errors.slack[-1]).numpy()
    assert bool(np.all(np.abs(ctx.ort(xs) - ctx.net.forward(torch.from_numpy(xs)).numpy()) <= err))
    answers = []
    for k in range(6):
        x0 = rng.uniform(-1, 1, size=4)
        eps = rng.uniform(0.05, 0.6)
        y0 = ctx.ort(x0)[0]
        thr = float(y0[0] - y0[1]) * rng.uniform(-0.5, 1.5)
        spec = Specification.single(InputBox(x0 - eps, x0 + eps),
                                    LinearConstraints(np.array([[1.0, -1.0]]), np.array([thr])))
        got = {}
        for method, split in (("milp", "auto"), ("bab", "relu"), ("bab", "input")):
            v = verify_spec(ctx, spec, VerifyConfig(method=method, timeout=20, attack_steps=0, bab_split=split))
            got[f"{method}-{split}"] = v.result
            if v.result == "sat":
                assert v.witness is not None and spec.is_violated_by(v.witness.x.astype(np.float64), v.witness.y)
        decided = {r for r in got.values() if r in ("sat", "unsat")}
        assert len(decided) <= 1, (k, got)
        answers.append(got["milp-auto"])
    assert {"sat", "unsat"} <= set(answers), answers  # the properties are not all of one kind


@pytest.mark.parametrize("name", OPERATORS)
def test_split_terms_are_nonpositive_on_the_domain(name: str) -> None:
    """beta-CROWN's term ``-beta sign (z - b)`` may only lower a linear function on the domain where
    ``sign (z - b) >= 0`` holds (and is 0 on the kink): then every bound stays valid."""
    rng = np.random.default_rng(5)
    op = OPERATORS[name](6)
    units = op.dim * op.kinks
    A = torch.from_numpy(rng.normal(size=(1, 3, 6)))
    c = torch.from_numpy(rng.normal(size=(1, 3)))
    betas = torch.from_numpy(rng.uniform(0, 2, size=(1, 3, units)))
    b = op.breakpoints(A).repeat(6)  # each unit's kink
    neuron = op.unit_neurons()
    z0 = torch.from_numpy(rng.normal(size=6) * 3)  # the splits a domain around z0 could have
    signs = (torch.sign(z0[neuron] - b) * torch.from_numpy(rng.choice([0.0, 1.0], size=units, p=[0.2, 0.8])))
    signs = signs.unsqueeze(0)
    assert int((signs != 0).sum()) >= units // 2
    A2, c2 = op.split_terms(A, c, betas, signs)
    checked = 0
    for _ in range(200):  # points z where every split constraint holds
        z = torch.from_numpy(rng.normal(size=6) * 3)
        lo_z = torch.full((6,), -np.inf, dtype=torch.float64)
        hi_z = torch.full((6,), np.inf, dtype=torch.float64)
        for u in range(units):
            if signs[0, u] > 0:
                lo_z[neuron[u]] = torch.maximum(lo_z[neuron[u]], b[u])
            elif signs[0, u] < 0:
                hi_z[neuron[u]] = torch.minimum(hi_z[neuron[u]], b[u])
        if bool((lo_z > hi_z).any()):
            continue
        z = torch.minimum(torch.maximum(z, lo_z), hi_z)
        before = (A @ z + c)[0]
        after = (A2 @ z + c2)[0]
        assert bool((after <= before + 1e-9).all())
        checked += 1
    assert checked == 200
    # one split at a time: its term vanishes at the kink, and is <= 0 on its side
    for u in range(units):
        for sign in (-1.0, 1.0):
            one = torch.zeros(1, units, dtype=torch.float64)
            one[0, u] = sign
            A3, c3 = op.split_terms(A, c, betas, one)
            z = torch.from_numpy(rng.normal(size=6))
            z[neuron[u]] = b[u]
            assert torch.allclose(A3 @ z + c3, A @ z + c), (u, sign)
            z[neuron[u]] = b[u] + sign * 0.7
            assert bool((A3 @ z + c3 <= A @ z + c + 1e-12).all()), (u, sign)


def test_leaky_relu_rounding_is_in_the_float_model() -> None:
    """fl(0.1 z) rounds: onnxruntime's LeakyRelu differs from the exact 0.1 z, and the float model
    must cover it (a model that took LeakyReLU as exact, like ReLU, fails here)."""
    n = helper.make_node
    graph = helper.make_graph([n("LeakyRelu", ["x"], ["y"], alpha=0.1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    ctx = ModelContext.from_bytes(model.SerializeToString())
    xs = -np.random.default_rng(6).uniform(1, 1000, size=(50, 64)).astype(np.float32).astype(np.float64)
    exact = ctx.net.forward(torch.from_numpy(xs)).numpy()
    diff = np.abs(ctx.ort(xs) - exact)
    assert diff.max() > 0  # the rounding is real
    nb = run_bounds(ctx.net, torch.full((1, 64), -1000.0, dtype=torch.float64),
                    torch.full((1, 64), -1.0, dtype=torch.float64), "crown").bounds
    assert bool(np.all(diff <= (nb.errors.accumulated[-1] + nb.errors.slack[-1]).numpy()))
