"""VNN-COMP result files: writing and reading.

Format (VNN-COMP 2021-2023): the first line is the result, one of ``sat`` (a counterexample
exists: the property is violated), ``unsat`` (the property holds), ``timeout``, ``unknown`` or
``error``. For ``sat`` the counterexample follows as one s-expression listing every input and
output value::

    sat
    ((X_0 0.25)
     (X_1 -1.5e-05)
     (Y_0 3.0))

Values are written with Python's ``repr`` of the float64 value, which reads back to the same
number exactly. The reader also accepts the tools' bare witness files (no status line, as in
``counterexamples_2022/*/*.counterexample.gz``), gzipped files, empty files, and the 2021
words ``violated``/``holds`` for ``sat``/``unsat``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustkit.errors import InputError
from robustkit.vnnlib.sexpr import SList, SourceText, Sym, VnnlibError, read_sexprs, read_text_file

__all__ = [
    "RESULT_STATUSES",
    "ResultFile",
    "format_result",
    "parse_result_text",
    "read_result",
    "write_result",
]

RESULT_STATUSES: tuple[str, ...] = ("sat", "unsat", "timeout", "unknown", "error")
_ALIASES = {"violated": "sat", "holds": "unsat"}
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_VAR = re.compile(r"([XY])_(0|[1-9]\d*)\Z")


def _flat(values: object, what: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise InputError(f"counterexample {what} is empty")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"counterexample {what} contains non-finite values")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ResultFile:
    """A result: ``status`` (``None`` for a bare witness file) and the counterexample, if any.

    ``x`` and ``y`` are flat float64 arrays (``X_0..X_{n-1}``, ``Y_0..Y_{m-1}``) or ``None``.
    """

    status: str | None
    x: np.ndarray | None = None
    y: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in RESULT_STATUSES:
            raise InputError(f"result status {self.status!r} is not one of {', '.join(RESULT_STATUSES)}")
        if self.status not in (None, "sat") and (self.x is not None or self.y is not None):
            raise InputError(f"only a 'sat' result carries a counterexample, not {self.status!r}")
        if self.x is not None:
            object.__setattr__(self, "x", _flat(self.x, "inputs"))
        if self.y is not None:
            object.__setattr__(self, "y", _flat(self.y, "outputs"))

    @property
    def has_counterexample(self) -> bool:
        return self.x is not None


def format_result(status: str, x: np.ndarray | None = None, y: np.ndarray | None = None) -> str:
    """The text of a result file. ``sat`` requires the counterexample ``x`` (flat row-major
    network input) and ``y`` (the network's output at ``x``); other statuses take neither."""
    result = ResultFile(status, x, y)
    if status != "sat":
        return f"{status}\n"
    if result.x is None or result.y is None:
        raise InputError("a 'sat' result needs the counterexample: both x and y")
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(result.x)]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(result.y)]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def write_result(
    path: str | os.PathLike[str], status: str, x: np.ndarray | None = None, y: np.ndarray | None = None
) -> Path:
    """Write a result file atomically (temporary file + rename); returns the path."""
    text = format_result(status, x, y)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _collect(pairs: list[SList], src: SourceText) -> tuple[np.ndarray | None, np.ndarray | None]:
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for pair in pairs:
        items = pair.items
        if len(items) != 2 or not all(isinstance(it, Sym) for it in items):
            raise src.error(pair.pos, "expected a pair (X_i value) or (Y_i value)")
        name, value = items
        assert isinstance(name, Sym) and isinstance(value, Sym)
        m = _VAR.match(name.text)
        if not m:
            raise src.error(name.pos, f"expected a variable X_i or Y_i, got {name.text!r}")
        if not _NUMBER.match(value.text):
            raise src.error(value.pos, f"expected a number for {name.text}, got {value.text!r}")
        kind, index = m.group(1), int(m.group(2))
        if index in values[kind]:
            raise src.error(name.pos, f"{name.text} is given twice")
        number = float(value.text)
        if not np.isfinite(number):
            raise src.error(value.pos, f"value of {name.text} is out of the float64 range")
        values[kind][index] = number
    arrays: list[np.ndarray | None] = []
    for kind in ("X", "Y"):
        got = values[kind]
        if not got:
            arrays.append(None)
            continue
        n = max(got) + 1
        if len(got) != n:
            missing = next(i for i in range(n) if i not in got)
            raise src.error(0, f"counterexample lacks {kind}_{missing} (has {len(got)} of {kind}_0..{kind}_{n - 1})")
        arrays.append(np.array([got[i] for i in range(n)], dtype=np.float64))
    return arrays[0], arrays[1]


def parse_result_text(text: str, source: str = "<string>") -> ResultFile:
    """Parse a result file's text (status line optional, counterexample optional)."""
    stripped = text.lstrip()
    status: str | None = None
    body_start = len(text) - len(stripped)
    if stripped and not stripped.startswith(("(", ";")):
        first_line = stripped.split("\n", 1)[0]
        word = first_line.strip().lower()
        word = _ALIASES.get(word, word)
        if word not in RESULT_STATUSES:
            line = text.count("\n", 0, body_start) + 1
            column = body_start - text.rfind("\n", 0, body_start)
            raise VnnlibError(
                f"unknown result {first_line.strip()!r}; expected one of {', '.join(RESULT_STATUSES)}",
                source, line, column,
            )
        status = word
        body_start += len(first_line)
    # Blank out the status line but keep every offset, so line/column numbers stay right.
    body = re.sub(r"[^\n]", " ", text[:body_start]) + text[body_start:]
    src = SourceText(body, source)
    nodes = read_sexprs(body, source)
    if not nodes:
        return ResultFile(status)
    if status not in (None, "sat"):
        raise src.error(nodes[0].pos, f"a {status!r} result must not carry a counterexample")
    pairs: list[SList] = []
    for node in nodes:
        assert isinstance(node, SList)
        if node.items and all(isinstance(it, SList) for it in node.items):
            pairs.extend(it for it in node.items if isinstance(it, SList))
        else:
            pairs.append(node)
    x, y = _collect(pairs, src)
    if x is None:
        raise src.error(nodes[0].pos, "counterexample has no X_i values")
    return ResultFile(status, x, y)


def read_result(path: str | os.PathLike[str]) -> ResultFile:
    """Read a result or witness file (``.gz`` is decompressed)."""
    p = Path(path)
    return parse_result_text(read_text_file(p, "result file"), str(p))
