"""Adversarial soundness instances: networks built to make a verifier say ``unsat`` wrongly.

Each instance is an ONNX model (written here with ``onnx.helper``, float32 Gemm layers) and a
specification whose violation is known to be reachable *in float32 as onnxruntime runs it*, or
whose truth is unknown but whose violating points, when found by sampling, expose a wrong proof:

* ``cancel``: the construction of Jia & Rinard (2020, "Exploiting Verified Neural Networks via
  Floating Point Numerical Error"): a huge-weight layer computes ``(M x + 1) - M x``, exactly 1,
  which float32 rounds to 0 (or 8) near ``M x = 1e8``; the margin is exactly ``+0.5`` and
  negative in float32. A verifier of the exact network proves it; the deployed one is broken;
* ``tiny_margin``: a margin of ``-1.2e-7`` at a single point, in exact and in float32 arithmetic
  (a real counterexample far below any solver tolerance), and its mirror ``+1.2e-7`` (holds,
  but not with any margin robustkit accepts);
* ``planted``: SoundnessBench-style (Zhou et al. 2025): a margin of ``+1`` everywhere except a
  narrow spike ``1 - K relu(r - |x - p|_1)`` around a hidden point ``p`` off the box centre;
* ``needle``: margin ``|x - p|_1 - 5e-8``: violated only within ``5e-8`` of a float32 point ``p``,
  below HiGHS's feasibility tolerance (1e-7);
* ``wide``: deep random nets whose layer scales span ``1e-3 .. 1e3``, with the threshold put just
  below the least margin found by sampling (truth unknown; any sampled or attack violation
  refutes an ``unsat``).

The families of :mod:`robustkit.verification.soundness_families` add the arithmetic onnxruntime
really does: constants folded into a bias, float16 models, subnormal results, overflow, strict
comparisons, nets without ReLUs, unusual input shapes; :func:`~robustkit.verification.soundness_families.refusals`
lists what must be refused with a clear error (quantized, integer and bfloat16 tensors, float16
Sigmoid, a property that no output can violate).

:func:`run_suite` first collects known violations of the model as onnxruntime runs it (planted
points, dense sampling in onnxruntime, and one attack run), then decides every instance with each
method, with the attack off (the bounds, the MILP and branch and bound must settle it themselves)
and on, and counts wrong answers: an ``unsat`` where a violating point is known, and a ``sat``
whose witness does not violate the property as written (strict comparisons strictly) when re-run
in fresh onnxruntime sessions, with the graph optimizations on and off, inside the box.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from robustkit.errors import InputError, ModelFormatError, UnsupportedOperatorError
from robustkit.spec import InputBox, LinearConstraints, Specification
from robustkit.verification.config import VerifyConfig
from robustkit.verification.model import ModelContext
from robustkit.verification.pipeline import verify_spec
from robustkit.verification.soundness_families import Refusal, all_families, refusals

log = logging.getLogger(__name__)


@dataclass
class Instance:
    """A model, a specification, and points known to violate it in float32 (``witnesses``, may be
    empty: then the truth is unknown and only sampling can refute a proof)."""

    name: str
    model: bytes
    spec: Specification
    witnesses: list[np.ndarray] = field(default_factory=list)
    note: str = ""


def gemm_model(weights: list[np.ndarray], biases: list[np.ndarray]) -> bytes:
    """An ONNX model ``Gemm -> Relu -> ... -> Gemm`` (float32, input ``[1, n]``)."""
    nodes, inits = [], []
    cur = "input"
    for k, (w, b) in enumerate(zip(weights, biases)):
        wn, bn, out = f"W{k}", f"B{k}", f"z{k}"
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), wn),
                  numpy_helper.from_array(np.asarray(b, np.float32), bn)]
        nodes.append(helper.make_node("Gemm", [cur, wn, bn], [out], transB=1))
        cur = out
        if k < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"a{k}"]))
            cur = f"a{k}"
    nodes.append(helper.make_node("Identity", [cur], ["output"]))
    graph = helper.make_graph(
        nodes, "adversarial",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, weights[0].shape[1]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, weights[-1].shape[0]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _margin_violation(n_out: int = 2, threshold: float = 0.0) -> LinearConstraints:
    """Violation of "output 0 beats output 1 by more than ``threshold``": ``y1 - y0 >= -threshold``."""
    C = np.zeros((1, n_out))
    C[0, 0], C[0, 1] = 1.0, -1.0
    return LinearConstraints(C, np.array([threshold]))


def _sample_violations(ctx: ModelContext, spec: Specification, n: int, seed: int) -> list[np.ndarray]:
    """Points of the box (uniform, corners, and float32 neighbours of the centre) violating the
    specification when run in onnxruntime."""
    rng = np.random.default_rng(seed)
    fmt = ctx.net.input_fmt
    found = []
    for box, out in spec:
        lo, hi = box.representable(fmt)
        pts = [rng.uniform(lo, hi, size=(n, lo.size)), np.where(rng.random((n // 4, lo.size)) < 0.5, lo, hi)]
        pts = np.clip(fmt.round_nearest(np.concatenate(pts)), lo, hi)
        ys = ctx.ort(pts)
        for x, y in zip(pts, ys):
            if out.satisfied_by(y) and box.admits(x, fmt):
                found.append(x)
                if len(found) >= 3:
                    return found
    return found


def cancel_instance(M: float = 1e8) -> Instance:
    """Jia & Rinard: ``y0 = relu(M x + 1) - relu(M x)``, ``y1 = 0.5``; exact margin 0.5 > 0."""
    W1, b1 = np.array([[M], [M]]), np.array([1.0, 0.0])
    W2, b2 = np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([0.0, 0.5])
    model = gemm_model([W1, W2], [b1, b2])
    box = InputBox(np.array([1.0]), np.array([1.0 + 1e-6]))
    return Instance(f"cancel_M{M:.0e}".replace("+0", ""), model, Specification.single(box, _margin_violation()),
                    note="exact margin +0.5; float32 loses the +1 next to 1e8")


def tiny_margin_instances() -> list[Instance]:
    """A single-point box with margin ``-/+ 1.19e-7`` (exact and float32 agree on the sign)."""
    out = []
    for sign, name in ((-1.0, "tiny_margin_neg"), (1.0, "tiny_margin_pos")):
        b0 = float(np.float32(-1.0 + sign * 1e-7))
        W1, b1 = np.array([[1.0], [0.0]]), np.array([b0, 0.0])
        model = gemm_model([W1, np.eye(2)], [b1, np.zeros(2)])
        box = InputBox(np.array([1.0]), np.array([1.0]))
        out.append(Instance(name, model, Specification.single(box, _margin_violation()),
                            note=f"margin {1.0 + b0:+.2e} at x = 1"))
    return out


def planted_instance(n: int, radius: float, seed: int) -> Instance:
    """Margin ``1 - K relu(r - |x - p|_1)`` with ``K = 2 / r``: ``-1`` at the hidden ``p``."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.15, 0.85, size=n).astype(np.float32).astype(np.float64)
    W1 = np.vstack([np.eye(n), -np.eye(n)])
    b1 = np.concatenate([-p, p])
    W2 = -np.ones((1, 2 * n))
    b2 = np.array([radius])
    K = 2.0 / radius
    W3 = np.array([[-K], [0.0]])
    b3 = np.array([1.0, 0.0])
    model = gemm_model([W1, W2, W3], [b1, b2, b3])
    box = InputBox(np.zeros(n), np.ones(n))
    return Instance(f"planted_n{n}_r{radius:g}", model, Specification.single(box, _margin_violation()), [p],
                    note="narrow spike around a hidden point")


