"""Reading and writing TOML run configurations: the parsed tables, the line of every key (for
error messages that name the file, the line and the key), and a small writer for the effective
configuration (scalars, arrays of scalars, one level of tables)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from robustkit.errors import InputError

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_\-\"' .]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_\-]+)\s*=""")


def _toml_module() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the declared backport
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as exc:
            raise InputError("reading TOML files needs Python >= 3.11 or `pip install tomli`") from exc
    return tomllib


@dataclass(frozen=True)
class TomlFile:
    """A parsed TOML file and the line of each ``(table, key)`` (1-based; the table header's line
    for a table)."""

    path: Path
    data: dict[str, Any]
    lines: Mapping[tuple[str, str], int]

    def where(self, section: str, key: str) -> str:
        """``FILE:LINE: [section] key`` (no line when it cannot be told)."""
        line = self.lines.get((section, key))
        name = f"[{section}] {key}" if section else key
        return f"{self.path}:{line}: {name}" if line else f"{self.path}: {name}"


def key_lines(text: str) -> dict[tuple[str, str], int]:
    """The line of each key, by a line scan: ``[table]`` headers and ``key =`` at the start of a
    line (what a hand-written run configuration holds; dotted keys and inline tables are left out)."""
    out: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header and not line.lstrip().startswith("[["):
            section = header.group(1).strip().strip("\"'")
            out.setdefault(("", section), number)
            continue
        key = _KEY.match(line)
        if key:
            out.setdefault((section, key.group(1).strip("\"'")), number)
    return out


def read_toml(path: Path | str) -> TomlFile:
    """Parse ``path``; a missing file or a syntax error is an :class:`InputError` naming the file
    (and, for a syntax error, the line and column)."""
    tomllib = _toml_module()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} not found" if not path.exists() else f"config {path} is not a file")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from exc
    return TomlFile(path, data, key_lines(text))


# -- writing ---------------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    """One TOML value: a bool, an integer, a float, a string, or an array of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} to TOML")


def _bare(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) else json.dumps(key)


def dump_toml(tables: Mapping[str, Mapping[str, tuple[Any, str]]], header: str = "") -> str:
    """TOML text of ``tables[section][key] = (value, comment)``; section ``""`` is the root table,
    written first. A value ``None`` is written as a commented-out line (TOML has no null)."""
    lines = [f"# {ln}" if ln else "#" for ln in header.splitlines()]
    for section, entries in tables.items():
        if not entries:
            continue
        if section:
            lines += ["", f"[{_bare(section)}]"]
        elif lines:
            lines.append("")
        for key, (value, comment) in entries.items():
            note = f"  # {comment}" if comment else ""
            if value is None:
                lines.append(f"# {_bare(key)} = ...{note}")
            else:
                lines.append(f"{_bare(key)} = {toml_value(value)}{note}")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
