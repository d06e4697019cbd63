"""Verification properties: input boxes and linear output conditions describing a *violation*.

Conventions (shared by the VNN-LIB parser, bound propagation, the MILP encoding and the
verifier):

* Inputs are flat float64 vectors in the **row-major flattening** of the network's input tensor
  (VNN-LIB ``X_i`` is element ``i`` of ``x.reshape(-1)``).
* An :class:`InputBox` is the axis-aligned box ``lower <= x <= upper`` (closed, finite).
* A :class:`LinearConstraints` ``(C, d)`` is the **conjunction** ``C @ y <= d`` (row-wise,
  "less than or equal"), over the network's flat output ``y``.
* An :class:`OutputSpec` is a **disjunction** of ``LinearConstraints``: the outputs ``y``
  *violate* the property iff they satisfy at least one disjunct. (This is the VNN-LIB
  convention: the file describes the counterexample region, ``sat`` = a violation exists.)
* A :class:`Specification` is a disjunction of regions ``(InputBox, OutputSpec)``: the
  property is violated (``sat``) iff for some region some ``x`` in its box gives ``y = f(x)``
  satisfying its output spec; it holds (``unsat``) iff no region is violated.

Strict VNN-LIB inequalities are stored as their closure (``<`` as ``<=``) with a flag per row
(``LinearConstraints.strict``) and per input bound (``InputBox.lower_strict``/``upper_strict``):
a proof of the closure covers the strict region, and a counterexample must satisfy every strict
comparison strictly (:meth:`LinearConstraints.satisfied_by`, :meth:`InputBox.contains`); see
:mod:`robustkit.vnnlib.parser`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from robustkit.errors import InputError

if TYPE_CHECKING:
    from robustkit.network.floatfmt import FloatFormat

__all__ = [
    "InputBox",
    "LinearConstraints",
    "OutputSpec",
    "Specification",
    "eps_box",
    "robustness_spec",
]


def _frozen_array(value: object, what: str, ndim: int) -> np.ndarray:
    """A read-only float64 copy of ``value`` with ``ndim`` dimensions, all finite."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be an array of numbers: {exc}") from exc
    if ndim == 1:
        arr = arr.reshape(-1)
    if arr.ndim != ndim:
        raise InputError(f"{what} must have {ndim} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise InputError(f"{what} must be finite; entry {bad} is {arr[tuple(bad)]}")
    arr.setflags(write=False)
    return arr


def _frozen_flags(value: object, size: int, what: str) -> np.ndarray | None:
    """A read-only bool copy of ``value`` of length ``size`` (None: no flag set)."""
    if value is None:
        return None
    arr = np.array(value, dtype=bool).reshape(-1)
    if arr.size != size:
        raise InputError(f"{what} has {arr.size} entries, expected {size}")
    if not arr.any():
        return None
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class InputBox:
    """Axis-aligned box ``lower <= x <= upper`` over the flat (row-major) input.

    Both bounds are stored as flat read-only float64 arrays; construction checks that they
    have the same length (>= 1), are finite, and that ``lower <= upper`` everywhere.
    ``lower_strict``/``upper_strict`` (bool per input, default none) make a side strict
    (``lower < x``, from VNN-LIB's ``>``): bounds are computed over the closed box, but a point
    on a strict side is not in the box (:meth:`contains`).
    """

    lower: np.ndarray
    upper: np.ndarray
    lower_strict: np.ndarray | None = None
    upper_strict: np.ndarray | None = None

    def __post_init__(self) -> None:
        lower = _frozen_array(self.lower, "input box lower bound", 1)
        upper = _frozen_array(self.upper, "input box upper bound", 1)
        if lower.shape != upper.shape:
            raise InputError(
                f"input box bounds differ in size: lower has {lower.size}, upper has {upper.size}"
            )
        if lower.size == 0:
            raise InputError("input box must have at least one dimension")
        bad = np.flatnonzero(lower > upper)
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"input box is empty: lower[{i}] = {lower[i]!r} > upper[{i}] = {upper[i]!r}"
                f" ({bad.size} such entries)"
            )
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        ls = _frozen_flags(self.lower_strict, lower.size, "lower_strict")
        us = _frozen_flags(self.upper_strict, lower.size, "upper_strict")
        object.__setattr__(self, "lower_strict", ls)
        object.__setattr__(self, "upper_strict", us)
        if ls is not None or us is not None:
            open_side = (ls if ls is not None else False) | (us if us is not None else False)
            empty = np.flatnonzero((lower == upper) & open_side)
            if empty.size:
                i = int(empty[0])
                raise InputError(f"input box is empty: input {i} must be strictly beside {lower[i]!r} "
                                 f"and equal to it ({empty.size} such entries)")

    @property
    def n(self) -> int:
        """Number of (flat) input dimensions."""
        return int(self.lower.size)

    @property
    def center(self) -> np.ndarray:
        return (self.lower + self.upper) / 2.0

    @property
    def radius(self) -> np.ndarray:
        """Half-widths ``(upper - lower) / 2`` (the L-inf radius per coordinate)."""
        return (self.upper - self.lower) / 2.0

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """Whether ``lower - tol <= x <= upper + tol`` (``x`` is flattened row-major)."""
        if tol < 0:
            raise InputError(f"tolerance must be >= 0, got {tol}")
        flat = np.asarray(x, dtype=np.float64).reshape(-1)
        if flat.size != self.n:
            raise InputError(f"point has {flat.size} entries, the input box has {self.n}")
        if not np.all(np.isfinite(flat)):
            return False
        above = flat > self.lower - tol if tol == 0 else flat >= self.lower - tol
        below = flat < self.upper + tol if tol == 0 else flat <= self.upper + tol
        low_ok = np.where(self.lower_strict, above, flat >= self.lower - tol) if self.lower_strict is not None \
            else flat >= self.lower - tol
        high_ok = np.where(self.upper_strict, below, flat <= self.upper + tol) if self.upper_strict is not None \
            else flat <= self.upper + tol
        return bool(np.all(low_ok) and np.all(high_ok))

    @property
    def is_closed(self) -> bool:
        """Whether no side is strict."""
        return self.lower_strict is None and self.upper_strict is None

    def closure(self) -> InputBox:
        """The same box with every side closed."""
        return self if self.is_closed else InputBox(self.lower, self.upper)

    def hull(self, fmt: "FloatFormat") -> InputBox:
        """The closed box of ``fmt`` values around this one (each bound rounded outward): a network
        that computes in ``fmt`` is fed ``fmt`` values, and every value it can be fed for a point of
        this box (the point rounded to nearest) lies in the hull; a proof over the hull covers both.
        ``InputError`` if a bound is beyond the format's range."""
        lo, hi = fmt.round_down(self.lower), fmt.round_up(self.upper)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise InputError(f"the input box reaches beyond {fmt.name}'s range (+-{fmt.max:.4g}), the network's "
                             "input type")
        return InputBox(lo, hi)

    def representable(self, fmt: "FloatFormat") -> tuple[np.ndarray, np.ndarray]:
        """Per input, the least and greatest ``fmt`` value a counterexample may take: the values of
        the format that satisfy the bounds (strict ones strictly), or, for an input whose bounds
        hold no such value (pinned to a number the format cannot represent, such as 0.1 in
        float32), the values the network is fed for the box's own points: ``[rn(lower), rn(upper)]``
        (round to nearest). Every value in between is a value of ``fmt`` the network can see."""
        lo, hi = fmt.round_up(self.lower), fmt.round_down(self.upper)
        with np.errstate(over="ignore"):
            if self.lower_strict is not None:
                step = np.nextafter(lo.astype(fmt.dtype), fmt.dtype.type(np.inf)).astype(np.float64)
                lo = np.where(self.lower_strict & (lo == self.lower), step, lo)
            if self.upper_strict is not None:
                step = np.nextafter(hi.astype(fmt.dtype), fmt.dtype.type(-np.inf)).astype(np.float64)
                hi = np.where(self.upper_strict & (hi == self.upper), step, hi)
        pinned = lo > hi
        if pinned.any():
            lo = np.where(pinned, fmt.round_nearest(self.lower), lo)
            hi = np.where(pinned, fmt.round_nearest(self.upper), hi)
        return lo, hi

    def admits(self, x: np.ndarray, fmt: "FloatFormat") -> bool:
        """Whether ``x`` (flat; values of ``fmt``) is a point the network may be fed for this box:
        within :meth:`representable` in every input."""
        flat = np.asarray(x, dtype=np.float64).reshape(-1)
        if flat.size != self.n or not np.all(np.isfinite(flat)):
            return False
        if not np.array_equal(fmt.round_nearest(flat), flat):
            return False
        lo, hi = self.representable(fmt)
        return bool(np.all(flat >= lo) and np.all(flat <= hi))

    def clip(self, x: np.ndarray) -> np.ndarray:
        """Project ``x`` (flattened) onto the box."""
        return np.clip(np.asarray(x, dtype=np.float64).reshape(-1), self.lower, self.upper)

    def same_as(self, other: InputBox) -> bool:
        """Exact equality of both bounds and of their strictness."""
        def flags(a: np.ndarray | None) -> np.ndarray:
            return np.zeros(self.n, dtype=bool) if a is None else a

        return bool(
            np.array_equal(self.lower, other.lower) and np.array_equal(self.upper, other.upper)
            and np.array_equal(flags(self.lower_strict), flags(other.lower_strict))
            and np.array_equal(flags(self.upper_strict), flags(other.upper_strict))
        )

    def __repr__(self) -> str:
        return (
            f"InputBox(n={self.n}, lower in [{self.lower.min():g}, {self.lower.max():g}],"
            f" upper in [{self.upper.min():g}, {self.upper.max():g}])"
        )


