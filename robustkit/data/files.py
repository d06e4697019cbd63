"""Datasets of the user's own: an ``.npz`` file with ``x`` and ``y`` arrays, or a folder in the
torchvision ImageFolder layout.

``.npz``: ``x`` holds the samples ``(N, C, H, W)`` (``(N, H, W)`` gets one channel; ``(N, D)`` stays
flat), ``y`` the integer labels ``(N,)``. Optional: ``x_test``/``y_test`` (the test split; without
them the test split is ``x``/``y`` itself), ``classes`` (the number of classes, else ``max(y) + 1``),
``value_range`` (``[lo, hi]``, the valid input range). uint8 samples are scaled to [0, 1]; float
samples are taken as they are, their range ``value_range``, else [0, 1] when they lie in it, else
their own minimum and maximum.

ImageFolder: ``ROOT/<class>/<image>`` (classes are the sorted folder names), or ``ROOT/train/<class>/``
and ``ROOT/test/<class>/`` (``val/`` is accepted for the test split). Images are read with Pillow
(PNG, JPEG, BMP, ...), as grayscale when every image is, else RGB; all must have one size.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from robustkit.data.core import Dataset, DatasetInfo
from robustkit.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_file_dataset(name: str | Path) -> bool:
    """Whether ``name`` names a dataset file or folder (an ``.npz`` path or a directory) rather
    than a registered dataset."""
    text = str(name)
    return text.lower().endswith(".npz") or Path(text).expanduser().is_dir()


def _samples(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4) or x.shape[0] == 0:
        raise InputError(f"{where} must be samples (N, C, H, W), (N, H, W) or (N, D) with N >= 1, got shape {x.shape}")
    return x


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"{where} must be {n} labels (one per sample), got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise InputError(f"{where} must be integer class labels, got {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise InputError(f"{where} holds a negative label ({int(y.min())}); labels are class indices 0, 1, ...")
    return y


def _to_float(x: np.ndarray, value_range: tuple[float, float] | None) -> tuple[np.ndarray, tuple[float, float]]:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0, value_range or (0.0, 1.0)
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"samples must be numbers, got {x.dtype}")
    xf = x.astype(np.float32)
    if not np.all(np.isfinite(xf)):
        raise InputError("samples hold NaN or infinite values")
    if value_range is None:
        lo, hi = float(xf.min()), float(xf.max())
        value_range = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
    return xf, value_range


@lru_cache(maxsize=8)
def _read_npz(path: str, mtime: float) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable .npz file: {exc}") from exc


def _npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"dataset file {path} not found")
    arrays = _read_npz(str(path.resolve()), path.stat().st_mtime)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise InputError(f"{path} lacks the array(s) {', '.join(repr(k) for k in missing)}: an .npz dataset holds "
                         f"x (samples) and y (labels); it has {sorted(arrays) or 'no arrays'}")
    return arrays


def _npz_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    arrays = _npz(path)
    keys = ("x", "y")
    if split == "test" and "x_test" in arrays:
        if "y_test" not in arrays:
            raise InputError(f"{path} has x_test but no y_test")
        keys = ("x_test", "y_test")
    elif split == "test":
        logger.info("%s has no x_test/y_test: its test split is x/y", path)
    x = _samples(arrays[keys[0]], f"{path}: {keys[0]}")
    y = _labels(arrays[keys[1]], x.shape[0], f"{path}: {keys[1]}")
    vr = None
    if "value_range" in arrays:
        raw = np.asarray(arrays["value_range"], dtype=np.float64).reshape(-1)
        if raw.size != 2 or not raw[0] < raw[1]:
            raise InputError(f"{path}: value_range must be [lo, hi] with lo < hi, got {raw.tolist()}")
        vr = (float(raw[0]), float(raw[1]))
    xf, vr = _to_float(x, vr)
    all_y = [_labels(arrays[k], arrays[k].shape[0] if arrays[k].ndim else 0, f"{path}: {k}")
             for k in ("y", "y_test") if k in arrays]
    top = max(int(a.max()) for a in all_y if a.size) + 1
    classes = int(arrays["classes"]) if "classes" in arrays else max(2, top)
    if classes < top:
        raise InputError(f"{path}: classes = {classes} but a label is {top - 1}")
    if xf.min() < vr[0] or xf.max() > vr[1]:
        raise InputError(f"{path}: samples lie in [{float(xf.min()):g}, {float(xf.max()):g}], outside its "
                         f"value_range {list(vr)}")
    info = DatasetInfo(name=str(path), input_shape=tuple(int(d) for d in xf.shape[1:]),  # type: ignore[arg-type]
                       num_classes=classes, class_names=tuple(str(c) for c in range(classes)), value_range=vr)
    return xf, y, info


def _folder_root(root: Path, split: str) -> Path:
    subs = {"train": ("train",), "test": ("test", "val")}[split]
    for sub in subs:
        if (root / sub).is_dir():
            return root / sub
    if (root / "train").is_dir():
        raise InputError(f"{root} has train/ but no {' or '.join(subs)}/ folder for the {split} split")
    return root


def _read_folder(root: str, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    base = _folder_root(Path(root), split)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{base} holds no class folders (ImageFolder layout: {base}/<class>/<image>.png)")
    files = tuple((f, k) for k, c in enumerate(classes) for f in sorted((base / c).iterdir())
                  if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{base}: the class folders {classes[:5]} hold no images ({', '.join(IMAGE_SUFFIXES)})")
    signature = tuple((str(f), k, f.stat().st_mtime_ns) for f, k in files)
    return _decode_folder(str(base), tuple(classes), signature)


@lru_cache(maxsize=4)
def _decode_folder(base_text: str, classes: tuple[str, ...], signature: tuple[tuple[str, int, int], ...]
                   ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The images of one folder split (cached while no file changes)."""
    try:
        from PIL import Image
    except ImportError as exc:  # Pillow comes with matplotlib
        raise InputError("reading an image folder needs Pillow (pip install pillow)") from exc
    base = Path(base_text)
    files = [(Path(f), k) for f, k, _ in signature]
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                images.append(im.copy())
        except OSError as exc:
            raise InputError(f"{f} is not a readable image: {exc}") from exc
    gray = all(im.mode in ("L", "1", "I;16", "I") for im in images)
    arrays = [np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8) for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        odd = next(f for (f, _), a in zip(files, arrays) if a.shape != arrays[0].shape)
        raise InputError(f"images of {base} differ in size: {files[0][0].name} is {arrays[0].shape}, {odd} is "
                         f"{next(a.shape for (f, _), a in zip(files, arrays) if f == odd)}; resize them to one size")
    x = np.stack(arrays)
    x = x[:, None] if gray else x.transpose(0, 3, 1, 2)
    return x, np.array([k for _, k in files], dtype=np.int64), tuple(classes)


