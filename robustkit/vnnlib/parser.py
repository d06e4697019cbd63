"""VNN-LIB reader: tokenizer, s-expression parser and translation to a :class:`Specification`.

VNN-LIB (the SMT-LIB 2 subset used by VNN-COMP, www.vnnlib.org) declares the flat network
inputs ``X_i`` and outputs ``Y_i`` as ``Real`` constants and asserts a formula describing a
**counterexample**: the property is violated iff some input satisfying the formula's input part
yields outputs satisfying its output part.

Supported:

* comments (``;`` to end of line), ``(declare-const X_i Real)`` / ``(declare-const Y_i Real)``,
  ``(assert F)`` (several top-level asserts form a conjunction); ``check-sat``, ``get-model``,
  ``set-logic``, ``set-info``, ``set-option`` and ``exit`` commands are accepted and ignored;
* formulas: ``and``, ``or`` (any nesting; converted to disjunctive normal form), ``true``,
  ``false``, and comparisons ``<=``, ``>=``, ``<``, ``>``, ``=`` (chains allowed, SMT-LIB style);
* linear terms: numbers (integers, decimals, scientific notation, with an optional sign as in
  ``-0.5``), ``(- t)``, ``(+ t ...)``, ``(- t u ...)``, ``(* c t)`` (at most one non-constant
  factor), ``(/ t c)`` with constant ``c``, and declared variables.

Numbers are read exactly (as fractions). Strict comparisons (``<``, ``>``) keep their
strictness: bounds and proofs use the closure (a proof that the closure is empty covers the strict
region), while a counterexample must satisfy them strictly (``LinearConstraints.strict``,
``InputBox.lower_strict``/``upper_strict``). A bound the file gives exactly but float64 cannot hold
(``0.1``) is stored as its float64 neighbour outside the region, made strict: for every float
input the two say the same (``x >= 0.1`` iff ``x > 0.09999999999999999``), and the closed box
contains the file's. An output row whose coefficients or bound float64 cannot hold keeps its exact
value (``LinearConstraints.exact``) for the counterexample check; proofs charge the float64
rounding of such rows (:mod:`robustkit.verification.pipeline`).

Each atom must mention only inputs or only outputs. Input atoms must bound single variables
(the input set is a union of boxes); input atoms inside a disjunct give that disjunct its own
box, and disjuncts with the same box are grouped into one region. Every input needs a finite
lower and upper bound in each disjunct. Output atoms become rows of ``C @ y <= d``.

Errors are :class:`VnnlibError` (an ``InputError``) carrying the file name, line and column.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Union

import numpy as np

from robustkit.errors import InputError
from robustkit.spec import InputBox, LinearConstraints, OutputSpec, Specification
from robustkit.vnnlib.sexpr import END_OF_TEXT, Node, SList, SourceText, Sym, VnnlibError, read_sexprs, read_text_file

__all__ = [
    "END_OF_TEXT",
    "SList",
    "SourceText",
    "Sym",
    "VnnlibError",
    "parse_vnnlib",
    "parse_vnnlib_text",
    "read_sexprs",
    "read_text_file",
]

logger = logging.getLogger(__name__)

MAX_DISJUNCTS = 100_000
"""Upper limit on the DNF size; formulas that expand further are rejected."""

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_VAR = re.compile(r"([XY])_(0|[1-9]\d*)\Z")
_IGNORED_COMMANDS = frozenset({"check-sat", "get-model", "set-logic", "set-info", "set-option", "exit"})
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})
_ARITHMETIC = frozenset({"+", "-", "*", "/"})

PathOrText = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------
# Linear terms and atoms
# ---------------------------------------------------------------------------------------------

_Var = tuple[str, int]  # ("X", i) or ("Y", i)


@dataclass(slots=True)
class _Linear:
    """``sum(coefs[v] * v) + const``, exactly (fractions)."""

    coefs: dict[_Var, Fraction]
    const: Fraction

    def scaled(self, factor: Fraction) -> _Linear:
        return _Linear({v: c * factor for v, c in self.coefs.items()}, self.const * factor)

    def add(self, other: _Linear, sign: int = 1) -> None:
        for v, c in other.coefs.items():
            self.coefs[v] = self.coefs.get(v, _ZERO) + sign * c
        self.const += sign * other.const


_ZERO, _ONE = Fraction(0), Fraction(1)


@dataclass(frozen=True, slots=True)
class _Atom:
    """``sum(coefs[v] * v) + const <= 0`` (``< 0`` if ``strict``) with all variables of one kind
    (or none)."""

    coefs: dict[_Var, Fraction]
    const: Fraction
    kind: str | None  # "X", "Y", or None for a constant comparison
    pos: int
    strict: bool = False


class _Translator:
    """Turns the s-expressions of one VNN-LIB file into a :class:`Specification`."""

    def __init__(self, src: SourceText) -> None:
        self.src = src
        self.decl_pos: dict[_Var, int] = {}
        self.numbers: dict[str, Fraction] = {}  # each number's text read once

    # -- declarations -------------------------------------------------------------------------
    def declare(self, node: SList) -> None:
        items = node.items
        if len(items) != 3 or not isinstance(items[1], Sym) or not isinstance(items[2], Sym):
            raise self.src.error(node.pos, "expected (declare-const <name> Real)")
        name, sort = items[1], items[2]
        m = _VAR.match(name.text)
        if not m:
            raise self.src.error(
                name.pos, f"variable {name.text!r}: VNN-LIB variables are named X_<i> (inputs) or Y_<i> (outputs)"
            )
        if sort.text != "Real":
            raise self.src.error(sort.pos, f"variable {name.text} has sort {sort.text!r}; only Real is supported")
        var = (m.group(1), int(m.group(2)))
        if var in self.decl_pos:
            raise self.src.error(name.pos, f"variable {name.text} is declared twice")
        self.decl_pos[var] = name.pos

    def dimensions(self) -> tuple[int, int]:
        sizes = {}
        for kind, role in (("X", "input"), ("Y", "output")):
            indices = sorted(i for k, i in self.decl_pos if k == kind)
            if not indices:
                raise self.src.error(0, f"no {role} variables declared (expected (declare-const {kind}_0 Real) ...)")
            if indices[-1] != len(indices) - 1:
                missing = next(i for i, j in enumerate(indices) if i != j)
                raise self.src.error(
                    self.decl_pos[(kind, indices[-1])],
                    f"{role} variables must be {kind}_0 ... {kind}_{indices[-1]} without gaps; {kind}_{missing} is not declared",
                )
            sizes[kind] = len(indices)
        return sizes["X"], sizes["Y"]

    # -- terms --------------------------------------------------------------------------------
    def linear(self, node: Node) -> _Linear:
        if isinstance(node, Sym):
            text = node.text
            if _NUMBER.match(text):
                value = self.numbers.get(text)
                if value is None:
                    value = self.numbers[text] = Fraction(text)
                    self.to_float(value, node.pos, f"number {text}")
                return _Linear({}, value)
            m = _VAR.match(text)
            if m:
                var = (m.group(1), int(m.group(2)))
                if var not in self.decl_pos:
                    raise self.src.error(node.pos, f"undeclared variable {text} (add (declare-const {text} Real))")
                return _Linear({var: _ONE}, _ZERO)
            raise self.src.error(node.pos, f"unknown symbol {text!r}: expected a number or a declared X_i/Y_i")
        op = node.head
        if op is None:
            raise self.src.error(node.pos, "expected an operator such as +, -, * after '('")
        args = node.items[1:]
        if op not in _ARITHMETIC:
            raise self.src.error(
                node.pos, f"unsupported operator {op!r} in a term; supported: + - * / (linear arithmetic)"
            )
        if not args:
            raise self.src.error(node.pos, f"operator {op!r} needs at least one argument")
        terms = [self.linear(a) for a in args]
        if op == "+":
            result = _Linear({}, _ZERO)
            for t in terms:
                result.add(t)
            return result
        if op == "-":
            if len(terms) == 1:
                return terms[0].scaled(-_ONE)
            result = _Linear(dict(terms[0].coefs), terms[0].const)
            for t in terms[1:]:
                result.add(t, -1)
            return result
        if op == "*":
            variable = [t for t in terms if t.coefs]
            if len(variable) > 1:
                raise self.src.error(node.pos, "nonlinear term: '*' may have at most one non-constant factor")
            factor = math.prod((t.const for t in terms if not t.coefs), start=_ONE)
            return variable[0].scaled(factor) if variable else _Linear({}, factor)
        # "/"
        if len(terms) < 2 or any(t.coefs for t in terms[1:]):
            raise self.src.error(node.pos, "'/' needs a term divided by non-zero constants, e.g. (/ X_0 2)")
        divisor = math.prod((t.const for t in terms[1:]), start=_ONE)
        if divisor == 0:
            raise self.src.error(node.pos, "division by zero")
        return terms[0].scaled(1 / divisor)

    def to_float(self, value: Fraction, pos: int, what: str = "a constant of this constraint") -> float:
        """``value`` as float64 (round to nearest), or an error where it is beyond float64's range."""
        try:
            f = float(value)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            raise self.src.error(pos, f"{what} is out of the float64 range")
        return f

    def atom(self, left: Node, right: Node, pos: int, strict: bool = False) -> _Atom:
        """``left <= right`` as ``left - right <= 0`` (``<`` if ``strict``)."""
        if isinstance(left, Sym) and isinstance(right, Sym):  # the common (<= X_3 0.5): no term algebra
            lin = self.linear(left)
            other = self.linear(right)
            for v, c in other.coefs.items():
                lin.coefs[v] = lin.coefs[v] - c if v in lin.coefs else -c
            if other.const:
                lin.const = -other.const if not lin.const else lin.const - other.const
        else:
            lin = self.linear(left)
            lin.add(self.linear(right), -1)
        coefs = {v: c for v, c in lin.coefs.items() if c != 0}
        kinds = {k for k, _ in coefs}
        if len(kinds) > 1:
            raise self.src.error(
                pos, "constraint mixes input (X) and output (Y) variables; each atom must use only one kind"
            )
        return _Atom(coefs, lin.const, kinds.pop() if kinds else None, pos, strict)

    # -- formulas -----------------------------------------------------------------------------
    def dnf(self, node: Node) -> list[list[_Atom]]:
        """The formula as a list of conjunctions (each a list of atoms)."""
        if isinstance(node, Sym):
            if node.text == "true":
                return [[]]
            if node.text == "false":
                return []
            raise self.src.error(node.pos, f"expected a formula such as (<= X_0 1), got {node.text!r}")
        op = node.head
        args = node.items[1:]
        if op == "and":
            return self.conjunction(args)
        if op == "or":
            result: list[list[_Atom]] = []
            for a in args:
                result.extend(self.dnf(a))
                self.check_size(len(result), node.pos)
            return result
        if op in _COMPARISONS:
            if len(args) < 2:
                raise self.src.error(node.pos, f"comparison {op!r} needs at least two arguments")
            atoms: list[_Atom] = []
            strict = op in ("<", ">")
            for a, b in zip(args, args[1:]):
                if op in ("<=", "<", "="):
                    atoms.append(self.atom(a, b, node.pos, strict))
                if op in (">=", ">", "="):
                    atoms.append(self.atom(b, a, node.pos, strict))
            return [atoms]
        if op is None:
            raise self.src.error(node.pos, "expected a formula: (and ...), (or ...) or a comparison")
        raise self.src.error(
            node.pos,
            f"unsupported operator {op!r} in a formula; supported: and, or, <=, >=, <, >, = over linear terms",
        )

    def conjunction_parts(
        self, formulas: tuple[Node, ...] | list[Node]
    ) -> tuple[list[_Atom], list[list[_Atom]]]:
        """DNF of ``(and formulas...)`` as ``(common, terms)``: the DNF is ``common + t`` for
        each ``t`` in ``terms`` (``terms == []`` means false). Single-term parts are collected
        once in ``common`` instead of being copied into every disjunct."""
        common: list[_Atom] = []
        branches: list[list[list[_Atom]]] = []
        for f in formulas:
            terms = self.dnf(f)
            if not terms:
                return common, []
            if len(terms) == 1:
                common.extend(terms[0])
            else:
                branches.append(terms)
        product: list[list[_Atom]] = [[]]
        for terms in branches:
            self.check_size(len(product) * len(terms), formulas[0].pos if formulas else 0)
            product = [p + t for p in product for t in terms]
        return common, product

    def conjunction(self, formulas: tuple[Node, ...] | list[Node]) -> list[list[_Atom]]:
        common, terms = self.conjunction_parts(formulas)
        return [common + t for t in terms]

    def check_size(self, n: int, pos: int) -> None:
        if n > MAX_DISJUNCTS:
            raise self.src.error(pos, f"formula expands to more than {MAX_DISJUNCTS} disjuncts")

    # -- assembly -----------------------------------------------------------------------------
    def translate(self, nodes: list[Node]) -> Specification:
        asserts: list[Node] = []
        for node in nodes:
            assert isinstance(node, SList)  # read_sexprs rejects bare top-level atoms
            head = node.head
            if head == "declare-const":
                self.declare(node)
            elif head == "assert":
                if len(node.items) != 2:
                    raise self.src.error(node.pos, "expected (assert <formula>) with exactly one formula")
                asserts.append(node.items[1])
            elif head in _IGNORED_COMMANDS:
                continue
            else:
                what = repr(head) if head is not None else "a list"
                raise self.src.error(
                    node.pos, f"unsupported top-level command {what}; expected declare-const or assert"
                )
        n_in, n_out = self.dimensions()
        if not asserts:
            raise self.src.error(END_OF_TEXT, "no (assert ...) in the file")
        # Top-level asserts are conjoined; their shared atoms are applied once.
        common, terms = self.conjunction_parts(asserts)
        base = _Partial.empty(n_in, n_out)
        self.apply(base, common)
        groups: dict[bytes, tuple[InputBox, list[LinearConstraints]]] = {}
        first_empty: tuple[int, str] | None = base.infeasible
        for term in terms:
            part = base.copy()
            self.apply(part, term)
            if part.infeasible is not None:
                first_empty = first_empty or part.infeasible
                continue
            box = self.box(part)
            key = (part.lower.tobytes() + part.upper.tobytes() + part.lower_strict.tobytes()
                   + part.upper_strict.tobytes())
            if key not in groups:
                groups[key] = (box, [])
            groups[key][1].append(part.constraints())
        if not groups:
            pos, why = first_empty if first_empty else (END_OF_TEXT, "the formula is false")
            raise self.src.error(
                pos, f"the specification describes no possible counterexample ({why}); nothing to verify"
            )
        if first_empty is not None:
            logger.warning("%s: dropped infeasible disjunct(s): %s", self.src.name, first_empty[1])
        return Specification(tuple((box, OutputSpec(tuple(cons))) for box, cons in groups.values()))

    def apply(self, part: _Partial, atoms: list[_Atom]) -> None:
        """Add ``atoms`` to a disjunct under construction (tightening bounds, adding rows)."""
        lower, upper = part.lower, part.upper
        for atom in atoms:
            if atom.kind == "Y":
                row = np.zeros(part.n_out)
                for (_, j), c in atom.coefs.items():
                    row[j] = self.to_float(c, atom.pos)
                part.rows.append(row)
                part.bounds.append(self.to_float(-atom.const, atom.pos))
                part.strict.append(atom.strict)
                exact_row = [_ZERO] * part.n_out
                for (_, j), c in atom.coefs.items():
                    exact_row[j] = c
                part.exact.append((tuple(exact_row), -atom.const))
            elif atom.kind == "X":
                if len(atom.coefs) != 1:
                    raise self.src.error(
                        atom.pos,
                        "input constraints must bound one variable each, e.g. (<= X_3 0.5);"
                        " general linear input constraints are not supported",
                    )
                ((_, i), a), = atom.coefs.items()
                exact = -atom.const if a == 1 else (atom.const if a == -1 else -atom.const / a)
                self.to_float(exact, atom.pos)
                value, strict = _float_bound(exact, atom.strict, upper=a > 0)
                if a > 0 and (value < upper[i] or (value == upper[i] and strict and not part.upper_strict[i])):
                    upper[i], part.upper_strict[i], part.upper_pos[i] = value, strict, atom.pos
                elif a < 0 and (value > lower[i] or (value == lower[i] and strict and not part.lower_strict[i])):
                    lower[i], part.lower_strict[i], part.lower_pos[i] = value, strict, atom.pos
            elif (atom.const >= 0 if atom.strict else atom.const > 0) and part.infeasible is None:
                part.infeasible = (atom.pos, "a constant comparison is false")  # e.g. (< Y_0 Y_0)
        if part.infeasible is None:
            empty = np.flatnonzero((lower > upper) | ((lower == upper) & (part.lower_strict | part.upper_strict)))
            if empty.size:
                i = int(empty[0])
                part.infeasible = (
                    int(max(part.lower_pos[i], part.upper_pos[i])),
                    f"X_{i} has lower bound {lower[i]!r} > upper bound {upper[i]!r}" if lower[i] > upper[i]
                    else f"X_{i} must be strictly above or below {lower[i]!r} and at most and at least it",
                )

    def box(self, part: _Partial) -> InputBox:
        """The disjunct's input box; every input must have both bounds."""
        for arr, side, op in ((part.lower, "lower", ">="), (part.upper, "upper", "<=")):
            missing = np.flatnonzero(~np.isfinite(arr))
            if missing.size:
                i = int(missing[0])
                raise self.src.error(
                    self.decl_pos[("X", i)],
                    f"input X_{i} has no {side} bound ({missing.size} input(s) lack one); every input"
                    f" needs (>= X_i lo) and (<= X_i hi), e.g. (assert ({op} X_{i} 0.0))",
                )
        return InputBox(part.lower, part.upper, part.lower_strict, part.upper_strict)


