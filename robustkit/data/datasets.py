"""Datasets by name (MNIST, CIFAR-10): where their files are looked for and how they are read.

A data directory is given explicitly (``data_dir`` / ``--data-dir``) or by the environment
variable ``ROBUSTKIT_DATA``; nothing else is guessed. Inside it these layouts are accepted:

* the project's shared layout: ``mnist/*-ubyte.gz`` (gzipped IDX) and ``cifar10/*.gz``
  (each CIFAR-10 batch pickle gzipped on its own);
* torchvision's layouts: ``MNIST/raw/`` (gzipped or unpacked IDX) and
  ``cifar-10-batches-py/`` (unpacked pickles);
* the directory itself being one of those folders.

Without any data directory, asking for the *test* split falls back to the small subset
embedded in the package (see :mod:`robustkit.data.embedded`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from robustkit.data.core import SPLITS, Dataset, DatasetInfo, from_uint8
from robustkit.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_cifar_batch, read_idx
from robustkit.errors import DatasetNotFoundError, InputError

logger = logging.getLogger(__name__)

DATA_ENV = "ROBUSTKIT_DATA"

RawReader = Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's description and files: folders searched (relative to the data directory,
    ``""`` = the directory itself), file names per split (each also accepted with ``.gz``)."""

    info: DatasetInfo
    subdirs: tuple[str, ...]
    files: Mapping[str, tuple[str, ...]]
    read: RawReader
    embedded_count: int
    layout_hint: str


def _read_mnist(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(paths[0], IDX_IMAGES_MAGIC)
    labels = read_idx(paths[1], IDX_LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InputError(f"{paths[0]}: MNIST images must be N x 28 x 28, got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise InputError(f"{paths[1]}: {labels.shape} labels for {images.shape[0]} images in {paths[0]}")
    return images[:, None, :, :], labels.astype(np.int64)


def _read_cifar(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(p) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


MNIST = DatasetSpec(
    info=DatasetInfo(
        name="mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
    ),
    subdirs=("mnist", "MNIST/raw", "raw", ""),
    files={
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    },
    read=_read_mnist,
    embedded_count=1000,
    layout_hint="mnist/ with the gzipped IDX files, or torchvision's MNIST/raw/",
)

CIFAR10 = DatasetSpec(
    info=DatasetInfo(
        name="cifar10",
        input_shape=(3, 32, 32),
        num_classes=10,
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        # Per-channel mean/std of the 50000 training images (computed from the files).
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    subdirs=("cifar10", "cifar-10-batches-py", ""),
    files={
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    },
    read=_read_cifar,
    embedded_count=500,
    layout_hint="cifar10/ with the gzipped batch pickles, or the unpacked cifar-10-batches-py/",
)

DATASETS: dict[str, DatasetSpec] = {"mnist": MNIST, "cifar10": CIFAR10}


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name`` (case-insensitive; ``cifar-10`` is accepted too)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}, an .npz file with x and y "
                         "arrays, or a folder in the ImageFolder layout")
    return DATASETS[key]


def dataset_name(name: str) -> str:
    """The canonical name of a registered dataset, or a dataset file/folder path as given."""
    from robustkit.data.files import is_file_dataset

    return str(name) if is_file_dataset(name) else get_spec(name).info.name


def dataset_info(name: str) -> DatasetInfo:
    """Shape, classes, value range and normalization of dataset ``name`` (registered, or an
    ``.npz`` file / ImageFolder folder: :mod:`robustkit.data.files`)."""
    from robustkit.data.files import file_split, is_file_dataset

    if is_file_dataset(name):
        return file_split(name, "train")[2]
    return get_spec(name).info


def resolve_data_dir(data_dir: Path | str | None) -> Path | None:
    """The data directory to use: ``data_dir`` if given, else ``$ROBUSTKIT_DATA``, else None."""
    if data_dir is not None and str(data_dir) != "":
        root, origin = Path(data_dir).expanduser(), "--data-dir"
    elif os.environ.get(DATA_ENV):
        root, origin = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        return None
    if not root.is_dir():
        raise DatasetNotFoundError(f"data directory {root} (from {origin}) does not exist or is not a directory")
    return root


def _find_file(folder: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def locate_files(name: str, split: str, root: Path) -> list[Path]:
    """The files of ``split`` of dataset ``name`` under ``root`` (first folder holding all of them)."""
    spec = get_spec(name)
    _check_split(split)
    wanted = spec.files[split]
    searched: list[str] = []
    partial: list[str] = []
    for sub in spec.subdirs:
        folder = root / sub if sub else root
        searched.append(str(folder))
        found = [_find_file(folder, base) for base in wanted]
        if all(p is not None for p in found):
            return [p for p in found if p is not None]
        have = [base for base, p in zip(wanted, found) if p is not None]
        if have:
            partial.append(f"{folder} has {', '.join(have)} but lacks the others")
    names = ", ".join(f"{b}[.gz]" for b in wanted)
    lines = [
        f"{spec.info.name} {split} split not found: looked for {names}",
        "in: " + ", ".join(searched),
    ]
    lines += partial
    lines.append(
        f"Provide a data directory holding {spec.layout_hint} with --data-dir DIR "
        f"or the environment variable {DATA_ENV}=DIR."
    )
    raise DatasetNotFoundError("\n".join(lines))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {list(SPLITS)}")


def load_raw(name: str, split: str, data_dir: Path | str | None) -> tuple[np.ndarray, np.ndarray, Path]:
    """uint8 images ``(N, C, H, W)``, int64 labels and the folder they were read from."""
    spec = get_spec(name)
    _check_split(split)
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DatasetNotFoundError(
            f"no data directory given for the {spec.info.name} {split} split: pass --data-dir DIR "
            f"or set {DATA_ENV}=DIR, where DIR holds {spec.layout_hint}"
        )
    paths = locate_files(name, split, root)
    images, labels = spec.read(paths)
    logger.debug("read %s %s (%d images) from %s", spec.info.name, split, len(labels), paths[0].parent)
    return images, labels, paths[0].parent


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: Path | str | None = None,
    *,
    allow_embedded: bool = True,
) -> Dataset:
    """Load split ``split`` of dataset ``name`` as float32 images in [0, 1] and int64 labels
    (``name`` may also be an ``.npz`` file or an ImageFolder folder: :mod:`robustkit.data.files`).

    The data directory is ``data_dir`` or ``$ROBUSTKIT_DATA``. When neither is set and the
    test split is asked for, the embedded subset is returned (unless ``allow_embedded`` is
    False); otherwise a :class:`DatasetNotFoundError` says what is missing and where to put it.
    """
    from robustkit.data.files import is_file_dataset, load_file_dataset

    _check_split(split)
    if is_file_dataset(name):
        return load_file_dataset(name, split)
    spec = get_spec(name)
    if resolve_data_dir(data_dir) is None and split == "test" and allow_embedded:
        from robustkit.data.embedded import embedded_subset

        logger.info(
            "no data directory (--data-dir or %s): using the embedded subset of the %s test set (%d images)",
            DATA_ENV,
            spec.info.name,
            spec.embedded_count,
        )
        return embedded_subset(spec.info.name)
    images, labels, folder = load_raw(name, split, data_dir)
    return from_uint8(images, labels, spec.info, split, str(folder))
