"""Shared fixtures: tiny networks built in code and written to ONNX with ``onnx.helper``, the
shared data directory (``../shared`` beside the repository; tests skip when it is absent) and
a small MLP trained on the embedded MNIST subset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

# One thread for the whole session: the tests that run a search under a time limit measure what it
# decides, and on a loaded machine two OpenMP threads per process slow torch's small kernels
# 10-30x (their spin-waits compete with the other processes), which turns limits into flaky failures.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

# onnxruntime 1.17+ reads IR version 8 / opset 13 everywhere; newer onnx writes IR 10+ by default.
IR_VERSION = 8
OPSET = 13


# -- the shared directory ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository root; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data directory {SHARED_DIR} is absent (clone the repo with shared/ beside it)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def vnncomp_dir(shared_dir: Path) -> Path:
    """The VNN-COMP benchmarks under ``../shared/benchmarks/vnncomp``; skips when absent."""
    path = shared_dir / "benchmarks" / "vnncomp"
    if not path.is_dir():
        pytest.skip(f"VNN-COMP benchmarks not found at {path}")
    return path


# -- building ONNX models ------------------------------------------------------------------------
def make_model(
    nodes: Sequence[onnx.NodeProto],
    input_shape: Sequence[int | str],
    output_shape: Sequence[int | str],
    initializers: dict[str, np.ndarray] | None = None,
    input_name: str = "x",
    output_name: str = "y",
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """A checked single-input, single-output float32 ONNX model (IR 8, opset 13)."""
    inits = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(output_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="robustkit-tests")
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    return model


def mlp_model(
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    input_shape: Sequence[int] | None = None,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """Gemm(transB=1) + Relu chain for ``layers = [(W (out, in), b), ...]`` (no ReLU after the
    last layer). With an ``input_shape`` other than ``(1, in)`` a Flatten node comes first."""
    n_in = layers[0][0].shape[1]
    shape = list(input_shape) if input_shape is not None else [1, n_in]
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = {}
    cur = "x"
    if shape != [1, n_in]:
        nodes.append(helper.make_node("Flatten", [cur], ["flat"], axis=1, name="flatten"))
        cur = "flat"
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        out = "y" if last else f"z{i}"
        inits[f"W{i}"] = np.asarray(w, dtype=np.float32)
        inits[f"b{i}"] = np.asarray(b, dtype=np.float32)
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [out], transB=1, name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            cur = f"a{i}"
    return make_model(nodes, shape, [1, layers[-1][0].shape[0]], inits, metadata=metadata)


@pytest.fixture(scope="session")
def onnx_kit() -> SimpleNamespace:
    """The model builders of this module for the test files: ``make_model``, ``mlp_model``,
    ``helper`` (``onnx.helper``), ``numpy_helper`` and the constants of the analytic net."""
    return SimpleNamespace(
        make_model=make_model, mlp_model=mlp_model, helper=helper, numpy_helper=numpy_helper,
        analytic_layers=ANALYTIC_LAYERS, analytic_x0=ANALYTIC_X0, analytic_radius=ANALYTIC_RADIUS,
        mnist_metadata=MNIST_METADATA, train_tiny_mlp=train_tiny_mlp,
    )


@pytest.fixture
def save_onnx(tmp_path: Path) -> Callable[[onnx.ModelProto, str], Path]:
    """``save_onnx(model, name)`` writes ``model`` to ``tmp_path/name`` and returns the path."""

    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save(model, str(path))
        return path

    return save


# -- a network with a known robustness radius ------------------------------------------------------
# Inputs x in [0, 1]^2, hidden h1 = relu(x1 - x2), h2 = relu(x2 - x1) (never both positive), and
#   y0 = 1/4,   y1 = h1 + h2 = |x1 - x2|,   y2 = 2 h1 + 2 h2 - 1/8 = 2 |x1 - x2| - 1/8.
# Around x0 = (1/2, 1/2) the prediction is 0. Class 2 reaches y0 once |x1 - x2| >= 3/16, i.e. at
# L-inf radius 3/32; class 1 needs |x1 - x2| >= 1/4, radius 1/8. So the robustness radius of x0
# is exactly 3/32. Interval arithmetic treats h1 and h2 as independent and proves only
# eps < 3/64 (class 2) and eps < 1/16 (class 1), so between those and the radius the MILP must
# decide. Every weight is a power of two or a small dyadic number, so float32 arithmetic is exact
# on the tie point x0 + (3/32, -3/32), where y2 == y0.
ANALYTIC_RADIUS = 3.0 / 32.0
ANALYTIC_X0 = np.array([0.5, 0.5], dtype=np.float32)
ANALYTIC_LAYERS = [
    (np.array([[1.0, -1.0], [-1.0, 1.0]]), np.zeros(2)),
    (np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), np.array([0.25, 0.0, -0.125])),
]


@pytest.fixture
def analytic_onnx(save_onnx: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """The 2-input, 3-class net above (robustness radius of (1/2, 1/2) is exactly 3/32)."""
    return save_onnx(mlp_model(ANALYTIC_LAYERS), "analytic.onnx")


# -- a small MLP trained on the embedded MNIST subset -----------------------------------------------
@dataclass(frozen=True)
class TrainedModel:
    path: Path
    images: np.ndarray  # (N, 784) float32 in [0, 1], the embedded test subset
    labels: np.ndarray  # (N,) int64
    accuracy: float  # on the embedded subset


MNIST_METADATA = {"robustkit.dataset": "mnist", "robustkit.value_range": json.dumps([0.0, 1.0])}


def train_tiny_mlp(images: np.ndarray, labels: np.ndarray, hidden: Sequence[int] = (24, 16), steps: int = 300,
                   seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """A few hundred Adam steps of plain training; returns ``[(W, b), ...]`` in float32."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dims = [images.shape[1], *hidden, 10]
    mods: list[torch.nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy())
            for m in model if isinstance(m, torch.nn.Linear)]


