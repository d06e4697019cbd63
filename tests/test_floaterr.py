"""Soundness against floating-point error (robustkit.bounds.floaterr and its users).

* The model's premise: onnxruntime's float32 outputs lie within the accumulated error bound of the
  exact outputs, on nets built to round badly (huge weights, cancelling normalisation, wide scales)
  and on the shipped conv model.
* Adversarial instances (Jia & Rinard's cancellation, tiny margins, a needle, planted spikes, wide
  deep nets): no ``unsat`` where a float32 violation exists, with every method.
* The leaf LP decides from certificates; verdicts report the margin cleared and the float error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from robustkit.bounds import crown_bounds
from robustkit.bounds.crown import pre_bounds, spec_lower
from robustkit.bounds.floaterr import U32, gamma
from robustkit.network import Dense, Elementwise
from robustkit.spec import InputBox, eps_box, robustness_spec
from robustkit.verification import ModelContext, VerifyConfig, verify_spec
from robustkit.verification.leaf_lp import LeafLp, certify_infeasible, decide, upper_bound_t
from robustkit.verification.soundness_families import all_families, refusals
from robustkit.verification.soundness_suite import (
    Instance,
    cancel_instance,
    default_instances,
    gemm_model,
    outcome_table,
    run_suite,
)

ROOT = Path(__file__).resolve().parents[1]


def _normalised_model(mean: float, std: float, rng: np.random.Generator) -> bytes:
    """Sub(mean) -> Div(std) -> Gemm -> Relu -> Gemm: the loader folds the normalisation into the
    first Gemm; inputs near ``mean`` make the subtraction cancel."""
    n = 6
    w1, b1 = rng.normal(size=(8, n)) * 3, rng.normal(size=8)
    w2, b2 = rng.normal(size=(3, 8)), rng.normal(size=3)
    inits = [numpy_helper.from_array(np.full((1, n), mean, np.float32), "mean"),
             numpy_helper.from_array(np.full((1, n), std, np.float32), "std"),
             numpy_helper.from_array(w1.astype(np.float32), "W0"), numpy_helper.from_array(b1.astype(np.float32), "B0"),
             numpy_helper.from_array(w2.astype(np.float32), "W1"), numpy_helper.from_array(b2.astype(np.float32), "B1")]
    nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["n"]),
             helper.make_node("Gemm", ["n", "W0", "B0"], ["z0"], transB=1), helper.make_node("Relu", ["z0"], ["a0"]),
             helper.make_node("Gemm", ["a0", "W1", "B1"], ["output"], transB=1)]
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _wide_model(rng: np.random.Generator) -> bytes:
    widths = (5, 24, 24, 24, 3)
    ws, bs = [], []
    for a, b in zip(widths[:-1], widths[1:]):
        scale = 10.0 ** rng.uniform(-2, 4)
        ws.append(rng.normal(size=(b, a)) * scale)
        bs.append(rng.normal(size=b) * scale)
    return gemm_model(ws, bs)


def _check_within_model(ctx: ModelContext, box: InputBox, n: int, seed: int) -> float:
    """Every sampled float32 output is within the accumulated error bound of the exact output;
    returns the largest observed |ORT - exact| relative to the bound."""
    lo = torch.tensor(box.lower[None])
    hi = torch.tensor(box.upper[None])
    nb, _ = crown_bounds(ctx.net, lo, hi)
    bound = (nb.errors.accumulated[-1] + nb.errors.slack[-1]).reshape(-1).numpy()
    rng = np.random.default_rng(seed)
    xs = np.clip(rng.uniform(box.lower, box.upper, size=(n, box.n)).astype(np.float32), box.lower.astype(np.float32),
                 box.upper.astype(np.float32)).astype(np.float64)
    exact = ctx.net.forward(torch.from_numpy(xs)).numpy()
    ort_out = ctx.ort(xs)
    diff = np.abs(ort_out - exact)
    assert bool(np.all(diff <= bound)), float((diff / np.maximum(bound, 1e-300)).max())
    return float((diff / np.maximum(bound, 1e-300)).max())


def test_onnxruntime_stays_within_the_error_model_on_nets_built_to_round_badly() -> None:
    rng = np.random.default_rng(0)
    worst = []
    for k in range(3):
        ctx = ModelContext.from_bytes(_wide_model(rng))
        x0 = rng.uniform(-1, 1, size=5)
        worst.append(_check_within_model(ctx, InputBox(x0 - 0.1, x0 + 0.1), 300, k))
    ctx = ModelContext.from_bytes(_normalised_model(1000.0, 0.01, rng))
    worst.append(_check_within_model(ctx, InputBox(np.full(6, 999.9), np.full(6, 1000.1)), 300, 9))
    # the rounding is real (not zero), so the check has teeth
    assert max(worst) > 1e-4


def test_onnxruntime_stays_within_the_error_model_on_the_shipped_conv_net() -> None:
    ctx = ModelContext.from_path(ROOT / "models" / "mnist" / "mnist_small_pgd_rs.onnx")
    x0 = np.random.default_rng(3).uniform(0, 1, size=ctx.net.in_dim)
    _check_within_model(ctx, eps_box(x0, 0.1), 40, 3)


def test_normalisation_keeps_its_rounding_in_the_model() -> None:
    """Sub/Div stay an elementwise map of their own (not folded into the Gemm); its error bound keeps
    the subtraction's rounding (|mean| / std), which the result (x - mean) / std, near 0 here, hides."""
    rng = np.random.default_rng(1)
    ctx = ModelContext.from_bytes(_normalised_model(1000.0, 0.01, rng))
    first = ctx.net.layers[0]
    assert isinstance(first, Elementwise) and isinstance(ctx.net.layers[1], Dense)
    box = InputBox(np.full(6, 999.9), np.full(6, 1000.1))
    e = first.rounding_error(torch.tensor(box.lower[None]), torch.tensor(box.upper[None]))
    naive = gamma(first.rounding_ops) * first.abs_forward(torch.full((1, 6), 1000.1, dtype=torch.float64))
    assert bool((e > 1.9 * naive).all())