def needle_instance(n: int = 3, delta: float = 5e-8, seed: int = 7) -> Instance:
    """Margin ``|x - p|_1 - delta``: violated only within ``delta`` of the float32 point ``p``."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.2, 0.8, size=n).astype(np.float32).astype(np.float64)
    W1 = np.vstack([np.eye(n), -np.eye(n)])
    b1 = np.concatenate([-p, p])
    W2 = np.vstack([np.ones((1, 2 * n)), np.zeros((1, 2 * n))])
    b2 = np.array([-delta, 0.0])
    model = gemm_model([W1, W2], [b1, b2])
    box = InputBox(np.zeros(n), np.ones(n))
    return Instance(f"needle_n{n}_s{seed}", model, Specification.single(box, _margin_violation()), [p],
                    note=f"violated only within {delta:g} of a point")


def wide_instance(seed: int, widths: tuple[int, ...] = (4, 16, 16, 16, 16, 2), eps: float = 0.05) -> Instance:
    """A deep random net with layer scales from 1e-3 to 1e3; threshold just under the least
    sampled margin (truth unknown)."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for a, b in zip(widths[:-1], widths[1:]):
        scale = 10.0 ** rng.uniform(-3, 3)
        weights.append(rng.normal(size=(b, a)) * scale / np.sqrt(a))
        biases.append(rng.normal(size=b) * scale * 0.1)
    model = gemm_model(weights, biases)
    ctx = ModelContext.from_bytes(model)
    x0 = rng.uniform(-1, 1, size=widths[0])
    box = InputBox(x0 - eps, x0 + eps)
    pts = np.clip(rng.uniform(box.lower, box.upper, size=(4000, widths[0])), box.lower, box.upper)
    ys = ctx.ort(pts)
    margins = ys[:, 0] - ys[:, 1]
    target = 0 if float(np.median(margins)) > 0 else 1  # the class that wins most samples
    m = margins if target == 0 else -margins
    # violation "margin <= thr" with thr a hair below the sampled minimum: robust if it holds
    thr = float(m.min()) - 1e-6 * (1 + abs(float(m.min())))
    C = np.array([[1.0, -1.0]]) if target == 0 else np.array([[-1.0, 1.0]])
    return Instance(f"wide_{seed}", model, Specification.single(box, LinearConstraints(C, np.array([thr]))),
                    note=f"scales 1e-3..1e3, threshold {thr:.3g}")


