"""Small subsets of the test sets shipped inside the package (``robustkit/data/embedded/``).

``mnist_test.npz`` holds the first 1000 MNIST test images, ``cifar10_test.npz`` the first 500
CIFAR-10 test images, as compressed uint8 arrays ``images`` (N, C, H, W) and ``labels`` (N,).
They let verification and attacks run without any download; regenerate them with
``python -m robustkit.data.make_embedded --data-dir DIR``.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np

from robustkit.data.core import Dataset, from_uint8
from robustkit.data.datasets import get_spec
from robustkit.errors import DatasetNotFoundError

EMBEDDED_PACKAGE = "robustkit.data"
EMBEDDED_FOLDER = "embedded"


def embedded_file_name(name: str) -> str:
    """File name of the embedded subset of dataset ``name``."""
    return f"{get_spec(name).info.name}_test.npz"


def embedded_subset(name: str) -> Dataset:
    """The first test images of dataset ``name`` stored in the package (1000 MNIST, 500 CIFAR-10)."""
    spec = get_spec(name)
    fname = embedded_file_name(name)
    resource = resources.files(EMBEDDED_PACKAGE).joinpath(EMBEDDED_FOLDER, fname)
    try:
        blob = resource.read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise DatasetNotFoundError(
            f"the embedded {spec.info.name} subset ({EMBEDDED_FOLDER}/{fname}) is missing from the "
            "installed package; reinstall robustkit or regenerate it with "
            "`python -m robustkit.data.make_embedded --data-dir DIR`"
        ) from exc
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    return from_uint8(images, labels, spec.info, "test", "embedded")
