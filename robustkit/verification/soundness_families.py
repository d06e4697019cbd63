"""Soundness instances for the arithmetic onnxruntime really does (issue 37's families).

Each builds an ONNX model whose float behaviour differs from the exact function it writes down,
and a property that the exact function satisfies but the model as onnxruntime runs it violates
(or, for the strict families, a property whose only "violations" are on the boundary of a strict
comparison). The violating points are found by construction and confirmed in onnxruntime:

* ``folded_add_*``: a constant ``Add`` after ``Gemm``/``MatMul`` that the loader folds into the bias;
  ``1e8 + 4.75`` rounds to ``1e8 + 8`` before ``-1e8`` is added;
* ``float16_*``: models computing in float16 (input, weights, or a ``Cast`` inside a float32 net);
* ``subnormal_*``: values scaled into float32's subnormal range and back, where each operation
  rounds to a fixed absolute step (``2**-149``), not a relative one; ``subnormal_corner`` hides the
  violation in a corner of volume ~1e-13 where the attack's gradient is zero;
* ``overflow_*``: an intermediate beyond float32's range gives ``inf``, and ``5 - relu(5 - 1e-38 inf)``
  gives 5 where the exact value is below 4;
* ``strict_*``: strict VNN-LIB comparisons whose non-strict closure is violated but the property
  as written is not (``(> Y_0 0)`` on ``relu`` over ``[-1, 0]``, a tie of two outputs, an input
  bounded strictly), and one where the strict violation is real;
* ``linear_only``: a net without ReLUs whose first bounds do not decide (branch and bound once crashed);
* ``matmul_column``: an input of shape (1, 1) fed to ``MatMul(W, x)`` (once refused as a batch of 1).

:func:`refusals` lists models and properties that must be refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from robustkit.spec import InputBox, LinearConstraints, Specification
from robustkit.vnnlib.parser import parse_vnnlib_text

_NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}


@dataclass
class Built:
    """A model and a property (the soundness suite turns it into an instance)."""

    name: str
    model: bytes
    spec: Specification
    witnesses: list[np.ndarray]
    note: str


def graph_model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], n_in: int, n_out: int,
                elem: int = TensorProto.FLOAT, in_shape: list[int] | None = None,
                out_elem: int | None = None) -> bytes:
    """An ONNX model from nodes reading ``input`` and writing ``output``; ``inits`` are cast to the
    element type of ``elem`` unless they are integer arrays (shapes)."""
    tensors = []
    for name, value in inits.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(_NP[elem])
        tensors.append(numpy_helper.from_array(arr, name))
    graph = helper.make_graph(
        nodes, "soundness",
        [helper.make_tensor_value_info("input", elem, in_shape or [1, n_in])],
        [helper.make_tensor_value_info("output", elem if out_elem is None else out_elem, [1, n_out])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _gemm(x: str, w: str, b: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Gemm", [x, w, b], [out], transB=1)


def _single(lo: list[float], hi: list[float], C: list[list[float]], d: list[float]) -> Specification:
    return Specification.single(InputBox(np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)),
                                LinearConstraints(np.array(C, dtype=np.float64), np.array(d, dtype=np.float64)))


def _ort(model: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(inp.type, np.float32)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]

    def run(x: np.ndarray) -> np.ndarray:
        feed = np.asarray(x, dtype=np.float64).astype(dtype).reshape(shape)
        return np.asarray(session.run(None, {inp.name: feed})[0], dtype=np.float64).reshape(-1)

    return run


def _violators(model: bytes, spec: Specification, points: np.ndarray, dtype: type = np.float32,
               keep: int = 3) -> list[np.ndarray]:
    """The first ``keep`` of ``points`` (rounded to ``dtype``) that violate ``spec`` in onnxruntime."""
    run = _ort(model)
    found = []
    for p in points:
        x = np.asarray(p, dtype=np.float64).astype(dtype).astype(np.float64)
        if spec.is_violated_by(x, run(x)):
            found.append(x)
            if len(found) >= keep:
                break
    return found


def folded_add() -> list[Built]:
    """``y = x + 1e8 - 1e8`` written as Gemm (bias 1e8) + Add(-1e8), as MatMul + Add(1e8) + Add(-1e8),
    and as MatMul + Add(1e8) + Sub(1e8): exactly ``x`` in [4.5, 5], 8 in float32 at 4.75; the
    property "y < 6" (violation ``y >= 6``)."""
    one = np.array([[1.0]])
    variants = {
        "folded_add_gemm": ([_gemm("input", "W", "B", "z"), helper.make_node("Add", ["z", "C"], ["output"])],
                            {"W": one, "B": np.array([1e8]), "C": np.array([-1e8])}),
        "folded_add_matmul": ([helper.make_node("MatMul", ["input", "W"], ["z"]),
                               helper.make_node("Add", ["z", "B"], ["z2"]), helper.make_node("Add", ["z2", "C"], ["output"])],
                              {"W": one, "B": np.array([1e8]), "C": np.array([-1e8])}),
        "folded_sub_matmul": ([helper.make_node("MatMul", ["input", "W"], ["z"]),
                               helper.make_node("Add", ["z", "B"], ["z2"]), helper.make_node("Sub", ["z2", "C"], ["output"])],
                              {"W": one, "B": np.array([1e8]), "C": np.array([1e8])}),
    }
    out = []
    for name, (nodes, inits) in variants.items():
        model = graph_model(nodes, inits, 1, 1)
        spec = _single([4.5], [5.0], [[-1.0]], [-6.0])
        pts = np.linspace(4.5, 5.0, 201)[:, None]
        out.append(Built(name, model, spec, _violators(model, spec, pts), "1e8 + 4.75 rounds to 1e8 + 8 first"))
    return out


def float16() -> list[Built]:
    """float16 models: ``y = x + 0.0004`` (1 + 0.0004 rounds to 1), the cancellation
    ``(1000 x + 1) - 1000 x`` of two float16 outputs (exactly 1; 0 or 2 above x = 2.048), and a
    float32 model that casts to float16 inside (which onnxruntime computes in float32: it removes
    the pair of casts around an operator it runs in float32; the float16 model covers both)."""
    out = []
    m = graph_model([helper.make_node("Add", ["input", "B"], ["output"])], {"B": np.array([0.0004])}, 1, 1,
                    elem=TensorProto.FLOAT16)
    spec = _single([1.0], [1.0], [[1.0]], [1.0])  # violation y <= 1
    out.append(Built("float16_add", m, spec, _violators(m, spec, np.array([[1.0]]), np.float16),
                     "1 + 0.0004 is 1 in float16"))
    # two outputs 1000 x + 1 and 1000 x: 1 apart exactly; rounded to float16 (steps of 2 above 2048)
    # they are 0 or 2 apart. (onnxruntime's CPU kernels compute inside in float32, and drop the casts
    # between consecutive nodes, so a float16 net rounds where it is read: its outputs.)
    m = graph_model([_gemm("input", "W", "B", "output")], {"W": np.array([[1000.0], [1000.0]]),
                                                          "B": np.array([1.0, 0.0])}, 1, 2, elem=TensorProto.FLOAT16)
    spec = _single([2.05], [2.2], [[1.0, -1.0]], [0.5])  # violation y0 - y1 <= 0.5; exactly 1
    pts = np.linspace(2.05, 2.2, 400)[:, None]
    out.append(Built("float16_cancel", m, spec, _violators(m, spec, pts, np.float16), "(1000 x + 1) - 1000 x"))
    nodes = [helper.make_node("Cast", ["input"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Add", ["h", "B"], ["s"]), helper.make_node("Cast", ["s"], ["output"], to=TensorProto.FLOAT)]
    m = _cast_model(nodes)
    spec = _single([1.0], [1.0], [[1.0]], [1.0])
    out.append(Built("float16_cast", m, spec, _violators(m, spec, np.array([[1.0]])),
                     "Cast to float16 inside a float32 net (onnxruntime removes the cast pair and adds in float32)"))
    return out


def _cast_model(nodes: list[onnx.NodeProto]) -> bytes:
    """float32 in and out, float16 inside (``B`` = 0.0004 in float16)."""
    graph = helper.make_graph(
        nodes, "soundness", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(np.array([0.0004], dtype=np.float16), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _chain(weights: list[np.ndarray], biases: list[np.ndarray], n_in: int, n_out: int) -> bytes:
    """Gemm -> Relu -> ... -> Gemm, float32."""
    nodes, inits, cur = [], {}, "input"
    for k, (w, b) in enumerate(zip(weights, biases)):
        inits[f"W{k}"], inits[f"B{k}"] = w, b
        last = k == len(weights) - 1
        nodes.append(_gemm(cur, f"W{k}", f"B{k}", "output" if last else f"z{k}"))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{k}"], [f"a{k}"]))
            cur = f"a{k}"
    return graph_model(nodes, inits, n_in, n_out)


def _subnormal_net(n: int, p: float) -> bytes:
    """``y0 = q(relu(sum x - p))``, ``y1 = relu(sum x - p)``: ``q`` scales by ``2**-140`` (in two
    steps of ``2**-70``) into the subnormal range, where a value is a multiple of ``2**-149``, and
    back: the value rounded to a multiple of ``2**-9``. Exactly ``y0 = y1``."""
    s, big = 2.0**-70, 2.0**70
    ws = [np.ones((1, n)), np.array([[s], [1.0]]), np.diag([s, 1.0]), np.diag([big, 1.0]), np.diag([big, 1.0])]
    bs = [np.array([-p]), np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2)]
    return _chain(ws, bs, n, 2)


def subnormal() -> list[Built]:
    """Subnormal rounding: absolute steps of ``2**-149`` (``2**-9`` once scaled back)."""
    out = []
    m = _subnormal_net(1, 0.0)
    spec = _single([0.1], [0.2], [[-1.0, 1.0]], [-5e-4])  # violation y0 - y1 >= 5e-4
    pts = np.linspace(0.1, 0.2, 300)[:, None]
    out.append(Built("subnormal_scale", m, spec, _violators(m, spec, pts), "x scaled by 2^-140 and back"))
    n, p = 4, 3.9985
    m = _subnormal_net(n, p)
    spec = _single([0.0] * n, [1.0] * n, [[-1.0, 1.0]], [-5e-4])
    # violating: sum x - p in [~0.00098, ~0.00145], next to the corner (1, 1, 1, 1) only
    t = np.linspace(0.0009, 0.0015, 61)
    pts = np.repeat(((p + t) / n)[:, None], n, axis=1)
    out.append(Built("subnormal_corner", m, spec, _violators(m, spec, pts),
                     "violated in a corner of volume ~1e-13; zero gradient there"))
    return out


def overflow() -> list[Built]:
    """``y = 5 - relu(5 - 1e-38 relu(W x))`` with ``W x`` beyond float32's range in part of the box:
    exactly ``y <= 3.9`` (``1e-38 W x <= 3.9``), in float32 ``inf -> 5``; violation ``y >= 4.5``."""
    out = []
    for name, n, w, lo, hi in (("overflow_box", 1, 3e38, 1.2, 1.3), ("overflow_corner", 2, 1.75e38, 0.0, 1.0)):
        ws = [np.full((1, n), w), np.array([[-1e-38]]), np.array([[-1.0]])]
        bs = [np.zeros(1), np.array([5.0]), np.array([5.0])]
        m = _chain(ws, bs, n, 1)
        spec = _single([lo] * n, [hi] * n, [[-1.0]], [-4.5])
        pts = np.array([[hi] * n, [(lo + hi) / 2] * n])
        out.append(Built(name, m, spec, _violators(m, spec, pts), f"{w:g} x overflows to inf"))
    return out


_DECL = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
_DECL2 = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"


def strict() -> list[Built]:
    """Strict comparisons: three properties that hold (only their closures are violated) and one
    that is violated strictly."""
    relu = graph_model([helper.make_node("Relu", ["input"], ["output"])], {}, 1, 1)
    twin = graph_model([_gemm("input", "W", "B", "output")], {"W": np.array([[1.0], [1.0]]), "B": np.zeros(2)}, 1, 2)
    neg = graph_model([_gemm("input", "W", "B", "output")], {"W": np.array([[-1.0]]), "B": np.zeros(1)}, 1, 1)
    cases = [
        ("strict_relu_gt", relu, _DECL + "(assert (>= X_0 -1))(assert (<= X_0 0))(assert (> Y_0 0))", [],
         "relu(x) > 0 on [-1, 0]: never; relu(0) = 0 satisfies only the closure"),
        ("strict_tie", twin, _DECL2 + "(assert (>= X_0 -1))(assert (<= X_0 1))(assert (< Y_0 Y_1))", [],
         "two equal outputs, Y_0 < Y_1: never"),
        ("strict_input", neg, _DECL + "(assert (> X_0 0))(assert (<= X_0 1))(assert (>= Y_0 0))", [],
         "-x >= 0 with x > 0: never; x = 0 is outside"),
        ("strict_relu_sat", relu, _DECL + "(assert (>= X_0 -1))(assert (<= X_0 1))(assert (> Y_0 0))",
         [np.array([0.5])], "relu(x) > 0 on [-1, 1]: any x > 0"),
    ]
    return [Built(name, m, parse_vnnlib_text(text, name), w, note) for name, m, text, w, note in cases]


def structure() -> list[Built]:
    """A net without ReLUs that branch and bound must search, and a (1, 1) input read by MatMul(W, x)."""
    out = []
    m = graph_model([_gemm("input", "W", "B", "output")], {"W": np.array([[1.0, 1.0]]), "B": np.zeros(1)}, 2, 1)
    spec = _single([0.0, 0.0], [1.0, 1.0], [[-1.0]], [-1.99999])  # violation x0 + x1 >= 1.99999
    out.append(Built("linear_only", m, spec, [np.array([1.0, 1.0])], "no ReLU; sat at the corner"))
    nodes = [helper.make_node("MatMul", ["W", "input"], ["c"]), helper.make_node("Reshape", ["c", "S"], ["output"])]
    m = graph_model(nodes, {"W": np.array([[1.0], [2.0], [3.0]]), "S": np.array([1, 3], dtype=np.int64)}, 1, 3,
                    in_shape=[1, 1])
    spec = _single([0.0], [1.0], [[0.0, 0.0, -1.0]], [-2.9])  # violation 3 x >= 2.9
    out.append(Built("matmul_column", m, spec, [np.array([1.0])], "input (1, 1), MatMul(W(3, 1), x)"))
    return out


def all_families() -> list[Built]:
    return folded_add() + float16() + subnormal() + overflow() + strict() + structure()


@dataclass
class Refusal:
    """A model (or property text) robustkit must refuse with a clear error containing ``expect``."""

    name: str
    model: bytes
    vnnlib: str | None
    expect: str


def refusals() -> list[Refusal]:
    sig16 = graph_model([helper.make_node("Sigmoid", ["input"], ["output"])], {}, 1, 1, elem=TensorProto.FLOAT16)
    int8 = graph_model([helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
                        helper.make_node("Relu", ["f"], ["output"])], {}, 1, 1, elem=TensorProto.INT8,
                       out_elem=TensorProto.FLOAT)
    bf16 = graph_model([helper.make_node("Cast", ["input"], ["b"], to=TensorProto.BFLOAT16),
                        helper.make_node("Cast", ["b"], ["output"], to=TensorProto.FLOAT)], {}, 1, 1)
    quant = graph_model([helper.make_node("QuantizeLinear", ["input", "S", "Z"], ["q"]),
                         helper.make_node("DequantizeLinear", ["q", "S", "Z"], ["output"])],
                        {"S": np.array(0.1), "Z": np.array(0, dtype=np.uint8)}, 1, 1)
    relu = graph_model([helper.make_node("Relu", ["input"], ["output"])], {}, 1, 1)
    dropout = graph_model([helper.make_node("Dropout", ["input", "R", "T"], ["output"])],
                          {"R": np.array(0.5), "T": np.array(True)}, 1, 1)
    bn_train = graph_model(
        [helper.make_node("Reshape", ["input", "S4"], ["x4"]),
         helper.make_node("BatchNormalization", ["x4", "G", "B", "M", "V"], ["y4"], training_mode=1),
         helper.make_node("Reshape", ["y4", "S2"], ["output"])],
        {"S4": np.array([1, 1, 1, 1], dtype=np.int64), "S2": np.array([1, 1], dtype=np.int64), "G": np.ones(1),
         "B": np.zeros(1), "M": np.zeros(1), "V": np.ones(1)}, 1, 1)
    return [
        Refusal("float16_sigmoid", sig16, None, "float16"),
        Refusal("int8_input", int8, None, "INT8"),
        Refusal("bfloat16_cast", bf16, None, "BFLOAT16"),
        Refusal("quantized", quant, None, "QuantizeLinear"),
        Refusal("dropout_training", dropout, None, "training_mode"),
        Refusal("batchnorm_training", bn_train, None, "training mode"),
        Refusal("strict_self", relu, _DECL + "(assert (>= X_0 -1))(assert (<= X_0 1))(assert (< Y_0 Y_0))",
                "no possible counterexample"),
    ]
