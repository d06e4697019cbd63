"""Sigmoid and Tanh (robustkit.network.smooth): sound linear bounds, bound methods on nets with
them, and the refusal of the methods that need piecewise-linear nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustkit.bounds.methods import run_bounds
from robustkit.errors import InputError
from robustkit.network import Dense, Network, ReLU, SCurve
from robustkit.network.smooth import ACT_ERROR

INTERVALS = [(-6.0, -0.5), (-3.0, -2.9), (0.2, 4.0), (1.0, 1.05), (-2.0, 3.0), (-0.1, 0.05), (-30.0, 25.0),
             (0.7, 0.7 + 1e-9), (-1e-8, 0.0)]


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("interval", INTERVALS)
def test_linear_bounds_hold_on_dense_points(kind: str, interval: tuple[float, float]) -> None:
    act = SCurve(1, kind=kind)
    lo, hi = interval
    l, u = torch.tensor([[lo]], dtype=torch.float64), torch.tensor([[hi]], dtype=torch.float64)
    lam_l, mu_l, lam_u, mu_u = act.linear_bounds(l, u)
    x = torch.linspace(lo, hi, 20001, dtype=torch.float64).reshape(1, -1)
    y64 = act.f(x)
    y32 = act.f(x.float()).double()  # a float32 evaluation, as onnxruntime's
    below, above = lam_l * x + mu_l, lam_u * x + mu_u
    for y in (y64, y32):
        assert bool((below <= y).all()) and bool((y <= above).all())
    il, iu = act.interval(l, u)
    assert bool((il <= y64.min()).all()) and bool((iu >= y64.max()).all())
    # not vacuous: on a narrow interval the two lines are close to the function
    if hi - lo <= 0.2:
        assert float((above - below).max()) < 5e-3 + 4 * ACT_ERROR


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_convex_and_concave_pieces_use_chords_and_tangents(kind: str) -> None:
    act = SCurve(2, kind=kind)
    l = torch.tensor([[-3.0, 1.0]], dtype=torch.float64)
    u = torch.tensor([[-1.0, 3.0]], dtype=torch.float64)
    lam_l, mu_l, lam_u, mu_u = act.linear_bounds(l, u)
    chord = (act.f(u) - act.f(l)) / (u - l)
    torch.testing.assert_close(lam_u[0, 0], chord[0, 0])  # convex: the chord is the upper bound
    torch.testing.assert_close(lam_l[0, 1], chord[0, 1])  # concave: the chord is the lower bound
    torch.testing.assert_close(lam_l[0, 0], act.df(torch.tensor(-2.0, dtype=torch.float64)))


def _net(kind: str, seed: int) -> Network:
    rng = np.random.default_rng(seed)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    layers = (
        Dense(t(rng.normal(size=(8, 3))), t(rng.normal(size=8) * 0.3)), SCurve(8, kind=kind),
        Dense(t(rng.normal(size=(8, 8))), t(rng.normal(size=8) * 0.3)), ReLU(8),
        Dense(t(rng.normal(size=(3, 8))), t(rng.normal(size=3) * 0.3)),
    )
    return Network(layers, (3,), (1, 3))


@pytest.mark.parametrize("method", ["interval", "crown", "alpha-crown"])
@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_bounds_contain_samples_of_nets_with_smooth_layers(method: str, kind: str) -> None:
    net = _net(kind, 3)
    assert not net.piecewise_linear and net.activation_indices == [1, 3] and net.split_indices == [3]
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=3)
    lo, hi = x0 - 0.4, x0 + 0.4
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    res = run_bounds(net, torch.from_numpy(lo[None]), torch.from_numpy(hi[None]), method, C=C)
    pts = np.concatenate([rng.uniform(lo, hi, size=(5000, 3)), np.where(rng.random((500, 3)) < 0.5, lo, hi)])
    with torch.no_grad():
        acts64 = net.forward_all(torch.from_numpy(pts))
        y32 = net.to_torch().to(torch.float32)(torch.from_numpy(pts).float()).double()
    for i, a in enumerate(acts64):
        assert bool((a >= res.bounds.lower[i]).all()) and bool((a <= res.bounds.upper[i]).all()), (method, i)
    assert bool((y32 >= res.bounds.lower[-1]).all()) and bool((y32 <= res.bounds.upper[-1]).all())
    assert bool(((y32 @ C.T) >= res.spec.lower).all())
    if method != "interval":  # CROWN through the smooth layer is tighter than interval arithmetic
        ibp = run_bounds(net, torch.from_numpy(lo[None]), torch.from_numpy(hi[None]), "interval", C=C)
        assert float(res.spec.lower) > float(ibp.spec.lower)


def test_lp_and_milp_bounds_are_refused_with_the_layer_named() -> None:
    net = _net("tanh", 0)
    lo = torch.zeros(1, 3, dtype=torch.float64)
    for method in ("lp", "milp"):
        with pytest.raises(InputError, match="Tanh"):
            run_bounds(net, lo, lo + 0.1, method)


def test_kind_is_validated() -> None:
    with pytest.raises(ValueError):
        SCurve(2, kind="relu")


def _onnx_model(kind: str, branched: bool = False) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = {"w1": rng.normal(size=(3, 8)), "b1": rng.normal(size=8) * 0.3, "w2": rng.normal(size=(8, 8)),
             "b2": rng.normal(size=8) * 0.3, "w3": rng.normal(size=(8, 3)), "b3": rng.normal(size=3) * 0.3}
    n = helper.make_node
    op = "Sigmoid" if kind == "sigmoid" else "Tanh"
    nodes = [n("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"), n(op, ["h1"], ["s"], name="act"),
             n("Gemm", ["s", "w2", "b2"], ["h2"], name="fc2")]
    if branched:  # h1 is also read after the activation: the lowering would have to carry it
        nodes.append(n("Add", ["h2", "h1"], ["h2r"], name="skip"))
        nodes += [n("Relu", ["h2r"], ["r"], name="relu"), n("Gemm", ["r", "w3", "b3"], ["y"], name="fc3")]
    else:
        nodes += [n("Relu", ["h2"], ["r"], name="relu"), n("Gemm", ["r", "w3", "b3"], ["y"], name="fc3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_onnx_smooth_net_loads_bounds_hold_in_onnxruntime_and_verify_is_marked_incomplete(kind: str) -> None:
    import onnxruntime as ort

    from robustkit.spec import InputBox, robustness_spec
    from robustkit.verification import ModelContext, VerifyConfig, verify_spec

    data = _onnx_model(kind)
    ctx = ModelContext.from_bytes(data, "smooth.onnx")
    assert isinstance(ctx.net.layers[1], SCurve) and not ctx.net.piecewise_linear
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, size=3)
    pts = rng.uniform(x0 - 0.2, x0 + 0.2, size=(400, 3)).astype(np.float32)
    y_ort = np.concatenate([sess.run(None, {"x": p[None]})[0] for p in pts])
    np.testing.assert_allclose(ctx.net.forward(torch.from_numpy(pts.astype(np.float64))).numpy(), y_ort, atol=1e-5)
    res = run_bounds(ctx.net, torch.from_numpy(x0[None] - 0.2), torch.from_numpy(x0[None] + 0.2), "alpha-crown")
    assert bool((torch.from_numpy(y_ort).double() >= res.bounds.lower[-1]).all())
    assert bool((torch.from_numpy(y_ort).double() <= res.bounds.upper[-1]).all())
    label = int(np.argmax(ctx.net.forward(torch.from_numpy(x0[None])).numpy()))
    for eps in (1e-3, 0.5):
        box = InputBox(x0 - eps, x0 + eps)
        v = verify_spec(ctx, robustness_spec(label, 3, box), VerifyConfig(method="bab", attack_steps=0, timeout=20))
        assert v.result in ("unsat", "unknown"), v.result  # never sat without a replayed attack point
        if v.result == "unknown":
            assert "bounds only" in v.details.get("incomplete", "")
    tiny = verify_spec(ctx, robustness_spec(label, 3, InputBox(x0 - 1e-4, x0 + 1e-4)),
                       VerifyConfig(method="milp", attack_steps=0, timeout=20))
    assert tiny.result == "unsat"  # a tiny box is proven by the bounds alone


def test_smooth_layer_on_a_branch_carries_the_skip() -> None:
    """Tanh on one path while its input is read again after it (a skip): the lowering carries the
    other tensor past it through its identity coordinates; every bound contains sampled points."""
    import onnxruntime as ort

    from robustkit.bounds.methods import run_bounds
    from robustkit.network import network_from_onnx
    import onnx

    data = _onnx_model("tanh", branched=True)
    net = network_from_onnx(onnx.load_from_string(data))
    act = next(layer for layer in net.layers if isinstance(layer, SCurve))
    assert act.identity is not None and act.count == 8
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(200, 3))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    theirs = np.stack([sess.run(None, {"x": xi[None].astype(np.float32)})[0][0] for xi in x])
    np.testing.assert_allclose(net.forward(torch.from_numpy(x)).numpy(), theirs, atol=1e-5)
    lo, hi = torch.full((1, 3), -1.0, dtype=torch.float64), torch.full((1, 3), 1.0, dtype=torch.float64)
    for method in ("interval", "crown", "alpha-crown"):
        res = run_bounds(net, lo, hi, method)
        ylo, yhi = res.bounds.output()
        assert bool(np.all(theirs >= ylo.numpy() - 1e-9) and np.all(theirs <= yhi.numpy() + 1e-9)), method
