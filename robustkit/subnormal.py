"""Flushing float32 subnormals to zero where only speed, not a result, depends on them.

Weight decay drives weights that stop receiving gradient (and Adam's second moments of their tiny
gradients) into float32's subnormal range (below 1.18e-38), and x86 CPUs compute with subnormal
operands 10-100x slower. `robustkit train` slowed 7x that way (15 s -> 133 s per epoch), and PGD on
a model exported from such a run is 6x slower (`verify/bench_denormals.py`).
:func:`flush_subnormals` switches on flush-to-zero / denormals-are-zero for a block and then puts
back the mode it found. It is used while training and inside an attack's candidate search; never
where a result is certified (projection, success checks, bounds, the MILP, the onnxruntime
re-check), so soundness does not depend on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def subnormals_flushed() -> bool:
    """Whether the calling thread currently flushes float32 subnormals to zero."""
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # subnormal: below 1.18e-38
    return bool((tiny * 1.0).item() == 0.0)


@contextmanager
def flush_subnormals(enabled: bool = True) -> Iterator[bool]:
    """Flush subnormals to zero inside the block (CPU; no-op where unsupported or not ``enabled``).

    Yields whether flushing is active. The previous mode is restored on exit, errors included.
    """
    if not enabled:
        yield subnormals_flushed()
        return
    before = subnormals_flushed()
    active = torch.set_flush_denormal(True)
    try:
        yield active
    finally:
        if active and not before:
            torch.set_flush_denormal(False)


@contextmanager
def gradual_underflow() -> Iterator[None]:
    """IEEE gradual underflow (no flush-to-zero) inside the block, whatever mode the calling thread
    is in; the mode is restored on exit. Where a result is certified (the onnxruntime re-check of a
    counterexample) the arithmetic must be the default one a user gets."""
    before = subnormals_flushed()
    if before:
        torch.set_flush_denormal(False)
    try:
        yield
    finally:
        if before:
            torch.set_flush_denormal(True)