def _folder_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    x, y, classes = _read_folder(str(root.resolve()), split)
    if split == "test" and len(_read_folder(str(root.resolve()), "train")[2]) != len(classes):
        raise InputError(f"{root}: the train and test splits have different class folders")
    classes = classes if len(classes) >= 2 else classes + ("(none)",)
    info = DatasetInfo(name=str(root), input_shape=tuple(int(d) for d in x.shape[1:]),  # type: ignore[arg-type]
                       num_classes=len(classes), class_names=classes)
    return x.astype(np.float32) / 255.0, y, info


def file_split(name: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """float32 samples, int64 labels and the description of one split of a dataset file/folder."""
    path = Path(str(name)).expanduser()
    if str(name).lower().endswith(".npz"):
        return _npz_split(path, split)
    if not path.is_dir():
        raise InputError(f"dataset {name!r} is neither a registered name, an .npz file nor a folder")
    return _folder_split(path, split)


def load_file_dataset(name: str | Path, split: str) -> Dataset:
    """One split of a dataset file or folder as a :class:`~robustkit.data.core.Dataset`."""
    x, y, info = file_split(name, split)
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), info, split, str(name))


def load_inputs(path: str | Path) -> Dataset:
    """The evaluation samples of ``--inputs FILE.npz``: its ``x`` and ``y`` arrays."""
    p = Path(path).expanduser()
    if not str(p).lower().endswith(".npz"):
        raise InputError(f"--inputs takes an .npz file with x and y arrays, got {p}")
    return load_file_dataset(p, "train")


def save_npz(path: str | Path, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, **extra: np.ndarray) -> Path:
    """Write samples and labels (and e.g. ``x_test``/``y_test``) as an ``.npz`` dataset."""
    def arr(v: np.ndarray | torch.Tensor) -> np.ndarray:
        return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x=arr(x), y=arr(y), **{k: arr(v) for k, v in extra.items()})
    return out