def test_jia_rinard_instance_fools_exact_arithmetic_but_not_robustkit() -> None:
    inst = cancel_instance(1e8)
    ctx = ModelContext.from_bytes(inst.model)
    (box, out), = list(inst.spec)
    # exact arithmetic "proves" the margin 0.5 ...
    lo, hi = torch.tensor(box.lower[None]), torch.tensor(box.upper[None])
    nb, _ = crown_bounds(ctx.net, lo, hi)
    C = torch.tensor([[[-1.0, 1.0]]], dtype=torch.float64)  # so -C y = y0 - y1, the margin
    exact = spec_lower(ctx.net, -C, nb.input_lower, nb.input_upper, pre_bounds(ctx.net, nb))
    assert float(exact.min()) > 0.4
    # ... while float32 onnxruntime violates it at the box's corner
    y = ctx.ort(box.lower)[0]
    assert out.satisfied_by(y)
    for method in ("crown", "alpha-crown", "milp", "bab"):
        v = verify_spec(ctx, inst.spec, VerifyConfig(method=method, timeout=5, attack_steps=0))  # type: ignore[arg-type]
        assert v.result != "unsat", method


def test_adversarial_suite_has_no_wrong_answer() -> None:
    insts = default_instances()
    outcomes = run_suite(insts, timeout=2.0, samples=1000, attacks=(0,))
    table = outcome_table(outcomes)
    assert sum(o.wrong for o in outcomes) == 0, table
    # the suite is not vacuous: most instances have a known float32 violation, and the complete
    # methods find some of them without the attack
    assert sum(1 for o in outcomes if o.method == "milp" and o.known_violation) >= 20, table
    assert sum(1 for o in outcomes if o.method in ("milp", "bab") and o.result == "sat") >= 20, table
    assert {o.method for o in outcomes} >= {"bab", "bab-relu", "bab-input"}
    assert [o.result for o in outcomes if o.method == "load"] == ["refused"] * len(refusals())


def test_adversarial_families_with_the_attack_first() -> None:
    """The issue-37 families with the default attack before the bounds: what the attack finds is
    re-checked like every witness, and the attack's float32 torch model must not mislead a proof."""
    insts = [Instance(b.name, b.model, b.spec, b.witnesses, b.note) for b in all_families()]
    outcomes = run_suite(insts, methods=("crown", "milp", "bab"), timeout=5.0, samples=500, attacks=(50,),
                         refused=[])
    assert sum(o.wrong for o in outcomes) == 0, outcome_table(outcomes)
    assert sum(1 for o in outcomes if o.result == "sat") >= 20, outcome_table(outcomes)


@pytest.mark.slow
def test_adversarial_suite_every_method_attack_on_and_off() -> None:
    outcomes = run_suite(default_instances(), timeout=10.0)
    assert sum(o.wrong for o in outcomes) == 0, outcome_table(outcomes)


# -- the leaf LP's certificates ----------------------------------------------------------------------
def _lp(G: list[list[float]], h: list[float], CA: list[list[float]], d: list[float], lo: list[float],
        hi: list[float]) -> LeafLp:
    return LeafLp(np.array(CA, dtype=np.float64), np.array(d, dtype=np.float64), np.array(G, dtype=np.float64).reshape(-1, len(lo)),
                  np.array(h, dtype=np.float64), np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64))


def test_infeasibility_needs_a_certificate_that_clears_rounding() -> None:
    # x <= 0.4 and -x <= -0.6: no point; x <= 0.5 and -x <= -0.5: exactly one point
    assert certify_infeasible(_lp([[1.0], [-1.0]], [0.4, -0.6], [[1.0]], [0.0], [0.0], [1.0]))
    assert not certify_infeasible(_lp([[1.0], [-1.0]], [0.5, -0.5], [[1.0]], [0.0], [0.0], [1.0]))
    # a gap below float64 resolution of the data is not a proof
    assert not certify_infeasible(_lp([[1.0], [-1.0]], [0.5, -0.5 - 1e-17], [[1.0]], [0.0], [0.0], [1.0]))


