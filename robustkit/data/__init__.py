"""Datasets by name (MNIST, CIFAR-10), their file readers and the embedded test subsets."""

from robustkit.data.core import SPLITS, Dataset, DatasetInfo
from robustkit.data.datasets import (
    DATA_ENV,
    DATASETS,
    dataset_info,
    get_spec,
    load_dataset,
    load_raw,
    locate_files,
    resolve_data_dir,
)
from robustkit.data.embedded import embedded_subset

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "SPLITS",
    "Dataset",
    "DatasetInfo",
    "dataset_info",
    "embedded_subset",
    "get_spec",
    "load_dataset",
    "load_raw",
    "locate_files",
    "resolve_data_dir",
]