@dataclass(frozen=True, eq=False)
class LinearConstraints:
    """The conjunction ``C @ y <= d`` over the flat network output ``y``.

    ``C`` has shape ``(k, n_out)`` and ``d`` shape ``(k,)``. ``k = 0`` is allowed and means
    "no condition on the outputs" (always satisfied). ``strict`` (bool per row, default none)
    marks rows that are strict (``C y < d``, from VNN-LIB's ``<``/``>``): bounds treat every row as
    non-strict (the closure), a counterexample must satisfy a strict row strictly.
    """

    C: np.ndarray
    d: np.ndarray
    strict: np.ndarray | None = None
    # the rows as written, where float64 rounds them (VNN-LIB ``0.1``): (coefficients, bound) exactly
    exact: tuple[tuple[tuple[Fraction, ...], Fraction], ...] | None = None

    def __post_init__(self) -> None:
        C = _frozen_array(self.C, "constraint matrix C", 2)
        d = _frozen_array(self.d, "constraint bounds d", 1)
        if C.shape[0] != d.size:
            raise InputError(f"C has {C.shape[0]} rows but d has {d.size} entries")
        if C.shape[1] == 0:
            raise InputError("C must have at least one column (one per network output)")
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "strict", _frozen_flags(self.strict, d.size, "strict"))
        if self.exact is not None:
            exact = tuple((tuple(Fraction(c) for c in row), Fraction(b)) for row, b in self.exact)
            if len(exact) != d.size or any(len(row) != C.shape[1] for row, _ in exact):
                raise InputError("exact rows must match C and d in shape")
            object.__setattr__(self, "exact", exact)

    @property
    def n_out(self) -> int:
        return int(self.C.shape[1])

    @property
    def k(self) -> int:
        """Number of rows (atomic constraints) in the conjunction."""
        return int(self.C.shape[0])

    def slack(self, y: np.ndarray) -> np.ndarray:
        """``d - C @ y`` per row: all rows >= 0 iff ``y`` satisfies the conjunction."""
        flat = np.asarray(y, dtype=np.float64).reshape(-1)
        if flat.size != self.n_out:
            raise InputError(f"output has {flat.size} entries, the constraints expect {self.n_out}")
        return self.d - self.C @ flat

    def satisfied_by(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """Whether ``C @ y <= d + tol`` holds for every row (``<`` for strict rows).

        Exact: ``d - C y`` is evaluated in rational arithmetic where float64 could round a row
        onto or off its boundary (a tie of two outputs in a strict comparison)."""
        s = self.slack(y)
        if not np.all(np.isfinite(s)):
            return False
        if tol == 0:
            s = self._exact_slack(y, s)
        ok = s >= -tol if self.strict is None else np.where(self.strict, s > -tol, s >= -tol)
        return bool(np.all(ok))

    def _exact_slack(self, y: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``d - C y`` in exact arithmetic (its sign kept through the conversion back to float) for
        every row given :attr:`exact`, and for the rows whose float64 value is within rounding of 0;
        the other rows as computed."""
        flat = np.asarray(y, dtype=np.float64).reshape(-1)
        if self.exact is not None:
            rows = range(self.k)
        else:
            scale = np.abs(self.C) @ np.abs(flat) + np.abs(self.d)
            rows = np.flatnonzero(np.abs(s) <= 4 * (self.n_out + 2) * np.finfo(np.float64).eps * scale).tolist()
        if not rows:
            return s
        ys = [Fraction(float(v)) for v in flat]
        out = s.copy()
        for r in rows:
            coefs, bound = self.exact[r] if self.exact is not None else \
                ([Fraction(float(c)) for c in self.C[r]], Fraction(float(self.d[r])))
            value = bound - sum((c * v for c, v in zip(coefs, ys) if c != 0), Fraction(0))
            out[r] = 0.0 if value == 0 else float(np.sign(float(value))) * max(abs(float(value)), 1e-300)
        return out

    def __repr__(self) -> str:
        return f"LinearConstraints(k={self.k}, n_out={self.n_out})"


@dataclass(frozen=True, eq=False)
class OutputSpec:
    """A disjunction of :class:`LinearConstraints`: ``y`` violates iff some disjunct holds.

    Behaves like the tuple of its disjuncts (``len``, iteration, indexing).
    """

    disjuncts: tuple[LinearConstraints, ...]

    def __post_init__(self) -> None:
        items = tuple(self.disjuncts)
        if not items:
            raise InputError("an output spec needs at least one disjunct")
        for item in items:
            if not isinstance(item, LinearConstraints):
                raise InputError(f"output spec disjuncts must be LinearConstraints, got {type(item)}")
        n_outs = {item.n_out for item in items}
        if len(n_outs) != 1:
            raise InputError(f"output spec disjuncts disagree on the output size: {sorted(n_outs)}")
        object.__setattr__(self, "disjuncts", items)

    @classmethod
    def of(cls, value: OutputSpec | LinearConstraints | Iterable[LinearConstraints]) -> OutputSpec:
        """Coerce one ``LinearConstraints`` or a sequence of them into an ``OutputSpec``."""
        if isinstance(value, OutputSpec):
            return value
        if isinstance(value, LinearConstraints):
            return cls((value,))
        return cls(tuple(value))

    def __len__(self) -> int:
        return len(self.disjuncts)

    def __iter__(self) -> Iterator[LinearConstraints]:
        return iter(self.disjuncts)

    def __getitem__(self, index: int) -> LinearConstraints:
        return self.disjuncts[index]

    @property
    def n_out(self) -> int:
        return self.disjuncts[0].n_out

    def satisfied_by(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """Whether ``y`` satisfies at least one disjunct (i.e. ``y`` is a violating output)."""
        return any(lc.satisfied_by(y, tol) for lc in self.disjuncts)

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All rows at once: ``(C_all, d_all, disjunct_index)``, row ``r`` from disjunct ``index[r]``."""
        C_all = np.concatenate([lc.C for lc in self.disjuncts], axis=0)
        d_all = np.concatenate([lc.d for lc in self.disjuncts])
        index = np.concatenate(
            [np.full(lc.k, i, dtype=np.int64) for i, lc in enumerate(self.disjuncts)]
        )
        return C_all, d_all, index

    def robustness_label(self) -> int | None:
        """The label ``t`` if this is exactly "argmax is not t" (one row ``e_t - e_j <= 0`` per
        disjunct, all ``j != t`` present once), else ``None``. Useful for targeted attacks."""
        n = self.n_out
        if len(self.disjuncts) != n - 1:
            return None
        label: int | None = None
        others: set[int] = set()
        for lc in self.disjuncts:
            if lc.k != 1 or lc.d[0] != 0.0:
                return None
            row = lc.C[0]
            pos = np.flatnonzero(row > 0)
            neg = np.flatnonzero(row < 0)
            if pos.size != 1 or neg.size != 1 or np.count_nonzero(row) != 2:
                return None
            t, j = int(pos[0]), int(neg[0])
            if row[t] != -row[j]:
                return None
            if label is None:
                label = t
            if t != label or j in others:
                return None
            others.add(j)
        return label

    def __repr__(self) -> str:
        return f"OutputSpec({len(self)} disjuncts, rows={[lc.k for lc in self.disjuncts]}, n_out={self.n_out})"


Region = tuple[InputBox, OutputSpec]


@dataclass(frozen=True, eq=False)
class Specification:
    """A disjunction of regions ``(InputBox, OutputSpec)``; violated iff any region is.

    Usually there is one region. VNN-LIB files whose disjuncts carry their own input bounds
    produce one region per distinct input box. All regions share the input and output sizes.
    The output part of a region may be given as an ``OutputSpec``, a ``LinearConstraints`` or a
    sequence of them; it is stored as an ``OutputSpec``.
    """

    regions: tuple[Region, ...]

    def __post_init__(self) -> None:
        regions: list[Region] = []
        for item in tuple(self.regions):
            try:
                box, out = item
            except (TypeError, ValueError) as exc:
                raise InputError(f"each region must be a pair (InputBox, OutputSpec): {exc}") from exc
            if not isinstance(box, InputBox):
                raise InputError(f"region input must be an InputBox, got {type(box)}")
            regions.append((box, OutputSpec.of(out)))
        if not regions:
            raise InputError("a specification needs at least one region")
        n_ins = {box.n for box, _ in regions}
        n_outs = {out.n_out for _, out in regions}
        if len(n_ins) != 1 or len(n_outs) != 1:
            raise InputError(
                f"regions disagree on sizes: inputs {sorted(n_ins)}, outputs {sorted(n_outs)}"
            )
        object.__setattr__(self, "regions", tuple(regions))

    @classmethod
    def single(cls, box: InputBox, output: OutputSpec | LinearConstraints | Sequence[LinearConstraints]) -> Specification:
        return cls(((box, OutputSpec.of(output)),))

    @property
    def n_in(self) -> int:
        return self.regions[0][0].n

    @property
    def n_out(self) -> int:
        return self.regions[0][1].n_out

    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def bounding_box(self) -> InputBox:
        """The smallest box containing every region's box."""
        lower = np.min(np.stack([b.lower for b, _ in self.regions]), axis=0)
        upper = np.max(np.stack([b.upper for b, _ in self.regions]), axis=0)
        return InputBox(lower, upper)

    def violated_regions(
        self, x: np.ndarray, y: np.ndarray, tol: float = 0.0, out_tol: float = 0.0
    ) -> list[int]:
        """Indices of the regions that ``(x, y)`` violates (see :meth:`is_violated_by`)."""
        flat_x = np.asarray(x, dtype=np.float64).reshape(-1)
        flat_y = np.asarray(y, dtype=np.float64).reshape(-1)
        if flat_x.size != self.n_in:
            raise InputError(f"x has {flat_x.size} entries, the specification has {self.n_in} inputs")
        if flat_y.size != self.n_out:
            raise InputError(f"y has {flat_y.size} entries, the specification has {self.n_out} outputs")
        return [
            i
            for i, (box, out) in enumerate(self.regions)
            if box.contains(flat_x, tol) and out.satisfied_by(flat_y, out_tol)
        ]

    def is_violated_by(
        self, x: np.ndarray, y: np.ndarray, tol: float = 0.0, out_tol: float = 0.0
    ) -> bool:
        """Whether ``(x, y)`` is a counterexample: ``x`` lies in some region's box (with slack
        ``tol``, default exact) and ``y`` satisfies that region's output disjunction (with slack
        ``out_tol`` on ``C @ y <= d``, default exact). ``y`` should be ``f(x)``; this method does
        not run the network. VNN-COMP's checker uses 1e-4 for both slacks."""
        return bool(self.violated_regions(x, y, tol, out_tol))

    def __repr__(self) -> str:
        return f"Specification({len(self)} region(s), n_in={self.n_in}, n_out={self.n_out})"


def eps_box(x0: np.ndarray, eps: float, lo: float = 0.0, hi: float = 1.0) -> InputBox:
    """The L-inf ball ``{x : |x - x0|_inf <= eps}`` intersected with ``[lo, hi]``, in float64.

    ``x0`` is flattened row-major and must itself lie in ``[lo, hi]``; ``lo``/``hi`` may be
    infinite to leave that side unclipped.
    """
    center = np.asarray(x0, dtype=np.float64).reshape(-1)
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise InputError(f"eps must be a finite number >= 0, got {eps}")
    if not lo <= hi:  # also rejects NaN; infinite ends are allowed (no clipping on that side)
        raise InputError(f"valid input range needs lo <= hi, got [{lo}, {hi}]")
    if center.size == 0 or not np.all(np.isfinite(center)):
        raise InputError("x0 must be a non-empty array of finite numbers")
    if center.min() < lo or center.max() > hi:
        raise InputError(
            f"x0 lies outside the valid range [{lo}, {hi}] (min {center.min()}, max {center.max()})"
        )
    return InputBox(np.maximum(center - eps, lo), np.minimum(center + eps, hi))


def robustness_spec(label: int, n_classes: int, box: InputBox) -> Specification:
    """Violation of "argmax stays ``label``": ``OR_{j != label} (y_j - y_label >= 0)``.

    One disjunct per ``j != label``, each a single row ``C = e_label - e_j`` with ``d = 0``
    (``y_label - y_j <= 0``). Ties count as violations, as in VNN-COMP's robustness files.
    """
    if n_classes < 2:
        raise InputError(f"n_classes must be >= 2, got {n_classes}")
    if not 0 <= label < n_classes:
        raise InputError(f"label must be in [0, {n_classes}), got {label}")
    disjuncts = []
    for j in range(n_classes):
        if j == label:
            continue
        row = np.zeros((1, n_classes))
        row[0, label] = 1.0
        row[0, j] = -1.0
        disjuncts.append(LinearConstraints(row, np.zeros(1)))
    return Specification.single(box, OutputSpec(tuple(disjuncts)))
