"""The float model behind every proof, family by family (issue 37): folded constants, element
types, subnormal and flushed results, overflow, strict comparisons, and the loader's refusals.

Each test checks what onnxruntime really computes against what the model allows, so that a
planted bug in the model (a dropped term, a wrong unit) fails here."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from robustkit.bounds import crown_bounds, interval_bounds
from robustkit.bounds.crown import intersect
from robustkit.bounds.floaterr import outward
from robustkit.errors import ModelFormatError
from robustkit.network import Dense, Elementwise, ReLU
from robustkit.network.floatfmt import FLOAT16, FLOAT32, FLOAT64, contains
from robustkit.spec import InputBox, LinearConstraints, Specification
from robustkit.verification import ModelContext, VerifyConfig, verify_spec
from robustkit.verification.soundness_families import (
    _gemm,
    _subnormal_net,
    folded_add,
    graph_model,
    overflow,
    refusals,
    strict,
)
from robustkit.verification.witness import to_input_point, validate_witness


# -- formats ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [FLOAT16, FLOAT32, FLOAT64])
def test_directed_rounding_brackets_every_value(fmt) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=2000) * 10.0 ** rng.integers(-6, 4, size=2000), [0.1, 1 / 3, -0.7, 0.0]])
    lo, hi = fmt.round_down(x), fmt.round_up(x)
    assert bool(np.all(lo <= x) and np.all(hi >= x))
    assert np.array_equal(fmt.round_nearest(lo), lo) and np.array_equal(fmt.round_nearest(hi), hi)
    if fmt is not FLOAT64:  # adjacent values of the format, or equal where x is one
        step = np.nextafter(lo.astype(fmt.dtype), fmt.dtype.type(np.inf)).astype(np.float64)
        assert bool(np.all((hi == lo) | (hi == step)))
    assert contains(FLOAT64, fmt) and contains(fmt, fmt)
    assert not contains(FLOAT16, FLOAT32)


# -- loader: element types, casts, Gemm scaling, folded constants ------------------------------------
def _net_ort_agree(model: bytes, lo: float, hi: float, n: int = 1, dtype=np.float32) -> ModelContext:  # type: ignore[no-untyped-def]
    ctx = ModelContext.from_bytes(model)
    xs = np.linspace(lo, hi, 17)[:, None].repeat(n, axis=1).astype(dtype).astype(np.float64)
    exact = ctx.net.forward(torch.from_numpy(xs)).numpy()
    nb = interval_bounds(ctx.net, torch.tensor([[lo] * n], dtype=torch.float64),
                         torch.tensor([[hi] * n], dtype=torch.float64))
    err = nb.errors.accumulated[-1].numpy() + nb.errors.slack[-1].numpy()
    assert bool(np.all(np.abs(ctx.ort(xs) - exact) <= err)), "onnxruntime leaves the error model"
    return ctx


def test_float16_model_computes_in_float16_units() -> None:
    w = np.array([[1.0, -2.0], [0.5, 3.0]])
    model = graph_model([_gemm("input", "W", "B", "z"), helper.make_node("Relu", ["z"], ["output"])],
                        {"W": w, "B": np.array([0.25, -1.0])}, 2, 2, elem=TensorProto.FLOAT16)
    ctx = _net_ort_agree(model, 0.3, 0.9, n=2, dtype=np.float16)
    assert ctx.net.input_format == "float16" and ctx.ort.input_dtype == np.float16
    dense = ctx.net.layers[0]
    assert isinstance(dense, Dense) and dense.fmt is FLOAT16
    lo = torch.full((1, 2), 0.3, dtype=torch.float64)
    e16 = dense.rounding_error(lo, lo + 0.6)
    e32 = dataclasses_replace(dense, fmt=FLOAT32).rounding_error(lo, lo + 0.6)
    assert bool((e16 > 1000 * e32).all())  # 2**-11 against 2**-24 per rounding


def dataclasses_replace(layer, **kw):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(layer, **kw)


def test_cast_narrowing_rounds_and_widening_is_exact() -> None:
    nodes = [helper.make_node("Cast", ["input"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["h"], ["output"], to=TensorProto.FLOAT)]
    ctx = ModelContext.from_bytes(graph_model(nodes, {}, 3, 3))
    # one rounding into float16; float16 -> float32 is exact (no layer)
    assert len(ctx.net.layers) == 1
    layer = ctx.net.layers[0]
    assert isinstance(layer, Elementwise) and layer.fmt is FLOAT16 and layer.rounding_ops == 1
    x = np.array([[0.1, 1 / 3, 1000.7]])
    assert np.array_equal(ctx.ort(x)[0], x.astype(np.float32).astype(np.float16).astype(np.float64)[0])
    e = layer.rounding_error(torch.tensor(x), torch.tensor(x))
    assert bool((torch.from_numpy(np.abs(ctx.ort(x)[0] - x[0])) <= e[0]).all())
    # float32 -> float64: exact, no layer; float64 -> float32 rounds (a float32 layer)
    wide = graph_model([helper.make_node("Cast", ["input"], ["output"], to=TensorProto.DOUBLE)], {}, 2, 2,
                       out_elem=TensorProto.DOUBLE)
    assert len(ModelContext.from_bytes(wide).net.layers) == 0
    narrow = graph_model([helper.make_node("Cast", ["input"], ["output"], to=TensorProto.FLOAT)], {}, 2, 2,
                         elem=TensorProto.DOUBLE, out_elem=TensorProto.FLOAT)
    (layer,) = ModelContext.from_bytes(narrow).net.layers
    assert isinstance(layer, Elementwise) and layer.fmt is FLOAT32


def test_gemm_alpha_beta_are_their_own_step() -> None:
    node = helper.make_node("Gemm", ["input", "W", "B"], ["output"], transB=1, alpha=0.5, beta=3.0)
    model = graph_model([node], {"W": np.array([[1.0, 2.0], [-1.0, 4.0]]), "B": np.array([1.0, -2.0])}, 2, 2)
    ctx = _net_ort_agree(model, -1.0, 1.0, n=2)
    assert [type(layer) for layer in ctx.net.layers] == [Dense, Elementwise]


def test_folded_add_keeps_the_rounding_of_the_intermediate() -> None:
    for built in folded_add():
        ctx = ModelContext.from_bytes(built.model)
        x = built.witnesses[0]
        exact = float(ctx.net.forward(torch.from_numpy(x[None])).reshape(-1)[0])
        assert exact == pytest.approx(float(x[0]))  # the exact function is y = x ...
        assert float(ctx.ort(x)[0][0]) >= 6.0  # ... onnxruntime's is not
        dense = ctx.net.layers[0]
        assert isinstance(dense, Dense)  # folded: the offset keeps |1e8| + |-1e8|, not |0|
        folded = 1e8 if built.name == "folded_sub_matmul" else 2e8  # (a Sub stays its own layer)
        assert float(dense.error_offset(torch.float64).max()) >= folded - 1
        _net_ort_agree(built.model, 4.5, 5.0)


def test_a_leading_one_used_as_a_matrix_row_is_not_a_batch() -> None:
    nodes = [helper.make_node("MatMul", ["W", "input"], ["c"]), helper.make_node("Reshape", ["c", "S"], ["output"])]
    model = graph_model(nodes, {"W": np.array([[1.0], [2.0], [3.0]]), "S": np.array([1, 3], dtype=np.int64)}, 1, 3,
                        in_shape=[1, 1])
    ctx = _net_ort_agree(model, -1.0, 2.0)
    assert ctx.net.out_dim == 3


def test_refused_models_name_the_tensor_and_its_type() -> None:
    for r in refusals():
        if r.vnnlib is not None:
            continue
        with pytest.raises((ModelFormatError, Exception), match=r.expect):
            ModelContext.from_bytes(r.model, r.name)


def test_fusable_constants_beyond_the_range_are_refused() -> None:
    # onnxruntime may fold the Mul into the Gemm's weights: 1e30 * 1e30 overflows float32
    nodes = [_gemm("input", "W", "B", "z"), helper.make_node("Mul", ["z", "S"], ["output"])]
    model = graph_model(nodes, {"W": np.array([[1e30]]), "B": np.zeros(1), "S": np.array([1e30])}, 1, 1)
    with pytest.raises(ModelFormatError, match="fuse"):
        ModelContext.from_bytes(model)


# -- subnormal results --------------------------------------------------------------------------------
def test_subnormal_steps_stay_within_the_absolute_term() -> None:
    # values scaled by 2**-140 round to multiples of 2**-149: relative error up to 100%
    model = _subnormal_net(1, 0.0)
    ctx = ModelContext.from_bytes(model)
    lo, hi = torch.tensor([[0.1]], dtype=torch.float64), torch.tensor([[0.2]], dtype=torch.float64)
    nb, _ = crown_bounds(ctx.net, lo, hi)
    xs = np.linspace(0.1, 0.2, 101)[:, None].astype(np.float32).astype(np.float64)
    exact = ctx.net.forward(torch.from_numpy(xs)).numpy()
    diff = np.abs(ctx.ort(xs) - exact)
    assert diff.max() > 1e-4  # real: the rounding shows at the output
    bound = (nb.errors.accumulated[-1] + nb.errors.slack[-1]).numpy()
    assert bool(np.all(diff <= bound))
    # the relative part alone does not cover it: the absolute (underflow) term does
    relative_only = [layer.fmt.gamma(layer.rounding_ops) for layer in ctx.net.layers if hasattr(layer, "fmt")]
    assert max(relative_only) * 10 < diff.max()


# -- overflow -----------------------------------------------------------------------------------------
def test_possible_overflow_is_reported_and_proves_nothing() -> None:
    built = overflow()[0]
    ctx = ModelContext.from_bytes(built.model)
    (box, _), = list(built.spec)
    nb = interval_bounds(ctx.net, torch.tensor(box.lower[None]), torch.tensor(box.upper[None]))
    note = nb.errors.overflow_note(0)
    assert note is not None and "layer 0" in note and "float32" in note
    v = verify_spec(ctx, built.spec, VerifyConfig(method="milp", timeout=5, attack_steps=0))
    assert v.result == "sat" and "overflow" in v.details  # the box's corner is a witness
    # the same net on a box far from the range: no overflow, and a proof
    small = Specification.single(InputBox(np.array([0.0]), np.array([1e-30])), LinearConstraints(np.array([[-1.0]]),
                                                                                                np.array([-4.5])))
    v = verify_spec(ctx, small, VerifyConfig(method="milp", timeout=5, attack_steps=0))
    assert v.result == "unsat" and "overflow" not in v.details


def test_nan_bounds_bound_nothing() -> None:
    lo, hi = outward(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 2.0]), torch.zeros(2))
    assert lo[0] == -float("inf") and hi[0] == float("inf") and lo[1] == 1.0
    lo, hi = intersect(torch.tensor([float("nan")]), torch.tensor([float("nan")]), torch.tensor([0.0]),
                       torch.tensor([1.0]))
    assert float(lo) == 0.0 and float(hi) == 1.0


# -- strict comparisons and witnesses --------------------------------------------------------------------
def test_strict_rows_and_sides() -> None:
    lc = LinearConstraints(np.array([[1.0, -1.0]]), np.array([0.0]), strict=np.array([True]))
    assert not lc.satisfied_by([1.0, 1.0]) and lc.satisfied_by([0.5, 1.0])
    # a boundary that float64 would blur: 1e16 + 1 - 1e16 evaluates to 0 (<= 0), but is 1
    blur = LinearConstraints(np.array([[1.0, 1.0, 1.0]]), np.array([0.0]))
    assert not blur.satisfied_by([1e16, 1.0, -1e16])
    assert blur.satisfied_by([1e16, -1.0, -1e16])
    box = InputBox(np.array([0.0]), np.array([1.0]), lower_strict=np.array([True]))
    assert not box.contains([0.0]) and box.contains([1e-300]) and box.contains([1.0])
    lo, hi = box.representable(FLOAT32)
    assert lo[0] == float(np.nextafter(np.float32(0), np.float32(1))) and hi[0] == 1.0
    with pytest.raises(Exception, match="empty"):
        InputBox(np.array([1.0]), np.array([1.0]), upper_strict=np.array([True]))


def test_strict_witnesses_are_refused_on_the_boundary() -> None:
    for built in strict():
        ctx = ModelContext.from_bytes(built.model)
        (box, out), = list(built.spec)
        for x in (box.lower, box.upper, box.center):
            w = validate_witness(ctx, x, box, out)
            if built.witnesses:  # strict_relu_sat: the upper corner violates strictly
                continue
            assert w is None, (built.name, x)
        if built.witnesses:
            assert validate_witness(ctx, built.witnesses[0], box, out) is not None


def test_pinned_coordinates_take_the_value_the_network_is_fed() -> None:
    # y = x; violation y >= 0.1 with x pinned to 0.1, which float32 cannot represent
    model = graph_model([_gemm("input", "W", "B", "output")], {"W": np.array([[1.0]]), "B": np.zeros(1)}, 1, 1)
    ctx = ModelContext.from_bytes(model)
    box = InputBox(np.array([0.1]), np.array([0.1]))
    assert to_input_point(np.array([0.1]), box)[0] == np.float32(0.1)
    for d, expect in ((-0.1, "sat"), (-0.2, "unsat")):  # float32(0.1) > 0.1: y >= 0.1 holds there
        spec = Specification.single(box, LinearConstraints(np.array([[-1.0]]), np.array([d])))
        v = verify_spec(ctx, spec, VerifyConfig(method="bab", timeout=5, attack_steps=0))
        assert v.result == expect, (d, v.result)
        if expect == "sat":
            assert v.witness is not None and v.witness.x[0] == np.float32(0.1)


def test_linear_only_net_goes_through_branch_and_bound() -> None:
    model = graph_model([_gemm("input", "W", "B", "output")], {"W": np.array([[1.0, 1.0]]), "B": np.zeros(1)}, 2, 1)
    ctx = ModelContext.from_bytes(model)
    assert not any(isinstance(layer, ReLU) for layer in ctx.net.layers)
    spec = Specification.single(InputBox(np.zeros(2), np.ones(2)), LinearConstraints(np.array([[-1.0]]),
                                                                                      np.array([-1.99999])))
    for split in ("relu", "input"):
        v = verify_spec(ctx, spec, VerifyConfig(method="bab", timeout=5, attack_steps=0, bab_split=split))
        assert v.result == "sat", split
    onnx.checker.check_model(onnx.load_model_from_string(model))


def test_bound_statistics_certify_nothing_where_the_network_may_overflow() -> None:
    from robustkit.bounds.stability import dataset_bound_statistics

    # two outputs: y0 = 5 - relu(5 - 1e-38 relu(3e38 x)) >= 0, y1 = -1; x near 1.25 overflows, near 0 not
    ws = [np.array([[3e38]]), np.array([[-1e-38]]), np.array([[-1.0], [0.0]])]
    bs = [np.zeros(1), np.array([5.0]), np.array([5.0, -1.0])]
    from robustkit.verification.soundness_families import _chain

    ctx = ModelContext.from_bytes(_chain(ws, bs, 1, 2))
    stats = dataset_bound_statistics(ctx.net, torch.tensor([[1.25], [1e-30]]), torch.tensor([0, 0]), 0.01,
                                     "crown", value_range=(-10.0, 10.0))
    assert stats.margin_lower[0] == -np.inf and stats.margin_lower[1] > 0.5
    assert stats.certified.tolist() == [False, True]