def pooled_mlp_model(layers: Sequence[tuple[np.ndarray, np.ndarray]], metadata: dict[str, str] | None = None
                     ) -> onnx.ModelProto:
    """Input (1, 1, 28, 28) -> 2x2 average pooling written as a Conv (kernel 2, stride 2, weights
    1/4) -> Flatten -> the Gemm/Relu chain of ``layers`` (which take the 196 pooled pixels)."""
    n = helper.make_node
    nodes = [n("Conv", ["x", "pool_w"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2], name="avgpool"),
             n("Flatten", ["pooled"], ["flat"], axis=1, name="flatten")]
    inits: dict[str, np.ndarray] = {"pool_w": np.full((1, 1, 2, 2), 0.25, dtype=np.float32)}
    cur = "flat"
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        out = "y" if last else f"z{i}"
        inits[f"W{i}"] = np.asarray(w, dtype=np.float32)
        inits[f"b{i}"] = np.asarray(b, dtype=np.float32)
        nodes.append(n("Gemm", [cur, f"W{i}", f"b{i}"], [out], transB=1, name=f"fc{i}"))
        if not last:
            nodes.append(n("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            cur = f"a{i}"
    return make_model(nodes, [1, 1, 28, 28], [1, 10], inits, metadata=metadata)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A small MNIST classifier: 2x2 average pooling (a fixed Conv) then a 196-16-8-10 ReLU MLP
    trained for 300 Adam steps on the embedded MNIST subset; ONNX input (1, 1, 28, 28), with
    robustkit metadata naming the dataset. (Pooling keeps the MILPs of the tests small: about
    0.1-0.5 s per sample at eps 0.02-0.04 with interval bounds.)"""
    from robustkit.data import embedded_subset

    torch.set_num_threads(1)
    ds = embedded_subset("mnist")
    images = ds.images.reshape(ds.images.shape[0], -1).numpy().astype(np.float32)
    labels = ds.labels.numpy().astype(np.int64)
    pooled = images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196)
    layers = train_tiny_mlp(pooled, labels, hidden=(16, 8))
    path = tmp_path_factory.mktemp("tiny_mnist") / "tiny_mlp.onnx"
    onnx.save(pooled_mlp_model(layers, metadata=MNIST_METADATA), str(path))
    h = pooled
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    accuracy = float((h.argmax(1) == labels).mean())
    return TrainedModel(path, images, labels, accuracy)
