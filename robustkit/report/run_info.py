"""What a results folder's ``run.json`` says about the machine and the code that produced it:
the date, robustkit's git commit, the CPU model, the threads, the versions of the libraries
that decide results, and the command line. Each invocation that writes into a folder adds one
entry under ``"invocations"`` (a resumed run keeps the earlier ones)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

#: Distributions whose versions are recorded.
DISTRIBUTIONS = ("robustkit", "torch", "numpy", "scipy", "onnx", "onnxruntime", "highspy", "pulp", "typer",
                 "matplotlib")
RUN_FILE = "run.json"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


@lru_cache(maxsize=1)
def git_commit() -> dict[str, Any]:
    """The commit of the robustkit source that runs, and whether its tree has uncommitted changes
    (``{"commit": None}`` outside a git checkout, e.g. an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return {"commit": None}
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def library_versions() -> dict[str, str]:
    out = {}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def environment() -> dict[str, Any]:
    """The date, the code, the machine and the threads of this process."""
    try:
        import torch

        torch_threads: int | None = torch.get_num_threads()
    except Exception:  # noqa: BLE001 - the record is best effort; torch is a dependency
        torch_threads = None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_commit(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch_threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": library_versions(),
    }


def record_invocation(path: Path, command: str, extra: Mapping[str, Any] | None = None,
                      argv: list[str] | None = None) -> Path:
    """Add this invocation (environment, command line, ``extra``) to the JSON file ``path``
    (created if missing; what it held stays), written atomically."""
    path = Path(path)
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            data = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            logger.warning("%s is unreadable; starting its invocation list afresh", path)
    entry = {"command": command, "argv": list(sys.argv if argv is None else argv), **environment(), **(extra or {})}
    data.setdefault("invocations", []).append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
