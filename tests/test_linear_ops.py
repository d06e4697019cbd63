"""AveragePool, GlobalAveragePool, general Transpose and Pad as linear layers: the loaded network
against onnxruntime, each layer's matrix against its forward/backward, CROWN bounds against
samples, the MILP verdict against sampling, and the refusals of what is not supported."""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from robustkit.bounds import crown_bounds
from robustkit.errors import UnsupportedOperatorError
from robustkit.network import AvgPool2d, Conv2d, Dense, Permute, ReLU, ZeroPad2d, network_from_onnx
from robustkit.network.layers import LinearLayer
from robustkit.network.ort import OrtModel
from robustkit.spec import eps_box, robustness_spec
from robustkit.verification import ModelContext, VerifyConfig, verify_spec

N_OUT = 3


def _model(nodes, in_shape, inits, opset: int = 13) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N_OUT])],
        [numpy_helper.from_array(np.asarray(v), name=k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def pool_model(kernel, strides, pads, cip: int, ceil_mode: int = 0, seed: int = 0) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    """x (1, 2, 6, 6) -> Conv 3x3 pad 1 (3 ch) -> Relu -> AveragePool -> Flatten -> Gemm (3)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    ho = (6 + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    wo = (6 + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    nodes = [
        n("Conv", ["x", "Wc", "bc"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        n("Relu", ["c"], ["r"], name="relu"),
        n("AveragePool", ["r"], ["p"], kernel_shape=list(kernel), strides=list(strides), pads=list(pads),
          count_include_pad=cip, ceil_mode=ceil_mode, name="pool"),
        n("Flatten", ["p"], ["f"], name="flat"),
        n("Gemm", ["f", "Wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = {"Wc": _rand(rng, 3, 2, 3, 3), "bc": _rand(rng, 3) * 0.1,
             "Wf": _rand(rng, N_OUT, 3 * max(ho, 1) * max(wo, 1)), "bf": _rand(rng, N_OUT)}
    return _model(nodes, [1, 2, 6, 6], inits)


def gap_model(seed: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    n = helper.make_node
    nodes = [n("Conv", ["x", "Wc", "bc"], ["c"], name="conv"), n("Relu", ["c"], ["r"], name="relu"),
             n("GlobalAveragePool", ["r"], ["p"], name="gap"), n("Flatten", ["p"], ["f"], name="flat"),
             n("Gemm", ["f", "Wf", "bf"], ["y"], transB=1, name="fc")]
    inits = {"Wc": _rand(rng, 4, 2, 3, 3), "bc": _rand(rng, 4) * 0.1, "Wf": _rand(rng, N_OUT, 4), "bf": _rand(rng, N_OUT)}
    return _model(nodes, [1, 2, 5, 5], inits)


def nhwc_model(reshape: bool, seed: int = 2) -> onnx.ModelProto:
    """tf2onnx's layout: NHWC input -> Transpose to NCHW -> Conv -> Relu -> Transpose to NHWC ->
    Reshape/Flatten -> Gemm (MatMul + Add)."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    tail = [n("Reshape", ["t2", "shape"], ["f"], name="reshape")] if reshape else [n("Flatten", ["t2"], ["f"], name="flat")]
    nodes = [n("Transpose", ["x"], ["t1"], perm=[0, 3, 1, 2], name="to_nchw"),
             n("Conv", ["t1", "Wc", "bc"], ["c"], strides=[1, 2], name="conv"), n("Relu", ["c"], ["r"], name="relu"),
             n("Transpose", ["r"], ["t2"], perm=[0, 2, 3, 1], name="to_nhwc"), *tail,
             n("MatMul", ["f", "Wf"], ["m"], name="matmul"), n("Add", ["m", "bf"], ["y"], name="add")]
    # x (1, 5, 6, 2) -> (1, 2, 5, 6) -> conv 3x3 stride (1, 2): (1, 3, 3, 2) -> NHWC (1, 3, 2, 3): 18
    inits = {"Wc": _rand(rng, 3, 2, 3, 3), "bc": _rand(rng, 3) * 0.1, "Wf": _rand(rng, 18, N_OUT),
             "bf": _rand(rng, N_OUT), "shape": np.array([1, -1], dtype=np.int64)}
    return _model(nodes, [1, 5, 6, 2], inits)


def pad_model(pads, opset: int = 13, seed: int = 3, mode: str = "constant", value: float = 0.0) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    """x (1, 2, 5, 5) -> Pad -> Conv 3x3 -> Relu -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    n = helper.make_node
    h, w = 5 + pads[2] + pads[6], 5 + pads[3] + pads[7]
    inits = {"Wc": _rand(rng, 3, 2, 3, 3), "bc": _rand(rng, 3) * 0.1,
             "Wf": _rand(rng, N_OUT, 3 * (h - 2) * (w - 2)), "bf": _rand(rng, N_OUT)}
    if opset >= 11:
        inits["pads"] = np.array(pads, dtype=np.int64)
        inits["value"] = np.array(value, dtype=np.float32)
        pad = n("Pad", ["x", "pads", "value"], ["p"], mode=mode, name="pad")
    else:
        pad = n("Pad", ["x"], ["p"], pads=list(pads), mode=mode, value=value, name="pad")
    nodes = [pad, n("Conv", ["p", "Wc", "bc"], ["c"], name="conv"), n("Relu", ["c"], ["r"], name="relu"),
             n("Flatten", ["r"], ["f"], name="flat"), n("Gemm", ["f", "Wf", "bf"], ["y"], transB=1, name="fc")]
    return _model(nodes, [1, 2, 5, 5], inits, opset)


# -- the checks -------------------------------------------------------------------------------------
def check_against_ort(model: onnx.ModelProto, samples: int = 16):  # type: ignore[no-untyped-def]
    net = network_from_onnx(model)
    ort = OrtModel(model.SerializeToString(), net.onnx_input_shape)
    x = np.random.default_rng(7).uniform(0, 1, size=(samples, net.in_dim))
    ours = net.forward(torch.from_numpy(x).float().double()).numpy()
    np.testing.assert_allclose(ours, ort(x), rtol=1e-5, atol=1e-5)
    return net, ort


def check_layer_algebra(layer: LinearLayer) -> None:
    """matrix() is forward on unit vectors (minus bias); backward, abs_backward, abs_forward agree with it."""
    m = layer.matrix()
    assert m.shape == (layer.out_dim, layer.in_dim) and m.dtype == np.float64
    dense = m.toarray()
    eye = torch.eye(layer.in_dim, dtype=torch.float64)
    cols = (layer.forward(eye) - layer.bias_tensor(torch.float64)).numpy().T
    np.testing.assert_allclose(cols, dense, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(layer.bias_vector(), layer.bias_tensor(torch.float64).numpy())
    if isinstance(layer, (AvgPool2d, Permute, ZeroPad2d)):
        np.testing.assert_array_equal(layer.bias_vector(), np.zeros(layer.out_dim))
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(2, 3, layer.out_dim)))
    np.testing.assert_allclose(layer.backward(a).numpy(), a.numpy() @ dense, rtol=1e-10, atol=1e-12)
    pos = a.abs()
    np.testing.assert_allclose(layer.abs_backward(pos).numpy(), pos.numpy() @ np.abs(dense), rtol=1e-10, atol=1e-12)
    x = torch.from_numpy(rng.normal(size=(4, layer.in_dim)))
    np.testing.assert_allclose(layer.abs_forward(x).numpy(), x.numpy() @ np.abs(dense).T, rtol=1e-10, atol=1e-12)
    lo, hi = layer.interval(x - 0.1, x + 0.1)
    assert bool((lo <= layer.forward(x)).all() and (layer.forward(x) <= hi).all())
    assert str(layer.in_dim) in layer.describe()


def check_crown_contains(net, ort, x0: np.ndarray, eps: float) -> None:  # type: ignore[no-untyped-def]
    lo = np.clip(x0 - eps, 0, 1)
    hi = np.clip(x0 + eps, 0, 1)
    bounds, _ = crown_bounds(net, torch.from_numpy(lo)[None], torch.from_numpy(hi)[None])
    out_lo, out_hi = bounds.lower[-1][0].numpy(), bounds.upper[-1][0].numpy()
    rng = np.random.default_rng(11)
    pts = [rng.uniform(lo, hi) for _ in range(150)]
    # corners of the box in a random subset of coordinates (the others at random ends)
    for bits in itertools.product([0, 1], repeat=4):
        p = np.where(rng.uniform(size=lo.shape) < 0.5, lo, hi)
        idx = rng.choice(lo.size, 4, replace=False)
        p[idx] = np.where(np.array(bits) == 1, hi[idx], lo[idx])
        pts.append(p)
    pts += [lo, hi]
    y = ort(np.stack(pts))
    assert np.all(y >= out_lo - 1e-9) and np.all(y <= out_hi + 1e-9), (y.min(0), out_lo, y.max(0), out_hi)
    assert np.all(out_hi - out_lo < 1e3)  # not vacuous


def check_milp_consistent(model: onnx.ModelProto, eps_values=(0.002, 0.05, 0.3), method: str = "milp",  # type: ignore[no-untyped-def]
                          tighten: str = "crown") -> list[tuple[str, str]]:
    """The verdict (MILP by default) against dense sampling in onnxruntime: never unsat where a
    sample violates; a witness is a real violation; complete methods decide. Returns
    ``(result, stage)`` per eps."""
    ctx = ModelContext.from_bytes(model.SerializeToString())
    rng = np.random.default_rng(5)
    x0 = rng.uniform(0.2, 0.8, size=ctx.net.in_dim)
    label = ctx.predict(x0)
    results = []
    for eps in eps_values:
        box = eps_box(x0, eps)
        spec = robustness_spec(label, N_OUT, box)
        v = verify_spec(ctx, spec, VerifyConfig(eps=eps, method=method, tighten=tighten, attack_steps=0, timeout=20))
        pts = rng.uniform(box.lower, box.upper, size=(300, ctx.net.in_dim))
        y = ctx.ort(pts)
        violated = bool(np.any(np.delete(y, label, axis=1).max(axis=1) >= y[:, label]))
        if violated:
            assert v.result != "unsat", (eps, v)
        if v.result == "sat":
            assert v.witness is not None
            yw = ctx.ort(v.witness.x[None])[0]
            assert np.delete(yw, label).max() >= yw[label]
        if method in ("milp", "bab"):
            assert v.result in ("sat", "unsat"), v  # complete on these tiny nets
        else:
            assert v.result in ("unsat", "unknown"), v
        results.append((v.result, v.stage))
    return results


# -- AveragePool / GlobalAveragePool ----------------------------------------------------------------
POOLS = [((2, 2), (2, 2), (0, 0, 0, 0), 0), ((3, 3), (1, 1), (1, 1, 1, 1), 0), ((3, 3), (1, 1), (1, 1, 1, 1), 1),
         ((3, 2), (2, 1), (1, 0, 2, 1), 0), ((3, 2), (2, 1), (1, 0, 2, 1), 1), ((2, 3), (1, 2), (0, 2, 1, 0), 0)]


@pytest.mark.parametrize("kernel,strides,pads,cip", POOLS)
def test_average_pool_matches_ort_and_its_matrix(kernel, strides, pads, cip) -> None:  # type: ignore[no-untyped-def]
    net, ort = check_against_ort(pool_model(kernel, strides, pads, cip))
    pools = [layer for layer in net.layers if isinstance(layer, AvgPool2d)]
    assert len(pools) == 1 and pools[0].count_include_pad == bool(cip)
    assert pools[0].rounding_ops == kernel[0] * kernel[1] + 1
    for layer in net.layers:
        if isinstance(layer, LinearLayer):
            check_layer_algebra(layer)
    check_crown_contains(net, ort, np.random.default_rng(3).uniform(0.2, 0.8, net.in_dim), 0.05)


def test_count_include_pad_changes_the_border_divisor() -> None:
    inc = AvgPool2d((1, 3, 3), (2, 2), (1, 1), (1, 1, 0, 0), True).matrix().toarray()
    exc = AvgPool2d((1, 3, 3), (2, 2), (1, 1), (1, 1, 0, 0), False).matrix().toarray()
    assert inc[0, 0] == 0.25 and exc[0, 0] == 1.0  # the corner window holds one input element
    assert inc[-1].sum() == 1.0 and exc[-1].sum() == 1.0  # an interior window: four elements either way


def test_global_average_pool() -> None:
    net, ort = check_against_ort(gap_model())
    (gap,) = [layer for layer in net.layers if isinstance(layer, AvgPool2d)]
    assert gap.out_shape == (4, 1, 1) and gap.rounding_ops == 9 + 1 and "GlobalAveragePool" in gap.describe()
    check_layer_algebra(gap)
    check_crown_contains(net, ort, np.full(net.in_dim, 0.5), 0.1)


def test_pool_network_verdicts_agree_with_sampling() -> None:
    # interval tightening leaves the middle box to the MILP, which proves it
    results = check_milp_consistent(pool_model((3, 2), (2, 1), (1, 0, 2, 1), 0, seed=4), (0.002, 0.01, 0.05),
                                    tighten="interval")
    assert ("unsat", "milp") in results and results[-1] == ("sat", "milp"), results
    results = check_milp_consistent(gap_model())
    assert ("unsat", "milp") in results, results  # eps 0.3


@pytest.mark.parametrize("method,tighten", [("bab", "lp"), ("milp", "alpha-crown"), ("crown", "crown"),
                                            ("alpha-crown", "crown"), ("interval", "interval")])
def test_every_method_on_a_pool_pad_transpose_net(method: str, tighten: str) -> None:
    """NHWC input -> Transpose -> Pad -> Conv -> Relu -> AveragePool -> Transpose -> Flatten -> Gemm."""
    rng = np.random.default_rng(9)
    n = helper.make_node
    nodes = [n("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
             n("Pad", ["t", "pads"], ["p"], name="pad"), n("Conv", ["p", "Wc", "bc"], ["c"], name="conv"),
             n("Relu", ["c"], ["r"], name="relu"),
             n("AveragePool", ["r"], ["a"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1], name="pool"),
             n("Transpose", ["a"], ["t2"], perm=[0, 2, 3, 1], name="to_nhwc"), n("Flatten", ["t2"], ["f"], name="flat"),
             n("Gemm", ["f", "Wf", "bf"], ["y"], transB=1, name="fc")]
    # (1, 4, 4, 2) -> (1, 2, 4, 4) -> pad (1, 1, 0, 0): (1, 2, 5, 5) -> conv 3x3: (1, 3, 3, 3) -> pool: (1, 3, 3, 3)
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 0, 0], dtype=np.int64), "Wc": _rand(rng, 3, 2, 3, 3),
             "bc": _rand(rng, 3) * 0.1, "Wf": _rand(rng, N_OUT, 27), "bf": _rand(rng, N_OUT)}
    model = _model(nodes, [1, 4, 4, 2], inits)
    net, _ = check_against_ort(model)
    assert [type(layer) for layer in net.layers] == [Permute, ZeroPad2d, Conv2d, ReLU, AvgPool2d, Dense]
    results = check_milp_consistent(model, (0.002, 0.05), method=method, tighten=tighten)
    assert results[0][0] == "unsat" and (method not in ("milp", "bab") or results[1] == ("sat", method)), results


# -- Transpose ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("reshape", [True, False])
def test_tf2onnx_nhwc_transposes(reshape: bool) -> None:
    net, ort = check_against_ort(nhwc_model(reshape))
    # the input Transpose stays a Permute; the one before the Gemm folds into its columns
    assert [type(layer) for layer in net.layers] == [Permute, Conv2d, ReLU, Dense]
    assert net.sample_shape == (5, 6, 2) and net.layers[0].rounding_ops == 0
    check_layer_algebra(net.layers[0])
    check_crown_contains(net, ort, np.random.default_rng(4).uniform(0.2, 0.8, net.in_dim), 0.05)


def test_nhwc_verdicts_agree_with_sampling() -> None:
    results = check_milp_consistent(nhwc_model(True), (0.002, 0.008, 0.05), tighten="interval")
    assert ("unsat", "milp") in results and results[-1] == ("sat", "milp"), results


def test_permute_layer_against_numpy() -> None:
    layer = Permute((2, 3, 4), (2, 0, 1))
    x = np.random.default_rng(0).normal(size=(5, 24))
    want = x.reshape(5, 2, 3, 4).transpose(0, 3, 1, 2).reshape(5, -1)
    np.testing.assert_array_equal(layer.forward(torch.from_numpy(x)).numpy(), want)
    assert layer.out_shape == (4, 2, 3)
    check_layer_algebra(layer)
    with pytest.raises(ValueError):
        Permute((2, 3), (0, 0))


def test_permute_not_folded_past_a_relu() -> None:
    """Transpose -> Relu -> Flatten -> Gemm: the Permute stays (a ReLU sits between)."""
    rng = np.random.default_rng(8)
    n = helper.make_node
    nodes = [n("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"), n("Relu", ["t"], ["r"], name="relu"),
             n("Flatten", ["r"], ["f"], name="flat"), n("Gemm", ["f", "W", "b"], ["y"], transB=1, name="fc")]
    model = _model(nodes, [1, 2, 3, 2], {"W": _rand(rng, N_OUT, 12), "b": _rand(rng, N_OUT)})
    net, _ = check_against_ort(model)
    assert [type(layer) for layer in net.layers] == [Permute, ReLU, Dense]


# -- Pad ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pads,opset", [([0, 0, 1, 2, 0, 0, 2, 0], 13), ([0, 0, 0, 1, 0, 0, 1, 1], 13),
                                        ([0, 0, 1, 1, 0, 0, 1, 1], 10)])
def test_pad_then_conv(pads, opset: int) -> None:  # type: ignore[no-untyped-def]
    net, ort = check_against_ort(pad_model(pads, opset))
    (pad,) = [layer for layer in net.layers if isinstance(layer, ZeroPad2d)]
    assert pad.padding == (pads[2], pads[3], pads[6], pads[7]) and pad.rounding_ops == 0
    check_layer_algebra(pad)
    check_crown_contains(net, ort, np.random.default_rng(5).uniform(0.2, 0.8, net.in_dim), 0.05)


def test_pad_verdicts_agree_with_sampling() -> None:
    results = check_milp_consistent(pad_model([0, 0, 1, 2, 0, 0, 2, 0]), (0.002, 0.02, 0.3), tighten="interval")
    assert ("unsat", "milp") in results and results[-1] == ("sat", "milp"), results


# -- refusals -------------------------------------------------------------------------------------------
def _refused(model: onnx.ModelProto, op: str, name: str, text: str) -> None:
    with pytest.raises(UnsupportedOperatorError) as info:
        network_from_onnx(model)
    msg = str(info.value)
    assert op in msg and name in msg and text in msg, msg


def test_unsupported_variants_are_refused() -> None:
    _refused(pool_model((2, 2), (2, 2), (0, 0, 0, 0), 0, ceil_mode=1), "AveragePool", "pool", "ceil_mode")
    _refused(pad_model([0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"), "Pad", "pad", "reflect")
    _refused(pad_model([0, 0, 1, 1, 0, 0, 1, 1], value=1.0), "Pad", "pad", "value")
    _refused(pad_model([0, 1, 1, 1, 0, 0, 1, 1]), "Pad", "pad", "channel")
    _refused(pad_model([0, 0, -1, 0, 0, 0, 0, 0]), "Pad", "pad", "negative")
    # padding not smaller than the kernel (onnxruntime refuses it too)
    n = helper.make_node
    nodes = [n("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], pads=[2, 0, 0, 0], name="bigpad"),
             n("Flatten", ["p"], ["f"]), n("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N_OUT])],
        [numpy_helper.from_array(np.ones((N_OUT, 15), np.float32), "W"),
         numpy_helper.from_array(np.zeros(N_OUT, np.float32), "b")]), opset_imports=[helper.make_opsetid("", 13)])
    _refused(model, "AveragePool", "bigpad", "padding")


# -- the representation's plumbing ----------------------------------------------------------------------
def test_module_moves_and_lirpa_refusal() -> None:
    net = network_from_onnx(nhwc_model(False))
    pooled = network_from_onnx(pool_model((3, 3), (1, 1), (1, 1, 1, 1), 1))
    for n_ in (net, pooled):
        module = n_.to_torch().double()
        x = torch.rand(3, n_.in_dim, dtype=torch.float64)
        torch.testing.assert_close(module(x), n_.forward(x))
        module.float()
    from robustkit.bounds.lirpa_compat import to_sequential

    with pytest.raises(TypeError, match="auto_LiRPA"):
        to_sequential(net)
    with pytest.raises(TypeError, match="auto_LiRPA"):
        to_sequential(pooled)


# -- torch.onnx.export ------------------------------------------------------------------------------
def test_torch_exported_pool_and_pad() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.ZeroPad2d((1, 0, 2, 1)), torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False), torch.nn.ReLU(),
        torch.nn.AvgPool2d((2, 3), stride=(2, 1)), torch.nn.Flatten(), torch.nn.Linear(3 * 3 * 4, N_OUT)).eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.zeros(1, 2, 5, 6), buf, opset_version=13, dynamo=False)
    except (ImportError, ModuleNotFoundError) as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.onnx.export needs a package that is missing: {exc}")
    proto = onnx.load_model_from_string(buf.getvalue())
    ops = {node.op_type for node in proto.graph.node}
    assert {"Pad", "AveragePool"} <= ops
    net, _ = check_against_ort(proto)
    kinds = [type(layer) for layer in net.layers]
    assert kinds.count(ZeroPad2d) == 1 and kinds.count(AvgPool2d) == 2
    x = torch.rand(4, 2, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(net.forward(x.double()), model(x).double(), rtol=1e-5, atol=1e-5)