def default_instances() -> list[Instance]:
    insts = [cancel_instance(m) for m in (1e7, 3e7, 1e8, 1e9)]
    insts += [*tiny_margin_instances(), needle_instance(3), needle_instance(8, seed=8)]
    insts += [planted_instance(n, r, seed) for seed, (n, r) in
              enumerate([(2, 0.01), (6, 0.02), (12, 0.05), (4, 0.002), (20, 0.1)])]
    insts += [wide_instance(seed) for seed in range(8)]
    insts += [Instance(b.name, b.model, b.spec, b.witnesses, b.note) for b in all_families()]
    return insts


@dataclass
class Outcome:
    instance: str
    method: str  # the column: the suite method, with "+attack" when the attack ran first
    result: str
    wrong: bool
    known_violation: bool
    time: float
    why: str = ""  # what made it wrong


SUITE_METHODS = ("crown", "alpha-crown", "milp", "bab", "bab-relu", "bab-input")
SUITE_ATTACKS = (0, 50)  # PGD steps before the bounds: off, and the default


def suite_config(method: str, timeout: float, attack_steps: int = 0) -> VerifyConfig:
    """The configuration of a suite method: a :data:`~robustkit.verification.config.METHODS` name,
    or ``bab-relu`` / ``bab-input`` (branch and bound with that ``bab_split``; ``bab`` is ``auto``)."""
    split = "auto"
    if method.startswith("bab-"):
        method, split = "bab", method.removeprefix("bab-")
    return VerifyConfig(method=method, timeout=timeout, tighten="crown", attack_steps=attack_steps,  # type: ignore[arg-type]
                        bab_split=split)


def witness_holds(inst: Instance, ctx: ModelContext, x: np.ndarray) -> bool:
    """Whether ``x`` is a counterexample of ``inst`` as written: a point of the network's input type
    that some region's box admits, whose outputs in fresh onnxruntime sessions (graph optimizations
    on and off) satisfy that region's violation, strict comparisons strictly."""
    from robustkit.network.ort import OrtModel

    fmt = ctx.net.input_fmt
    fresh = OrtModel(inst.model, ctx.net.onnx_input_shape, fmt.dtype)
    y, y_plain = fresh.both(x)
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(y_plain))):
        return False
    return any(box.admits(x, fmt) and out.satisfied_by(y) and out.satisfied_by(y_plain) for box, out in inst.spec)