@dataclass(slots=True)
class _Partial:
    """A disjunct under construction: input bounds (with where they were set) and output rows."""

    n_out: int
    lower: np.ndarray
    upper: np.ndarray
    lower_pos: np.ndarray
    upper_pos: np.ndarray
    rows: list[np.ndarray]
    bounds: list[float]
    lower_strict: np.ndarray
    upper_strict: np.ndarray
    strict: list[bool]
    exact: list[tuple[tuple[Fraction, ...], Fraction]]
    infeasible: tuple[int, str] | None = None

    @classmethod
    def empty(cls, n_in: int, n_out: int) -> _Partial:
        return cls(
            n_out,
            np.full(n_in, -np.inf),
            np.full(n_in, np.inf),
            np.full(n_in, -1, dtype=np.int64),
            np.full(n_in, -1, dtype=np.int64),
            [],
            [],
            np.zeros(n_in, dtype=bool),
            np.zeros(n_in, dtype=bool),
            [],
            [],
        )

    def copy(self) -> _Partial:
        return _Partial(
            self.n_out,
            self.lower.copy(),
            self.upper.copy(),
            self.lower_pos.copy(),
            self.upper_pos.copy(),
            list(self.rows),
            list(self.bounds),
            self.lower_strict.copy(),
            self.upper_strict.copy(),
            list(self.strict),
            list(self.exact),
            self.infeasible,
        )

    def constraints(self) -> LinearConstraints:
        C = np.array(self.rows) if self.rows else np.zeros((0, self.n_out))
        d = np.array(self.bounds, dtype=np.float64)
        inexact = any(not _exact_float(b) or not all(_exact_float(c) for c in row) for row, b in self.exact)
        return LinearConstraints(C, d, np.array(self.strict, dtype=bool), tuple(self.exact) if inexact else None)


