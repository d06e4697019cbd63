"""Tests of robustkit.spec and robustkit.vnnlib (parser and VNN-COMP result files).

The benchmark files are read from ../shared/benchmarks/vnncomp (tests skip when it is absent).
Parsed specifications are checked against a small independent evaluator of the VNN-LIB formula
written here (its own tokenizer, recursive evaluation of and/or/comparisons, no DNF).
"""

from __future__ import annotations

import csv
import functools
import gzip
import math
from fractions import Fraction
import operator
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from robustkit.errors import InputError
from robustkit.spec import (
    InputBox,
    LinearConstraints,
    OutputSpec,
    Specification,
    eps_box,
    robustness_spec,
)
from robustkit.vnnlib import (
    ResultFile,
    VnnlibError,
    format_result,
    parse_result_text,
    parse_vnnlib,
    read_result,
    write_result,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VNNCOMP = SHARED / "benchmarks" / "vnncomp"
MNIST = SHARED / "data" / "mnist"
BENCHMARKS = {"mnist_fc_2022": "instances.csv", "oval21_2022": "instances.csv", "test_2021": "test_instances.csv"}

needs_vnncomp = pytest.mark.skipif(
    not VNNCOMP.is_dir(), reason=f"VNN-COMP benchmarks not found at {VNNCOMP} (../shared next to the repo)"
)


# ---------------------------------------------------------------------------------------------
# Independent reference evaluator of a VNN-LIB formula (no DNF, no shared code with the parser)
# ---------------------------------------------------------------------------------------------


def _ref_tree(text: str) -> list[Any]:
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    stack: list[list[Any]] = [[]]
    for tok in text.replace("(", " ( ").replace(")", " ) ").split():
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    assert len(stack) == 1
    return stack[0]


def _ref_term(e: Any, env: dict[str, Fraction]) -> Fraction:
    if isinstance(e, str):
        return env[e] if e in env else Fraction(e)
    op, *args = e
    vals = [_ref_term(a, env) for a in args]
    if op == "+":
        return sum(vals, Fraction(0))
    if op == "-":
        return -vals[0] if len(vals) == 1 else vals[0] - sum(vals[1:], Fraction(0))
    if op == "*":
        return math.prod(vals, start=Fraction(1))
    if op == "/":
        return vals[0] / math.prod(vals[1:], start=Fraction(1))
    raise AssertionError(f"reference evaluator: unknown term {op}")


# The file's semantics: exact arithmetic on the numbers as written, strict comparisons strictly.
_REF_CMP: dict[str, Callable[[Fraction, Fraction], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "=": operator.eq,
}


def _ref_holds(e: Any, env: dict[str, Fraction]) -> bool:
    if e == "true":
        return True
    if e == "false":
        return False
    op, *args = e
    if op == "and":
        return all(_ref_holds(a, env) for a in args)
    if op == "or":
        return any(_ref_holds(a, env) for a in args)
    vals = [_ref_term(a, env) for a in args]
    return all(_REF_CMP[op](a, b) for a, b in zip(vals, vals[1:]))


def ref_violated(tree: list[Any], x: np.ndarray, y: np.ndarray) -> bool:
    env = {f"X_{i}": Fraction(float(v)) for i, v in enumerate(x)}
    env.update({f"Y_{j}": Fraction(float(v)) for j, v in enumerate(y)})
    return all(_ref_holds(cmd[1], env) for cmd in tree if cmd[0] == "assert")


def _check_against_reference(text: str, xs: list[np.ndarray], ys: list[np.ndarray]) -> list[bool]:
    spec = parse_vnnlib(text)
    tree = _ref_tree(text)
    results = []
    for x, y in zip(xs, ys):
        ours = spec.is_violated_by(x, y)
        ref = ref_violated(tree, x, y)
        assert ours == ref, f"disagreement at x={x[:5]}..., y={y}"
        results.append(ours)
    return results


# ---------------------------------------------------------------------------------------------
# spec.py
# ---------------------------------------------------------------------------------------------


def test_input_box_validation_and_contains() -> None:
    box = InputBox(np.array([[0.0, 1.0]]), [0.5, 2.0])  # any shape is flattened
    assert box.n == 2 and box.lower.dtype == np.float64
    assert not box.lower.flags.writeable
    assert box.contains([0.5, 1.0]) and box.contains([0.0, 2.0])
    assert not box.contains([0.5 + 1e-12, 1.0])
    assert box.contains([0.5 + 1e-5, 1.0], tol=1e-4)
    assert not box.contains([np.nan, 1.0])
    np.testing.assert_array_equal(box.clip([-1.0, 3.0]), [0.0, 2.0])
    with pytest.raises(InputError, match="empty"):
        InputBox([1.0], [0.0])
    with pytest.raises(InputError, match="finite"):
        InputBox([0.0], [np.inf])
    with pytest.raises(InputError, match="differ"):
        InputBox([0.0, 0.0], [1.0])


def test_eps_box_clips_and_uses_float64() -> None:
    x0 = np.array([0.0, 0.5, 0.99, 1.0], dtype=np.float32)
    box = eps_box(x0, 0.03)
    np.testing.assert_array_equal(box.lower, [0.0, np.float64(np.float32(0.5)) - 0.03, np.float64(np.float32(0.99)) - 0.03, 0.97])
    np.testing.assert_array_equal(box.upper, [0.03, 0.53, 1.0, 1.0])
    assert eps_box(np.array([5.0]), 1.0, lo=-np.inf, hi=np.inf).upper[0] == 6.0
    with pytest.raises(InputError):
        eps_box(x0, -0.1)
    with pytest.raises(InputError, match="outside"):
        eps_box(np.array([1.5]), 0.1)


def test_robustness_spec_rows_and_violation() -> None:
    box = InputBox(np.zeros(3), np.ones(3))
    spec = robustness_spec(2, 4, box)
    (b, out), = spec.regions
    assert b is box and len(out) == 3 and out.robustness_label() == 2
    rows = {tuple(lc.C[0]) for lc in out}
    assert rows == {(-1.0, 0.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 0.0, 1.0, -1.0)}
    assert all(lc.d[0] == 0.0 for lc in out)
    x = np.full(3, 0.5)
    assert not spec.is_violated_by(x, [0.0, 1.0, 2.0, 1.9])
    assert spec.is_violated_by(x, [0.0, 1.0, 2.0, 2.0])  # a tie is a violation
    assert spec.is_violated_by(x, [3.0, 1.0, 2.0, 1.0])
    assert not spec.is_violated_by(x + 1.0, [3.0, 1.0, 2.0, 1.0])  # outside the box
    C, d, idx = out.stacked()
    assert C.shape == (3, 4) and d.shape == (3,) and list(idx) == [0, 1, 2]
    with pytest.raises(InputError):
        robustness_spec(4, 4, box)


def test_violation_tolerances_default_to_exact() -> None:
    lc = LinearConstraints([[1.0, -1.0]], [0.0])  # y0 - y1 <= 0
    spec = Specification(((InputBox([0.0], [1.0]), [lc]),))  # a list is coerced to OutputSpec
    assert isinstance(spec.regions[0][1], OutputSpec)
    assert not spec.is_violated_by([1.0 + 1e-9], [0.0, 1.0])
    assert spec.is_violated_by([1.0 + 1e-9], [0.0, 1.0], tol=1e-4)
    assert not spec.is_violated_by([0.5], [1e-6, 0.0])
    assert spec.is_violated_by([0.5], [1e-6, 0.0], out_tol=1e-4)
    with pytest.raises(InputError):
        spec.is_violated_by([0.5, 0.5], [0.0, 0.0])


def test_specification_validation() -> None:
    box = InputBox([0.0], [1.0])
    with pytest.raises(InputError):
        Specification(())
    with pytest.raises(InputError, match="disagree"):
        OutputSpec((LinearConstraints([[1.0]], [0.0]), LinearConstraints([[1.0, 2.0]], [0.0])))
    with pytest.raises(InputError, match="rows"):
        LinearConstraints([[1.0, 2.0]], [0.0, 1.0])
    empty_rows = LinearConstraints(np.zeros((0, 2)), np.zeros(0))  # "any output" disjunct
    assert Specification.single(box, empty_rows).is_violated_by([0.3], [5.0, -5.0])


# ---------------------------------------------------------------------------------------------
# Parser: features, against hand-computed values and the reference evaluator
# ---------------------------------------------------------------------------------------------

HANDMADE = """; several syntax forms
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(set-logic QF_LRA)
(assert (>= X_1 -0.5))
(assert (<= X_1 (- 0.25)))
(assert (or
    (and (>= X_0 0) (<= X_0 1) (> Y_0 (+ Y_1 1.5e-1)) (<= (* 2 Y_2) (- Y_0 Y_1)))
    (and (>= X_0 2.0) (< X_0 3) (or (<= Y_2 -1E0) (>= (- Y_1 (* 0.5 Y_0)) 0.25)))
    (and (>= X_0 0) (<= X_0 1) (= Y_1 Y_1) (<= (/ Y_2 4) 0.125))
))
(check-sat)
"""


def test_handmade_file_structure() -> None:
    spec = parse_vnnlib(HANDMADE)
    assert spec.n_in == 2 and spec.n_out == 3
    assert len(spec.regions) == 2  # boxes X_0 in [0,1] and X_0 in [2,3]; same X_1 bounds
    (box_a, out_a), (box_b, out_b) = spec.regions
    np.testing.assert_array_equal(box_a.lower, [0.0, -0.5])
    np.testing.assert_array_equal(box_a.upper, [1.0, -0.25])
    np.testing.assert_array_equal(box_b.lower, [2.0, -0.5])
    np.testing.assert_array_equal(box_b.upper, [3.0, -0.25])
    assert len(out_a) == 2 and len(out_b) == 2
    # Y_0 > Y_1 + 0.15  ->  -Y_0 + Y_1 <= -0.15 ; 2 Y_2 <= Y_0 - Y_1 -> -Y_0 + Y_1 + 2 Y_2 <= 0
    np.testing.assert_allclose(out_a[0].C, [[-1.0, 1.0, 0.0], [-1.0, 1.0, 2.0]])
    np.testing.assert_allclose(out_a[0].d, [-0.15, 0.0])
    # (= Y_1 Y_1) cancels to the constant 0 <= 0 (dropped); Y_2 / 4 <= 0.125
    np.testing.assert_allclose(out_a[1].C, [[0.0, 0.0, 0.25]])
    np.testing.assert_allclose(out_a[1].d, [0.125])
    np.testing.assert_allclose(out_b[0].C, [[0.0, 0.0, 1.0]])
    np.testing.assert_allclose(out_b[0].d, [-1.0])
    np.testing.assert_allclose(out_b[1].C, [[0.5, -1.0, 0.0]])
    np.testing.assert_allclose(out_b[1].d, [-0.25])


def test_handmade_file_agrees_with_reference_evaluator() -> None:
    rng = np.random.default_rng(0)
    xs = [np.array([rng.uniform(-0.5, 3.5), rng.uniform(-0.6, -0.15)]) for _ in range(400)]
    xs += [np.array([v, -0.25]) for v in (0.0, 1.0, 2.0, 3.0)]  # on the boundary (closure)
    ys = [rng.uniform(-2, 2, size=3) for _ in xs]
    results = _check_against_reference(HANDMADE, xs, ys)
    assert 20 < sum(results) < len(results) - 20  # both outcomes are well represented


def test_nested_or_inside_and_expands_to_dnf() -> None:
    text = """(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)
    (assert (and (>= X_0 0) (<= X_0 1)))
    (assert (or (<= Y_0 0) (<= Y_1 0)))
    (assert (or (>= Y_0 -1) (and (>= Y_1 -1) (<= Y_1 -0.5))))"""
    spec = parse_vnnlib(text)
    assert len(spec.regions) == 1 and len(spec.regions[0][1]) == 4
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-0.2, 1.2, size=1) for _ in range(300)]
    ys = [rng.uniform(-2, 1, size=2) for _ in xs]
    results = _check_against_reference(text, xs, ys)
    assert 20 < sum(results) < len(results) - 20