def run_suite(instances: list[Instance], methods: tuple[str, ...] = SUITE_METHODS,
              timeout: float = 10.0, samples: int = 4000, attacks: tuple[int, ...] = SUITE_ATTACKS,
              refused: list[Refusal] | None = None) -> list[Outcome]:
    """Decide every instance with every method, with each number of attack steps in ``attacks``;
    an answer is wrong if ``unsat`` while a violating point is known (given, found by sampling or by
    an attack run, or the witness of another method), or ``sat`` with a witness that does not hold
    (:func:`witness_holds`). ``methods``: :func:`suite_config` names. ``refused`` (default:
    :func:`~robustkit.verification.soundness_families.refusals`): models and properties that must
    be refused with a clear error; one that loads, or fails otherwise, is wrong."""
    outcomes = []
    for inst in instances:
        ctx = ModelContext.from_bytes(inst.model, inst.name)
        violators = [x for x in inst.witnesses if witness_holds(inst, ctx, x)]
        violators += _sample_violations(ctx, inst.spec, samples, seed=len(inst.name))
        probe = verify_spec(ctx, inst.spec, VerifyConfig(method="crown", timeout=timeout))
        if probe.result == "sat" and probe.witness is not None:
            violators.append(np.asarray(probe.witness.x, dtype=np.float64))
        rows = []
        for method in methods:
            for steps in attacks:
                v = verify_spec(ctx, inst.spec, suite_config(method, timeout, steps))
                why = ""
                if v.result == "sat":
                    assert v.witness is not None
                    if witness_holds(inst, ctx, v.witness.x):
                        violators.append(np.asarray(v.witness.x, dtype=np.float64))
                    else:
                        why = f"false witness {np.asarray(v.witness.x).tolist()[:4]}"
                rows.append((method + ("+attack" if steps else ""), v, why))
        known = bool(violators)
        for label, v, why in rows:
            if v.result == "unsat" and known:
                why = "unsat, but a violation is known"
            if why:
                log.error("soundness suite: %s on %s: %s", label, inst.name, why)
            outcomes.append(Outcome(inst.name, label, v.result, bool(why), known, v.time, why))
    for r in refusals() if refused is None else refused:
        outcomes.append(_refusal_outcome(r))
    return outcomes


def _refusal_outcome(r: Refusal) -> Outcome:
    """``refused`` if loading the model (and parsing its property) fails with a clear error naming
    ``r.expect``; anything else is wrong."""
    from robustkit.vnnlib.parser import parse_vnnlib_text

    try:
        ctx = ModelContext.from_bytes(r.model, r.name)
        if r.vnnlib is not None:
            parse_vnnlib_text(r.vnnlib, r.name, ctx.net.in_dim, ctx.net.out_dim)
    except (InputError, ModelFormatError, UnsupportedOperatorError) as exc:
        ok = r.expect in str(exc)
        return Outcome(r.name, "load", "refused", not ok, False, 0.0, "" if ok else f"unclear error: {exc}")
    except Exception as exc:  # a crash is not a clear refusal
        return Outcome(r.name, "load", "error", True, False, 0.0, f"{type(exc).__name__}: {exc}")
    return Outcome(r.name, "load", "accepted", True, False, 0.0, "loaded, but has no sound model")


def outcome_table(outcomes: list[Outcome]) -> str:
    """Markdown: one row per instance, one column per method, and the count of wrong answers; then
    the refusals."""
    refused = [o for o in outcomes if o.method == "load"]
    outcomes = [o for o in outcomes if o.method != "load"]
    methods = list(dict.fromkeys(o.method for o in outcomes))
    names = list(dict.fromkeys(o.instance for o in outcomes))
    lines = ["| instance | float32 violation known | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for name in names:
        row = {o.method: o for o in outcomes if o.instance == name}
        known = next(iter(row.values())).known_violation
        cells = [row[m].result + (" **WRONG**" if row[m].wrong else "") for m in methods]
        lines.append(f"| {name} | {'yes' if known else 'no'} | " + " | ".join(cells) + " |")
    wrong = sum(o.wrong for o in outcomes)
    lines.append("")
    lines.append(f"{len(names)} instances x {len(methods)} methods = {len(outcomes)} answers; wrong: {wrong}")
    if refused:
        lines += ["", "| must be refused | result |", "|---|---|"]
        lines += [f"| {o.instance} | {o.result}{' **WRONG**: ' + o.why if o.wrong else ''} |" for o in refused]
        lines += ["", f"{len(refused)} refusals; wrong: {sum(o.wrong for o in refused)}"]
    return "\n".join(lines)
