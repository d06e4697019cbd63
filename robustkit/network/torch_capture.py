"""A user's ``nn.Module`` read into robustkit's network representation, with its live parameters.

:func:`capture` traces the module with ``torch.fx`` (symbolic tracing: ``forward()`` must not
branch on tensor values), propagates the example input's shape through it, and reads the graph the
way the ONNX loader reads an ONNX graph: every node becomes layers of the operator classes, and the
graph's branches (residual sums, ``torch.cat``, a tensor read twice) are lowered to a chain by the
same :class:`~robustkit.network.graph_lowering.GraphLowering`. The layers hold the module's own
parameter tensors (``Linear``/``Conv2d`` weights as they are; a BatchNorm's scale and shift
computed from its parameters and running statistics), so bound passes through them are
differentiable in the parameters: training regularizers run through the same operator classes as
verification (:class:`Captured`).

Supported: ``nn.Linear``, ``nn.Conv2d`` (groups 1, dilation 1, zero padding), ``nn.BatchNorm1d``/``2d``
(inference semantics: running statistics), ``nn.ReLU``/``F.relu``/``torch.relu``/``.relu()``,
``nn.LeakyReLU``/``F.leaky_relu``, ``nn.Hardtanh``/``nn.ReLU6``/``F.hardtanh``/``torch.clamp`` with
constant bounds, ``nn.Sigmoid``/``nn.Tanh`` (and their functions), ``nn.MaxPool2d``,
``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d(1)``, ``nn.Flatten``/``torch.flatten``/``.view``/
``.reshape``/``.flatten``, ``nn.Identity``, ``nn.Dropout`` (inference: the identity), robustkit's
``Normalize``, sums and differences of two tensors, ``torch.cat``, and a tensor plus, minus, times
or divided by a constant. Anything else is refused with the module's path (or the function) named.
"""

from __future__ import annotations

import contextlib
import io
import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from robustkit.errors import InputError
from robustkit.network.floatfmt import FLOAT32
from robustkit.network.graph_lowering import GraphLowering, maxpool_layers
from robustkit.network.hardtanh import HardTanh
from robustkit.network.conv import Conv2d
from robustkit.network.layers import Dense, Elementwise, Layer
from robustkit.network.linear_ops import AvgPool2d
from robustkit.network.network import Network
from robustkit.network.passes import Activations, forward_with_activations
from robustkit.network.relu import LeakyReLU, ReLU
from robustkit.network.smooth import SCurve


#: What :func:`capture` reads, as error messages list it.
SUPPORTED = ("Linear, Conv2d, BatchNorm1d/2d, ReLU, LeakyReLU, Hardtanh, ReLU6, Sigmoid, Tanh (modules or "
             "functions), MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten/view/reshape, Identity, Dropout, "
             "sums and differences of tensors, torch.cat, a tensor +-*/ a constant")


class CaptureError(InputError):
    """A module robustkit cannot read (names the module path or function and why)."""


@dataclass
class _Node:
    """What GraphLowering reads of a node (the fields of an ONNX NodeProto it uses)."""

    op_type: str
    name: str
    input: list[str]
    output: list[str]
    fx: fx.Node


_RELU_FNS = {F.relu, torch.relu, torch.nn.functional.relu}
_SIGMOID_FNS = {torch.sigmoid, F.sigmoid}
_TANH_FNS = {torch.tanh, F.tanh}
_FLATTEN_FNS = {torch.flatten}
_ARITH = {operator.add: "Add", operator.sub: "Sub", operator.mul: "Mul", operator.truediv: "Div",
          torch.add: "Add", torch.sub: "Sub", torch.mul: "Mul"}