def test_numbers_and_exact_bounds() -> None:
    text = """(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)
    (assert (>= X_0 -0.30353115613746867)) (assert (<= X_0 .5))
    (assert (>= X_1 -1e-3)) (assert (<= X_1 +12))
    (assert (<= Y_0 (- 0.5)))"""
    (box, out), = parse_vnnlib(text).regions
    assert box.lower[0] == -0.30353115613746867 and box.upper[0] == 0.5
    assert box.lower[1] == -0.001 and box.upper[1] == 12.0
    assert out[0].d[0] == -0.5 and out[0].C[0, 0] == 1.0


def test_per_disjunct_input_bounds_like_test_2021() -> None:
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (or\n (and (>= X_0 -1) (<= X_0 1) (>= Y_0 100))\n))"
    (box, out), = parse_vnnlib(text).regions
    assert box.lower[0] == -1.0 and box.upper[0] == 1.0
    np.testing.assert_array_equal(out[0].C, [[-1.0]])
    np.testing.assert_array_equal(out[0].d, [-100.0])


def test_infeasible_disjuncts_are_dropped() -> None:
    text = """(declare-const X_0 Real)(declare-const Y_0 Real)
    (assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 0))
                (and (>= X_0 3) (<= X_0 2) (<= Y_0 5))
                (and (>= X_0 0) (<= X_0 1) (<= 2 1))))"""
    (box, out), = parse_vnnlib(text).regions
    assert len(out) == 1 and out[0].d[0] == 0.0


