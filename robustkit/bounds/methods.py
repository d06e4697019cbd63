"""Bound methods by name, applied progressively: ``interval`` < ``crown`` < ``alpha-crown`` <
``lp`` < ``milp``. Each method starts from the bounds of the one before it and intersects, so
later methods are never looser; :func:`run_bounds` reports what each stage cost and how many
unstable ReLUs it removed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from enum import Enum

import torch

from robustkit.bounds.alpha_crown import AlphaCrownConfig, alpha_crown_bounds
from robustkit.bounds.crown import CrownConfig, SpecBounds, as_box, check_spec, crown_bounds, interval_spec
from robustkit.bounds.interval import interval_bounds
from robustkit.bounds.lp import LpConfig, LpStats, lp_tighten
from robustkit.bounds.types import NetBounds
from robustkit.errors import InputError
from robustkit.network import Network

logger = logging.getLogger(__name__)


class BoundMethod(str, Enum):
    """The bound methods, declared once (the CLI's choices and help, the verification config's
    checks and the auto_LiRPA oracle read them from here); each includes all before it (``stages``).

    A member carries: ``summary`` (the help text), ``aliases``, ``alone`` (a verification method
    of its own: incomplete, verified or unknown), ``tightens`` (offered as ``--bounds``, the bounds a
    complete method starts from) and ``lirpa`` (auto_LiRPA's name for it, when it has one)."""

    INTERVAL = ("interval", "interval arithmetic (IBP), layer by layer", ("ibp",), True, True, "IBP")
    CROWN = ("crown", "linear relaxations back-substituted to the input (CROWN)", (), True, True, "backward")
    ALPHA_CROWN = ("alpha-crown", "CROWN with optimised relaxation slopes (alpha-CROWN)",
                   ("alpha", "alphacrown"), True, True, "CROWN-Optimized")
    LP = ("lp", "one LP per unstable neuron over the triangle relaxation (HiGHS)", (), False, True, None)
    MILP = ("milp", "one MILP per unstable neuron: exact bounds (HiGHS)", (), False, False, None)

    summary: str
    aliases: tuple[str, ...]
    alone: bool
    tightens: bool
    lirpa: str | None

    def __new__(cls, value: str, summary: str, aliases: tuple[str, ...], alone: bool, tightens: bool,
                lirpa: str | None) -> "BoundMethod":
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.summary, obj.aliases, obj.alone, obj.tightens, obj.lirpa = summary, aliases, alone, tightens, lirpa
        return obj

    @classmethod
    def parse(cls, name: "str | BoundMethod") -> "BoundMethod":
        """The method called ``name`` (or one of its aliases); ``InputError`` if unknown."""
        if isinstance(name, BoundMethod):
            return name
        key = str(name).strip().lower().replace("_", "-")
        for method in cls:
            if key == method.value or key in method.aliases:
                return method
        raise InputError(f"unknown bound method {name!r}; known methods: {describe_methods(tuple(cls))}")

    @property
    def stages(self) -> tuple["BoundMethod", ...]:
        order = list(BoundMethod)
        return tuple(order[: order.index(self) + 1])


def describe_methods(methods: "tuple[BoundMethod, ...] | tuple[str, ...]") -> str:
    """``interval (alias ibp), crown, ...`` for help texts and errors."""
    out = []
    for m in methods:
        m = BoundMethod.parse(m)
        out.append(m.value + (f" (alias {', '.join(m.aliases[:1])})" if m.aliases[:1] == ("ibp",) else ""))
    return ", ".join(out)


#: Every bound method's name, in order.
BOUND_METHODS: tuple[str, ...] = tuple(m.value for m in BoundMethod)
#: The ``--bounds`` choices: the bounds a complete method starts from.
TIGHTENINGS: tuple[str, ...] = tuple(m.value for m in BoundMethod if m.tightens)
#: Bound methods that are verification methods of their own (incomplete).
INCOMPLETE: tuple[str, ...] = tuple(m.value for m in BoundMethod if m.alone)


@dataclass(frozen=True)
class BoundsConfig:
    """Settings of every stage (the LP stage's ``relaxation`` is set by the stage itself)."""

    crown: CrownConfig = CrownConfig()
    alpha: AlphaCrownConfig = AlphaCrownConfig()
    lp: LpConfig = LpConfig()


@dataclass(frozen=True)
class StageReport:
    """One stage: seconds spent, unstable ReLUs (summed over the batch) after it and removed by it."""

    method: str
    seconds: float
    unstable: int
    removed: int
    lp: LpStats | None = None


@dataclass
class BoundsResult:
    bounds: NetBounds
    spec: SpecBounds | None
    stages: list[StageReport] = field(default_factory=list)


def count_unstable(net: Network, bounds: NetBounds) -> int:
    """Unstable ReLUs (``l < 0 < u`` on the pre-activation) summed over layers and samples."""
    total = 0
    for r in net.split_indices:
        total += int(bounds.phases(net, r)[2].sum())
    return total


def margin_matrix(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Spec rows ``e_label - e_j`` for every ``j != label``: ``(B, num_classes - 1, num_classes)``
    float64; ``C y > 0`` row-wise means the label beats every other class."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise InputError(f"labels must lie in 0..{num_classes - 1}")
    B = labels.numel()
    C = torch.zeros(B, num_classes - 1, num_classes, dtype=torch.float64)
    others = torch.arange(num_classes).unsqueeze(0).expand(B, -1)
    others = others[others != labels.unsqueeze(1)].reshape(B, num_classes - 1)
    rows = torch.arange(num_classes - 1).unsqueeze(0).expand(B, -1)
    C[torch.arange(B).unsqueeze(1), rows, labels.unsqueeze(1).expand(-1, num_classes - 1)] = 1.0
    C[torch.arange(B).unsqueeze(1), rows, others] = -1.0
    return C


def run_bounds(
    net: Network,
    lower: torch.Tensor,
    upper: torch.Tensor,
    method: "str | BoundMethod",
    C: torch.Tensor | None = None,
    time_budget: float | None = None,
    config: BoundsConfig = BoundsConfig(),
) -> BoundsResult:
    """Apply the stages of ``method`` in turn over the box ``[lower, upper]`` (``(B, in_dim)``).

    ``time_budget`` (seconds) limits the optimising stages (alpha-CROWN, LP, MILP; interval and
    CROWN always run to the end): each gets what is left, except that LP leaves half of it to MILP."""
    method = BoundMethod.parse(method)
    if time_budget is not None and time_budget < 0:
        raise InputError(f"time budget must be >= 0 seconds, got {time_budget}")
    lo, hi = as_box(lower, upper)
    if lo.shape[1] != net.in_dim:
        raise InputError(f"input box has {lo.shape[1]} entries per sample, the network takes {net.in_dim}")
    C = check_spec(net, C, lo.shape[0])
    if method in (BoundMethod.LP, BoundMethod.MILP) and not net.piecewise_linear:
        smooth = next(layer.describe() for layer in net.layers if not getattr(layer, "piecewise_linear", True))
        raise InputError(f"bound method {method.value} needs a piecewise-linear network (ReLU only); this one has "
                         f"{smooth}: use interval, crown or alpha-crown")
    start = time.perf_counter()
    stages: list[StageReport] = []
    bounds: NetBounds | None = None
    spec: SpecBounds | None = None
    unstable = 0

    def left() -> float | None:
        return None if time_budget is None else max(0.0, time_budget - (time.perf_counter() - start))

    for stage in method.stages:
        t0 = time.perf_counter()
        lp_stats = None
        if stage is BoundMethod.INTERVAL:
            bounds = interval_bounds(net, lo, hi)
            spec = None if C is None else SpecBounds(*interval_spec(net, bounds, C), "interval")
        elif stage is BoundMethod.CROWN:
            bounds, spec = crown_bounds(net, lo, hi, C, config.crown, bounds)
        elif stage is BoundMethod.ALPHA_CROWN:
            assert bounds is not None
            crown_result = (bounds, spec) if bounds.method == "crown" else None
            bounds, spec = alpha_crown_bounds(net, lo, hi, C, config.alpha, bounds, left(), crown_result)
        else:
            assert bounds is not None
            budget = left()
            if stage is BoundMethod.LP and method is BoundMethod.MILP and budget is not None:
                budget /= 2
            lp_config = replace(config.lp, relaxation=stage.value)
            bounds, spec, lp_stats = lp_tighten(net, bounds, C, spec, lp_config, budget)
        assert bounds is not None
        now = count_unstable(net, bounds)
        removed = 0 if stage is BoundMethod.INTERVAL else unstable - now
        unstable = now
        seconds = time.perf_counter() - t0
        stages.append(StageReport(stage.value, seconds, now, removed, lp_stats))
        logger.debug("%s: %.3fs, %d unstable ReLUs (%d removed)", stage.value, seconds, now, removed)
    assert bounds is not None
    bounds.method = method.value
    if spec is not None:
        spec.method = method.value
    return BoundsResult(bounds, spec, stages)


def compute_bounds(
    net: Network,
    lower: torch.Tensor,
    upper: torch.Tensor,
    method: "str | BoundMethod",
    C: torch.Tensor | None = None,
    time_budget: float | None = None,
) -> tuple[NetBounds, SpecBounds | None]:
    """Bounds of every layer over the box by ``method`` (and its predecessors), and of ``C y``
    when ``C`` (``(B, k, out_dim)`` or ``(k, out_dim)``) is given; see :func:`run_bounds`."""
    result = run_bounds(net, lower, upper, method, C, time_budget)
    return result.bounds, result.spec