class _Reader:
    """The reader GraphLowering expects (``layers``, ``shape``, ``dyn``, ``batch_dims``, ``_flat``,
    ``fmt``, ``_fail``), filled from one traced module."""

    batch_dims = 1

    def __init__(self, module: nn.Module, gm: fx.GraphModule, shapes: dict[str, tuple[int, ...]]) -> None:
        self.module, self.gm, self.shapes = module, gm, shapes
        self.layers: list[Layer] = []
        self.shape: tuple[int, ...] = ()
        self.dyn = ""
        self.fmt = FLOAT32

    @property
    def _flat(self) -> int:
        return int(np.prod(self.shape))

    def _fail(self, node: _Node, detail: str) -> CaptureError:
        return CaptureError(f"{type(self.module).__name__}: cannot read {_describe(self.gm, node.fx)} at node "
                            f"{node.name!r}: {detail}")

    def _push(self, layer: Layer) -> None:
        self.layers.append(layer)

    def out_shape(self, node: _Node) -> tuple[int, ...]:
        return self.shapes[node.fx.name]


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """The node as a user knows it: the module's path and type, or the function."""
    if node.op == "call_module":
        return f"module {node.target!r} ({type(gm.get_submodule(str(node.target))).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    return f"method .{node.target}()"


def _image(reader: _Reader, node: _Node) -> tuple[int, int, int]:
    if len(reader.shape) != 4:
        raise reader._fail(node, f"needs an activation of shape (1, C, H, W), got {reader.shape}")
    return (reader.shape[1], reader.shape[2], reader.shape[3])


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _linear(reader: _Reader, node: _Node, mod: nn.Linear) -> None:
    if reader._flat != mod.in_features or reader.shape[-1] != mod.in_features:
        raise reader._fail(node, f"input {reader.shape} for a Linear of {mod.in_features} features "
                                 "(flatten the activation first)")
    bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_features, dtype=mod.weight.dtype)
    reader._push(Dense(mod.weight, bias))