def _exact_float(value: Fraction) -> bool:
    """Whether float64 holds ``value`` exactly."""
    if value.denominator & (value.denominator - 1):  # not a power of two
        return False
    n, d = float(value).as_integer_ratio()
    return n * value.denominator == value.numerator * d


def _float_bound(value: Fraction, strict: bool, upper: bool) -> tuple[float, bool]:
    """An input bound as (float64, strict) saying the same of every float: exact values as they are;
    others as their float64 neighbour outside the bound, made strict."""
    f = float(value)
    n, d = f.as_integer_ratio()
    left, right = n * value.denominator, value.numerator * d  # f vs value, exactly (d > 0)
    if left == right:
        return f, strict
    if upper and left < right:
        f = math.nextafter(f, math.inf)
    elif not upper and left > right:
        f = math.nextafter(f, -math.inf)
    return f, True


def parse_vnnlib_text(
    text: str, source: str = "<string>", n_inputs: int | None = None, n_outputs: int | None = None
) -> Specification:
    """Parse VNN-LIB ``text``; ``source`` names it in error messages. See :func:`parse_vnnlib`."""
    src = SourceText(text, source)
    nodes = read_sexprs(text, source)
    if not nodes:
        raise src.error(0, "empty VNN-LIB file: no declarations or assertions")
    translator = _Translator(src)
    try:
        spec = translator.translate(nodes)
    except RecursionError as exc:
        raise InputError(f"{source}: formula is nested too deeply to translate") from exc
    for given, actual, kind in ((n_inputs, spec.n_in, "X"), (n_outputs, spec.n_out, "Y")):
        if given is not None and given != actual:
            role = "input" if kind == "X" else "output"
            raise src.error(
                translator.decl_pos[(kind, actual - 1)],
                f"the file declares {actual} {role} variables ({kind}_0..{kind}_{actual - 1})"
                f" but the network has {given} {role}s",
            )
    return spec