def test_path_and_gzip_and_dimension_arguments(tmp_path: Path) -> None:
    plain = tmp_path / "p.vnnlib"
    plain.write_text(HANDMADE)
    packed = tmp_path / "p.vnnlib.gz"
    packed.write_bytes(gzip.compress(HANDMADE.encode()))
    for source in (plain, str(plain), packed):
        assert parse_vnnlib(source, n_inputs=2, n_outputs=3).n_out == 3
    with pytest.raises(VnnlibError, match="3 output variables") as info:
        parse_vnnlib(plain, n_outputs=10)
    assert (info.value.line, info.value.column) == (6, 16)  # the declaration of Y_2
    with pytest.raises(InputError, match="not found"):
        parse_vnnlib(tmp_path / "missing.vnnlib")


# ---------------------------------------------------------------------------------------------
# Parser: malformed input -> VnnlibError (an InputError) with line and column
# ---------------------------------------------------------------------------------------------

DECLS = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
BOUNDS = "(assert (>= X_0 0))\n(assert (<= X_0 1))\n"  # lines 3-4 after DECLS

MALFORMED = [
    # (text, line, column, message fragment)
    (DECLS + BOUNDS + "(assert (<= Y_0 1)", 5, 1, "never closed"),
    (DECLS + BOUNDS + "(assert (<= Y_0 1)))", 5, 20, "without a matching"),
    (DECLS + BOUNDS + "(assert (<= Y_1 1))", 5, 13, "undeclared variable Y_1"),
    (DECLS + BOUNDS + "(assert (<= (exp Y_0) 1))", 5, 13, "unsupported operator 'exp'"),
    (DECLS + BOUNDS + "(assert (not (<= Y_0 1)))", 5, 9, "unsupported operator 'not'"),
    ("", 1, 1, "empty"),
    ("; just a comment\n\n", 1, 1, "empty"),
    (DECLS + "(assert (>= X_0 0))\n(assert (<= Y_0 1))", 1, 16, "X_0 has no upper bound"),
    (DECLS + BOUNDS + "(assert (<= X_0 Y_0))", 5, 9, "mixes input (X) and output (Y)"),
    (DECLS + BOUNDS + "(assert (<= Y_0 abc))", 5, 17, "unknown symbol 'abc'"),
    (DECLS + BOUNDS + "(assert (<= (* Y_0 Y_0) 1))", 5, 13, "nonlinear"),
    ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
     "(assert (<= (+ X_0 X_1 1) 3))\n(assert (<= Y_0 1))", 4, 9, "one variable each"),
    ("(declare-const X_0 Int)\n", 1, 20, "only Real"),
    ("(declare-const Z Real)\n", 1, 16, "are named X_<i>"),
    (DECLS + "(declare-const X_0 Real)\n", 3, 16, "declared twice"),
    ("(declare-const X_1 Real)\n(declare-const Y_0 Real)\n", 1, 16, "X_0 is not declared"),
    (DECLS + BOUNDS + "(assert (<= Y_0 1) (<= Y_0 2))", 5, 1, "exactly one formula"),
    (DECLS + BOUNDS + "\n  (define-fun f () Real 1)", 6, 3, "unsupported top-level command"),
    (DECLS + "(assert (>= X_0 2))\n(assert (<= X_0 1))\n(assert (<= Y_0 1))", 4, 9, "no possible counterexample"),
    (DECLS + BOUNDS + "(assert (<= Y_0 1e999))", 5, 17, "float64 range"),
    (DECLS + BOUNDS + "oops", 5, 1, "outside parentheses"),
    (DECLS, 3, 1, "no (assert"),
]