def _conv(reader: _Reader, node: _Node, mod: nn.Conv2d) -> None:
    if mod.padding_mode != "zeros":
        raise reader._fail(node, f"padding_mode {mod.padding_mode!r} is not supported (zeros only)")
    c, h, w = _image(reader, node)
    out = reader.out_shape(node)
    if isinstance(mod.padding, str):  # "valid" or "same" (stride 1)
        kh, kw = mod.kernel_size
        dh, dw = _pair(mod.dilation)
        rh, rw = dh * (kh - 1), dw * (kw - 1)  # the total padding "same" needs at stride 1
        pads = (0, 0, 0, 0) if mod.padding == "valid" else (rh // 2, rw // 2, rh - rh // 2, rw - rw // 2)
    else:
        ph, pw = _pair(mod.padding)
        pads = (ph, pw, ph, pw)
    bias = mod.bias if mod.bias is not None else torch.zeros(mod.out_channels, dtype=mod.weight.dtype)
    layer = Conv2d(mod.weight, bias, (c, h, w), _pair(mod.stride), pads, dilation=_pair(mod.dilation),
                   groups=int(mod.groups))
    if (1,) + layer.out_shape != out:
        raise reader._fail(node, f"computed output {layer.out_shape}, traced {out}")
    reader._push(layer)


def _batchnorm(reader: _Reader, node: _Node, mod: nn.modules.batchnorm._BatchNorm) -> None:
    if mod.running_mean is None or mod.running_var is None:
        raise reader._fail(node, "needs running statistics (track_running_stats=True)")
    one = torch.ones_like(mod.running_var)
    gamma = mod.weight if mod.weight is not None else one
    beta = mod.bias if mod.bias is not None else torch.zeros_like(one)
    sd = torch.sqrt(mod.running_var + mod.eps)
    s = gamma / sd
    t = beta - mod.running_mean * s
    per = reader._flat // s.numel()
    if per * s.numel() != reader._flat or len(reader.shape) < 2 or reader.shape[1] != s.numel():
        raise reader._fail(node, f"{s.numel()} channels do not fit the activation {reader.shape}")

    def flat(v: torch.Tensor) -> torch.Tensor:
        return v.repeat_interleave(per)

    with torch.no_grad():
        reach = torch.maximum(torch.maximum(one, 1.0 / sd), s.abs())
        offset = s.abs() * mod.running_mean.abs() + beta.abs()
        coef = float(max(1.0, float((1.0 / sd).max()), float(gamma.abs().max())))
        amp = float(max(1.0, float(s.abs().max()), float(gamma.abs().max())))
    reader._push(Elementwise(flat(s), flat(t), 6, flat(offset).detach(), peak_scale=flat(reach),
                             peak_shift=flat(reach * mod.running_mean.abs() + beta.abs()).detach(), coef=coef,
                             amplify=amp))


def _maxpool(reader: _Reader, node: _Node, kernel: Any, stride: Any, padding: Any, dilation: Any,
             ceil_mode: bool) -> None:
    if ceil_mode or _pair(dilation) != (1, 1):
        raise reader._fail(node, "ceil_mode and dilation are not supported")
    ph, pw = _pair(padding)
    layers, out = maxpool_layers(_image(reader, node), _pair(kernel), _pair(stride if stride else kernel),
                                 (ph, pw, ph, pw))
    for layer in layers:
        reader._push(layer)
    reader.shape = (1,) + out


def _avgpool(reader: _Reader, node: _Node, kernel: Any, stride: Any, padding: Any, ceil_mode: bool,
             count_include_pad: bool) -> None:
    if ceil_mode:
        raise reader._fail(node, "ceil_mode is not supported")
    ph, pw = _pair(padding)
    layer = AvgPool2d(_image(reader, node), _pair(kernel), _pair(stride if stride else kernel), (ph, pw, ph, pw),
                      bool(count_include_pad))
    reader._push(layer)
    reader.shape = (1,) + layer.out_shape


def _elementwise(reader: _Reader, node: _Node, op: str, const: torch.Tensor, const_first: bool) -> None:
    """``x op c`` (or ``c op x``) with a constant ``c`` broadcast over the activation."""
    value = const if const.is_floating_point() else const.to(torch.float32)
    full = torch.broadcast_to(value, reader.shape).reshape(-1)
    n = full.numel()
    one = torch.ones(n, dtype=full.dtype)
    if op == "Add":
        scale, shift = one, full
    elif op == "Sub":
        scale, shift = (-one, full) if const_first else (one, -full)
    elif op == "Mul":
        scale, shift = full, torch.zeros_like(full)
    else:
        if const_first:
            raise reader._fail(node, "division by the activation is not piecewise linear")
        scale, shift = 1.0 / full, torch.zeros_like(full)
    reader._push(Elementwise(scale, shift))


class _Capture:
    """One module traced and read (module docstring)."""

    def __init__(self, module: nn.Module, example: torch.Tensor) -> None:
        try:
            gm = fx.symbolic_trace(module)
        except Exception as exc:  # torch.fx raises several kinds for a forward it cannot trace
            raise CaptureError(f"{type(module).__name__}.forward() cannot be traced by torch.fx ({exc}); "
                               "robustkit reads modules whose forward() does not branch on tensor values") from exc
        from torch.fx.passes.shape_prop import ShapeProp

        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), example.dtype)
        if not example.is_floating_point():
            dtype = dtype if dtype.is_floating_point else torch.float32
        example = example.detach().to(dtype)
        example = example.reshape(1, *example.shape[1:]) if example.dim() > 1 else example
        class _Prop(ShapeProp):  # remembers the node it runs, to name it when the input does not fit
            current: fx.Node | None = None

            def run_node(self, n: fx.Node) -> Any:
                self.current = n
                return super().run_node(n)

        prop = _Prop(gm)
        was_training = module.training
        module.eval()  # shapes only: no BatchNorm statistics updated, no batch-of-one BatchNorm error
        try:
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints its traceback
                prop.propagate(example)
        except Exception as exc:
            root: BaseException = exc
            while root.__cause__ is not None:
                root = root.__cause__
            where = f" at {_describe(gm, prop.current)}" if prop.current is not None else ""
            raise CaptureError(f"{type(module).__name__} fails on an input of shape {tuple(example.shape)}{where}: "
                               f"{root}") from exc
        finally:
            module.train(was_training)
        self.module, self.gm, self.example_shape = module, gm, tuple(example.shape)
        self.shapes = {n.name: tuple(int(d) for d in n.meta["tensor_meta"].shape) for n in gm.graph.nodes
                       if "tensor_meta" in n.meta and hasattr(n.meta["tensor_meta"], "shape")}
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise CaptureError(f"{type(module).__name__}.forward() must take one tensor, takes {len(placeholders)}")
        outputs = [n for n in gm.graph.nodes if n.op == "output"]
        out_arg = outputs[0].args[0]
        if not isinstance(out_arg, fx.Node):
            raise CaptureError(f"{type(module).__name__}.forward() must return one tensor")
        self.input, self.output = placeholders[0], out_arg
        self._check()

    def _check(self) -> None:
        """Refuse an unsupported node before any layer is built (the first one, named)."""
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr") or node.name not in self.shapes:
                continue  # (a node computing no tensor, e.g. x.size(0), only feeds shapes)
            if _handler(self.gm, node) is None:
                raise CaptureError(f"{type(self.module).__name__}: unsupported {_describe(self.gm, node)} at node "
                                   f"{node.name!r}; supported: {SUPPORTED}")

    def network(self) -> Network:
        """The module as a :class:`Network`, built from the parameters' current values."""
        reader = _Reader(self.module, self.gm, self.shapes)
        nodes = [n for n in self.gm.graph.nodes
                 if n.op not in ("placeholder", "output", "get_attr") and n.name in self.shapes]
        pseudo = [_Node(_op_name(self.gm, n), n.name, [a.name for a in n.all_input_nodes], [n.name], n) for n in nodes]
        shape = self.example_shape
        lowering = GraphLowering(reader, pseudo, [self.output.name], self.input.name, shape)
        for k, node in enumerate(pseudo):
            dyn = [name for name in node.input if lowering.find(name) is not None]
            if not dyn:
                raise reader._fail(node, "computes from constants only")
            fn = node.fx
            if node.op_type == "cat":
                dim = fn.kwargs.get("dim", fn.args[1] if len(fn.args) > 1 else 0)
                parts = [a.name for a in fn.args[0]]
                lowering.concat(node, k, int(dim), parts)
            elif node.op_type in ("Add", "Sub") and len(dyn) == 2:
                lowering.add(node, k, dyn, node.op_type == "Sub")
            elif len(dyn) > 1:
                raise reader._fail(node, f"combines {len(dyn)} activations; only sums, differences and cat may")
            else:
                handler = _handler(self.gm, fn)
                assert handler is not None

                def run(_: Any, handler: Callable[..., None] = handler, node: _Node = node) -> None:
                    handler(reader, node)
                    reader.shape = reader.out_shape(node)

                lowering.unary(node, k, dyn[0], run)
        if not lowering.finish(self.output.name):
            raise CaptureError("the module's output does not depend on its input")
        sample = self.example_shape[1:]
        return Network(tuple(reader.layers), tuple(int(d) for d in sample), (1,) + tuple(int(d) for d in sample))


