"""The network representation: layers against independent references, interval bounds, and the
ONNX loader against onnxruntime (hand-built models, the VNN-COMP nets, bad inputs)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from robustkit.bounds import interval_bounds
from robustkit.errors import ModelFormatError, UnsupportedOperatorError
from robustkit.network import Conv2d, Dense, Elementwise, Network, ReLU, load_onnx, network_from_onnx
from robustkit.network.layers import LinearLayer

RNG_SEED = 1234


# -- references --------------------------------------------------------------------------------
def conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: tuple[int, int],
                   pads: tuple[int, int, int, int]) -> np.ndarray:
    """Direct-loop 2-D cross-correlation of one (C, H, W) sample; pads = (top, left, bottom, right)."""
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    c_out, _, kh, kw = w.shape
    ho = (xp.shape[1] - kh) // stride[0] + 1
    wo = (xp.shape[2] - kw) // stride[1] + 1
    y = np.zeros((c_out, ho, wo))
    for co in range(c_out):
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, i * stride[0]: i * stride[0] + kh, j * stride[1]: j * stride[1] + kw]
                y[co, i, j] = float(np.sum(patch * w[co])) + b[co]
    return y


def ort_run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for one input tensor, float64, flattened."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: x.astype(np.float32)})[0], dtype=np.float64).reshape(-1)


def net_run(net: Network, x: np.ndarray) -> np.ndarray:
    """The representation's output for one float32 input, computed in float64."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(1, -1).astype(np.float64))
    return net.forward(t).reshape(-1).numpy()


CONV_CASES = [
    # (c_in, h, w, c_out, kh, kw, stride, pads (t, l, b, r))
    (2, 7, 6, 3, 3, 3, (2, 2), (1, 0, 2, 1)),
    (1, 8, 8, 2, 3, 2, (2, 1), (0, 1, 1, 0)),
    (3, 5, 5, 2, 2, 2, (1, 1), (1, 1, 1, 1)),
    (2, 6, 9, 4, 4, 3, (2, 2), (0, 0, 0, 0)),
    (1, 9, 7, 1, 3, 3, (3, 2), (2, 2, 0, 1)),
]


def make_conv(case: tuple, rng: np.random.Generator) -> Conv2d:
    c_in, h, w, c_out, kh, kw, stride, pads = case
    weight = torch.from_numpy(rng.normal(size=(c_out, c_in, kh, kw)).astype(np.float32))
    bias = torch.from_numpy(rng.normal(size=c_out).astype(np.float32))
    return Conv2d(weight, bias, (c_in, h, w), stride=stride, padding=pads)


# -- layers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_forward_matrix_backward(case: tuple) -> None:
    rng = np.random.default_rng(RNG_SEED)
    conv = make_conv(case, rng)
    c_in, h, w = conv.in_shape
    x = rng.normal(size=(3, conv.in_dim))
    y = conv.forward(torch.from_numpy(x)).numpy()
    ref = np.stack([conv_reference(xi.reshape(c_in, h, w), conv.weight.double().numpy(),
                                   conv.bias.double().numpy(), conv.stride, conv.padding).reshape(-1) for xi in x])
    assert y.shape == ref.shape == (3, conv.out_dim)
    assert int(np.prod(conv.out_shape)) == conv.out_dim
    np.testing.assert_allclose(y, ref, atol=1e-9)
    # the matrix form
    mat = conv.matrix()
    assert mat.shape == (conv.out_dim, conv.in_dim)
    np.testing.assert_allclose(x @ mat.T.toarray() + conv.bias_vector(), ref, atol=1e-9)
    np.testing.assert_allclose(conv.bias_tensor(torch.float64).numpy(), conv.bias_vector())
    # backward = a @ W and abs_backward = a @ |W|
    a = rng.normal(size=(2, 3, conv.out_dim))
    back = conv.backward(torch.from_numpy(a)).numpy()
    assert back.shape == (2, 3, conv.in_dim)
    np.testing.assert_allclose(back, a @ mat.toarray(), atol=1e-9)
    # the autograd path (conv_transpose2d, not conv2d's input gradient) and its gradient
    at = torch.from_numpy(a).requires_grad_(True)
    tracked = conv.backward(at)
    np.testing.assert_allclose(tracked.detach().numpy(), back, atol=1e-9)
    g = rng.normal(size=tracked.shape)
    (grad,) = torch.autograd.grad(tracked, at, torch.from_numpy(g))
    np.testing.assert_allclose(grad.numpy(), g @ mat.toarray().T, atol=1e-9)
    ap = np.abs(a)
    np.testing.assert_allclose(conv.abs_backward(torch.from_numpy(ap)).numpy(), ap @ np.abs(mat.toarray()), atol=1e-9)
    np.testing.assert_allclose(conv.abs_forward(torch.from_numpy(x)).numpy(), x @ np.abs(mat.toarray()).T, atol=1e-9)


