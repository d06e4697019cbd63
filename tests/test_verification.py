"""Witness validation and the soundness of the pipeline's verdicts on a trained net:
every ``verified`` sample survives a strong PGD attack, every ``falsified`` one carries a
counterexample that onnxruntime misclassifies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from robustkit.attacks import PGD
from robustkit.milp import SolveResult
from robustkit.spec import InputBox, eps_box, robustness_spec
from robustkit.verification import ModelContext, VerifyConfig, validate_witness, verify_sample
from robustkit.network.floatfmt import FLOAT32
from robustkit.verification.witness import to_input_point


def ort_logits(path: Path, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: np.asarray(x, dtype=np.float32).reshape(shape)})[0],
                      dtype=np.float64).reshape(-1)


# -- validate_witness on the analytic net (y0 = 1/4, y1 = |x1 - x2|, y2 = 2|x1 - x2| - 1/8) ---------
@pytest.fixture
def analytic(analytic_onnx: Path):  # type: ignore[no-untyped-def]
    ctx = ModelContext.from_path(analytic_onnx)
    box = eps_box(np.array([0.5, 0.5]), 0.1)
    (region,) = robustness_spec(0, 3, box).regions
    return ctx, box, region[1], analytic_onnx


def test_real_counterexample_is_accepted(analytic) -> None:  # type: ignore[no-untyped-def]
    ctx, box, output, path = analytic
    x = np.array([0.6, 0.4])  # |x1 - x2| = 0.2: y2 = 0.275 > y0 = 0.25
    w = validate_witness(ctx, x, box, output, strict_label=0)
    assert w is not None
    assert w.x.dtype == np.float32 and box.contains(w.x.astype(np.float64))
    np.testing.assert_allclose(w.y, ort_logits(path, w.x, (1, 2)), atol=0)
    np.testing.assert_allclose(w.y, [0.25, 0.2, 0.275], atol=1e-6)
    assert w.disjunct == 1  # disjuncts are j = 1, 2 for label 0
    # the box is closed: a corner (exact in float32) is a valid witness
    corner_box = eps_box(np.array([0.5, 0.5]), 0.125)
    w = validate_witness(ctx, np.array([0.625, 0.375]), corner_box, output, strict_label=0)
    assert w is not None and w.x.tolist() == [0.625, 0.375]


def test_correctly_classified_candidate_is_rejected(analytic) -> None:  # type: ignore[no-untyped-def]
    ctx, box, output, _ = analytic
    assert validate_witness(ctx, np.array([0.55, 0.45]), box, output, strict_label=0) is None
    assert validate_witness(ctx, np.array([0.5, 0.5]), box, output) is None
    assert validate_witness(ctx, np.array([np.nan, 0.5]), box, output) is None


def test_candidate_outside_the_box_is_judged_inside_it(analytic) -> None:  # type: ignore[no-untyped-def]
    ctx, _, output, _ = analytic
    small = eps_box(np.array([0.5, 0.5]), 0.05)
    # (0.9, 0.1) is misclassified, but it lies outside the box; clipped into the box it is not.
    assert ctx.predict(np.array([0.9, 0.1], dtype=np.float32)) == 2
    assert validate_witness(ctx, np.array([0.9, 0.1]), small, output, strict_label=0) is None
    # a far point whose projection is a real counterexample yields that projection, inside the box
    big = eps_box(np.array([0.5, 0.5]), 0.1)
    w = validate_witness(ctx, np.array([0.9, 0.1]), big, output, strict_label=0)
    assert w is not None and big.contains(w.x.astype(np.float64))
    np.testing.assert_allclose(w.x, [0.6, 0.4], atol=1e-7)


def test_ties_are_not_misclassifications(analytic) -> None:  # type: ignore[no-untyped-def]
    ctx, box, output, path = analytic
    tie = np.array([0.5 + 3 / 32, 0.5 - 3 / 32])  # exact in float32: y2 == y0 == 1/4
    y = ort_logits(path, tie, (1, 2))
    assert y[2] == y[0] == 0.25
    assert validate_witness(ctx, tie, box, output, strict_label=0) is None
    # as a VNN-LIB violation (y_j >= y_label) the tie does count
    w = validate_witness(ctx, tie, box, output)
    assert w is not None and w.disjunct == 1


@pytest.mark.parametrize("bogus", ["clean_point", "outside_box"])
def test_bogus_milp_candidate_gives_unknown(analytic_onnx: Path, monkeypatch: pytest.MonkeyPatch, bogus: str) -> None:
    """A candidate that is not a counterexample never becomes ``falsified``. (The real solver does
    not produce such candidates on this net, so the solver is replaced here.)"""
    import robustkit.verification.pipeline as pipeline

    ctx = ModelContext.from_path(analytic_onnx)
    x0 = np.array([0.5, 0.5], dtype=np.float32)
    cfg = VerifyConfig(eps=0.08, attack_steps=0, tighten="interval")
    assert verify_sample(ctx, x0, 0, cfg)["status"] == "verified"  # the honest answer
    point = x0.astype(np.float64) if bogus == "clean_point" else np.array([0.9, 0.1])
    calls = []

    def fake_solve(enc, disjuncts, time_limit, safety_margin=1e-4, start_x=None, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(disjuncts))
        return SolveResult("candidate", 1.0, 0.5, point.copy(), 0, "Optimal", 0.0)

    monkeypatch.setattr(pipeline, "solve_violation", fake_solve)
    record = verify_sample(ctx, x0, 0, cfg)
    assert calls, "the MILP stage was not reached"
    assert record["status"] == "unknown", record
    assert record.get("rejected_candidate") is True
    assert "counterexample" not in record


# -- float32 rounding ---------------------------------------------------------------------------------
def test_float32_rounding_is_pulled_back_into_the_box() -> None:
    # float32(0.3) > 0.3 and float32(0.7) < 0.7: the plain cast leaves these boxes
    box = InputBox(np.array([0.29, 0.7]), np.array([0.3, 0.8]))
    x = np.array([0.3, 0.7])
    naive = x.astype(np.float32).astype(np.float64)
    assert not box.contains(naive)
    x32 = to_input_point(x, box)
    assert x32 is not None and x32.dtype == np.float32
    assert box.contains(x32.astype(np.float64))
    assert np.abs(x32.astype(np.float64) - x).max() < 1e-7
    # a box holding no float32 number at all: the network is fed float32(0.1) for its points, the
    # value a witness takes there (the pinned-coordinate rule); it lies outside the float64 box
    narrow = InputBox(np.array([0.1]), np.array([0.1 + 1e-9]))
    pinned = to_input_point(np.array([0.5]), narrow)
    assert pinned is not None and pinned[0] == np.float32(0.1) and not narrow.contains(pinned.astype(np.float64))
    assert narrow.admits(pinned, FLOAT32)
    assert not narrow.admits(np.nextafter(pinned, np.float32(1)), FLOAT32)


def test_float32_rounding_random_boxes() -> None:
    rng = np.random.default_rng(0)
    lower = rng.uniform(0, 1, size=5000)
    upper = lower + rng.uniform(1e-7, 1e-3, size=5000)  # wider than a float32 ulp near 1 (6e-8)
    box = InputBox(lower, upper)
    pick = rng.integers(0, 3, size=5000)
    x = np.where(pick == 0, lower, np.where(pick == 1, upper, rng.uniform(lower, upper)))
    x = x + rng.choice([0.0, 1e-3, -1e-3], size=5000)  # some start outside the box
    naive = np.clip(x, lower, upper).astype(np.float32).astype(np.float64)
    assert ((naive < lower) | (naive > upper)).sum() > 1000  # the premise: plain casting fails often
    x32 = to_input_point(x, box)
    assert x32 is not None
    x64 = x32.astype(np.float64)
    assert bool(np.all(x64 >= lower) and np.all(x64 <= upper))


# -- a trained net: verdicts against PGD and onnxruntime -----------------------------------------------
def torch_from_onnx(path: Path) -> torch.nn.Sequential:
    """An independent torch copy of a Conv/Flatten/Gemm/Relu ONNX chain, read straight from the
    initializers (not through robustkit's loader); takes (B, 1, 28, 28)."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    mods: list[torch.nn.Module] = []
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            conv = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=tuple(attrs["strides"]), bias=False)
            conv.weight.data = torch.from_numpy(w.copy())
            mods.append(conv)
        elif node.op_type == "Flatten":
            mods.append(torch.nn.Flatten())
        elif node.op_type == "Gemm":
            w, b = inits[node.input[1]], inits[node.input[2]]
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data = torch.from_numpy(w.copy())
            lin.bias.data = torch.from_numpy(b.copy())
            mods.append(lin)
        elif node.op_type == "Relu":
            mods.append(torch.nn.ReLU())
        else:
            raise AssertionError(f"unexpected node {node.op_type}")
    return torch.nn.Sequential(*mods).eval()