def _looks_like_path(value: str) -> bool:
    """A one-line string without '(' (or naming an existing file) is a path, not VNN-LIB text."""
    stripped = value.strip()
    if not stripped or "\n" in stripped or stripped.startswith(";"):
        return False
    return "(" not in stripped or os.path.isfile(value)


def parse_vnnlib(
    path_or_text: PathOrText, n_inputs: int | None = None, n_outputs: int | None = None
) -> Specification:
    """Parse a VNN-LIB property into a :class:`Specification` (see the module docstring).

    ``path_or_text`` is a path (``Path``/``os.PathLike``, or a ``str`` that contains no ``(`` or
    newline, or names an existing file; ``.gz`` files are decompressed) or the VNN-LIB text
    itself. ``n_inputs``/``n_outputs``, when given, must match the declared ``X``/``Y`` counts
    (the network's flat input and output sizes). Raises :class:`VnnlibError` (an
    :class:`InputError`) with file name, line and column for malformed or unsupported files.
    """
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and _looks_like_path(path_or_text)
    ):
        path = Path(path_or_text)
        text = read_text_file(path, "VNN-LIB file")
        return parse_vnnlib_text(text, str(path), n_inputs, n_outputs)
    if not isinstance(path_or_text, str):
        raise InputError(f"expected a path or VNN-LIB text, got {type(path_or_text).__name__}")
    return parse_vnnlib_text(path_or_text, "<string>", n_inputs, n_outputs)
