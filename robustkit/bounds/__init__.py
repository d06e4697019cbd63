"""Bound propagation over robustkit's network representation: interval arithmetic, CROWN,
alpha-CROWN, LP/MILP tightening (applied progressively by :func:`compute_bounds`), ReLU
stability statistics, and an optional auto_LiRPA cross-check backend."""

from robustkit.bounds.alpha_crown import AlphaCrownConfig, alpha_crown_bounds
from robustkit.bounds.crown import CrownConfig, SpecBounds, crown_bounds, interval_spec
from robustkit.bounds.interval import interval_bounds
from robustkit.bounds.lirpa_compat import lirpa_available, lirpa_bounds
from robustkit.bounds.lp import LpConfig, LpStats, lp_tighten
from robustkit.bounds.methods import (
    BoundMethod,
    BoundsConfig,
    BoundsResult,
    StageReport,
    compute_bounds,
    count_unstable,
    margin_matrix,
    run_bounds,
)
from robustkit.bounds.stability import (
    BoundStatistics,
    LayerStability,
    dataset_bound_statistics,
    relu_stability,
    total_unstable,
)
from robustkit.bounds.floaterr import FloatErrors, float_errors
from robustkit.bounds.types import NetBounds

__all__ = [
    "AlphaCrownConfig", "BoundMethod", "BoundStatistics", "BoundsConfig", "BoundsResult", "CrownConfig",
    "LayerStability", "LpConfig", "LpStats", "NetBounds", "SpecBounds", "StageReport", "alpha_crown_bounds",
    "compute_bounds", "count_unstable", "crown_bounds", "dataset_bound_statistics", "interval_bounds",
    "interval_spec", "lirpa_available", "lirpa_bounds", "lp_tighten", "margin_matrix", "relu_stability",
    "run_bounds", "total_unstable", "FloatErrors", "float_errors",
]