N_SAMPLES = 20
EPS = 0.03


@pytest.fixture(scope="module")
def trained_records(tiny_mnist):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    ctx = ModelContext.from_path(tiny_mnist.path)
    out = {}
    for steps in (0, 20):
        cfg = VerifyConfig(eps=EPS, attack_steps=steps, tighten="interval", timeout=30)
        out[(EPS, steps)] = [verify_sample(ctx, tiny_mnist.images[i], int(tiny_mnist.labels[i]), cfg)
                             for i in range(N_SAMPLES)]
    return out


def test_trained_net_learned_something(tiny_mnist) -> None:  # type: ignore[no-untyped-def]
    assert tiny_mnist.accuracy > 0.8


def test_verified_samples_survive_strong_pgd(tiny_mnist, trained_records) -> None:  # type: ignore[no-untyped-def]
    model = torch_from_onnx(tiny_mnist.path)
    idx = sorted({i for records in trained_records.values() for i, r in enumerate(records) if r["status"] == "verified"})
    assert len(idx) >= 8, "too few verified samples for a meaningful check"
    x = torch.from_numpy(tiny_mnist.images[idx]).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(tiny_mnist.labels[idx])
    for attack in (PGD(steps=200, restarts=5, loss="margin", seed=1, device="cpu"),
                   PGD(steps=100, restarts=2, loss="ce", seed=2, device="cpu")):
        res = attack.run(model, x, y, EPS, 0.0, 1.0)
        broken = np.array(idx)[res.success.numpy()]
        assert broken.size == 0, f"PGD ({attack.loss}) broke verified samples {broken.tolist()} at eps={EPS}"
        assert float(res.best_margin.max()) < 0


