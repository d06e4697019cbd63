"""Datasets by name (MNIST, CIFAR-10) or file (.npz, ImageFolder), their readers and the embedded test subsets."""

from robustkit.data.core import SPLITS, Dataset, DatasetInfo
from robustkit.data.datasets import (
    DATA_ENV,
    DATASETS,
    dataset_info,
    dataset_name,
    get_spec,
    load_dataset,
    load_raw,
    locate_files,
    resolve_data_dir,
)
from robustkit.data.embedded import embedded_subset
from robustkit.data.files import is_file_dataset, load_inputs, save_npz

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "SPLITS",
    "Dataset",
    "DatasetInfo",
    "dataset_info",
    "dataset_name",
    "is_file_dataset",
    "load_inputs",
    "save_npz",
    "embedded_subset",
    "get_spec",
    "load_dataset",
    "load_raw",
    "locate_files",
    "resolve_data_dir",
]