def _op_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_function" and node.target in _ARITH:
        return _ARITH[node.target]
    if node.op == "call_function" and node.target is torch.cat:
        return "cat"
    if node.op == "call_method" and node.target in ("add", "sub", "mul", "div"):
        return {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[str(node.target)]
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__
    return str(getattr(node.target, "__name__", node.target))


def _const(gm: fx.GraphModule, node: fx.Node, value: Any) -> torch.Tensor | None:
    """A constant argument (a number or a buffer/parameter read by get_attr), else None."""
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    if isinstance(value, fx.Node) and value.op == "get_attr":
        obj: Any = gm
        for part in str(value.target).split("."):
            obj = getattr(obj, part)
        return obj.detach() if isinstance(obj, torch.Tensor) else None
    return None


def _handler(gm: fx.GraphModule, node: fx.Node) -> Callable[[_Reader, _Node], None] | None:
    """The reader step of one node, or None where robustkit has none."""
    def act(make: Callable[[int], Layer]) -> Callable[[_Reader, _Node], None]:
        return lambda r, n: r._push(make(r._flat))

    def shape_only(r: _Reader, n: _Node) -> None:
        pass

    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        from robustkit.nets import Normalize

        simple: dict[type, Callable[[_Reader, _Node], None]] = {
            nn.ReLU: act(ReLU), nn.Sigmoid: act(lambda d: SCurve(d, kind="sigmoid")),
            nn.Tanh: act(lambda d: SCurve(d, kind="tanh")), nn.Flatten: shape_only, nn.Identity: shape_only,
            nn.Dropout: shape_only, nn.Unflatten: shape_only,
        }
        if type(mod) in simple:
            return simple[type(mod)]
        if isinstance(mod, nn.Linear):
            return lambda r, n: _linear(r, n, mod)
        if isinstance(mod, nn.Conv2d):
            return lambda r, n: _conv(r, n, mod)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return lambda r, n: _batchnorm(r, n, mod)
        if isinstance(mod, nn.LeakyReLU):
            return act(lambda d: LeakyReLU(d, slope=float(mod.negative_slope)))
        if isinstance(mod, nn.Hardtanh):  # nn.ReLU6 too
            return act(lambda d: HardTanh(d, lo=float(mod.min_val), hi=float(mod.max_val)))
        if isinstance(mod, nn.MaxPool2d):
            return lambda r, n: _maxpool(r, n, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
        if isinstance(mod, nn.AvgPool2d):
            if mod.divisor_override is not None:
                return None
            return lambda r, n: _avgpool(r, n, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                                         mod.count_include_pad)
        if isinstance(mod, nn.AdaptiveAvgPool2d) and _pair(mod.output_size) == (1, 1):
            return lambda r, n: r._push(AvgPool2d(_image(r, n), _image(r, n)[1:], name="GlobalAveragePool"))
        if isinstance(mod, Normalize):
            return lambda r, n: _normalize(r, n, mod)
        return None
    target = node.target
    if node.op == "call_method":
        method = str(target)
        if method in ("view", "reshape", "flatten", "contiguous"):
            return shape_only
        if method == "relu":
            return act(ReLU)
        if method in ("sigmoid", "tanh"):
            return act(lambda d: SCurve(d, kind=method))
        if method in ("add", "sub", "mul", "div"):
            return _arith_handler(gm, node, {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[method])
        return None
    if target in _RELU_FNS:
        return act(ReLU)
    if target in _SIGMOID_FNS:
        return act(lambda d: SCurve(d, kind="sigmoid"))
    if target in _TANH_FNS:
        return act(lambda d: SCurve(d, kind="tanh"))
    if target in _FLATTEN_FNS or target in (torch.reshape,):
        return shape_only
    if target is F.leaky_relu:
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        return act(lambda d: LeakyReLU(d, slope=float(slope)))
    if target in (F.hardtanh, torch.clamp, torch.clip):
        lo = node.kwargs.get("min_val", node.kwargs.get("min", node.args[1] if len(node.args) > 1 else -1.0))
        hi = node.kwargs.get("max_val", node.kwargs.get("max", node.args[2] if len(node.args) > 2 else 1.0))
        if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
            return None
        return act(lambda d: HardTanh(d, lo=float(lo), hi=float(hi)))
    if target is F.relu6:
        return act(lambda d: HardTanh(d, lo=0.0, hi=6.0))
    if target is F.max_pool2d:
        a = list(node.args) + [None] * 6
        kw = node.kwargs
        return lambda r, n: _maxpool(r, n, kw.get("kernel_size", a[1]), kw.get("stride", a[2]),
                                     kw.get("padding", a[3] or 0), kw.get("dilation", a[4] or 1),
                                     bool(kw.get("ceil_mode", a[5] or False)))
    if target is F.avg_pool2d:
        a = list(node.args) + [None] * 6
        kw = node.kwargs
        return lambda r, n: _avgpool(r, n, kw.get("kernel_size", a[1]), kw.get("stride", a[2]),
                                     kw.get("padding", a[3] or 0), bool(kw.get("ceil_mode", a[4] or False)),
                                     bool(kw.get("count_include_pad", True if a[5] is None else a[5])))
    if target in _ARITH:
        return _arith_handler(gm, node, _ARITH[target])
    if target is torch.cat:
        return shape_only  # handled by the lowering
    return None


def _arith_handler(gm: fx.GraphModule, node: fx.Node, op: str) -> Callable[[_Reader, _Node], None] | None:
    """``x op c`` with a constant ``c`` (two tensors: the lowering's ``add``)."""
    args = list(node.args)
    tensors = [a for a in args if isinstance(a, fx.Node) and a.op != "get_attr"]
    if len(tensors) == 2:
        return (lambda r, n: None) if op in ("Add", "Sub") else None
    if len(tensors) != 1 or len(args) != 2:
        return None
    first_const = not (isinstance(args[0], fx.Node) and args[0].op != "get_attr")
    const = _const(gm, node, args[0] if first_const else args[1])
    if const is None:
        return None
    return lambda r, n: _elementwise(r, n, op, const, first_const)


def _normalize(reader: _Reader, node: _Node, mod: nn.Module) -> None:
    per = reader._flat // mod.mean.numel()
    reader._push(Elementwise((1.0 / mod.std).reshape(-1).repeat_interleave(per),
                             (-mod.mean / mod.std).reshape(-1).repeat_interleave(per), 2,
                             (mod.mean.abs() / mod.std).reshape(-1).repeat_interleave(per)))


@dataclass
class Captured:
    """A traced module: :meth:`network` rebuilds the layers from the parameters' current values
    (cheap: no tracing), so a training step sees the step's weights."""

    module: nn.Module
    capture: _Capture

    def network(self) -> Network:
        return self.capture.network()

    @property
    def batchnorm(self) -> bool:
        """Whether the module normalizes batches (its captured layers use the running statistics)."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules())

    def forward_with_activations(self, x: torch.Tensor) -> Activations:
        """One training forward: every operator's input and output through the captured layers;
        the logits the module's own while it trains batch normalization (batch statistics, which
        also update its running averages), the captured layers' otherwise (the same values)."""
        acts = forward_with_activations(self.network(), x)
        if self.module.training and self.batchnorm:
            acts.logits = self.module(x)
        return acts


_CAPTURED: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], Captured]]" = weakref.WeakKeyDictionary()


