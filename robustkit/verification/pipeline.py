"""Deciding one property: attack first, then bounds, then the MILP (Tjeng, Xiao & Tedrake).

Statuses (robustness of one sample): ``verified``, ``falsified`` (witness re-checked in
onnxruntime), ``misclassified`` (the clean input is already wrong), ``timeout``, ``unknown``.
For a general specification (VNN-LIB) the same stages give ``unsat`` / ``sat`` / ``timeout`` /
``unknown``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robustkit.bounds import NetBounds, interval_bounds
from robustkit.errors import SolverError
from robustkit.milp import encode, solve_violation
from robustkit.spec import InputBox, OutputSpec, Specification, eps_box, robustness_spec
from robustkit.verification.config import VerifyConfig
from robustkit.verification.model import ModelContext
from robustkit.verification.witness import Witness, validate_witness

log = logging.getLogger(__name__)

COMPLETE = ("milp", "bab")  # methods that decide (the others only bound)
# PGD restarts, cycled: (step as a fraction of the box width, gradient slope through inactive
# ReLUs; 0 = the true gradient). The centre start takes small steps, the second restart
# corner-to-corner ones (they cross regions where few ReLUs are on: VNN-COMP mnist_fc 256x4
# prop_6_0.05 falls at once with them and never with small steps); the next two follow a
# leaky surrogate gradient, which leads into regions whose ReLUs are all off, where the true
# gradient is zero (mnist_fc 256x6 prop_1_0.05: found in 5 of 5 seeds with slope 0.01 and in
# none without; 256x2 prop_2_0.03 needs slope 0.05).
ATTACK_SCHEDULE = ((0.1, 0.0), (1.0, 0.0), (0.1, 0.01), (0.1, 0.05))


@dataclass
class Verdict:
    """The outcome for one specification, with what decided it and what it cost."""

    result: str  # "unsat" (holds) | "sat" (witness) | "timeout" | "unknown"
    stage: str  # "attack" | "bounds" | "milp" | "bab" | "none"
    time: float
    witness: Witness | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _spec_objective(output: OutputSpec) -> "callable":  # type: ignore[valid-type]
    C, d, owner = output.stacked()
    Ct = torch.as_tensor(C, dtype=torch.float32)
    dt = torch.as_tensor(d, dtype=torch.float32)
    groups = [torch.as_tensor(np.flatnonzero(owner == k)) for k in range(len(output))]

    def objective(logits: torch.Tensor) -> torch.Tensor:
        slack = dt - logits.reshape(logits.shape[0], -1) @ Ct.T  # (B, rows)
        inf = torch.full((slack.shape[0],), float("inf"), dtype=slack.dtype)
        per = torch.stack([slack[:, g].min(dim=1).values if g.numel() else inf for g in groups], dim=1)
        return per.max(dim=1).values

    return objective


def compute_bounds(ctx: ModelContext, box: InputBox, method: str, C: np.ndarray | None,
                   time_budget: float | None = None) -> tuple[NetBounds, np.ndarray | None]:
    """Layer bounds over ``box`` by ``method`` and, when the method gives them, lower bounds of ``C y``;
    ``time_budget`` (seconds) limits the optimising stages (alpha-CROWN, LP, MILP tightening)."""
    lo = torch.tensor(box.lower[None], dtype=torch.float64)
    hi = torch.tensor(box.upper[None], dtype=torch.float64)
    if method == "interval":
        return interval_bounds(ctx.net, lo, hi), None
    from robustkit.bounds.methods import compute_bounds as _compute  # bound propagation beyond IBP

    Ct = None if C is None else torch.as_tensor(C[None], dtype=torch.float64)
    nb, spec = _compute(ctx.net, lo, hi, method, C=Ct, time_budget=time_budget)
    rows_lower = None if spec is None else spec.lower.reshape(-1).detach().numpy()
    return nb, rows_lower


def _deadline_left(deadline: float) -> float:
    return deadline - time.perf_counter()


def verify_region(ctx: ModelContext, box: InputBox, output: OutputSpec, cfg: VerifyConfig, deadline: float,
                  strict_label: int | None = None, tag: str | None = None) -> Verdict:
    """Decide whether some input in ``box`` satisfies ``output`` (the violation). ``tag`` names the
    files of ``cfg.write_milp`` (default: a digest of the box).

    Proofs are over the box's hull in the network's input type (each bound rounded outward:
    :meth:`InputBox.hull`), which holds every value the network can be fed for a point of the box;
    witnesses are points of that type the box admits (:mod:`robustkit.verification.witness`)."""
    t0 = time.perf_counter()
    details: dict[str, Any] = {}
    hull = box.hull(ctx.net.input_fmt)
    start_x: np.ndarray | None = None
    order = list(range(len(output)))
    if any(dj.k == 0 for dj in output):  # a disjunct without output conditions: any input violates
        w = validate_witness(ctx, box.center, box, output, strict_label)
        if w is not None:
            return Verdict("sat", "attack", time.perf_counter() - t0, w, details)
    # 1. attack
    if cfg.attack_steps > 0:
        ta = time.perf_counter()
        lo = torch.tensor(box.lower, dtype=torch.float32).reshape(1, *ctx.net.sample_shape)
        hi = torch.tensor(box.upper, dtype=torch.float32).reshape(1, *ctx.net.sample_shape)
        from robustkit.attacks import attack_box

        x_adv, best = attack_box(ctx.module, lo, hi, _spec_objective(output), steps=cfg.attack_steps,
                                 restarts=cfg.attack_restarts, seed=cfg.seed, stop_above=0.0,
                                 step_fraction=[f for f, _ in ATTACK_SCHEDULE],
                                 surrogates=[ctx.net.to_torch(s) if s > 0 else None for _, s in ATTACK_SCHEDULE])
        start_x = x_adv.reshape(-1).double().numpy()
        details["time_attack"] = time.perf_counter() - ta
        details["attack_best"] = float(best[0])
        if float(best[0]) >= 0:
            w = validate_witness(ctx, start_x, box, output, strict_label)
            if w is not None:
                return Verdict("sat", "attack", time.perf_counter() - t0, w, details)
        with torch.no_grad():
            y = ctx.module(x_adv).reshape(-1).double().numpy()
        order.sort(key=lambda k: -float(np.min(output[k].slack(y), initial=np.inf)))
    # 2. bounds
    tb = time.perf_counter()
    C, d, owner = output.stacked()
    method = cfg.tighten if cfg.method in COMPLETE else cfg.method
    complete = cfg.method in COMPLETE and ctx.net.piecewise_linear
    if cfg.method in COMPLETE and not complete:
        # Sigmoid/Tanh: no exact encoding; the strongest bounds decide what they can, the rest is open
        details["incomplete"] = f"{cfg.method} does not apply to Sigmoid/Tanh layers: bounds only"
        if method in ("lp", "milp"):
            method = "alpha-crown"
    try:
        # the tightening stages get at most half of what is left: the complete method needs the rest
        left = _deadline_left(deadline)
        nb, rows_lower = compute_bounds(ctx, hull, method, C,
                                        time_budget=max(0.0, left) / 2 if np.isfinite(left) else None)
    except ImportError:
        log.warning("bound method %s unavailable; using interval bounds", method)
        method = "interval"
        nb, rows_lower = compute_bounds(ctx, hull, "interval", C)
    from robustkit.milp.solve import row_bounds

    ylo, yhi = (t.reshape(-1).numpy() for t in nb.output())
    lo_rows, _ = row_bounds(C, ylo, yhi)
    if rows_lower is not None:
        lo_rows = np.maximum(lo_rows, rows_lower)
    slack_ub = d - lo_rows
    t_ub = np.array([slack_ub[owner == k].min(initial=np.inf) for k in range(len(output))])
    details["time_bounds"] = time.perf_counter() - tb
    details["bounds_method"] = method
    details["bound_margin"] = float(t_ub.max())  # proven upper bound of the violation measure
    details["float_error"] = _float_error(ctx, nb, C)
    unstable = []
    for pos in ctx.net.split_indices:
        unstable.append(int(nb.phases(ctx.net, pos)[2].sum()))
    details["unstable_per_layer"] = unstable
    overflow = nb.float_errors(ctx.net).overflow_note(0)
    if overflow is not None:  # the float network may compute inf or NaN in this box: no proof holds
        details["overflow"] = overflow
        for x in (box.center, box.lower, box.upper):  # where it does, a witness may be at hand
            w = validate_witness(ctx, x, box, output, strict_label)
            if w is not None:
                return Verdict("sat", "bounds", time.perf_counter() - t0, w, details)
        return Verdict("unknown", "bounds", time.perf_counter() - t0, None, details)
    extra = _spec_rounding(output, ylo, yhi)
    if extra > 0:  # rows float64 cannot hold exactly: their rounding is charged to every proof
        details["spec_rounding"] = extra
        cfg = dataclasses.replace(cfg, safety_margin=cfg.safety_margin + extra)
    open_k = [k for k in order if not t_ub[k] < -cfg.safety_margin]  # (a NaN bound proves nothing)
    if not open_k:
        details["proof_margin"] = float(-t_ub.max())  # cleared below 0 (must exceed the safety margin)
        return Verdict("unsat", "bounds", time.perf_counter() - t0, None, details)
    if not complete:
        return Verdict("unknown", "bounds", time.perf_counter() - t0, None, details)
    if _deadline_left(deadline) <= 0:
        return Verdict("timeout", "bounds", time.perf_counter() - t0, None, details)
    if cfg.method == "bab":
        return _branch_and_bound(ctx, box, hull, output, open_k, nb, cfg, deadline, strict_label, details, t0)
    # 3. MILP
    tm = time.perf_counter()
    enc = encode(ctx.net, nb)
    details["n_binaries"] = enc.num_binaries
    rows_lower_k = [lo_rows[owner == k] for k in range(len(output))]
    groups = [[k] for k in open_k] if cfg.formulation == "per-target" else [open_k]
    from robustkit.milp.solvers import milp_hook

    stem = tag if tag is not None or cfg.write_milp is None else _box_digest(box)
    statuses = []
    result, witness = "unsat", None
    for group in groups:
        left = _deadline_left(deadline)
        if left <= 0:
            result = "timeout"
            break
        try:
            hook = milp_hook(cfg.solver, cfg.write_milp, f"{stem}_disjunct{'-'.join(str(k) for k in group)}")
            res = solve_violation(enc, [output[k] for k in group], left, cfg.safety_margin, start_x,
                                  rows_lower=[rows_lower_k[k] for k in group], before_run=hook)
        except SolverError as exc:
            details["solver_error"] = str(exc)
            result = "unknown"
            break
        statuses.append(res.solver_status)
        if res.outcome == "candidate":
            assert res.x is not None
            witness = validate_witness(ctx, res.x, box, output, strict_label)
            if witness is None:  # the band-relaxed optimum may lie off a violation narrower than the band
                witness = _exact_candidate(ctx, nb, box, [output[k] for k in group], output, cfg, deadline,
                                           start_x, strict_label)
            if witness is not None:
                result = "sat"
                break
            details["rejected_candidate"] = True
            result = "unknown"
        elif res.outcome == "timeout":
            result = "timeout"
            break
        elif res.outcome == "undecided":
            result = "unknown" if result != "timeout" else result
    details["time_milp"] = time.perf_counter() - tm
    details["solver_status"] = statuses
    if result == "unsat":  # infeasible with t >= -margin (rows relaxed against solver tolerances)
        details["proof_margin"] = cfg.safety_margin
    return Verdict(result, "milp", time.perf_counter() - t0, witness, details)


def _exact_candidate(ctx: ModelContext, nb: NetBounds, box: InputBox, disjuncts: list, output: OutputSpec,
                     cfg: VerifyConfig, deadline: float, start_x: np.ndarray | None,
                     strict_label: int | None) -> Witness | None:
    """A second candidate from the MILP of the exact network (no float error band, no solver
    slack), replayed in onnxruntime; never a proof."""
    left = _deadline_left(deadline)
    if left <= 0:
        return None
    try:
        res = solve_violation(encode(ctx.net, nb, exact=True), disjuncts, left, cfg.safety_margin, start_x)
    except SolverError:
        return None
    if res.outcome != "candidate" or res.x is None:
        return None
    return validate_witness(ctx, res.x, box, output, strict_label)


def _spec_rounding(output: OutputSpec, ylo: np.ndarray, yhi: np.ndarray) -> float:
    """What float64 rounding of the rows (VNN-LIB ``0.1``, ``(* 0.3 Y_0)``) can move ``C y - d`` by,
    over outputs in ``[ylo, yhi]``: ``2 eps (|C| |y| + |d|)`` for the rows kept exactly
    (:attr:`LinearConstraints.exact`), 0 for the others."""
    mag = np.maximum(np.abs(ylo), np.abs(yhi))
    worst = 0.0
    for dj in output:
        if dj.exact is not None and dj.k:
            worst = max(worst, float((2 * np.finfo(np.float64).eps * (np.abs(dj.C) @ mag + np.abs(dj.d))).max()))
    return worst


def _float_error(ctx: ModelContext, nb: NetBounds, C: np.ndarray) -> float:
    """The most the float error model took off the bound of a row (CROWN pass at ``nb``)."""
    from robustkit.bounds.crown import float_charge

    try:
        charge = float_charge(ctx.net, nb, torch.as_tensor(C[None], dtype=torch.float64))
    except (TypeError, ValueError) as exc:  # pragma: no cover - the bound methods accept every loaded net
        log.debug("float error charge unavailable: %s", exc)
        return float("nan")
    return float(charge.max())


def _box_digest(box: InputBox) -> str:
    import hashlib

    digest = hashlib.sha1(np.ascontiguousarray(box.lower).tobytes() + np.ascontiguousarray(box.upper).tobytes())
    return "box" + digest.hexdigest()[:12]


def _branch_and_bound(ctx: ModelContext, box: InputBox, hull: InputBox, output: OutputSpec, open_k: list[int],
                      nb: NetBounds, cfg: VerifyConfig, deadline: float, strict_label: int | None,
                      details: dict[str, Any], t0: float) -> Verdict:
    """Stage 3 for ``method="bab"``: branch and bound (over ReLU splits, or the input box with
    ``bab_split="input"``) over the disjuncts the bounds left open, searching ``hull`` (the box as
    the network's input type sees it) and checking witnesses against ``box``."""
    from robustkit.verification.bab import BabConfig, BabResult, branch_and_bound

    sub = OutputSpec(tuple(output[k] for k in open_k))
    C, d, owner = sub.stacked()

    def check(x: np.ndarray) -> Witness | None:
        return validate_witness(ctx, x, box, output, strict_label)

    from robustkit.verification.input_split import AUTO_MAX_DIM, InputSplitConfig, input_split

    def relu_split() -> BabResult:
        return branch_and_bound(ctx.net, hull.lower, hull.upper, C, d, owner, nb, deadline, check, cfg.safety_margin,
                                BabConfig(intermediate=cfg.bab_intermediate, depth_weight=cfg.bab_depth_weight))

    auto_input = cfg.bab_split == "auto" and ctx.net.in_dim <= AUTO_MAX_DIM
    if cfg.bab_split == "input" or auto_input:
        res = input_split(ctx.net, hull.lower, hull.upper, C, d, owner, nb, deadline, check, cfg.safety_margin,
                          InputSplitConfig(stop_when_stuck=auto_input))
        if auto_input and res.status == "unknown" and time.perf_counter() < deadline:
            # boxes too narrow to halve were left open (a violation, or a margin inside the safety
            # margin, confined to a tiny region): ReLU splits settle those with exact leaf LPs
            details["input_split"] = res.stats
            res = relu_split()
    else:
        res = relu_split()
    details["bab"] = res.stats
    details["time_bab"] = res.stats.get("time", 0.0)
    if res.status == "unsat":  # the least clearance among closed domains (inf: all infeasible)
        details["proof_margin"] = float(res.stats.get("cleared", float("nan")))
    witness = res.witness if isinstance(res.witness, Witness) else None
    result = "sat" if witness is not None else ("unsat" if res.status == "unsat" else res.status)
    if result == "sat" and witness is None:
        result = "unknown"
    return Verdict(result, "bab", time.perf_counter() - t0, witness, details)


def verify_spec(ctx: ModelContext, spec: Specification, cfg: VerifyConfig, strict_label: int | None = None,
                tag: str | None = None) -> Verdict:
    """Decide a specification: ``sat`` if any region has a witness, ``unsat`` if all hold."""
    t0 = time.perf_counter()
    deadline = t0 + cfg.timeout
    verdicts = []
    for r, (box, output) in enumerate(spec):
        region_tag = None if tag is None else (tag if len(spec) == 1 else f"{tag}_region{r}")
        v = verify_region(ctx, box, output, cfg, deadline, strict_label, region_tag)
        verdicts.append(v)
        if v.result == "sat":
            v.time = time.perf_counter() - t0
            return v
    results = {v.result for v in verdicts}
    result = "unsat" if results == {"unsat"} else ("timeout" if "timeout" in results else "unknown")
    details = verdicts[0].details if len(verdicts) == 1 else {"regions": [v.details for v in verdicts]}
    stage = max((v.stage for v in verdicts), key=["none", "attack", "bounds", "milp", "bab"].index)
    return Verdict(result, stage, time.perf_counter() - t0, None, details)


ROBUSTNESS_STATUS = {"unsat": "verified", "sat": "falsified", "timeout": "timeout", "unknown": "unknown"}


def verify_sample(ctx: ModelContext, x0: np.ndarray, label: int, cfg: VerifyConfig,
                  value_range: tuple[float, float] = (0.0, 1.0), tag: str | None = None) -> dict[str, Any]:
    """Robustness of one sample in the L-inf ball of radius ``cfg.eps`` ∩ the valid range: a record."""
    t0 = time.perf_counter()
    x0 = np.asarray(x0, dtype=np.float32).reshape(-1)
    pred = ctx.predict(x0)
    record: dict[str, Any] = {"label": int(label), "pred": pred}
    if pred != label:
        record.update(status="misclassified", stage="clean", time=time.perf_counter() - t0)
        return record
    box = eps_box(x0.astype(np.float64), cfg.eps, *value_range)
    spec = robustness_spec(label, ctx.net.out_dim, box)
    v = verify_spec(ctx, spec, cfg, strict_label=label, tag=tag)
    record.update(status=ROBUSTNESS_STATUS[v.result], stage=v.stage, time=time.perf_counter() - t0)
    record.update(v.details)
    if v.witness is not None:
        record["counterexample"] = [float(a) for a in v.witness.x]
        record["counterexample_pred"] = int(np.argmax(v.witness.y))
        record["counterexample_linf"] = float(np.abs(v.witness.x.astype(np.float64) - x0).max())
    return record
