"""The in-memory dataset type and its description (shape, classes, value range, normalization)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustkit.errors import InputError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on the dataset needs to know about its inputs.

    ``mean``/``std`` are the per-channel statistics of the training set, given only for
    datasets whose nets normalize their input (CIFAR-10); ``None`` means "no normalization".
    """

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    class_names: tuple[str, ...]
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"{self.name}: give both mean and std, or neither")
        if self.mean is not None and len(self.mean) != self.input_shape[0]:
            raise ValueError(f"{self.name}: mean has {len(self.mean)} entries for {self.input_shape[0]} channels")

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """``{"mean": [...], "std": [...]}`` or ``None`` (JSON-ready)."""
        if self.mean is None or self.std is None:
            return None
        return {"mean": list(self.mean), "std": list(self.std)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "value_range": list(self.value_range),
            "normalization": self.normalization,
        }


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images as float32 ``(N, C, H, W)`` in ``info.value_range`` and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    split: str
    source: str  # the directory the files came from, or "embedded"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32 or self.labels.dtype != torch.int64:
            raise ValueError("images must be float32 and labels int64")
        if tuple(self.images.shape[1:]) != self.info.input_shape:
            raise ValueError(f"images have shape {tuple(self.images.shape)}, expected (N, *{self.info.input_shape})")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.labels.shape[0]} labels for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, n: int | None) -> "Dataset":
        """The first ``n`` examples (all of them when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise InputError(f"a dataset subset needs a positive size, got {n}")
        return Dataset(self.images[:n], self.labels[:n], self.info, self.split, self.source)


def from_uint8(
    images: np.ndarray, labels: np.ndarray, info: DatasetInfo, split: str, source: str
) -> Dataset:
    """Build a :class:`Dataset` from uint8 images ``(N, C, H, W)`` (scaled to [0, 1]) and labels."""
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    labels64 = np.asarray(labels, dtype=np.int64)
    if labels64.size and (labels64.min() < 0 or labels64.max() >= info.num_classes):
        raise InputError(
            f"{info.name} {split} labels from {source} must lie in 0..{info.num_classes - 1}, "
            f"found {labels64.min()}..{labels64.max()}"
        )
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    return Dataset(x, torch.from_numpy(labels64.copy()), info, split, source)