@pytest.mark.parametrize("text,line,column,fragment", MALFORMED)
def test_malformed_input_reports_line_and_column(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(VnnlibError) as info:
        parse_vnnlib(text)
    err = info.value
    assert isinstance(err, InputError)
    assert fragment in str(err)
    assert (err.line, err.column) == (line, column), str(err)
    assert str(err).startswith(f"<string>:{line}:{column}: ")


def test_error_message_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.vnnlib"
    path.write_text(DECLS + BOUNDS + "(assert (<= (exp Y_0) 1))")
    with pytest.raises(InputError) as info:
        parse_vnnlib(path)
    assert str(info.value).startswith(f"{path}:5:13: unsupported operator 'exp'")


# ---------------------------------------------------------------------------------------------
# Real benchmark files
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _onnx_io_sizes(onnx_path: Path) -> tuple[int, int]:
    import onnx

    model = onnx.load(str(onnx_path))
    init = {i.name for i in model.graph.initializer}

    def numel(value_info: Any) -> int:
        dims = value_info.type.tensor_type.shape.dim
        return int(np.prod([d.dim_value if d.dim_value > 0 else 1 for d in dims]))

    inputs = [v for v in model.graph.input if v.name not in init]
    assert len(inputs) == 1
    return numel(inputs[0]), numel(model.graph.output[0])


def _expected_sizes() -> dict[Path, set[tuple[int, int]]]:
    sizes: dict[Path, set[tuple[int, int]]] = {}
    for bench, listing in BENCHMARKS.items():
        with open(VNNCOMP / bench / listing, newline="") as fh:
            for row in csv.reader(fh):
                if row:
                    onnx_path, vnnlib_path = VNNCOMP / bench / row[0], VNNCOMP / bench / row[1]
                    sizes.setdefault(vnnlib_path, set()).add(_onnx_io_sizes(onnx_path))
    return sizes


def _all_vnnlib_files() -> list[Any]:
    if not VNNCOMP.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{VNNCOMP} not found"))]
    files = sorted(p for bench in BENCHMARKS for p in (VNNCOMP / bench).rglob("*.vnnlib"))
    return [pytest.param(p, id=str(p.relative_to(VNNCOMP))) for p in files]


@pytest.fixture(scope="module")
def expected_sizes() -> dict[Path, set[tuple[int, int]]]:
    return _expected_sizes()


@pytest.mark.parametrize("path", _all_vnnlib_files())
def test_benchmark_file_parses_with_network_dimensions(
    path: Path, expected_sizes: dict[Path, set[tuple[int, int]]]
) -> None:
    (n_in, n_out), = expected_sizes[path]  # every network using the file agrees
    spec = parse_vnnlib(path, n_inputs=n_in, n_outputs=n_out)
    assert (spec.n_in, spec.n_out) == (n_in, n_out)
    for box, out in spec.regions:
        assert np.all(box.upper - box.lower >= 0) and np.all(np.isfinite(box.lower))
        if "mnist" in str(path) or "oval21" in str(path):
            assert len(out) == n_out - 1 and out.robustness_label() is not None


@needs_vnncomp
def test_oval21_parse_time() -> None:
    path = VNNCOMP / "oval21_2022" / "vnnlib" / "cifar_base_kw-img2578-eps0.021176470588235297.vnnlib"
    start = time.perf_counter()
    spec = parse_vnnlib(path)
    elapsed = time.perf_counter() - start
    assert spec.n_in == 3072
    assert elapsed < 5.0, f"parsing a 3072-input oval21 file took {elapsed:.2f} s"


@needs_vnncomp
@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST not found at {MNIST}")
def test_mnist_prop_0_box_is_clipped_image_ball() -> None:
    text = (VNNCOMP / "mnist_fc_2022" / "vnnlib" / "prop_0_0.03.vnnlib").read_text()
    assert "label: 4" in text.splitlines()[0]
    spec = parse_vnnlib(text)
    (box, out), = spec.regions
    with gzip.open(MNIST / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 784) / 255.0
    with gzip.open(MNIST / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)
    # The file's box is the float32 computation clip(img +- 0.03, 0, 1) of MNIST test image 762.
    reference = eps_box(images[762], 0.03)
    np.testing.assert_allclose(box.lower, reference.lower, rtol=0, atol=1e-7)
    np.testing.assert_allclose(box.upper, reference.upper, rtol=0, atol=1e-7)
    assert labels[762] == 4
    assert box.lower.min() == 0.0 and box.upper.max() == 1.0  # clipping happened on both sides
    assert len(out) == 9 and out.robustness_label() == 4
    expected = robustness_spec(4, 10, box).regions[0][1]
    assert {tuple(lc.C[0]) for lc in out} == {tuple(lc.C[0]) for lc in expected}
    assert all(lc.d[0] == 0.0 for lc in out)


def _sample_points(spec: Specification, rng: np.random.Generator, y_scale: float, y_center: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    box = spec.bounding_box()
    width = box.upper - box.lower
    xs, ys = [], []
    for k in range(max(spec.n_out, 6)):
        for mode in ("inside", "boundary", "outside"):
            x = rng.uniform(box.lower, box.upper)
            if mode == "boundary":
                x = np.where(rng.random(box.n) < 0.5, box.lower, box.upper)
            elif mode == "outside":
                i = rng.integers(box.n)
                x[i] = box.upper[i] + 0.1 * width[i] + 1e-3
            y = y_center + y_scale * rng.standard_normal(spec.n_out)
            # each output in turn made the largest; extra rounds (few outputs) push it down instead
            y[k % spec.n_out] += 3 * y_scale if k < spec.n_out else -3 * y_scale
            xs.append(x)
            ys.append(y)
    return xs, ys


def _reference_cases() -> list[Any]:
    cases = [
        ("mnist_fc_2022/vnnlib/prop_0_0.03.vnnlib", 1.0, 0.0),
        ("mnist_fc_2022/vnnlib/prop_13_0.05.vnnlib", 1.0, 0.0),
        ("oval21_2022/vnnlib/cifar_deep_kw-img4168-eps0.03150326797385621.vnnlib", 1.0, 0.0),
        ("test_2021/test_prop.vnnlib", 0.1, 0.0),
        ("test_2021/test_nano.vnnlib", 1.0, 0.0),  # Y_0 <= -1
        ("test_2021/test_small.vnnlib", 3.0, 100.0),  # Y_0 >= 100 (bounds inside the or)
        ("test_2021/test_tiny.vnnlib", 3.0, 100.0),
    ]
    return [pytest.param(*c, id=c[0]) for c in cases]


@needs_vnncomp
@pytest.mark.parametrize("relpath,y_scale,y_center", _reference_cases())
def test_benchmark_file_agrees_with_reference_evaluator(relpath: str, y_scale: float, y_center: float) -> None:
    text = (VNNCOMP / relpath).read_text()
    spec = parse_vnnlib(text)
    xs, ys = _sample_points(spec, np.random.default_rng(7), y_scale, y_center)
    results = _check_against_reference(text, xs, ys)
    assert any(results) and not all(results)


# ---------------------------------------------------------------------------------------------
# Published counterexamples replayed through onnxruntime
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _session(onnx_path: Path) -> Any:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _run_onnx(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    sess = _session(onnx_path)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    out = sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


@functools.lru_cache(maxsize=None)
def _spec_of(path: Path) -> Specification:
    return parse_vnnlib(path)


def _published_counterexamples() -> list[Any]:
    if not VNNCOMP.is_dir():
        return [pytest.param(None, None, None, None, marks=pytest.mark.skip(reason=f"{VNNCOMP} not found"))]
    params = []
    for bench in ("mnist_fc_2022", "oval21_2022"):
        with open(VNNCOMP / bench / "instances.csv", newline="") as fh:
            instances = [row for row in csv.reader(fh) if row]
        with open(VNNCOMP / bench / "counterexamples_2022" / "ce_check.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["verdict"] == "no_ce":
                    continue
                onnx_rel, vnnlib_rel = instances[int(row["index"])][:2]
                ce = VNNCOMP / bench / "counterexamples_2022" / row["tool"] / row["file"]
                params.append(pytest.param(
                    ce, VNNCOMP / bench / onnx_rel, VNNCOMP / bench / vnnlib_rel, row["verdict"],
                    id=f"{bench}/{row['tool']}/{row['file']}",
                ))
    return params


@pytest.mark.parametrize("ce_path,onnx_path,vnnlib_path,verdict", _published_counterexamples())
def test_published_counterexample_replays_as_recorded(
    ce_path: Path, onnx_path: Path, vnnlib_path: Path, verdict: str
) -> None:
    """ce_check.csv's verdicts, recomputed: correct = violation exactly; correct_up_to_tol =
    only with VNN-COMP's 1e-4 slack; spec_not_violated = no violation even with the slack."""
    result = read_result(ce_path)
    spec = _spec_of(vnnlib_path)
    assert result.status is None and result.x is not None and result.y is not None
    assert result.x.size == spec.n_in and result.y.size == spec.n_out
    y = _run_onnx(onnx_path, result.x)
    np.testing.assert_allclose(result.y, y, rtol=1e-3, atol=1e-4)  # the witness's own outputs
    exact = spec.is_violated_by(result.x, y)
    with_tol = spec.is_violated_by(result.x, y, tol=1e-4, out_tol=1e-4)
    expected = {
        "correct(onnx)": (True, True),
        "correct_up_to_tol(onnx)": (False, True),
        "spec_not_violated(onnx)": (False, False),
    }[verdict]
    if expected[0] and not exact:
        # ce_check.csv compared float64 readings of the file's bounds and of the counterexample; the
        # parser keeps bounds exactly (0.1147058823529412 is not a float64), so a counterexample
        # written with the bound's own digits, read as float64, can fall one float64 step outside
        assert _outside_by_one_ulp(spec, result.x), "outside the box by more than float64 rounding"
        exact = True
    assert (exact, with_tol) == expected


def _outside_by_one_ulp(spec: Specification, x: np.ndarray) -> bool:
    """Whether ``x`` lies in some region's box once each bound may move by one float64 step."""
    for box, _ in spec:
        lo = np.nextafter(box.lower, -np.inf)
        hi = np.nextafter(box.upper, np.inf)
        if bool(np.all(x >= lo) and np.all(x <= hi)):
            return True
    return False


@needs_vnncomp
def test_empty_witness_file_reads_as_no_counterexample() -> None:
    folder = VNNCOMP / "mnist_fc_2022" / "counterexamples_2022" / "alpha_beta_crown"
    result = read_result(next(iter(sorted(folder.glob("*.gz")))))
    assert result.status is None and not result.has_counterexample


# ---------------------------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------------------------


def test_result_file_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(20), [0.0, -0.0, 1e-310, 5e300, 0.1, 1 / 3]])
    y = rng.standard_normal(7) * 1e5
    path = write_result(tmp_path / "sub" / "out.txt", "sat", x, y)
    text = path.read_text()
    assert text.startswith("sat\n((X_0 ")
    assert f"\n (X_{x.size - 1} {1 / 3!r})\n (Y_0 " in text and text.endswith(")\n")
    back = read_result(path)
    assert back.status == "sat"
    np.testing.assert_array_equal(back.x, x)
    np.testing.assert_array_equal(back.y, y)
    gz = tmp_path / "out.txt.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    np.testing.assert_array_equal(read_result(gz).x, x)


def test_result_file_exact_format() -> None:
    assert format_result("sat", [0.5, -1.25e-07], [3.0]) == "sat\n((X_0 0.5)\n (X_1 -1.25e-07)\n (Y_0 3.0))\n"
    for status in ("unsat", "timeout", "unknown", "error"):
        assert format_result(status) == f"{status}\n"
        assert parse_result_text(f"  {status}  \n").status == status
        assert parse_result_text(format_result(status)).status == status


def test_result_file_reader_variants() -> None:
    assert parse_result_text("violated\n((X_0 1) (Y_0 2))").status == "sat"
    assert parse_result_text("holds\n").status == "unsat"
    bare = parse_result_text("(\n(X_1 2.5)\n(X_0 -1)\n(Y_0 3e-2)\n)")
    assert bare.status is None
    np.testing.assert_array_equal(bare.x, [-1.0, 2.5])
    np.testing.assert_array_equal(bare.y, [0.03])
    assert parse_result_text("").status is None


@pytest.mark.parametrize(
    "text,fragment,line",
    [
        ("maybe\n", "unknown result 'maybe'", 1),
        ("sat\n((X_0 1)\n (X_2 1) (Y_0 1))", "lacks X_1", 2),
        ("sat\n((X_0 1)\n (X_0 2) (Y_0 1))", "given twice", 3),
        ("sat\n((X_0 1)\n (Y_0 one))", "expected a number", 3),
        ("unsat\n((X_0 1) (Y_0 1))", "must not carry", 2),
        ("sat\n((X_0 1) (Y_0 1)", "never closed", 2),
    ],
)
def test_result_file_reader_errors(text: str, fragment: str, line: int) -> None:
    with pytest.raises(VnnlibError, match=fragment) as info:
        parse_result_text(text)
    assert info.value.line == line


def test_result_file_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        format_result("sat")
    with pytest.raises(InputError):
        format_result("proved")
    with pytest.raises(InputError):
        format_result("unsat", [1.0], [1.0])
    with pytest.raises(InputError):
        format_result("sat", [np.nan], [1.0])
    assert ResultFile("timeout").x is None
    assert write_result(tmp_path / "r.txt", "timeout").read_text() == "timeout\n"
