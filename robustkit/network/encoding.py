"""What an operator needs to add itself to a MILP or an LP: a solver-neutral row builder.

The MILP encoder (:mod:`robustkit.milp.encoder`) and the LP tightener (:mod:`robustkit.bounds.lp`)
both implement :class:`RowBuilder`; an operator's ``encode`` (for activations) speaks only to it.
A column stands for a float value of the network within a known error ``acc`` of it (the float
model, :mod:`robustkit.bounds.floaterr`); :data:`ZERO` is the constant 0, which needs no column.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

ZERO = -1  # column index meaning "the constant 0"


class RowBuilder(Protocol):
    """A model under construction."""

    integer: bool  # binaries allowed (MILP); otherwise the operators add their convex hull (LP)

    def add_cols(self, lower: np.ndarray, upper: np.ndarray, scale: np.ndarray | float | None = None,
                 integer: bool = False) -> np.ndarray:
        """New columns with these bounds, relaxed against solver tolerances where the builder does
        so and ``scale`` (the magnitude they are relative to) is given (None: exact, e.g. a
        binary's [0, 1]); returns their indices."""
        ...

    def add_rows(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, lower: np.ndarray,
                 upper: np.ndarray, scale: np.ndarray | float = 0.0) -> None:
        """Rows ``lower <= sum vals * x[cols] <= upper`` given as COO entries (``rows``: local row
        indices from 0; ``cols``: column indices, never :data:`ZERO`), relaxed like columns."""
        ...


def chord_slack(slope: np.ndarray, width: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The float64 rounding of a chord row ``v - s z <= s (acc - l)`` with the slope ``s`` computed
    in float64 (``width``: the chord's run, ``top``: the magnitude of its rise and constants):
    moving its right-hand side up by this keeps every point of the exact chord feasible."""
    return 4 * 2.0**-53 * (np.abs(slope) * width + np.abs(top))
