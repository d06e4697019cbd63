"""The complete verifier: MILP encoding (Tjeng, Xiao & Tedrake) solved with HiGHS."""

from robustkit.milp.encoder import Encoding, encode, new_highs
from robustkit.milp.solve import SolveResult, row_bounds, solve_violation

__all__ = ["Encoding", "encode", "new_highs", "SolveResult", "row_bounds", "solve_violation"]
