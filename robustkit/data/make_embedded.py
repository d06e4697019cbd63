"""Regenerate the embedded test subsets from a real data directory.

Usage: ``python -m robustkit.data.make_embedded --data-dir ../shared/data``
(writes ``robustkit/data/embedded/{mnist,cifar10}_test.npz``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from robustkit.data.datasets import DATASETS, load_raw
from robustkit.data.embedded import embedded_file_name

logger = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"


def make_embedded(data_dir: Path, out_dir: Path = EMBEDDED_DIR) -> list[Path]:
    """Write the first ``embedded_count`` test images of every registered dataset to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, spec in DATASETS.items():
        images, labels, _ = load_raw(name, "test", data_dir)
        n = spec.embedded_count
        path = out_dir / embedded_file_name(name)
        np.savez_compressed(path, images=images[:n].copy(), labels=labels[:n].astype(np.uint8))
        logger.info("wrote %s (%d images, %d bytes)", path, n, path.stat().st_size)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding mnist/ and cifar10/")
    parser.add_argument("--out-dir", type=Path, default=EMBEDDED_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_embedded(args.data_dir, args.out_dir)


if __name__ == "__main__":
    main()
