"""The ONNX loader's shape and image operators (a mixin of its graph reader): Flatten, Reshape,
Squeeze/Unsqueeze, Transpose, AveragePool/GlobalAveragePool, MaxPool (lowered to a ReLU
tournament), Clip (a HardTanh), Slice and Pad. The reader's state (``shape``, ``_push``,
``_fail``, ``_attrs``, ``_split_inputs``) is :class:`robustkit.network.onnx_loader._GraphReader`'s."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx

from robustkit.network.graph_lowering import clip_layers, maxpool_layers, slice_layer
from robustkit.network.linear_ops import AvgPool2d, Permute, ZeroPad2d


class ShapeOps:
    """Handlers that change a tensor's layout or pool/pad/slice an image."""

    shape: tuple[int, ...]
    _push: Callable[..., None]
    _fail: Callable[..., Any]
    _attrs: Callable[..., dict]
    _split_inputs: Callable[..., Any]

    def _flatten(self, node: onnx.NodeProto) -> None:
        axis = int(self._attrs(node).get("axis", 1))
        axis = axis + len(self.shape) if axis < 0 else axis
        self.shape = (int(np.prod(self.shape[:axis])), int(np.prod(self.shape[axis:])))

    def _set_shape(self, node: onnx.NodeProto, new: tuple[int, ...]) -> None:
        if int(np.prod(new)) != int(np.prod(self.shape)):
            raise self._fail(node, f"cannot reshape {self.shape} to {new}")
        self.shape = new

    def _reshape(self, node: onnx.NodeProto) -> None:
        _, vals = self._split_inputs(node)
        target = vals[1]
        if target is None:
            raise self._fail(node, "the target shape must be a constant")
        allowzero = int(self._attrs(node).get("allowzero", 0))
        dims = [int(d) for d in target.reshape(-1)]
        dims = [self.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(dims)]
        if dims.count(-1) > 1:
            raise self._fail(node, "more than one -1 in the target shape")
        if -1 in dims:
            known = int(np.prod([d for d in dims if d != -1]))
            dims[dims.index(-1)] = int(np.prod(self.shape)) // max(known, 1)
        self._set_shape(node, tuple(dims))

    def _axes(self, node: onnx.NodeProto, vals: list[np.ndarray | None], rank: int) -> list[int] | None:
        axes = self._attrs(node).get("axes")
        if axes is None and len(vals) > 1 and vals[1] is not None:
            axes = [int(a) for a in vals[1].reshape(-1)]
        if axes is None:
            return None
        return sorted(a + rank if a < 0 else a for a in axes)

    def _squeeze(self, node: onnx.NodeProto) -> None:
        _, vals = self._split_inputs(node)
        axes = self._axes(node, vals, len(self.shape))
        if axes is None:
            new = tuple(d for d in self.shape if d != 1)
        else:
            if any(self.shape[a] != 1 for a in axes):
                raise self._fail(node, f"cannot squeeze non-1 axes {axes} of {self.shape}")
            new = tuple(d for i, d in enumerate(self.shape) if i not in axes)
        self._set_shape(node, new)

    def _unsqueeze(self, node: onnx.NodeProto) -> None:
        _, vals = self._split_inputs(node)
        raw = self._attrs(node).get("axes")
        if raw is None and len(vals) > 1 and vals[1] is not None:
            raw = [int(a) for a in vals[1].reshape(-1)]
        if raw is None:
            raise self._fail(node, "axes missing")
        rank = len(self.shape) + len(raw)
        new = list(self.shape)
        for a in sorted(int(a) + rank if int(a) < 0 else int(a) for a in raw):
            new.insert(a, 1)
        self._set_shape(node, tuple(new))

    def _transpose(self, node: onnx.NodeProto) -> None:
        perm = [int(p) for p in self._attrs(node).get("perm", list(reversed(range(len(self.shape)))))]
        if sorted(perm) != list(range(len(self.shape))):
            raise self._fail(node, f"perm {perm} is not a permutation of the axes of {self.shape}")
        moved = [p for p in perm if self.shape[p] != 1]
        if moved != sorted(moved):  # reorders elements: a permutation layer over the whole shape
            self._push(Permute(tuple(int(d) for d in self.shape), tuple(perm)))
        self.shape = tuple(self.shape[p] for p in perm)

    def _image_shape(self, node: onnx.NodeProto) -> tuple[int, int, int]:
        if len(self.shape) != 4 or self.shape[0] != 1:
            raise self._fail(node, f"needs an activation of shape (1, C, H, W), got {self.shape}")
        return (int(self.shape[1]), int(self.shape[2]), int(self.shape[3]))

    def _push_image(self, node: onnx.NodeProto, make: Callable[[], AvgPool2d | ZeroPad2d]) -> None:
        try:
            layer = make()
        except ValueError as exc:
            raise self._fail(node, str(exc)) from exc
        self._push(layer)
        self.shape = (1,) + layer.out_shape

    def _pool_attrs(self, node: onnx.NodeProto) -> tuple[list[int], list[int], list[int], dict]:
        """kernel, strides, pads (t, l, b, r) of a 2-D pooling node, refusing what is not supported."""
        pos, _ = self._split_inputs(node)
        if pos != 0:
            raise self._fail(node, "the activation must be the input")
        attrs = self._attrs(node)
        kernel = [int(k) for k in attrs.get("kernel_shape", [])]
        if len(kernel) != 2:
            raise self._fail(node, f"only 2-D pooling is supported (kernel_shape {kernel})")
        if int(attrs.get("ceil_mode", 0)) != 0:
            raise self._fail(node, "ceil_mode 1 is not supported")
        if any(int(d) != 1 for d in attrs.get("dilations", [1, 1])):
            raise self._fail(node, "dilated pooling is not supported")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad not in ("NOTSET", "VALID"):
            raise self._fail(node, f"auto_pad {auto_pad} is not supported; give explicit pads")
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])] if auto_pad == "NOTSET" else [0, 0, 0, 0]
        strides = [int(s) for s in attrs.get("strides", [1, 1])]
        return kernel, strides, pads, attrs

    def _avgpool(self, node: onnx.NodeProto) -> None:
        kernel, strides, pads, attrs = self._pool_attrs(node)
        count_include_pad = int(attrs.get("count_include_pad", 0))
        if count_include_pad not in (0, 1):
            raise self._fail(node, f"count_include_pad {count_include_pad} is not 0 or 1")
        in_shape = self._image_shape(node)
        self._push_image(node, lambda: AvgPool2d(
            in_shape, (kernel[0], kernel[1]), (strides[0], strides[1]), (pads[0], pads[1], pads[2], pads[3]),
            bool(count_include_pad)))

    def _maxpool(self, node: onnx.NodeProto) -> None:
        """MaxPool as a tournament of ``max(a, b) = relu(a - b) + b`` (``graph_lowering.maxpool_layers``)."""
        kernel, strides, pads, attrs = self._pool_attrs(node)
        if int(attrs.get("storage_order", 0)) != 0 or len([o for o in node.output if o]) > 1:
            raise self._fail(node, "the Indices output is not supported")
        in_shape = self._image_shape(node)
        try:
            layers, out = maxpool_layers(in_shape, (kernel[0], kernel[1]), (strides[0], strides[1]),
                                         (pads[0], pads[1], pads[2], pads[3]))
        except ValueError as exc:
            raise self._fail(node, str(exc)) from exc
        for layer in layers:
            self._push(layer)
        self.shape = (1,) + out

    def _clip(self, node: onnx.NodeProto) -> None:
        """Clip with constant bounds: ``lo + relu(x - lo) - relu(x - hi)`` (exact)."""
        pos, vals = self._split_inputs(node)
        if pos != 0:
            raise self._fail(node, "the activation must be the first input")
        attrs = self._attrs(node)
        bounds: list[float | None] = [attrs.get("min"), attrs.get("max")]  # opset < 11
        for i in (1, 2):
            if len(node.input) > i and node.input[i]:
                v = vals[i]
                if v is None or v.size != 1:
                    raise self._fail(node, "min and max must be scalar constants")
                bounds[i - 1] = float(v.reshape(-1)[0])
        lo, hi = (None if b is None or not np.isfinite(b) else float(b) for b in bounds)
        try:
            for layer in clip_layers(self._flat, lo, hi):
                self._push(layer)
        except ValueError as exc:
            raise self._fail(node, str(exc)) from exc

    def _slice(self, node: onnx.NodeProto) -> None:
        pos, vals = self._split_inputs(node)
        if pos != 0:
            raise self._fail(node, "the activation must be the data input")
        attrs = self._attrs(node)
        rank = len(self.shape)
        if len(node.input) > 1:  # opset >= 10: starts, ends, axes, steps are inputs
            if any(node.input[i] and vals[i] is None for i in range(1, len(node.input))):
                raise self._fail(node, "starts, ends, axes and steps must be constants")
            got = [[int(v) for v in vals[i].reshape(-1)] if len(node.input) > i and node.input[i] else None  # type: ignore[union-attr]
                   for i in range(1, 5)]
        else:
            got = [attrs.get("starts"), attrs.get("ends"), attrs.get("axes"), None]
        starts, ends, axes, steps = got
        if starts is None or ends is None:
            raise self._fail(node, "starts and ends missing")
        axes = list(range(len(starts))) if axes is None else [int(a) + rank if int(a) < 0 else int(a) for a in axes]
        steps = [1] * len(starts) if steps is None else steps
        try:
            layer, self.shape = slice_layer(tuple(self.shape), self.batch_dims, starts, ends, axes, steps)
        except ValueError as exc:
            raise self._fail(node, str(exc)) from exc
        self._push(layer)

    def _global_avgpool(self, node: onnx.NodeProto) -> None:
        c, h, w = self._image_shape(node)
        self._push_image(node, lambda: AvgPool2d((c, h, w), (h, w), name="GlobalAveragePool"))

    def _pad(self, node: onnx.NodeProto) -> None:
        pos, vals = self._split_inputs(node)
        if pos != 0:
            raise self._fail(node, "the activation must be the first input")
        attrs = self._attrs(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "constant":
            raise self._fail(node, f"mode {mode!r} is not supported (only constant)")
        rank = len(self.shape)
        if len(node.input) > 1 and node.input[1]:
            if vals[1] is None:
                raise self._fail(node, "the pads must be a constant")
            raw = [int(p) for p in vals[1].reshape(-1)]
        elif "pads" in attrs:  # opset < 11
            raw = [int(p) for p in attrs["pads"]]
        else:
            raise self._fail(node, "pads missing")
        value = attrs.get("value", 0.0)
        if len(node.input) > 2 and node.input[2]:
            if vals[2] is None:
                raise self._fail(node, "the pad value must be a constant")
            value = vals[2].reshape(-1)[0] if vals[2].size else 0.0
        if float(value) != 0.0:
            raise self._fail(node, f"pad value {float(value)} is not supported (only 0)")
        axes = list(range(rank))
        if len(node.input) > 3 and node.input[3]:
            if vals[3] is None:
                raise self._fail(node, "the axes must be a constant")
            axes = [int(a) + rank if int(a) < 0 else int(a) for a in vals[3].reshape(-1)]
        if len(raw) != 2 * len(axes):
            raise self._fail(node, f"{len(raw)} pads for {len(axes)} axes")
        begin, end = [0] * rank, [0] * rank
        for k, a in enumerate(axes):
            begin[a], end[a] = raw[k], raw[k + len(axes)]
        in_shape = self._image_shape(node)
        if begin[0] or end[0] or begin[1] or end[1]:
            raise self._fail(node, f"pads {raw} touch the batch or channel axis (only H and W may be padded)")
        if min(begin + end) < 0:
            raise self._fail(node, f"negative pads {raw} (cropping) are not supported")
        self._push_image(node, lambda: ZeroPad2d(in_shape, (begin[2], begin[3], end[2], end[3])))
