"""ONNX export: graph structure, torch == onnxruntime, metadata, single file, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from robustkit.cli.main import main as cli_main
from robustkit.data import DATA_ENV
from robustkit.errors import InputError, ModelFormatError
from robustkit.onnx_export import ExportMismatchError, check_onnx_matches, export_onnx, read_metadata
from robustkit.nets import NetConfig, build_net
from robustkit.training import TrainConfig, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"shared data not found at {DATA}")

CIFAR_NORM = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(DATA_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(name: str, shape: tuple[int, int, int], seed: int = 0, **kw: object) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_net(NetConfig(name, shape, **kw)).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name,shape,norm",
    [("mlp", (1, 28, 28), {}), ("small", (1, 28, 28), {}), ("small", (3, 32, 32), CIFAR_NORM)],
)
def test_round_trip_torch_equals_onnxruntime(tmp_path: Path, name: str, shape: tuple[int, int, int],
                                             norm: dict) -> None:
    model = _net(name, shape, **norm)
    path = export_onnx(model, tmp_path / "model.onnx", input_shape=shape)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # one self-contained file
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 13
    ops = {n.op_type for n in proto.graph.node}
    expected = {"Gemm", "Relu", "Flatten"} | ({"Conv"} if name == "small" else set())
    assert ops == expected | ({"Sub", "Div"} if norm else set())
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == list(shape)
    # independent comparison on fresh inputs, including a batch size never used during export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(13, *shape, generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        ref = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (13, 10)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_normalization_in_graph_and_metadata(tmp_path: Path) -> None:
    model = _net("small", (3, 32, 32), **CIFAR_NORM)
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 32, 32), metadata={"robustkit.dataset": "cifar10"})
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    sub = next(n for n in proto.graph.node if n.op_type == "Sub")
    np.testing.assert_allclose(inits[sub.input[1]].flatten(), CIFAR_NORM["mean"], rtol=1e-6)
    meta = read_metadata(path, decode=True)
    assert meta["robustkit.normalization"]["mean"] == pytest.approx(CIFAR_NORM["mean"])
    assert meta["robustkit.normalization"]["in_model"] is True
    assert meta["robustkit.dataset"] == "cifar10" and meta["robustkit.input_shape"] == [3, 32, 32]


def test_mismatch_is_detected(tmp_path: Path) -> None:
    model = _net("mlp", (1, 28, 28))
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28))
    other = _net("mlp", (1, 28, 28))
    with torch.no_grad():
        other[-1].bias[3] += 1e-3
    with pytest.raises(ExportMismatchError, match="disagree"):
        check_onnx_matches(other, path, (1, 28, 28))
    assert check_onnx_matches(model, path, (1, 28, 28)) <= 1e-5


def test_unsupported_layers_and_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"module '2' \(GELU\)"):
        export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.GELU(), nn.Linear(2, 2)), tmp_path / "a.onnx",
                    input_shape=(1, 2, 2))
    with pytest.raises(InputError, match="flatten"):
        export_onnx(nn.Sequential(nn.Linear(2, 2)), tmp_path / "b.onnx", input_shape=(1, 2, 2))
    with pytest.raises(InputError, match="input_shape"):
        export_onnx(_net("mlp", (1, 28, 28)), tmp_path / "c.onnx")
    with pytest.raises(InputError, match="run directory"):
        export_onnx(tmp_path / "missing", tmp_path / "d.onnx")
    with pytest.raises(ModelFormatError, match="model.pt"):
        export_onnx(tmp_path, tmp_path / "e.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(ModelFormatError):
        read_metadata(tmp_path / "junk.onnx")


@needs_data
def test_export_run_dir_metadata_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(net="small", epochs=1, n_train=200, n_eval=100, batch_size=50, data_dir=str(DATA))
    result = train(cfg, tmp_path / "run", quiet=True)
    out = tmp_path / "exported" / "model.onnx"
    assert cli_main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]
    raw = read_metadata(out)
    assert all(isinstance(v, str) for v in raw.values())
    meta = read_metadata(out, decode=True)
    assert meta["robustkit.dataset"] == "mnist"
    assert meta["robustkit.net"] == "small"
    assert meta["robustkit.input_shape"] == [1, 28, 28]
    assert meta["robustkit.value_range"] == [0.0, 1.0]
    assert meta["robustkit.normalization"] is None
    assert TrainConfig.from_dict(meta["robustkit.train_config"]) == cfg
    assert meta["robustkit.metrics"] == json.loads(json.dumps(result.history[-1]))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = result.model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], ref, atol=1e-5, rtol=0)
    assert cli_main(["export", str(tmp_path / "nope"), "--out", str(out)]) == 1
