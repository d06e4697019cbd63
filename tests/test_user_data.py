"""Training and data of the user's choosing: ``--net MODULE:FUNCTION``, ``--dataset`` as an .npz
or an ImageFolder folder, ``--mean/--std`` in the exported metadata, ``--inputs FILE.npz`` for
verify, attack, bounds, stats and table, and the errors of bad data (exit 1, named)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit.cli.main import main
from robustkit.data import dataset_info, load_dataset, load_inputs, save_npz
from robustkit.errors import InputError
from robustkit.onnx_export import read_metadata
from robustkit.training import TrainConfig, train

FACTORY = '''
import torch.nn.functional as F
from torch import nn


class Tiny(nn.Module):
    def __init__(self, shape, classes):
        super().__init__()
        self.conv = nn.Conv2d(shape[0], 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * ((shape[1] + 1) // 2) * ((shape[2] + 1) // 2), classes)

    def forward(self, x):
        h = F.relu(self.conv(x))
        return self.fc(h.flatten(1))


def make(input_shape, num_classes):
    return Tiny(input_shape, num_classes)


def not_a_model():
    return 3
'''


def _data(tmp_path: Path, n: int = 120, classes: int = 3) -> Path:
    """Separable 8x8 two-channel images: class k has a bright k-th row band."""
    g = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = (g.random((n, 2, 8, 8)) * 60).astype(np.uint8)
    for i, k in enumerate(y):
        x[i, :, 2 * k:2 * k + 2, :] = 230
    return save_npz(tmp_path / "toy.npz", x[:100], y[:100], x_test=x[100:], y_test=y[100:])


def test_npz_dataset_splits_and_info(tmp_path: Path) -> None:
    path = _data(tmp_path)
    info = dataset_info(str(path))
    assert info.input_shape == (2, 8, 8) and info.num_classes == 3 and info.value_range == (0.0, 1.0)
    train_set, test_set = load_dataset(str(path), "train"), load_dataset(str(path), "test")
    assert len(train_set) == 100 and len(test_set) == 20
    assert float(train_set.images.max()) <= 1.0 and train_set.images.dtype == torch.float32
    floats = save_npz(tmp_path / "f.npz", np.linspace(-2, 3, 40).reshape(10, 4), np.arange(10) % 2)
    assert dataset_info(str(floats)).value_range == (-2.0, 3.0) and dataset_info(str(floats)).input_shape == (4,)
    assert len(load_inputs(floats)) == 10


def test_bad_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "no_y.npz", x=np.zeros((3, 4)))
    with pytest.raises(InputError, match=r"no_y\.npz lacks the array\(s\) 'y'.*it has \['x'\]"):
        load_inputs(tmp_path / "no_y.npz")
    np.savez(tmp_path / "neg.npz", x=np.zeros((2, 4)), y=np.array([0, -1]))
    with pytest.raises(InputError, match="negative label"):
        load_inputs(tmp_path / "neg.npz")
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 4)), y=np.array([0, 1]))
    with pytest.raises(InputError, match="must be 3 labels"):
        load_inputs(tmp_path / "short.npz")
    with pytest.raises(InputError, match="not found"):
        load_inputs(tmp_path / "missing.npz")


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "folder"
    for split, count in (("train", 4), ("test", 2)):
        for k, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((5, 6, 3), 40 * k + i, dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    ds = load_dataset(str(root), "train")
    assert ds.images.shape == (8, 3, 5, 6) and ds.labels.tolist() == [0] * 4 + [1] * 4
    assert ds.info.class_names == ("cat", "dog") and len(load_dataset(str(root), "test")) == 4
    Image.fromarray(np.zeros((7, 7), dtype=np.uint8)).save(root / "train" / "dog" / "odd.png")
    with pytest.raises(InputError, match="differ in size"):
        load_dataset(str(root), "train")


def test_cli_train_user_net_on_npz_then_verify_with_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = _data(tmp_path)
    pkg = tmp_path / "mymodels"
    pkg.mkdir()
    (pkg / "nets.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    run, onnx_path = tmp_path / "run", tmp_path / "m.onnx"
    args = ["train", "--net", "mymodels.nets:make", "--dataset", str(data), "--epochs", "2", "--batch-size", "20",
            "--lr", "1e-2", "--mean", "0.5", "--std", "0.25", "-r", "relu-stability=0.001", "--eps", "0.02",
            "--n-eval", "20", "--out", str(run), "--quiet"]
    assert main(args) == 0
    assert "trained mymodels.nets:make" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(onnx_path)]) == 0
    meta = read_metadata(onnx_path, decode=True)
    assert meta["robustkit.dataset"] == str(data) and meta["robustkit.net"] == "mymodels.nets:make"
    assert meta["robustkit.normalization"]["mean"] == [0.5, 0.5] and meta["robustkit.value_range"] == [0.0, 1.0]
    assert meta["robustkit.input_shape"] == [2, 8, 8]
    evaluation = save_npz(tmp_path / "eval.npz", np.load(data)["x_test"], np.load(data)["y_test"])
    out = tmp_path / "res"
    assert main(["verify", str(onnx_path), "--inputs", str(evaluation), "--eps", "0.01", "--n", "6",
                 "--method", "crown", "--workers", "0", "--out", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| m.onnx | 6 |" in table
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in records) == sorted(f"eval.npz:{i}" for i in range(6))
    # the dataset named in the model's metadata serves as the test split, too
    assert main(["verify", str(onnx_path), "--eps", "0.01", "--n", "4", "--method", "crown", "--workers", "0",
                 "--out", str(tmp_path / "res2"), "--quiet"]) == 0
    for cmd in (["attack", "--attack-steps", "3", "--attack-restarts", "1"], ["bounds"],
                ["stats", "--corner-pairs", "1", "--region-samples", "2", "--attack-steps", "2"]):
        assert main([cmd[0], str(onnx_path), "--inputs", str(evaluation), "--eps", "0.01", "--n", "4",
                     *cmd[1:]]) == 0, cmd
    assert main(["table", str(onnx_path), "--inputs", str(evaluation), "--eps", "0.01", "--n", "3", "--method",
                 "crown", "--workers", "0", "--out", str(tmp_path / "tab"), "--quiet"]) == 0
    # a file-path factory and the library trainer give the same weights as the module form
    cfg = TrainConfig(dataset=str(data), net=f"{pkg / 'nets.py'}:make", epochs=2, batch_size=20, lr=((0.0, 1e-2),),
                      mean=(0.5,), std=(0.25,), regularizers=("relu-stability=0.001",), eps=0.02, n_eval=20)
    again = train(cfg, tmp_path / "run_file", quiet=True)
    first = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    for key, value in again.model.state_dict().items():
        torch.testing.assert_close(value, first[key], rtol=0, atol=0)


def test_cli_bad_input_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data(tmp_path)
    (tmp_path / "f.py").write_text(FACTORY)
    model = Path(__file__).resolve().parents[1] / "models" / "mnist" / "mnist_small_pgd_rs.onnx"
    np.savez(tmp_path / "no_x.npz", y=np.zeros(3, dtype=np.int64))
    big = save_npz(tmp_path / "big.npz", np.zeros((2, 1, 28, 28), np.uint8), np.array([3, 12]))
    cases = [
        (["train", "--net", f"{tmp_path / 'f.py'}:not_a_model", "--dataset", str(data), "--out", str(tmp_path / "a")],
         "returned int, not a torch nn.Module"),
        (["train", "--net", "no_such_pkg.mod:make", "--dataset", str(data), "--out", str(tmp_path / "b")],
         "cannot import no_such_pkg.mod"),
        (["train", "--net", "small", "--dataset", str(tmp_path / "no_x.npz"), "--out", str(tmp_path / "c")],
         "lacks the array(s) 'x'"),
        (["train", "--net", f"{tmp_path / 'f.py'}:make", "--dataset", str(data), "--mean", "0.5",
          "--out", str(tmp_path / "d")], "give both --mean and --std"),
        (["verify", str(model), "--inputs", str(tmp_path / "no_x.npz"), "--eps", "0.1"], "lacks the array(s) 'x'"),
        (["verify", str(model), "--inputs", str(big), "--eps", "0.1", "--workers", "0"],
         "y[1] = 12, but the model has 10 outputs"),
        (["verify", str(model), "--inputs", str(data), "--eps", "0.1"], "the model expects 784"),
        (["attack", str(model), "--inputs", str(data), "--eps", "0.1"], "takes 784 inputs"),
    ]
    for args, message in cases:
        assert main(args) == 1, args
        assert message in capsys.readouterr().err, (args, message)
