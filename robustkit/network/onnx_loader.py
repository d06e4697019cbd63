"""Read an ONNX model into a :class:`~robustkit.network.network.Network`.

One dynamic graph input; every other node input is a dynamic tensor or a constant (initializer
or Constant node). A node with one dynamic input is handled by the operator handlers below; the
graph itself (residual Add/Sub of two tensors, Concat, a tensor read by several nodes) is
lowered to a chain by :mod:`robustkit.network.graph_lowering`, and a chain loads as plain layers.
Supported operators: ``SUPPORTED_OPS`` (README "Supported ONNX"). Small constant subgraphs of
shape operators (as torch writes for the pads of ``nn.ZeroPad2d``) are evaluated at load time.
Anything else is refused with its op type and node name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from robustkit.errors import ModelFormatError, UnsupportedOperatorError
from robustkit.network.floatfmt import FLOAT32, FORMATS, FloatFormat, contains
from robustkit.network.graph_ops import Blocks
from robustkit.network.graph_lowering import GraphLowering
from robustkit.network.conv import Conv2d
from robustkit.network.layers import Dense, Elementwise, Layer, LinearLayer
from robustkit.network.relu import LeakyReLU, ReLU
from robustkit.network.network import Network, simplify
from robustkit.network.onnx_shape_ops import ShapeOps
from robustkit.network.smooth import SCurve

SUPPORTED_OPS = (
    "Gemm MatMul Add Sub Mul Div Conv Relu BatchNormalization Flatten Reshape Squeeze Unsqueeze "
    "Transpose Identity Dropout Constant AveragePool GlobalAveragePool Pad MaxPool Clip Slice Concat Sigmoid Tanh "
    "Cast LeakyRelu"
).split()

# operators evaluated at load time when all their inputs are constants
FOLDABLE_OPS = frozenset(
    "Cast Concat ConstantOfShape Gather Identity Reshape Shape Slice Squeeze Transpose Unsqueeze".split())


def load_onnx(path: str | Path) -> Network:
    """Load an ONNX file; raise ``ModelFormatError`` / ``UnsupportedOperatorError`` on bad input."""
    return network_from_onnx(read_model(path), source=str(path))


def read_model(path: str | Path, data: bytes | None = None) -> onnx.ModelProto:
    """The ``ModelProto`` of ``path`` (or of ``data``, read from it), with clear errors for a missing
    file, a directory, or bytes that are not an ONNX model."""
    path = Path(path)
    if data is None:
        if not path.exists():
            raise ModelFormatError(f"model file not found: {path}")
        if path.is_dir():
            raise ModelFormatError(f"{path} is a directory, not an ONNX file")
        data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelFormatError(f"{path} is not a readable ONNX model: {exc}") from exc
    if len(model.graph.node) == 0 and len(model.graph.input) == 0:
        raise ModelFormatError(f"{path} is not an ONNX model (empty graph)")
    return model


def network_from_onnx(model: onnx.ModelProto, source: str = "<model>") -> Network:
    """Convert a loaded ``ModelProto``."""
    return _GraphReader(model, source).read()


class _GraphReader(ShapeOps):
    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.model = model
        self.source = source
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {}
        for init in self.graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        self.layers: list[Layer] = []
        self.dyn: str = ""
        self.shape: tuple[int, ...] = ()  # current activation shape, including a batch dim if any
        self.formats: dict[str, FloatFormat] = {}  # the float format of each dynamic tensor
        self.fmt: FloatFormat = FLOAT32  # the format of the node being read (its output's)

    # -- helpers -----------------------------------------------------------------------------
    def _fail(self, node: onnx.NodeProto, detail: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(node.op_type, node.name or node.output[0], detail)

    def _attrs(self, node: onnx.NodeProto) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _split_inputs(self, node: onnx.NodeProto) -> tuple[int, list[np.ndarray | None]]:
        """Index of the dynamic input among the node's inputs, and the constant values."""
        dyn_pos = -1
        values: list[np.ndarray | None] = []
        for k, name in enumerate(node.input):
            if name == self.dyn:
                if dyn_pos >= 0:
                    raise self._fail(node, "uses the network input twice (not a chain)")
                dyn_pos = k
                values.append(None)
            elif name == "":
                values.append(None)
            elif name in self.consts:
                values.append(self.consts[name])
            else:
                raise self._fail(node, f"input {name!r} is neither a constant nor the running activation "
                                       "(only single-path networks are supported)")
        return dyn_pos, values

    @property
    def _flat(self) -> int:
        """The elements of the activation: all of them (the batch dimension, when the model has one,
        is 1; a model may also use that axis as a data axis, e.g. ``MatMul(W, x)`` on an (1, 1) input)."""
        return int(np.prod(self.shape))

    def _push(self, layer: Layer) -> None:
        self.layers.append(layer)

    def _element_format(self, elem_type: int, what: str) -> FloatFormat:
        """The format of an ONNX element type, or a clear refusal naming the tensor and the type."""
        if elem_type in FORMATS:
            return FORMATS[elem_type]
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() \
            else str(elem_type)
        known = ", ".join(f.name for f in FORMATS.values())
        raise ModelFormatError(f"{self.source}: {what} has element type {name}; robustkit's float error model "
                               f"covers {known} arithmetic only (integer, quantized, bfloat16 and float8 "
                               "tensors are not supported)")

    def _node_format(self, node: onnx.NodeProto, dyn: list[str]) -> FloatFormat:
        """The format ``node`` computes in (its dynamic inputs', which ONNX requires to agree), and
        the format of its outputs (a Cast's target)."""
        fmts = {self.formats[n].name: self.formats[n] for n in dyn if n in self.formats}
        if len(fmts) > 1:
            raise self._fail(node, f"combines tensors of types {sorted(fmts)}")
        fmt = next(iter(fmts.values())) if fmts else self.fmt
        out = fmt
        if node.op_type == "Cast":
            out = self._element_format(int(self._attrs(node).get("to", 0)), f"the output of Cast node "
                                                                            f"{node.name or node.output[0]!r}")
        for name in node.output:
            if name:
                self.formats[name] = out
        return out

    def _with_format(self, start: int, fmt: FloatFormat) -> None:
        """Give the layers read from one node (``self.layers[start:]``) the format they compute in."""
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            if dataclasses.is_dataclass(layer) and any(f.name == "fmt" for f in dataclasses.fields(layer)):
                self.layers[i] = dataclasses.replace(layer, fmt=fmt)
            elif isinstance(layer, SCurve) and fmt.name not in ("float32", "float64"):
                raise ModelFormatError(f"{self.source}: layer {layer.describe()} computes in {fmt.name}; the "
                                       "Sigmoid/Tanh error bound is measured for float32 and float64 only")

    def _broadcast_flat(self, node: onnx.NodeProto, c: np.ndarray) -> np.ndarray:
        """A constant broadcast against the current activation (incl. batch dim), flattened."""
        try:
            full = np.broadcast_to(c.astype(np.float64), self.shape)
        except ValueError as exc:
            raise self._fail(node, f"constant of shape {c.shape} does not broadcast to activation {self.shape}") from exc
        if self.batch_dims and full.shape[0] != 1:
            raise self._fail(node, "batch dimension larger than 1")
        return np.ascontiguousarray(full.reshape(-1))

    # -- main loop ---------------------------------------------------------------------------
    def read(self) -> Network:
        graph = self.graph
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ModelFormatError(f"{self.source}: expected exactly one (non-constant) graph input, found "
                                   f"{[i.name for i in inputs]}")
        if len(graph.output) != 1:
            raise ModelFormatError(f"{self.source}: expected exactly one graph output, found {len(graph.output)}")
        inp = inputs[0]
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1)
        if not dims:
            raise ModelFormatError(f"{self.source}: input {inp.name!r} has no shape")
        # A leading dimension that is symbolic or 1 in a tensor of rank >= 2 is the batch dimension.
        self.batch_dims = 1 if len(dims) >= 2 and dims[0] in (-1, 1) else 0
        if any(d < 0 for d in dims[self.batch_dims:]):
            raise ModelFormatError(f"{self.source}: input {inp.name!r} has symbolic non-batch dims {dims}")
        if self.batch_dims:
            dims[0] = 1
        self.shape = tuple(dims)
        sample_shape = self.shape[self.batch_dims:]
        self.dyn = inp.name
        self.fmt = self._element_format(inp.type.tensor_type.elem_type, f"input {inp.name!r}")
        self.input_format = self.fmt
        self.formats[inp.name] = self.fmt

        handlers: dict[str, Callable[[onnx.NodeProto], None]] = {
            "Gemm": self._gemm, "MatMul": self._matmul, "Add": self._arith, "Sub": self._arith,
            "Mul": self._arith, "Div": self._arith, "Conv": self._conv, "Relu": self._relu,
            "Sigmoid": self._scurve, "Tanh": self._scurve,
            "BatchNormalization": self._batchnorm, "Flatten": self._flatten, "Reshape": self._reshape,
            "Squeeze": self._squeeze, "Unsqueeze": self._unsqueeze, "Transpose": self._transpose,
            "Identity": self._noop, "Dropout": self._dropout, "AveragePool": self._avgpool,
            "GlobalAveragePool": self._global_avgpool, "Pad": self._pad,
        }
        handlers.update({"MaxPool": self._maxpool, "Clip": self._clip, "Slice": self._slice, "Cast": self._cast})
        handlers["LeakyRelu"] = lambda n: self._push_op(n, LeakyReLU, slope=float(self._attrs(n).get("alpha", 0.01)))
        lowering = GraphLowering(self, graph.node, [graph.output[0].name], inp.name, self.shape)
        for k, node in enumerate(graph.node):
            if node.op_type == "Constant":
                self._constant(node)
                continue
            dyn = [name for name in node.input if name and lowering.find(name) is not None]
            start = len(self.layers)
            if dyn:
                self.fmt = self._node_format(node, dyn)
            if not dyn:
                if node.op_type in FOLDABLE_OPS and node.domain in ("", "ai.onnx") \
                        and all(n == "" or n in self.consts for n in node.input):
                    self._fold(node)
                    continue
                if node.op_type in handlers or node.op_type in ("Shape", "Gather", "Concat", "Cast"):
                    # constant subgraph (e.g. shape computations): evaluate only if trivially constant
                    raise self._fail(node, "computes from constants only; constant folding is not supported "
                                           "(simplify the model, e.g. with onnxsim)")
                raise self._fail(node, "not connected to the network input")
            if node.op_type == "Concat":
                lowering.concat(node, k, int(self._attrs(node).get("axis", 0)),
                                [n if lowering.find(n) is not None else self.consts.get(n) for n in node.input])
            elif node.op_type in ("Add", "Sub") and len(dyn) == 2:
                lowering.add(node, k, dyn, node.op_type == "Sub")
            elif len(dyn) > 1:
                raise self._fail(node, f"combines {len(dyn)} activations {dyn}; only Add, Sub and Concat may "
                                       "(anything else is not piecewise linear)")
            elif node.op_type not in handlers:
                raise self._fail(node, f"supported operators are: {', '.join(SUPPORTED_OPS)}")
            else:
                lowering.unary(node, k, dyn[0], handlers[node.op_type])
            self._with_format(start, self.fmt)
        if not lowering.finish(graph.output[0].name):
            raise ModelFormatError(f"{self.source}: graph output {graph.output[0].name!r} is not computed "
                                   "from the network input")
        layers = simplify(self.layers)
        for i, layer in enumerate(layers):
            _check_finite(layer, i, self.source)
        _check_fusable(layers, self.source)
        metadata = {p.key: p.value for p in self.model.metadata_props}
        try:
            return Network(
                layers=tuple(layers),
                sample_shape=tuple(int(d) for d in sample_shape),
                onnx_input_shape=tuple(int(d) for d in ((1,) + tuple(sample_shape) if self.batch_dims else sample_shape)),
                input_name=inp.name,
                output_name=graph.output[0].name,
                metadata=metadata,
                input_format=self.input_format.name,
            )
        except ValueError as exc:
            raise ModelFormatError(f"{self.source}: inconsistent layer sizes: {exc}") from exc

    # -- operators ---------------------------------------------------------------------------
    def _constant(self, node: onnx.NodeProto) -> None:
        attrs = self._attrs(node)
        if "value" not in attrs:
            raise self._fail(node, "only tensor-valued Constant nodes are supported")
        self.consts[node.output[0]] = numpy_helper.to_array(attrs["value"])

    def _fold(self, node: onnx.NodeProto) -> None:
        """Evaluate a shape operator on constants (onnx's reference implementation)."""
        from onnx.reference import ReferenceEvaluator

        opsets = {op.domain or "": int(op.version) for op in self.model.opset_import}
        feeds = {n: self.consts[n] for n in node.input if n}
        try:
            outs = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
        except Exception as exc:
            raise self._fail(node, f"cannot evaluate on its constant inputs: {exc}") from exc
        for name, value in zip(node.output, outs):
            if name:
                self.consts[name] = np.asarray(value)

    def _noop(self, node: onnx.NodeProto) -> None:
        pass

    def _dropout(self, node: onnx.NodeProto) -> None:
        """Dropout in inference: the identity, unless its training_mode input asks for dropping."""
        _, vals = self._split_inputs(node)
        if len(node.input) > 2 and node.input[2]:
            mode = vals[2]
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                raise self._fail(node, "training_mode is (or may be) true: onnxruntime would drop values at random")
        if int(self._attrs(node).get("is_test", 1)) == 0:  # opset < 7
            raise self._fail(node, "is_test 0: onnxruntime would drop values at random")

    def _cast(self, node: onnx.NodeProto) -> None:
        """A Cast between float formats: exact when the target holds every value of the source,
        else one rounding into the target (:mod:`robustkit.network.floatfmt`)."""
        source = self.formats[self.dyn]
        target = self.fmt  # _node_format set it to the Cast's target
        if not contains(target, source):
            n = self._flat
            self._push(Elementwise(torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), 1,
                                   fmt=target))

    def _relu(self, node: onnx.NodeProto) -> None:
        self._push(ReLU(self._flat))

    def _scurve(self, node: onnx.NodeProto) -> None:  # bound methods only (robustkit.network.smooth)
        self._push(SCurve(self._flat, kind=node.op_type.lower()))

    def _push_op(self, node: onnx.NodeProto, op: type, **params: object) -> None:
        """An elementwise operator with these parameters over the activation; a value it refuses
        (``ValueError``) becomes the node's error."""
        try:
            self._push(op(self._flat, **params))
        except ValueError as exc:
            raise self._fail(node, str(exc)) from exc

    def _dense(self, node: onnx.NodeProto, w: np.ndarray, b: np.ndarray | None, out_shape: tuple[int, ...]) -> None:
        """Append ``y = w @ x + b`` (w: (out, in) over the flat activation)."""
        if w.shape[1] != self._flat:
            raise self._fail(node, f"weight has {w.shape[1]} inputs, activation has {self._flat} elements")
        bias = np.zeros(w.shape[0]) if b is None else b
        self._push(Dense(torch.from_numpy(np.array(w, dtype=np.float64)), torch.from_numpy(np.array(bias, dtype=np.float64))))
        self.shape = out_shape

    def _gemm(self, node: onnx.NodeProto) -> None:
        pos, vals = self._split_inputs(node)
        attrs = self._attrs(node)
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
        if len(self.shape) != 2:
            raise self._fail(node, f"Gemm needs a 2-D activation, got shape {self.shape}")
        c = vals[2] if len(vals) > 2 else None
        if pos == 0:
            rows, k = (self.shape[1], self.shape[0]) if trans_a else self.shape
            if rows != 1:
                raise self._fail(node, "only a single row (batch 1) on the activation side is supported")
            bmat = vals[1]
            assert bmat is not None
            bmat = bmat.T if trans_b else bmat  # (k, n)
            w = bmat.T.astype(np.float64)
            n = w.shape[0]
            bias = np.broadcast_to(c.astype(np.float64), (1, n)).reshape(-1) if c is not None else None
            self._gemm_layers(node, w, bias, alpha, beta, (1, n))
        elif pos == 1:
            amat = vals[0]
            assert amat is not None
            amat = amat.T if trans_a else amat  # (m, k)
            k, cols = (self.shape[1], self.shape[0]) if trans_b else self.shape
            if cols != 1:
                raise self._fail(node, "only a single column on the activation side is supported")
            w = amat.astype(np.float64)
            m = w.shape[0]
            bias = np.broadcast_to(c.astype(np.float64), (m, 1)).reshape(-1) if c is not None else None
            self._gemm_layers(node, w, bias, alpha, beta, (m, 1))
        else:
            raise self._fail(node, "the bias input C must be a constant")

    def _gemm_layers(self, node: onnx.NodeProto, w: np.ndarray, c: np.ndarray | None, alpha: float, beta: float,
                     out_shape: tuple[int, ...]) -> None:
        """``alpha (w x) + beta c``: one ``Dense`` when ``alpha = beta = 1`` (or no ``c``, ``alpha = 1``);
        else the product, then the scaling as its own ``Elementwise`` (onnxruntime computes ``w x``
        first: its values and their rounding are those of the unscaled product)."""
        if alpha == 1.0 and (c is None or beta == 1.0):
            self._dense(node, w, c, out_shape)
            return
        self._dense(node, w, None, out_shape)
        n = w.shape[0]
        shift = np.zeros(n) if c is None else beta * c
        # alpha * p and beta * c round, then their sum: 3 roundings of |alpha p| + |beta c|
        self._push(Elementwise(torch.full((n,), float(alpha), dtype=torch.float64),
                               torch.from_numpy(np.array(shift, dtype=np.float64)), 3))

    def _matmul(self, node: onnx.NodeProto) -> None:
        pos, vals = self._split_inputs(node)
        if pos == 0:
            wmat = vals[1]
            assert wmat is not None
            if wmat.ndim != 2 or self.shape[-1] != wmat.shape[0] or int(np.prod(self.shape[:-1])) != 1:
                raise self._fail(node, f"activation {self.shape} @ weight {wmat.shape} is not a vector-matrix product")
            self._dense(node, wmat.T.astype(np.float64), None, tuple(self.shape[:-1]) + (wmat.shape[1],))
        elif pos == 1:
            wmat = vals[0]
            assert wmat is not None
            if wmat.ndim != 2:
                raise self._fail(node, "weight must be a matrix")
            if len(self.shape) == 1 and self.shape[0] == wmat.shape[1]:
                out = (wmat.shape[0],)
            elif len(self.shape) >= 2 and self.shape[-2] == wmat.shape[1] and self.shape[-1] == 1 \
                    and int(np.prod(self.shape[:-2])) == 1:
                out = tuple(self.shape[:-2]) + (wmat.shape[0], 1)
            else:
                raise self._fail(node, f"weight {wmat.shape} @ activation {self.shape} is not a matrix-vector product")
            self._dense(node, wmat.astype(np.float64), None, out)
        else:
            raise self._fail(node, "needs the running activation as one operand")

    def _arith(self, node: onnx.NodeProto) -> None:
        pos, vals = self._split_inputs(node)
        other = vals[1 - pos]
        if other is None or pos < 0:
            raise self._fail(node, "needs one constant operand")
        out_shape = tuple(np.broadcast_shapes(self.shape, other.shape))
        if out_shape != self.shape:
            raise self._fail(node, f"constant of shape {other.shape} would broadcast the activation {self.shape}")
        c = self._broadcast_flat(node, other)
        n = c.shape[0]
        op = node.op_type
        if op == "Add":
            prev = self.layers[-1] if self.layers else None
            if isinstance(prev, Dense) and prev.fmt == self.fmt:
                # MatMul/Gemm + Add -> one affine layer, which keeps the rounding of the intermediate
                # W x + b: one more operation, and the error offset |b| + |c| (not |b + c|, which
                # may cancel: 1e8 + 4.75 rounds to 1e8 + 8 before -1e8 is added)
                offset = prev.error_offset(torch.float64).numpy() + np.abs(c)
                self.layers[-1] = Dense(prev.weight, torch.from_numpy(prev.bias.double().numpy() + c),
                                        extra_ops=prev.extra_ops + 1, offset=torch.from_numpy(offset), fmt=prev.fmt)
                return
            scale, shift = np.ones(n), c
        elif op == "Sub":
            scale, shift = (np.ones(n), -c) if pos == 0 else (-np.ones(n), c)
        elif op == "Mul":
            scale, shift = c, np.zeros(n)
        else:  # Div
            if pos != 0:
                raise self._fail(node, "division by the activation is not piecewise linear")
            if np.any(c == 0):
                raise self._fail(node, "division by zero")
            scale, shift = 1.0 / c, np.zeros(n)
        self._push(Elementwise(torch.from_numpy(scale.astype(np.float64)), torch.from_numpy(shift.astype(np.float64))))

    def _conv(self, node: onnx.NodeProto) -> None:
        pos, vals = self._split_inputs(node)
        if pos != 0:
            raise self._fail(node, "the activation must be the first input")
        attrs = self._attrs(node)
        groups = int(attrs.get("group", 1))
        dilations = tuple(int(d) for d in attrs.get("dilations", [1, 1]))
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise self._fail(node, "auto_pad SAME_* is not supported; give explicit pads")
        w = vals[1]
        assert w is not None
        if w.ndim != 4:
            raise self._fail(node, "only 2-D convolutions are supported")
        if len(self.shape) != 4 or self.shape[0] != 1:
            raise self._fail(node, f"needs an activation of shape (1, C, H, W), got {self.shape}")
        b = vals[2] if len(vals) > 2 and vals[2] is not None else np.zeros(w.shape[0], dtype=w.dtype)
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        strides = tuple(int(s) for s in attrs.get("strides", [1, 1]))
        wdt = np.float64 if w.dtype == np.float64 else np.float32  # float16 weights widen exactly
        try:
            layer = Conv2d(
                weight=torch.from_numpy(np.array(w, dtype=wdt)),
                bias=torch.from_numpy(np.array(b, dtype=wdt)),
                in_shape=tuple(int(d) for d in self.shape[1:]),  # type: ignore[arg-type]
                stride=strides,  # type: ignore[arg-type]
                padding=(pads[0], pads[1], pads[2], pads[3]),
                dilation=(dilations[0], dilations[1]),
                groups=groups,
            )
        except ValueError as exc:
            raise self._fail(node, str(exc)) from exc
        self._push(layer)
        self.shape = (1,) + layer.out_shape

    def _batchnorm(self, node: onnx.NodeProto) -> None:
        pos, vals = self._split_inputs(node)
        if pos != 0 or any(v is None for v in vals[1:5]):
            raise self._fail(node, "scale, bias, mean and variance must be constants")
        attrs = self._attrs(node)
        if int(attrs.get("training_mode", 0)) or len([o for o in node.output if o]) > 1:
            raise self._fail(node, "training mode (batch statistics) is not supported; export the model in eval mode")
        if int(attrs.get("spatial", 1)) != 1:
            raise self._fail(node, "spatial=0 (statistics per element, opset < 9) is not supported")
        eps = float(attrs.get("epsilon", 1e-5))
        gamma, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in vals[1:5])  # type: ignore[arg-type]
        if not np.all(var + eps > 0):
            raise self._fail(node, "variance + epsilon must be positive")
        sd = np.sqrt(var + eps)
        s = gamma / sd
        t = beta - mean * s
        ch = (1, -1) + (1,) * (len(self.shape) - 2)

        def flat(v: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(self._broadcast_flat(node, v.reshape(ch)))

        # onnxruntime computes either (x - mean) / sqrt(var + eps) * gamma + beta, each step rounded,
        # or x * s' + (beta - mean * s') with s' = gamma / sqrt(var + eps) rounded once: 6 roundings
        # of |s| |x| + |s| |mean| + |beta|. The steps' intermediates reach (|x| + |mean|) max(1, 1/sd, |s|)
        # (+ |beta|); an error in x - mean grows by |s| on the way out, one in the quotient by |gamma|.
        reach = np.maximum(np.maximum(1.0, 1.0 / sd), np.abs(s))
        self._push(Elementwise(flat(s), flat(t), 6, flat(np.abs(s) * np.abs(mean) + np.abs(beta)),
                               peak_scale=flat(reach), peak_shift=flat(reach * np.abs(mean) + np.abs(beta)),
                               coef=float(max(1.0, np.max(1.0 / sd), np.max(np.abs(gamma)))),
                               amplify=float(max(1.0, np.max(np.abs(s)), np.max(np.abs(gamma))))))

def _check_finite(layer: Layer, index: int, source: str) -> None:
    if isinstance(layer, Blocks):
        for _, _, part in layer.blocks:
            _check_finite(part, index, source)
    elif isinstance(layer, LinearLayer):
        for name in ("weight", "bias", "scale", "shift"):
            t = getattr(layer, name, None)
            t = t.coalesce().values() if t is not None and t.is_sparse else t
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ModelFormatError(f"{source}: layer {index} ({layer.describe()}) has NaN or infinite {name}")


def _check_fusable(layers: list[Layer], source: str) -> None:
    """onnxruntime may fold an elementwise map (BatchNormalization, a constant Mul or Add) into the
    Conv or Gemm before it, computing the fused weights and bias in the layer's format: those
    constants must stay finite, or the fused model computes with infinities the error model never
    sees."""
    for i in range(1, len(layers)):
        prev, layer = layers[i - 1], layers[i]
        if not (isinstance(layer, Elementwise) and isinstance(prev, LinearLayer)):
            continue
        bias = float(prev.bias_tensor(torch.float64).abs().max()) if prev.out_dim else 0.0
        shift = float(layer.error_offset(torch.float64).abs().max()) if layer.in_dim else 0.0
        fused = 2 * layer.coef_bound * max(prev.coef_bound, bias) + shift
        if fused >= layer.fmt.max:
            raise ModelFormatError(f"{source}: layers {i - 1} ({prev.describe()}) and {i} ({layer.describe()}): "
                                   f"onnxruntime may fuse them, and their fused weights or bias (up to {fused:.3g}) "
                                   f"exceed {layer.fmt.name}'s range")
