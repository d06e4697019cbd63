"""The s-expression layer of VNN-LIB (and of VNN-COMP result files): tokens, atoms and lists
with their positions, and errors that point at a line and column of the source."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Union

from robustkit.errors import InputError

# Every non-whitespace character starts one of these; whitespace between tokens is skipped.
_TOKEN = re.compile(r"[()]|;[^\n]*|[^\s();]+")


class VnnlibError(InputError):
    """A malformed or unsupported VNN-LIB file; ``source``, ``line`` and ``column`` locate it."""

    def __init__(self, message: str, source: str, line: int, column: int) -> None:
        self.source = source
        self.line = line
        self.column = column
        self.detail = message
        super().__init__(f"{source}:{line}:{column}: {message}")


class Sym:
    """An atom of the s-expression: a symbol or a number, with its offset in the text."""

    __slots__ = ("text", "pos")

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def __repr__(self) -> str:
        return f"Sym({self.text!r}, {self.pos})"


class SList:
    """A parenthesised list, with the offset of its ``(``."""

    __slots__ = ("items", "pos")

    def __init__(self, items: tuple[Sym | SList, ...], pos: int) -> None:
        self.items = items
        self.pos = pos

    @property
    def head(self) -> str | None:
        """The first item's text if it is a symbol, else ``None``."""
        if self.items and isinstance(self.items[0], Sym):
            return self.items[0].text
        return None

    def __repr__(self) -> str:
        return f"SList({list(self.items)!r}, {self.pos})"


Node = Union[Sym, SList]


class SourceText:
    """The text being read and its name; turns node positions into line/column errors.

    Node positions are token indices (cheap to record); they are mapped to character offsets
    only when an error is reported, by scanning the text again.
    """

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name

    def offset(self, token_index: int) -> int:
        """Character offset of token ``token_index`` (the end of the text if past the last)."""
        for k, m in enumerate(_TOKEN.finditer(self.text)):
            if k == token_index:
                return m.start()
        return len(self.text)

    def error(self, token_index: int, message: str) -> VnnlibError:
        pos = self.offset(token_index)
        line = self.text.count("\n", 0, pos) + 1
        column = pos - self.text.rfind("\n", 0, pos)
        return VnnlibError(message, self.name, line, column)


END_OF_TEXT = 1 << 62
"""A position past every token: errors there point at the end of the text."""


def read_sexprs(text: str, source: str = "<string>") -> list[Node]:
    """Tokenize ``text`` and return its top-level s-expressions (iteratively, no recursion).

    Each node's ``pos`` is the index of its first token (see :class:`SourceText`). Raises
    :class:`VnnlibError` on unbalanced parentheses or bare top-level atoms.
    """
    stack: list[tuple[list[Node], int]] = []
    top: list[Node] = []
    current = top
    for k, token in enumerate(_TOKEN.findall(text)):
        if token == "(":
            stack.append((current, k))
            current = []
        elif token == ")":
            if not stack:
                raise SourceText(text, source).error(k, "unbalanced parentheses: ')' without a matching '('")
            parent, pos = stack.pop()
            parent.append(SList(tuple(current), pos))
            current = parent
        elif token[0] != ";":
            if not stack:
                raise SourceText(text, source).error(k, f"unexpected {token!r} outside parentheses")
            current.append(Sym(token, k))
    if stack:
        raise SourceText(text, source).error(stack[-1][1], "unbalanced parentheses: this '(' is never closed")
    return top


def read_text_file(path: Path, what: str) -> str:
    """Read a UTF-8 text file (transparently gunzipping ``*.gz``); errors become InputError."""
    if not path.is_file():
        raise InputError(
            f"{what} not found: {path} (give the path to an existing file; VNN-COMP benchmarks"
            f" live under ../shared/benchmarks/vnncomp/ next to the repository)"
        )
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from exc