def test_falsified_samples_have_valid_counterexamples(tiny_mnist, trained_records) -> None:  # type: ignore[no-untyped-def]
    falsified = 0
    for (eps, steps), records in trained_records.items():
        for i, r in enumerate(records):
            x0 = tiny_mnist.images[i].astype(np.float64)
            label = int(tiny_mnist.labels[i])
            logits0 = ort_logits(tiny_mnist.path, tiny_mnist.images[i], (1, 1, 28, 28))
            if r["status"] == "misclassified":
                assert int(np.argmax(logits0)) != label
                continue
            assert int(np.argmax(logits0)) == label
            if r["status"] != "falsified":
                continue
            falsified += 1
            cex = np.asarray(r["counterexample"], dtype=np.float32)
            assert np.abs(cex.astype(np.float64) - x0).max() <= eps + 1e-12
            assert cex.min() >= 0 and cex.max() <= 1
            y = ort_logits(tiny_mnist.path, cex, (1, 1, 28, 28))
            assert np.delete(y, label).max() > y[label], f"sample {i}: counterexample classified correctly"
            assert r["counterexample_pred"] == int(np.argmax(y))
    assert falsified >= 3, "too few falsified samples for a meaningful check"


def test_statuses_do_not_depend_on_the_attack(trained_records) -> None:  # type: ignore[no-untyped-def]
    """The MILP is complete: with or without the attack in front, the verdicts agree."""
    a = [r["status"] for r in trained_records[(EPS, 0)]]
    b = [r["status"] for r in trained_records[(EPS, 20)]]
    assert "timeout" not in a + b and "unknown" not in a + b
    assert a == b
    stages = {r["stage"] for r in trained_records[(EPS, 0)] if r["status"] == "falsified"}
    assert stages == {"milp"}  # without the attack, every witness came from the MILP