def test_conv_float32_input_uses_float32() -> None:
    conv = make_conv(CONV_CASES[0], np.random.default_rng(0))
    x = torch.rand(2, conv.in_dim)
    assert conv.forward(x).dtype == torch.float32
    assert conv.forward(x.double()).dtype == torch.float64


@pytest.mark.parametrize("kind", ["dense", "elementwise"])
def test_linear_layers_matrix_and_backward(kind: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    layer: LinearLayer
    if kind == "dense":
        layer = Dense(torch.from_numpy(rng.normal(size=(5, 7))), torch.from_numpy(rng.normal(size=5)))
    else:
        layer = Elementwise(torch.from_numpy(rng.normal(size=7)), torch.from_numpy(rng.normal(size=7)))
    x = rng.normal(size=(4, layer.in_dim))
    mat = layer.matrix().toarray()
    ref = x @ mat.T + layer.bias_vector()
    if kind == "dense":
        np.testing.assert_allclose(ref, x @ layer.weight.numpy().T + layer.bias.numpy(), atol=1e-12)
    else:
        np.testing.assert_allclose(ref, x * layer.scale.numpy() + layer.shift.numpy(), atol=1e-12)
    np.testing.assert_allclose(layer.forward(torch.from_numpy(x)).numpy(), ref, atol=1e-12)
    a = rng.normal(size=(3, layer.out_dim))
    np.testing.assert_allclose(layer.backward(torch.from_numpy(a)).numpy(), a @ mat, atol=1e-12)
    lo, hi = layer.interval(torch.from_numpy(x - 0.1), torch.from_numpy(x + 0.1))
    # exact for one affine layer: the extreme is attained at a corner
    np.testing.assert_allclose(hi.numpy() - lo.numpy(), np.broadcast_to(0.2 * np.abs(mat).sum(1), hi.shape), atol=1e-12)


def test_dense_rejects_inconsistent_shapes() -> None:
    with pytest.raises(ValueError):
        Dense(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(ValueError):
        Network((Dense(torch.zeros(3, 4), torch.zeros(3)), ReLU(4)), (4,), (1, 4))


def small_conv_net(rng: np.random.Generator) -> Network:
    """Elementwise -> Conv(asymmetric pads, stride 2) -> ReLU -> Dense -> ReLU -> Dense on a (1, 3, 3) input."""
    conv = Conv2d(torch.from_numpy(rng.normal(size=(3, 1, 2, 2)).astype(np.float32)),
                  torch.from_numpy(rng.normal(size=3).astype(np.float32) * 0.3), (1, 3, 3),
                  stride=(2, 2), padding=(1, 0, 0, 1))
    scale = torch.from_numpy(rng.uniform(0.5, 2.0, size=9))
    shift = torch.from_numpy(rng.normal(size=9) * 0.2)
    d1 = Dense(torch.from_numpy(rng.normal(size=(6, conv.out_dim))), torch.from_numpy(rng.normal(size=6) * 0.3))
    d2 = Dense(torch.from_numpy(rng.normal(size=(3, 6))), torch.from_numpy(rng.normal(size=3)))
    layers = (Elementwise(scale, shift), conv, ReLU(conv.out_dim), d1, ReLU(6), d2)
    return Network(layers, (1, 3, 3), (1, 1, 3, 3))


def test_interval_bounds_contain_samples_and_corners() -> None:
    rng = np.random.default_rng(RNG_SEED)
    net = small_conv_net(rng)
    center = rng.uniform(0.2, 0.8, size=net.in_dim)
    lo, hi = center - 0.15, center + 0.15
    nb = interval_bounds(net, torch.from_numpy(lo[None]), torch.from_numpy(hi[None]))
    corners = np.array(list(itertools.product(*zip(lo, hi))))  # all 2^9 corners
    samples = rng.uniform(lo, hi, size=(10_000, net.in_dim))
    points = torch.from_numpy(np.concatenate([corners, samples]))
    outs = net.forward_all(points)
    assert len(outs) == len(net.layers) == len(nb.lower)
    for i, h in enumerate(outs):
        assert bool((h >= nb.lower[i]).all()), f"layer {i}: a sample lies below the interval bound"
        assert bool((h <= nb.upper[i]).all()), f"layer {i}: a sample lies above the interval bound"
    # tightness: the first layer is elementwise, so its interval bound is attained at corners (up to widening)
    first = outs[0].numpy()
    np.testing.assert_allclose(first.max(0), nb.upper[0].numpy()[0], atol=1e-5)
    np.testing.assert_allclose(first.min(0), nb.lower[0].numpy()[0], atol=1e-5)
    # and the ReLU's pre-activation bounds are those of the layer before it
    pl, pu = nb.pre_activation(net, 2)
    assert torch.equal(pl, nb.lower[1]) and torch.equal(pu, nb.upper[1])


def test_interval_bounds_of_a_point_are_tight_and_reject_empty_boxes() -> None:
    net = small_conv_net(np.random.default_rng(3))
    x = torch.rand(1, net.in_dim, dtype=torch.float64)
    nb = interval_bounds(net, x, x)
    y = net.forward(x)
    lo, hi = nb.output()
    assert bool((lo <= y).all() and (y <= hi).all())
    assert float((hi - lo).max()) < 1e-3  # only the float error model's band, amplified by the weights
    exact = interval_bounds(net, x, x, safe=False)
    for lo_i, hi_i, h in zip(exact.lower, exact.upper, net.forward_all(x)):
        np.testing.assert_allclose(lo_i.numpy(), h.numpy(), atol=1e-12)
        np.testing.assert_allclose(hi_i.numpy(), h.numpy(), atol=1e-12)
    with pytest.raises(ValueError):
        interval_bounds(net, x + 0.1, x)


# -- ONNX loader: hand-built models ------------------------------------------------------------------
def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.normal(size=shape) * scale).astype(np.float32)


def loader_cases(kit) -> dict[str, tuple[onnx.ModelProto, tuple[int, ...]]]:  # type: ignore[no-untyped-def]
    """name -> (model, shape of one input fed to onnxruntime)."""
    rng = np.random.default_rng(7)
    mk = kit.make_model
    n = helper.make_node
    cases: dict[str, tuple[onnx.ModelProto, tuple[int, ...]]] = {}

    w, b = _f32(rng, 4, 3), _f32(rng, 3)  # (k, n) layout
    cases["gemm_plain"] = (mk([n("Gemm", ["x", "W", "b"], ["y"], name="g")], [1, 4], [1, 3], {"W": w, "b": b}), (1, 4))
    cases["gemm_transB_alpha_beta"] = (mk([n("Gemm", ["x", "W", "b"], ["y"], transB=1, alpha=0.5, beta=2.0, name="g")],
                                          [1, 4], [1, 3], {"W": w.T.copy(), "b": b}), (1, 4))
    cases["gemm_transA"] = (mk([n("Gemm", ["x", "W", "b"], ["y"], transA=1, alpha=-1.5, name="g")], [4, 1], [1, 3],
                               {"W": w, "b": b}), (4, 1))
    cases["gemm_bias_row"] = (mk([n("Gemm", ["x", "W", "b"], ["y"], beta=0.25, name="g")], [1, 4], [1, 3],
                                 {"W": w, "b": b.reshape(1, 3)}), (1, 4))
    cases["gemm_no_bias"] = (mk([n("Gemm", ["x", "W"], ["y"], name="g")], [1, 4], [1, 3], {"W": w}), (1, 4))
    wa = _f32(rng, 3, 4)
    cases["gemm_weight_first"] = (mk([n("Gemm", ["W", "x", "c"], ["y"], alpha=2.0, beta=0.5, name="g")], [4, 1], [3, 1],
                                     {"W": wa, "c": _f32(rng, 3, 1)}), (4, 1))
    cases["gemm_weight_first_transB"] = (mk([n("Gemm", ["W", "x", "c"], ["y"], transB=1, transA=1, name="g")], [1, 4],
                                            [3, 1], {"W": wa.T.copy(), "c": _f32(rng, 3, 1)}), (1, 4))

    w1, b1, w2, b2 = _f32(rng, 5, 6), _f32(rng, 6), _f32(rng, 6, 2), _f32(rng, 2)
    cases["matmul_add"] = (mk([n("MatMul", ["x", "W1"], ["m1"], name="mm1"), n("Add", ["m1", "b1"], ["z1"], name="add1"),
                               n("Relu", ["z1"], ["a1"], name="r1"), n("MatMul", ["a1", "W2"], ["m2"], name="mm2"),
                               n("Add", ["b2", "m2"], ["y"], name="add2")],
                              [1, 5], [1, 2], {"W1": w1, "b1": b1, "W2": w2, "b2": b2}), (1, 5))
    cases["matmul_weight_first_1d"] = (mk([n("MatMul", ["W1", "x"], ["m1"], name="mm1"), n("Add", ["m1", "b1"], ["z1"]),
                                           n("Relu", ["z1"], ["a1"]), n("MatMul", ["W2", "a1"], ["y"], name="mm2")],
                                          [5], [2], {"W1": w1.T.copy(), "b1": b1, "W2": w2.T.copy()}), (5,))

    mean, std = rng.uniform(0.1, 0.5, size=(1, 4)).astype(np.float32), rng.uniform(0.2, 2, size=(1, 4)).astype(np.float32)
    cases["sub_div_gemm"] = (mk([n("Sub", ["x", "mean"], ["s"], name="sub"), n("Div", ["s", "std"], ["d"], name="div"),
                                 n("Gemm", ["d", "W", "b"], ["h"], name="g"), n("Relu", ["h"], ["y"], name="r")],
                                [1, 4], [1, 3], {"mean": mean, "std": std, "W": w, "b": b}), (1, 4))

    cw, cb = _f32(rng, 3, 2, 3, 3), _f32(rng, 3)
    cmean = rng.uniform(0.2, 0.6, size=(1, 2, 1, 1)).astype(np.float32)
    cstd = rng.uniform(0.2, 0.5, size=(1, 2, 1, 1)).astype(np.float32)
    # conv: (1, 2, 7, 6) -> pads (t, l, b, r) = (1, 0, 2, 1), stride 2 -> (1, 3, 4, 3)
    fw, fb = _f32(rng, 36, 4), _f32(rng, 4)
    cases["sub_div_conv"] = (mk([n("Sub", ["x", "mean"], ["s"], name="sub"), n("Div", ["s", "std"], ["d"], name="div"),
                                 n("Conv", ["d", "cw", "cb"], ["c"], pads=[1, 0, 2, 1], strides=[2, 2],
                                   kernel_shape=[3, 3], name="conv"),
                                 n("Relu", ["c"], ["r"], name="relu"), n("Flatten", ["r"], ["f"], axis=1, name="flat"),
                                 n("Gemm", ["f", "fw", "fb"], ["y"], name="fc")],
                                [1, 2, 7, 6], [1, 4], {"mean": cmean, "std": cstd, "cw": cw, "cb": cb, "fw": fw, "fb": fb}),
                             (1, 2, 7, 6))
    gamma, beta = rng.uniform(0.5, 1.5, 3).astype(np.float32), _f32(rng, 3)
    rmean, rvar = _f32(rng, 3), rng.uniform(0.5, 2, 3).astype(np.float32)
    cases["conv_batchnorm_reshape"] = (
        mk([n("Conv", ["x", "cw"], ["c"], pads=[0, 1, 1, 0], strides=[1, 2], name="conv"),
            n("BatchNormalization", ["c", "g", "be", "rm", "rv"], ["bn"], epsilon=1e-3, name="bn"),
            n("Relu", ["bn"], ["r"], name="relu"),
            n("Reshape", ["r", "shape"], ["f"], name="reshape"),
            n("Gemm", ["f", "fw2", "fb"], ["y"], transB=1, name="fc")],
           [1, 2, 7, 6], [1, 4],
           {"cw": cw, "g": gamma, "be": beta, "rm": rmean, "rv": rvar, "shape": np.array([0, -1], dtype=np.int64),
            "fw2": _f32(rng, 4, 3 * 6 * 3), "fb": fb}),
        (1, 2, 7, 6))
    cases["identity_dropout_constant_weights"] = (
        mk([n("Constant", [], ["Wc"], value=onnx.numpy_helper.from_array(w, name="Wc_value"), name="const_w"),
            n("Constant", [], ["bc"], value=onnx.numpy_helper.from_array(b, name="bc_value"), name="const_b"),
            n("Identity", ["x"], ["i"], name="id"), n("Dropout", ["i"], ["dr"], name="dropout"),
            n("Gemm", ["dr", "Wc", "bc"], ["h"], name="g"), n("Relu", ["h"], ["y"], name="relu")],
           [1, 4], [1, 3]),
        (1, 4))
    cases["mul_add_elementwise_then_gemm"] = (
        mk([n("Mul", ["x", "sc"], ["m"], name="mul"), n("Add", ["m", "sh"], ["a"], name="add"),
            n("Gemm", ["a", "W", "b"], ["y"], name="g")],
           [1, 4], [1, 3], {"sc": _f32(rng, 4), "sh": _f32(rng, 1, 4), "W": w, "b": b}),
        (1, 4))
    cases["symbolic_batch_flatten_reshape"] = (
        mk([n("Reshape", ["x", "shape"], ["r"], name="reshape"), n("Flatten", ["r"], ["f"], name="flat"),
            n("Gemm", ["f", "W", "b"], ["y"], name="g")],
           ["N", 2, 2], ["N", 3], {"shape": np.array([-1, 1, 4], dtype=np.int64), "W": w, "b": b}),
        (1, 2, 2))
    cases["squeeze_unsqueeze_transpose"] = (
        mk([n("Unsqueeze", ["x", "ax2"], ["u"], name="unsq"),  # (1, 4) -> (1, 4, 1)
            n("Transpose", ["u"], ["t"], perm=[0, 2, 1], name="tr"),  # -> (1, 1, 4): same element order
            n("Squeeze", ["t", "ax1"], ["s"], name="sq"),  # -> (1, 4)
            n("Gemm", ["s", "W", "b"], ["y"], name="g")],
           [1, 4], [1, 3], {"ax2": np.array([2], dtype=np.int64), "ax1": np.array([1], dtype=np.int64), "W": w, "b": b}),
        (1, 4))
    cases["conv_auto_pad_valid"] = (
        mk([n("Conv", ["x", "cw", "cb"], ["c"], auto_pad="VALID", strides=[2, 1], name="conv"),
            n("Relu", ["c"], ["r"], name="relu"), n("Flatten", ["r"], ["y"], name="flat")],
           [1, 2, 7, 6], [1, 3 * 3 * 4], {"cw": cw, "cb": cb}),
        (1, 2, 7, 6))
    return cases


CASE_NAMES = [
    "gemm_plain", "gemm_transB_alpha_beta", "gemm_transA", "gemm_bias_row", "gemm_no_bias", "gemm_weight_first",
    "gemm_weight_first_transB", "matmul_add", "matmul_weight_first_1d", "sub_div_gemm", "sub_div_conv",
    "conv_batchnorm_reshape", "identity_dropout_constant_weights", "mul_add_elementwise_then_gemm",
    "symbolic_batch_flatten_reshape", "squeeze_unsqueeze_transpose", "conv_auto_pad_valid",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_loader_matches_onnxruntime(name: str, onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    model, shape = loader_cases(onnx_kit)[name]
    net = load_onnx(save_onnx(model, f"{name}.onnx"))
    assert net.in_dim == int(np.prod(shape))
    rng = np.random.default_rng(11)
    for _ in range(5):
        x = rng.uniform(-1, 1, size=shape).astype(np.float32)
        ref = ort_run(model, x)
        got = net_run(net, x)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
    # the float32 torch module agrees too
    x = torch.from_numpy(rng.uniform(-1, 1, size=(3, *net.sample_shape)).astype(np.float32))
    y32 = net.to_torch()(x).detach().numpy()
    for xi, yi in zip(x.numpy(), y32):
        np.testing.assert_allclose(yi, ort_run(model, xi.reshape(shape)), atol=1e-4, rtol=1e-4)


def test_normalization_is_its_own_layer(onnx_kit) -> None:  # type: ignore[no-untyped-def]
    # Sub and Div merge into one map; it is not folded into the Gemm (its float model would hide
    # the rounding and range of the normalized values onnxruntime computes)
    cases = loader_cases(onnx_kit)
    gemm_net = network_from_onnx(cases["sub_div_gemm"][0])
    assert [type(layer) for layer in gemm_net.layers] == [Elementwise, Dense, ReLU]
    conv_net = network_from_onnx(cases["sub_div_conv"][0])
    assert [type(layer) for layer in conv_net.layers] == [Elementwise, Conv2d, ReLU, Dense]
    conv = conv_net.layers[1]
    assert isinstance(conv, Conv2d)
    assert conv.padding == (1, 0, 2, 1) and conv.stride == (2, 2) and conv.out_shape == (3, 4, 3)
    bn_net = network_from_onnx(cases["conv_batchnorm_reshape"][0])
    assert [type(layer) for layer in bn_net.layers] == [Conv2d, Elementwise, ReLU, Dense]


def test_loader_metadata_and_shapes(onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    w = [(np.eye(3, 4, dtype=np.float32), np.zeros(3, np.float32))]
    net = load_onnx(save_onnx(onnx_kit.mlp_model(w, input_shape=[1, 1, 2, 2], metadata={"robustkit.dataset": "mnist"})))
    assert net.sample_shape == (1, 2, 2) and net.onnx_input_shape == (1, 1, 2, 2)
    assert net.in_dim == 4 and net.out_dim == 3
    assert net.metadata == {"robustkit.dataset": "mnist"}


# -- ONNX loader: the VNN-COMP nets ------------------------------------------------------------------
def vnncomp_models(vnncomp_dir: Path) -> list[Path]:
    found = sorted((vnncomp_dir / "mnist_fc_2022" / "onnx").glob("*.onnx"))
    found += sorted((vnncomp_dir / "oval21_2022" / "onnx").glob("*.onnx"))
    found += sorted((vnncomp_dir / "test_2021").glob("*.onnx"))
    return found


def test_vnncomp_nets_match_onnxruntime(vnncomp_dir: Path) -> None:
    models = vnncomp_models(vnncomp_dir)
    if not models:
        pytest.skip(f"no ONNX files under {vnncomp_dir}")
    assert len(models) >= 3
    rng = np.random.default_rng(5)
    for path in models:
        net = load_onnx(path)
        assert net.num_neurons > 0, path.name
        for _ in range(3):
            x = rng.uniform(0, 1, size=net.onnx_input_shape).astype(np.float32)
            ref = ort_run(path, x)
            got = net_run(net, x)
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5, err_msg=path.name)


# -- ONNX loader: bad input --------------------------------------------------------------------------
def test_unsupported_activation_is_refused_naming_op_and_node(onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    w, b = np.ones((3, 4), np.float32), np.zeros(3, np.float32)
    model = onnx_kit.make_model([helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1, name="fc0"),
                                 helper.make_node("Softplus", ["h"], ["y"], name="squash_7")],
                                [1, 4], [1, 3], {"W": w, "b": b})
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save_onnx(model))
    msg = str(info.value)
    assert "Softplus" in msg and "squash_7" in msg
    assert info.value.op_type == "Softplus" and info.value.node_name == "squash_7"


def test_nan_weights_are_refused(onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    w = np.ones((3, 4), np.float32)
    w[1, 2] = np.nan
    model = onnx_kit.mlp_model([(w, np.zeros(3, np.float32))])
    with pytest.raises(ModelFormatError, match="NaN|infinite"):
        load_onnx(save_onnx(model))
    b = np.zeros(3, np.float32)
    b[0] = np.inf
    with pytest.raises(ModelFormatError):
        load_onnx(save_onnx(onnx_kit.mlp_model([(np.ones((3, 4), np.float32), b)]), "inf.onnx"))


def test_bad_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a protobuf, just some text\n" * 20)
    with pytest.raises(ModelFormatError):
        load_onnx(text)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelFormatError):
        load_onnx(garbage)
    with pytest.raises(ModelFormatError, match="not found"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelFormatError, match="directory"):
        load_onnx(tmp_path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError):
        load_onnx(empty)


def test_reordering_transpose_is_honoured(onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    """NCHW -> NHWC changes the flat element order: it must be applied, not silently ignored
    (here folded into the Gemm's columns; see tests/test_linear_ops.py)."""
    n = helper.make_node
    w = np.arange(24, dtype=np.float32).reshape(3, 8)
    model = onnx_kit.make_model(
        [n("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"), n("Flatten", ["t"], ["f"], name="flat"),
         n("Gemm", ["f", "W", "b"], ["y"], transB=1, name="fc")],
        [1, 2, 2, 2], [1, 3], {"W": w, "b": np.zeros(3, np.float32)})
    net = load_onnx(save_onnx(model))
    x = np.arange(8, dtype=np.float64)
    want = w.astype(np.float64) @ x.reshape(2, 2, 2).transpose(1, 2, 0).reshape(-1)
    np.testing.assert_allclose(net.forward(torch.from_numpy(x)[None])[0].numpy(), want)
    assert not np.allclose(want, w.astype(np.float64) @ x)


def test_two_branch_graph_loads_but_a_product_of_branches_is_refused(onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    """A residual Add of two branches is lowered (tests/test_graph_lowering.py); a Mul of two
    activations is still refused with its node name."""
    n = helper.make_node
    w = np.ones((4, 4), np.float32)
    b = np.zeros(4, np.float32)
    nodes = [n("Gemm", ["x", "W", "b"], ["h1"], name="fc1"), n("Relu", ["h1"], ["a1"], name="relu1"),
             n("Gemm", ["a1", "W", "b"], ["h2"], name="fc2"), n("Relu", ["h2"], ["a2"], name="relu2")]
    net = load_onnx(save_onnx(onnx_kit.make_model(
        nodes + [n("Add", ["a1", "a2"], ["y"], name="residual_add")], [1, 4], [1, 4], {"W": w, "b": b})))
    x = np.array([1.0, -2.0, 3.0, 0.5])
    a1 = np.maximum(w.astype(np.float64) @ x, 0)
    np.testing.assert_allclose(net.forward(torch.from_numpy(x)[None])[0].numpy(), a1 + np.maximum(w @ a1, 0))
    with pytest.raises(UnsupportedOperatorError) as info:
        load_onnx(save_onnx(onnx_kit.make_model(
            nodes + [n("Mul", ["a1", "a2"], ["y"], name="branch_product")], [1, 4], [1, 4], {"W": w, "b": b})))
    msg = str(info.value)
    assert "branch_product" in msg and "Mul" in msg
