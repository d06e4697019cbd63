"""Dataset readers, layouts, error messages and the embedded subsets."""

from __future__ import annotations

import gzip
import io
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit.data import DATA_ENV, dataset_info, embedded_subset, load_dataset, load_raw
from robustkit.data.idx import read_cifar_batch, read_idx
from robustkit.errors import DatasetNotFoundError, InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"shared data not found at {DATA}")
needs_cifar = pytest.mark.skipif(not (DATA / "cifar10").is_dir(), reason=f"shared CIFAR-10 not found at {DATA}")

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)


def _raw_idx_pixels(path: Path) -> np.ndarray:
    """Independent IDX parse: skip the 16-byte image header."""
    return np.frombuffer(gzip.open(path).read()[16:], dtype=np.uint8)


@needs_data
@pytest.mark.parametrize(
    "split,n,counts,first_labels,first_sum",
    [
        ("train", 60000, MNIST_TRAIN_COUNTS, [5, 0, 4, 1, 9], 27525),
        ("test", 10000, MNIST_TEST_COUNTS, [7, 2, 1, 0, 4], 18454),
    ],
)
def test_mnist_reader(split: str, n: int, counts: list[int], first_labels: list[int], first_sum: int) -> None:
    ds = load_dataset("mnist", split, DATA)
    assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64
    assert ds.labels.bincount().tolist() == counts
    assert ds.labels[:5].tolist() == first_labels
    assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
    prefix = "train" if split == "train" else "t10k"
    raw = _raw_idx_pixels(DATA / "mnist" / f"{prefix}-images-idx3-ubyte.gz")
    assert int(raw[:784].astype(np.int64).sum()) == first_sum
    assert round(float(ds.images[0].sum()) * 255) == first_sum
    assert torch.equal((ds.images[-1].flatten() * 255).round().to(torch.uint8), torch.from_numpy(raw[-784:].copy()))


@needs_cifar
def test_cifar_test_reader() -> None:
    ds = load_dataset("cifar10", "test", DATA)
    assert ds.images.shape == (10000, 3, 32, 32)
    assert ds.labels.bincount().tolist() == [1000] * 10
    assert ds.labels[:5].tolist() == [3, 8, 8, 0, 6]
    # Independent read with the standard unpickler (the file is trusted here).
    with gzip.open(DATA / "cifar10" / "test_batch.gz") as fh:
        batch = pickle.load(fh, encoding="bytes")
    first = np.asarray(batch[b"data"][0], dtype=np.int64)
    assert int(first.sum()) == 332962
    assert torch.equal((ds.images[0] * 255).round().to(torch.int64), torch.from_numpy(first.reshape(3, 32, 32)))
    assert ds.info.normalization is not None and len(ds.info.normalization["mean"]) == 3


@pytest.mark.slow
@needs_cifar
def test_cifar_train_reader_and_statistics() -> None:
    images, labels, _ = load_raw("cifar10", "train", DATA)
    assert images.shape == (50000, 3, 32, 32)
    assert np.bincount(labels).tolist() == [5000] * 10
    assert labels[:5].tolist() == [6, 9, 9, 4, 1]
    x = images.astype(np.float64) / 255.0
    info = dataset_info("cifar10")
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), info.mean, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), info.std, atol=1e-4)


@needs_data
def test_torchvision_mnist_layout(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(gzip.open(DATA / "mnist" / f"{name}.gz").read())  # unpacked IDX
    expected = load_dataset("mnist", "test", DATA)
    for root in (tmp_path, tmp_path / "MNIST", raw):
        ds = load_dataset("mnist", "test", root)
        assert torch.equal(ds.images, expected.images) and torch.equal(ds.labels, expected.labels)
        assert ds.source == str(raw)
    # gzipped files in MNIST/raw are accepted as well
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(DATA / "mnist" / name, raw / name)
    assert load_dataset("mnist", "train", tmp_path).labels.bincount().tolist() == MNIST_TRAIN_COUNTS


@needs_cifar
def test_torchvision_cifar_layout_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(gzip.open(DATA / "cifar10" / "test_batch.gz").read())
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    ds = load_dataset("cifar10", "test")
    assert ds.source == str(folder) and ds.labels[:5].tolist() == [3, 8, 8, 0, 6]
    with pytest.raises(DatasetNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", "train")


def test_missing_data_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "train", tmp_path)
    msg = str(info.value)
    for text in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        str(tmp_path / "mnist"),
        str(tmp_path / "MNIST" / "raw"),
        "--data-dir",
        DATA_ENV,
    ):
        assert text in msg
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("mnist", "test", tmp_path / "nowhere")


def test_partial_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="has t10k-images-idx3-ubyte but lacks"):
        load_dataset("mnist", "test", tmp_path)


def test_no_data_dir_uses_embedded_test_only() -> None:
    ds = load_dataset("mnist", "test")
    assert ds.source == "embedded" and len(ds) == 1000
    with pytest.raises(DatasetNotFoundError, match="--data-dir"):
        load_dataset("mnist", "train")
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", "test", allow_embedded=False)


def test_bad_idx_magic(tmp_path: Path) -> None:
    path = tmp_path / "x-ubyte"
    path.write_bytes(struct.pack(">iiii", 0x0803, 1, 2, 2) + bytes(4))
    assert read_idx(path, 0x0803).shape == (1, 2, 2)
    with pytest.raises(InputError, match="magic number 0x00000803, expected 0x00000801"):
        read_idx(path, 0x0801)
    path.write_bytes(struct.pack(">iiii", 0x0803, 1, 2, 2) + bytes(3))
    with pytest.raises(InputError, match="announces"):
        read_idx(path, 0x0803)


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": shutil.rmtree, b"labels": []}))
    with pytest.raises(InputError, match="not allowed"):
        read_cifar_batch(path)
    good = {b"data": np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072), b"labels": [1, 2]}
    buf = io.BytesIO()
    pickle.dump(good, buf, protocol=2)
    path.write_bytes(buf.getvalue())
    images, labels = read_cifar_batch(path)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [1, 2]
    assert images[1, 0, 0, 0] == 3072 % 256


def test_unknown_names() -> None:
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("imagenet", "test")
    with pytest.raises(InputError, match="unknown split"):
        load_dataset("mnist", "val")


@pytest.mark.parametrize("name,n,shape", [("mnist", 1000, (1, 28, 28)), ("cifar10", 500, (3, 32, 32))])
def test_embedded_subset_shape_and_size(name: str, n: int, shape: tuple[int, ...]) -> None:
    ds = embedded_subset(name)
    assert ds.images.shape == (n, *shape) and ds.labels.shape == (n,)
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    size = (Path(__file__).resolve().parents[1] / "robustkit" / "data" / "embedded" / f"{name}_test.npz").stat().st_size
    assert size < 2_000_000


@needs_data
@needs_cifar
@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_embedded_subset_equals_real_test_set(name: str) -> None:
    emb = embedded_subset(name)
    real = load_dataset(name, "test", DATA)
    assert torch.equal(emb.images, real.images[: len(emb)])
    assert torch.equal(emb.labels, real.labels[: len(emb)])