def test_dual_upper_bound_matches_the_lp_and_decides() -> None:
    # max t s.t. x + t <= 0.3, x in [0, 1], side row x <= 0.8: t* = 0.3 at x = 0
    lp = _lp([[1.0]], [0.8], [[1.0]], [0.3], [0.0], [1.0])
    assert decide(lp, [np.array([0])], 1e-4)[0] == "candidate"
    ub = upper_bound_t(lp, np.array([0]), np.array([1.0]), np.array([0.0]))
    assert 0.3 <= ub < 0.3 + 1e-12
    # any dual gives a valid (maybe weaker) bound
    assert upper_bound_t(lp, np.array([0]), np.array([2.0]), np.array([3.0])) >= 0.3
    lp_neg = _lp([[1.0]], [0.8], [[-1.0]], [-0.5], [0.0], [1.0])  # t <= x - 0.5 -> t* = 0.3 at x = 0.8
    assert decide(lp_neg, [np.array([0])], 1e-4)[0] == "candidate"
    lp_closed = _lp([[1.0]], [0.2], [[-1.0]], [-0.5], [0.0], [1.0])  # x <= 0.2 -> t* = -0.3
    verdict, _, cleared = decide(lp_closed, [np.array([0])], 1e-4)
    assert verdict == "closed" and 0.3 - 1e-9 < cleared <= 0.3


# -- what a verdict reports --------------------------------------------------------------------------
def test_verdicts_report_the_margin_cleared_and_the_float_error() -> None:
    ctx = ModelContext.from_path(ROOT / "models" / "mnist" / "mnist_small_pgd_rs.onnx")
    from robustkit.data import embedded_subset

    ds = embedded_subset("mnist")
    for i in range(6):
        x, label = ds.images[i].reshape(-1).double().numpy(), int(ds.labels[i])
        if ctx.predict(x) != label:
            continue
        spec = robustness_spec(label, ctx.net.out_dim, eps_box(x, 0.02))
        v = verify_spec(ctx, spec, VerifyConfig(method="crown", attack_steps=0))
        assert np.isfinite(v.details["float_error"]) and v.details["float_error"] > 0
        if v.result == "unsat":
            assert v.details["proof_margin"] > 1e-4
            return
    pytest.fail("no sample verified at eps 0.02")


def test_degenerate_rounding_count_is_refused() -> None:
    with pytest.raises(ValueError):
        gamma(2**24)
    assert gamma(10) == pytest.approx(10 * U32, rel=1e-6)


def test_gemm_model_is_the_network_it_describes() -> None:
    rng = np.random.default_rng(4)
    ws, bs = [rng.normal(size=(5, 3)), rng.normal(size=(2, 5))], [rng.normal(size=5), rng.normal(size=2)]
    ctx = ModelContext.from_bytes(gemm_model(ws, bs))
    onnx.checker.check_model(onnx.load_from_string(ctx.model_bytes))
    x = rng.uniform(-1, 1, size=(8, 3)).astype(np.float32).astype(np.float64)
    expected = np.maximum(x @ ws[0].astype(np.float32).T + bs[0].astype(np.float32), 0) @ ws[1].astype(np.float32).T \
        + bs[1].astype(np.float32)
    np.testing.assert_allclose(ctx.ort(x), expected, rtol=1e-5, atol=1e-5)


def test_bench_soundness_command(tmp_path: Path) -> None:
    from robustkit.cli.main import main

    out = tmp_path / "suite.md"
    assert main(["bench", "soundness", "--method", "crown", "--timeout", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "cancel_M1e8" in text and "wrong: 0" in text
    assert main(["bench", "soundness", "--method", "nonsense"]) == 1
    assert main(["bench", "soundness", "--out", str(tmp_path / "missing" / "x.md")]) == 1  # before any work
    assert main(["bench", "soundness", "--timeout", "-1", "--method", "crown"]) == 1


def test_exact_milp_only_proposes_candidates() -> None:
    """The exact-network MILP (no float band) finds a needle narrower than the band, which the
    pipeline replays; on the cancellation net the same exact MILP is "infeasible" (a wrong proof
    for float32), and the pipeline does not take it as one."""
    from robustkit.bounds import interval_bounds
    from robustkit.milp import encode, solve_violation
    from robustkit.verification.soundness_suite import needle_instance

    needle = needle_instance(3)
    ctx = ModelContext.from_bytes(needle.model)
    for method in ("milp", "bab"):
        v = verify_spec(ctx, needle.spec, VerifyConfig(method=method, attack_steps=0, timeout=10))  # type: ignore[arg-type]
        assert v.result == "sat" and v.witness is not None, method
    inst = cancel_instance(1e8)
    ctx = ModelContext.from_bytes(inst.model)
    (box, out), = list(inst.spec)
    nb = interval_bounds(ctx.net, torch.tensor(box.lower[None]), torch.tensor(box.upper[None]))
    exact = solve_violation(encode(ctx.net, nb, exact=True), list(out), 10)
    assert exact.outcome == "holds"  # exact arithmetic: margin 0.5 everywhere
    assert verify_spec(ctx, inst.spec, VerifyConfig(method="milp", attack_steps=0, timeout=10)).result == "sat"
