"""Settings of a verification run (frozen, validated)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from robustkit.bounds.methods import INCOMPLETE, TIGHTENINGS
from robustkit.errors import InputError

Method = str  # one of METHODS
Tighten = str  # one of TIGHTEN
Formulation = Literal["per-target", "max"]

#: The complete methods, then the bound methods that verify alone (``robustkit.bounds.methods``).
COMPLETE = ("milp", "bab")
METHODS = COMPLETE + INCOMPLETE
TIGHTEN = TIGHTENINGS
FORMULATIONS = ("per-target", "max")
BAB_INTERMEDIATE = ("auto", "recompute", "fixed")
BAB_SPLIT = ("auto", "relu", "input")


@dataclass(frozen=True)
class VerifyConfig:
    """How one property is decided.

    ``method``: ``milp`` and ``bab`` (branch and bound over ReLU splits on the ``tighten``
    bounds, :mod:`robustkit.verification.bab`) are complete (verified / falsified); the bound methods alone are
    incomplete (verified / unknown, plus falsified when the attack finds a witness).
    ``tighten``: the bounds that build the MILP (big-M constants, stable ReLUs).
    ``safety_margin``: a property is proven only if the worst case is below ``-safety_margin``.
    ``solver``: the MILP solver by name (:data:`robustkit.milp.solvers.SOLVERS`): ``highs`` through
    highspy, or ``pulp-highs``, ``cbc``, ``gurobi``, ``cplex``, ``scip`` through PuLP.
    ``write_milp``: a directory; each MILP solved is also written there (``.mps``, ``.lp``, ``.json``).
    ``bab_intermediate``: with ``method="bab"``, how a child gets the bounds of the layers after
    its split (:class:`robustkit.verification.bab.BabConfig`'s ``intermediate``: ``auto``,
    ``recompute`` or ``fixed``).
    ``bab_depth_weight``: with ``method="bab"``, the exponent of the branching score's weight
    ``1 + (ReLU layers after the neuron's)`` while recomputing the children's bounds decides
    ReLUs (:class:`robustkit.verification.bab.BabConfig`'s ``depth_weight``; 0: the intercept score alone).
    ``bab_split``: with ``method="bab"``, what a domain splits: ``relu`` (one unstable ReLU,
    :mod:`robustkit.verification.bab`), ``input`` (the input box, halved along one dimension,
    :mod:`robustkit.verification.input_split`), or ``auto``: ``input`` for inputs of at most
    :data:`robustkit.verification.input_split.AUTO_MAX_DIM` dimensions, else ``relu``.
    """

    eps: float = 0.0
    timeout: float = 60.0
    method: Method = "milp"
    tighten: Tighten = "crown"
    formulation: Formulation = "per-target"
    attack_steps: int = 50
    attack_restarts: int = 4
    safety_margin: float = 1e-4
    seed: int = 0
    solver: str = "highs"
    write_milp: str | None = None
    bab_intermediate: str = "auto"
    bab_depth_weight: float = 3.0
    bab_split: str = "auto"

    def __post_init__(self) -> None:
        from robustkit.milp.solvers import SOLVER_NAMES

        if self.solver not in SOLVER_NAMES:
            raise InputError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVER_NAMES)}")
        if not self.eps >= 0:
            raise InputError(f"eps must be >= 0, got {self.eps}")
        if not self.timeout > 0:
            raise InputError(f"timeout must be positive, got {self.timeout}")
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.tighten not in TIGHTEN:
            raise InputError(f"unknown tightening {self.tighten!r}; choose one of {', '.join(TIGHTEN)}")
        if self.formulation not in FORMULATIONS:
            raise InputError(f"unknown formulation {self.formulation!r}; choose one of {', '.join(FORMULATIONS)}")
        if self.attack_steps < 0 or self.attack_restarts < 1:
            raise InputError("attack steps must be >= 0 and restarts >= 1")
        if not self.safety_margin > 0:
            raise InputError("safety_margin must be positive")
        if self.bab_intermediate not in BAB_INTERMEDIATE:
            raise InputError(f"unknown --bab-intermediate {self.bab_intermediate!r}; choose one of "
                             f"{', '.join(BAB_INTERMEDIATE)}")
        if self.bab_split not in BAB_SPLIT:
            raise InputError(f"unknown --bab-split {self.bab_split!r}; choose one of {', '.join(BAB_SPLIT)}")
        if not (self.bab_depth_weight >= 0 and math.isfinite(self.bab_depth_weight)):
            raise InputError(f"--bab-depth-weight must be a finite number >= 0, got {self.bab_depth_weight}")
        if (self.solver != "highs" or self.write_milp is not None) and self.method != "milp":
            raise InputError(f"--solver and --write-milp apply to the MILP (--method milp); method {self.method!r} "
                             f"solves none")

    def to_dict(self) -> dict:
        """The settings that decide results (for the result store's settings hash): ``write_milp``
        is left out, and ``solver``, ``bab_intermediate``, ``bab_depth_weight`` and ``bab_split`` when they are the default, so that
        stores written before these options existed still resume."""
        out = asdict(self)
        out.pop("write_milp")
        if out["solver"] == "highs":
            out.pop("solver")
        if out["bab_intermediate"] == "auto":
            out.pop("bab_intermediate")
        if out["bab_depth_weight"] == 3.0:
            out.pop("bab_depth_weight")
        if out["bab_split"] == "auto":
            out.pop("bab_split")
        return out