def captured(module: nn.Module, example: torch.Tensor) -> Captured:
    """:func:`capture`, once per module and input shape (kept while the module lives)."""
    shape = tuple(example.shape[1:])
    per = _CAPTURED.setdefault(module, {})
    if shape not in per:
        per[shape] = capture(module, example[:1])
    return per[shape]


def network_of(model: "nn.Module | Network", example: torch.Tensor) -> Network:
    """``model`` as a :class:`Network` over its live parameters (a Network stays itself)."""
    if isinstance(model, Network):
        return model
    return captured(model, example).network()


def activations(model: "nn.Module | Network", x: torch.Tensor) -> Activations:
    """:func:`~robustkit.network.passes.forward_with_activations` of a Network, or of a module
    through its captured layers (:meth:`Captured.forward_with_activations`)."""
    if isinstance(model, Network):
        return forward_with_activations(model, x)
    return captured(model, x).forward_with_activations(x)


def capture(module: nn.Module, example: torch.Tensor) -> Captured:
    """Read ``module`` (module docstring) for inputs shaped like ``example`` (with its batch
    dimension); :class:`CaptureError` names what is not supported."""
    if not isinstance(module, nn.Module):
        raise CaptureError(f"expected a torch nn.Module, got {type(module).__name__}")
    if not isinstance(example, torch.Tensor):
        raise CaptureError(f"the example input must be a tensor, got {type(example).__name__}")
    cap = _Capture(module, example)
    cap.network()  # every node read once now: errors surface here, not mid-training
    return Captured(module, cap)


__all__ = ["Captured", "CaptureError", "activations", "capture", "captured", "network_of"]
