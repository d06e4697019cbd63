"""A resumable, crash-safe result store: one JSON record per line, fsynced per record.

Every record is a dict with at least a string ``key``. Appends are flushed and ``os.fsync``-ed
one by one, so after a ``kill -9`` at most the last line is incomplete; such lines are ignored
on reading (with a warning) and the next append starts on a fresh line. The last record per key
wins, so a resumed run that redoes some keys (``rerun``) simply appends newer records.

:class:`RunDir` keeps the results of one *settings* (model bytes + options + versions) under
``<root>/<hash[:12]>/`` with a ``run.json`` describing them, and refuses to mix results of
different settings in one directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustkit.errors import InputError

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
RUN_FILE = "run.json"


def _json_default(obj: Any) -> Any:
    """Make numpy/torch scalars, paths, sets and tuples JSON-serializable."""
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):
            pass
    tolist = getattr(obj, "tolist", None)  # small arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in a JSON record")


def _clean_floats(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) with the strings "nan", "inf", "-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, ASCII only, NaN/inf as strings."""
    return json.dumps(_clean_floats(json.loads(json.dumps(obj, default=_json_default))),
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def settings_hash(model_bytes: bytes, settings: Mapping[str, Any]) -> str:
    """sha256 over the model bytes and the canonical JSON of ``settings`` (hex, 64 chars).

    Put everything that changes results into ``settings``: eps, norm, timeouts, the solver and its
    version (see :func:`versions`), robustkit's version. Key order does not matter.
    """
    h = hashlib.sha256()
    h.update(hashlib.sha256(model_bytes).digest())
    h.update(canonical_json(dict(settings)).encode("ascii"))
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of robustkit and of the libraries that decide results (for ``settings``)."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in ("robustkit", "torch", "highspy", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


class ResultStore:
    """Append-only JSONL file of per-sample records (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"result store {self.path} exists but is not a file")
        self._needs_newline = _ends_without_newline(self.path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record (needs a string ``key``); flushed and fsynced before returning."""
        key = record.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError(f"a record needs a non-empty string 'key', got {key!r}")
        line = canonical_json(dict(record))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            if self._needs_newline:
                fh.write("\n")
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._needs_newline = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """All readable records in file order (incomplete or corrupt lines skipped)."""
        if not self.path.exists():
            return
        bad = 0
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    logger.warning("%s:%d: ignoring an incomplete or corrupt record", self.path, lineno)
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                    yield rec
                else:
                    bad += 1
        if bad:
            logger.info("%s: %d unreadable line(s) ignored", self.path, bad)

    def records(self) -> dict[str, dict[str, Any]]:
        """The last record per key (insertion order = order of each key's first appearance)."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self:
            out[rec["key"]] = rec
        return out

    def done_keys(self, rerun: Collection[str] = ()) -> set[str]:
        """Keys already finished; keys whose last status is in ``rerun`` count as not done."""
        rerun = set(rerun)
        return {k for k, r in self.records().items() if r.get("status") not in rerun}


def _ends_without_newline(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


@dataclass(frozen=True)
class RunDir:
    """The directory of one run's settings: ``run.json`` + ``records.jsonl``.

    Use :meth:`for_settings` to place it under ``<root>/<hash[:12]>/``, or :meth:`at` to use a
    given directory. Either refuses a directory whose ``run.json`` names a different hash.
    """

    path: Path
    settings_hash: str

    @classmethod
    def for_settings(cls, root: str | os.PathLike[str], model_bytes: bytes,
                     settings: Mapping[str, Any]) -> RunDir:
        """The run directory ``<root>/<hash[:12]>/`` for these model bytes and settings."""
        digest = settings_hash(model_bytes, settings)
        return cls.at(Path(root) / digest[:12], digest, settings)

    @classmethod
    def at(cls, path: str | os.PathLike[str], digest: str, settings: Mapping[str, Any]) -> RunDir:
        """Open or create the run directory ``path`` for the settings with hash ``digest``."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InputError(f"run directory {path} exists but is not a directory")
        meta_path = path / RUN_FILE
        records = path / RECORDS_FILE
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                stored = meta["settings_hash"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"{meta_path} is unreadable ({exc}); delete the directory "
                                 f"{path} to start the run afresh") from exc
            if stored != digest:
                raise InputError(
                    f"{path} holds results of different settings (stored hash {stored[:12]}, "
                    f"these settings {digest[:12]}); results of different models or options are "
                    f"never mixed in one file: use another results directory or delete {path}"
                )
        else:
            if records.exists() and records.stat().st_size > 0:
                raise InputError(
                    f"{records} exists without {RUN_FILE}, so its settings are unknown; "
                    f"move it away or delete it"
                )
            path.mkdir(parents=True, exist_ok=True)
            meta = {"settings_hash": digest, "settings": _clean_floats(dict(settings)),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            tmp = meta_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n",
                           encoding="utf-8")
            os.replace(tmp, meta_path)
        return cls(path=path, settings_hash=digest)

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS_FILE

    @property
    def meta(self) -> dict[str, Any]:
        """The contents of ``run.json``."""
        return json.loads((self.path / RUN_FILE).read_text(encoding="utf-8"))

    def store(self) -> ResultStore:
        """The result store of this run."""
        return ResultStore(self.records_path)
